//! Private service instances for the scenarios that restart or `kill -9` a dependency (S5) or need
//! a broker setting the machine's node must not get (S8's consumer timeout): a PostgreSQL cluster
//! made with `initdb`, a `redis-server` and a RabbitMQ node, each on spare loopback ports with its
//! data under `/tmp/{namespace}/`. Other engineers' tests keep using the machine's services
//! undisturbed.
//!
//! Invariants: an instance is only ever signalled by the pid it wrote to its own pid file; `stop`
//! (and, as a last resort, `Drop`) ends it and removes its directory, so no instance outlives the
//! run that made it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cmd;
use crate::services::{Pg, Rabbit, Redis};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The private instances of one run (any of them may be absent).
#[derive(Default)]
pub struct Private {
    pub root: PathBuf,
    pub pg: Option<PrivatePg>,
    pub redis: Option<PrivateRedis>,
    pub rabbit: Option<PrivateRabbit>,
}

impl Private {
    pub fn new(name: &str) -> anyhow::Result<Private> {
        let root = PathBuf::from("/tmp").join(name);
        std::fs::create_dir_all(&root)?;
        Ok(Private {
            root,
            ..Private::default()
        })
    }

    /// Stops every instance and removes the directory.
    pub async fn stop(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(pg) = self.pg.take() {
            if let Err(e) = pg.stop().await {
                problems.push(format!("stopping the private PostgreSQL: {e:#}"));
            }
        }
        if let Some(r) = self.redis.take() {
            r.kill();
        }
        if let Some(r) = self.rabbit.take() {
            r.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        problems
    }
}

/// A PostgreSQL cluster of our own, run as the `postgres` user.
pub struct PrivatePg {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    sock: PathBuf,
    stopped: bool,
}

fn chown(path: &Path, user: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("chown {user} {}: {status}", path.display());
    }
    Ok(())
}

impl PrivatePg {
    pub async fn start(root: &Path) -> anyhow::Result<PrivatePg> {
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir)?;
        chown(&dir, "postgres")?;
        let data = dir.join("data");
        let initdb = format!("{PG_BIN}/initdb");
        cmd::run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &initdb,
                "-D",
                data.to_str().context("path")?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            Duration::from_secs(60),
        )
        .await?;
        let pg = PrivatePg {
            port: cmd::free_port()?,
            log: dir.join("postgres.log"),
            sock: dir.clone(),
            data,
            stopped: true,
        };
        let mut pg = pg;
        pg.up().await?;
        Ok(pg)
    }

    pub fn service(&self) -> Pg {
        Pg { port: self.port }
    }

    fn ctl_args(&self, action: &str) -> Vec<String> {
        let mut a = vec![
            "-u".to_owned(),
            "postgres".into(),
            "--".into(),
            format!("{PG_BIN}/pg_ctl"),
            "-D".into(),
            self.data.display().to_string(),
            "-l".into(),
            self.log.display().to_string(),
            "-w".into(),
            "-t".into(),
            "60".into(),
        ];
        if action == "start" || action == "restart" {
            a.push("-o".into());
            a.push(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                self.port,
                self.sock.display()
            ));
        }
        if action == "stop" || action == "restart" {
            a.push("-m".into());
            a.push("fast".into());
        }
        a.push(action.into());
        a
    }

    async fn ctl(&self, action: &str) -> anyhow::Result<()> {
        let args = self.ctl_args(action);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd::run("runuser", &args, Duration::from_secs(90))
            .await
            .map(|_| ())
    }

    /// Starts the server (after a stop or a crash: crash recovery runs first).
    pub async fn up(&mut self) -> anyhow::Result<()> {
        // After `kill -9`, backends may linger a moment and hold the shared memory; retry.
        let mut last = None;
        for _ in 0..20 {
            match self.ctl("start").await {
                Ok(()) => {
                    self.stopped = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start failed")))
    }

    /// A clean stop (`-m fast`: sessions are ended, then a checkpoint).
    pub async fn down(&mut self) -> anyhow::Result<()> {
        self.ctl("stop").await?;
        self.stopped = true;
        Ok(())
    }

    /// `kill -9` of the postmaster and every process it forked: a crash of the whole server.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let pid = self.postmaster_pid()?;
        let children = cmd::children_of(pid);
        cmd::signal(pid, "KILL").await?;
        for c in children {
            let _ = cmd::signal(c, "KILL").await;
        }
        self.stopped = true;
        cmd::poll(
            "the killed postmaster to be gone",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async { (!cmd::alive(pid)).then_some(()) },
        )
        .await
    }

    fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no pid")
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if !self.stopped {
            let args = self.ctl_args("stop");
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            // Immediate: the run is over, nothing needs a checkpoint.
            if let Some(m) = args.iter_mut().find(|a| **a == "fast") {
                *m = "immediate";
            }
            cmd::run("runuser", &args, Duration::from_secs(60)).await?;
            self.stopped = true;
        }
        Ok(())
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if !self.stopped {
            if let Ok(pid) = self.postmaster_pid() {
                let _ = std::process::Command::new("kill")
                    .arg("-QUIT") // PostgreSQL's immediate shutdown
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

/// A `redis-server` of our own (no persistence, like the machine's).
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    pub async fn start(root: &Path) -> anyhow::Result<PrivateRedis> {
        let dir = root.join("redis");
        std::fs::create_dir_all(&dir)?;
        let r = PrivateRedis {
            port: cmd::free_port()?,
            dir,
        };
        r.up().await?;
        Ok(r)
    }

    pub fn service(&self) -> Redis {
        Redis { port: self.port }
    }

    pub async fn up(&self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let pidfile = self.dir.join("redis.pid").display().to_string();
        let logfile = self.dir.join("redis.log").display().to_string();
        cmd::run(
            "redis-server",
            &[
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--pidfile",
                &pidfile,
                "--logfile",
                &logfile,
            ],
            Duration::from_secs(30),
        )
        .await?;
        let p = self.port;
        cmd::poll(
            "the private Redis",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async move { cmd::port_open(p).await.then_some(()) },
        )
        .await
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("redis.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// `kill -9`: Redis goes away with everything it held (no persistence).
    pub async fn down(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("no redis.pid")?;
        cmd::signal(pid, "KILL").await?;
        let _ = std::fs::remove_file(self.dir.join("redis.pid"));
        cmd::poll(
            "the killed Redis to be gone",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async move { (!cmd::alive(pid)).then_some(()) },
        )
        .await
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// A RabbitMQ node of our own: its own node name, AMQP and distribution ports, data and logs, and a
/// configuration with a short consumer timeout checked every second.
pub struct PrivateRabbit {
    pub port: u16,
    pub node: String,
    dir: PathBuf,
}

/// The consumer timeout of private nodes (the broker cancels a consumer that holds an unacked
/// delivery longer than this and requeues the message).
pub const CONSUMER_TIMEOUT_MS: u64 = 5000;

impl PrivateRabbit {
    pub async fn start(root: &Path, name: &str) -> anyhow::Result<PrivateRabbit> {
        let dir = root.join("rabbit");
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        let port = cmd::free_port()?;
        let mut dist = cmd::free_port()?;
        while dist == port {
            dist = cmd::free_port()?;
        }
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\nconsumer_timeout = {CONSUMER_TIMEOUT_MS}\n\
                 loopback_users = none\n"
            ),
        )?;
        // The consumer timeout is evaluated on the channel tick (60 s by default).
        std::fs::write(
            dir.join("advanced.config"),
            "[{rabbit, [{channel_tick_interval, 1000}]}].\n",
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        chown(&dir, "rabbitmq")?;
        let node = format!("{name}@localhost");
        let d = |p: &str| dir.join(p).display().to_string();
        let env = [
            ("HOME", "/var/lib/rabbitmq".to_owned()),
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", dist.to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_PID_FILE", d("pid")),
        ];
        let mut args: Vec<String> = vec!["-u".into(), "rabbitmq".into(), "--".into(), "env".into()];
        args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        args.push("/usr/lib/rabbitmq/bin/rabbitmq-server".into());
        args.push("-detached".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd::run("runuser", &args, Duration::from_secs(60)).await?;
        let r = PrivateRabbit { port, node, dir };
        cmd::poll(
            "the private RabbitMQ node",
            Duration::from_secs(90),
            Duration::from_millis(250),
            || async move { cmd::port_open(port).await.then_some(()) },
        )
        .await?;
        Ok(r)
    }

    pub fn service(&self) -> Rabbit {
        Rabbit {
            port: self.port,
            node: Some(self.node.clone()),
        }
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let children = cmd::children_of(pid);
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            for c in children {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(c.to_string())
                    .status();
            }
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
