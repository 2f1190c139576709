//! One scenario run's world: its directory, its namespaces in the services, the idem processes, the
//! receiver, the history-recording client, the store reader and the final-state watcher — and the
//! teardown that removes all of it again.
//!
//! Invariant: `teardown` runs after every scenario, whether it passed, failed, panicked or was
//! interrupted; it ends the processes first (so nothing holds the database), then drops the
//! namespaces, then stops the private services.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::cluster::{Cluster, Role, Spec};
use crate::oracle::{self, Expect, Verdict};
use crate::private::Private;
use crate::receiver::Receiver;
use crate::report::Report;
use crate::rng::Rng;
use crate::services::{Isolated, Pg, Rabbit, Redis};
use crate::store::{self, FinalWatcher};

/// What every scenario is run with.
#[derive(Debug, Clone)]
pub struct Opts {
    pub seed: u64,
    pub smoke: bool,
    pub release: bool,
    pub bin: PathBuf,
    /// This invocation's directory; each scenario gets a subdirectory.
    pub dir: PathBuf,
    /// Keep the namespaces of failed runs for inspection.
    pub keep: bool,
    /// Settings for every idem process that override the runner's (`--idem-env`).
    pub idem_env: Vec<(String, String)>,
}

/// The lease every run uses, short so that scenarios finish quickly.
pub const LEASE_SECONDS: f64 = 3.0;
/// The maintenance (lease reaper) interval every run uses.
pub const MAINTENANCE_SECONDS: f64 = 1.0;

/// Which services a run uses: the machine's, or private instances it may restart and kill.
pub struct Services {
    pub pg: Pg,
    pub rabbit: Rabbit,
    pub redis: Redis,
    pub private: Option<Private>,
}

impl Services {
    pub fn machine() -> Services {
        Services {
            pg: Pg { port: 5432 },
            rabbit: Rabbit {
                port: 5672,
                node: None,
            },
            redis: Redis { port: 6379 },
            private: None,
        }
    }
}

pub struct Rig {
    pub scenario: String,
    pub opts: Opts,
    pub dir: PathBuf,
    pub t0: Instant,
    pub rng: Rng,
    pub iso: Isolated,
    pub services: Services,
    pub cluster: Cluster,
    pub receiver: Receiver,
    pub pool: PgPool,
    pub watcher: FinalWatcher,
    /// Stops the watcher and every background loop of the scenario.
    pub stop: CancellationToken,
    /// Set once the api processes are up.
    pub client: Option<Client>,
    /// The environment every idem process gets.
    pub env: Vec<(String, String)>,
    pub report: Report,
}

impl Rig {
    pub async fn new(
        opts: &Opts,
        scenario: &str,
        title: &str,
        services: Services,
    ) -> anyhow::Result<Rig> {
        let t0 = Instant::now();
        let dir = opts.dir.join(scenario);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = crate::services::namespace(scenario);
        let iso = Isolated::create(&name, &services.pg, &services.rabbit, &services.redis).await?;
        let env: Vec<(String, String)> = [
            ("IDEM_DATABASE_URL", iso.database_url.as_str()),
            ("IDEM_BROKER_URL", iso.amqp_url.as_str()),
            ("IDEM_REDIS_URL", iso.redis_url.as_str()),
            ("IDEM_HTTP_ALLOW_PRIVATE", "true"),
            ("IDEM_LEASE_SECONDS", "3"),
            ("IDEM_MAINTENANCE_INTERVAL_SECONDS", "1"),
            ("IDEM_POLL_SECONDS", "0.5"),
            ("IDEM_REDELIVER_SECONDS", "10"),
            ("IDEM_SHUTDOWN_GRACE_SECONDS", "2"),
            // Nine processes share the machine's server (100 connections) with other tests.
            ("IDEM_DATABASE_MAX_CONNECTIONS", "4"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let mut env = env;
        for (k, v) in &opts.idem_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let cluster = Cluster::new(&opts.bin, &dir);
        cluster.migrate(&env).await.context("idem migrate")?;
        let pool = store::connect(&iso.database_url).await?;
        let receiver = Receiver::start(t0).await?;
        let report = Report::new(scenario, title, opts.seed, opts.smoke, opts.release);
        println!(
            "[{scenario}] {title}: namespace {name} (Redis db {}), logs in {}",
            iso.redis_db,
            dir.display()
        );
        Ok(Rig {
            scenario: scenario.to_owned(),
            opts: opts.clone(),
            dir,
            t0,
            rng: Rng::for_scenario(opts.seed, scenario),
            iso,
            services,
            cluster,
            receiver,
            pool,
            watcher: FinalWatcher::default(),
            stop: CancellationToken::new(),
            client: None,
            env,
            report,
        })
    }

    /// Sets (or replaces) one variable of the common environment.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// A slot's spec with the common environment plus `extra`.
    pub fn spec(&self, role: Role, index: usize, args: &[&str], extra: &[(&str, &str)]) -> Spec {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if role == Role::Api {
            all.extend(["--bind".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        Spec {
            role,
            index,
            args: all,
            env,
        }
    }

    /// The standard shape: `apis` api processes, `schedulers` schedulers, `workers` workers with
    /// `concurrency` slots each; then the client and the final-state watcher.
    pub async fn start_cluster(
        &mut self,
        apis: usize,
        schedulers: usize,
        workers: usize,
        concurrency: u32,
    ) -> anyhow::Result<()> {
        let c = concurrency.to_string();
        let mut specs = Vec::new();
        for i in 0..apis {
            specs.push(self.spec(Role::Api, i, &[], &[]));
        }
        for i in 0..schedulers {
            specs.push(self.spec(Role::Scheduler, i, &[], &[]));
        }
        for i in 0..workers {
            specs.push(self.spec(Role::Worker, i, &["--worker-concurrency", &c], &[]));
        }
        self.cluster.start_all(specs).await?;
        self.start_client();
        Ok(())
    }

    /// Creates the client over the api processes started so far and starts the watcher.
    pub fn start_client(&mut self) {
        self.client = Some(Client::new(self.cluster.api_bases(), self.t0));
        self.watcher.spawn(
            self.pool.clone(),
            Duration::from_millis(1000),
            self.stop.clone(),
        );
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("start_client first")
    }

    /// Waits until the store holds `expected` tasks or more and every task is final, for at most
    /// `limit`; the number still unfinished when it gave up.
    pub async fn wait_all_final(&self, expected: usize, limit: Duration) -> anyhow::Result<i64> {
        let deadline = Instant::now() + limit;
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(0);
            let open = store::unfinished(&self.pool).await.unwrap_or(i64::MAX);
            if n as usize >= expected && open == 0 {
                return Ok(0);
            }
            if Instant::now() >= deadline {
                println!(
                    "  [{}] gave up waiting after {limit:?}: {open} of {n} tasks unfinished",
                    self.scenario
                );
                return Ok(open);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Reads the store, writes the history and the deliveries to the run directory, and judges.
    pub async fn judge(
        &mut self,
        final_states: &HashMap<String, &'static str>,
        http: bool,
    ) -> anyhow::Result<(Verdict, Vec<store::TaskRow>, Vec<store::RunRow>)> {
        // One last poll, so a change right at the end is seen.
        self.watcher.poll_once(&self.pool).await;
        let tasks = store::tasks(&self.pool).await?;
        let runs = store::job_runs(&self.pool).await?;
        let history = self
            .client
            .as_ref()
            .map(|c| c.history())
            .unwrap_or_default();
        let deliveries = self.receiver.deliveries();
        write_jsonl(&self.dir.join("history.jsonl"), &history)?;
        write_jsonl(&self.dir.join("deliveries.jsonl"), &deliveries)?;
        let changes = self.watcher.changes(&tasks);
        let v = oracle::judge(
            &history,
            &deliveries,
            &tasks,
            &runs,
            &changes,
            &Expect { final_states, http },
        );
        std::fs::write(
            self.dir.join("verdict.json"),
            serde_json::to_string_pretty(&v)?,
        )?;
        self.report.fence_rejections = self.cluster.fenced();
        Ok((v, tasks, runs))
    }

    /// Ends everything the run started. Returns problems met on the way (reported, not fatal).
    pub async fn teardown(mut self) -> (Report, Vec<String>) {
        self.stop.cancel();
        self.cluster.kill_all().await;
        self.pool.close().await;
        let mut problems = Vec::new();
        let keep = self.opts.keep && !self.report.pass;
        if keep {
            println!(
                "  [{}] kept namespace {} for inspection (--keep)",
                self.scenario, self.iso.name
            );
        } else {
            problems.extend(self.iso.drop_all().await);
        }
        if let Some(p) = self.services.private.take() {
            problems.extend(p.stop().await);
        }
        self.report.run_dir = self.dir.display().to_string();
        (self.report, problems)
    }
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in items {
        serde_json::to_writer(&mut f, i)?;
        f.write_all(b"\n")?;
    }
    Ok(())
}
