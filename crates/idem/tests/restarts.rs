//! The full shape (PostgreSQL + RabbitMQ + Redis) while RabbitMQ and then Redis restart under it: the
//! real binary's API, scheduler and worker ride both outages out, and afterwards every accepted
//! submission key has one task, every fire one task, every task succeeded, and an HTTP receiver in
//! this process saw every key (more than once only across attempts of a retried task).
//!
//! This file holds ONE test on purpose: it stops the machine's shared RabbitMQ and Redis, and cargo
//! runs test binaries one at a time, so no other test runs while they are down. A guard restarts
//! both services if the test fails midway.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Expected, Proc, Receiver, TestDb};
use idem_testkit::services::{or_skip, services_required, unique_name};
use serde_json::json;

/// How Redis is started again (as the machine's CI starts it).
const REDIS_SERVER_ARGS: &[&str] = &[
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs a command to its end (at most `limit`); its stdout, or why it failed.
fn run_cmd(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} {args:?}: no exit within {limit:?}"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{program} {args:?}: {}: {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn port_open(addr: &(String, u16)) -> bool {
    use std::net::ToSocketAddrs;
    (addr.0.as_str(), addr.1)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn redis_answers() -> bool {
    run_cmd("redis-cli", &["-p", "6379", "ping"], Duration::from_secs(5))
        .is_ok_and(|out| out.trim() == "PONG")
}

/// Polls a blocking check every 200 ms for up to `limit`.
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn start_rabbitmq(amqp: &(String, u16)) -> Result<(), String> {
    run_cmd("rabbitmqctl", &["start_app"], Duration::from_secs(120))?;
    wait_for(
        "RabbitMQ to accept connections",
        Duration::from_secs(60),
        || port_open(amqp),
    )?;
    run_cmd("rabbitmqctl", &["await_startup"], Duration::from_secs(120)).map(|_| ())
}

fn start_redis() -> Result<(), String> {
    run_cmd("redis-server", REDIS_SERVER_ARGS, Duration::from_secs(20))?;
    wait_for(
        "Redis to answer PING",
        Duration::from_secs(20),
        redis_answers,
    )
}

/// Starts RabbitMQ and Redis again if they are down when it is dropped, so a failing test never
/// leaves the machine's services stopped.
struct RestoreServices {
    amqp: (String, u16),
}

impl Drop for RestoreServices {
    fn drop(&mut self) {
        if !port_open(&self.amqp) {
            eprintln!("restoring RabbitMQ (rabbitmqctl start_app)");
            if let Err(e) = start_rabbitmq(&self.amqp) {
                eprintln!("could not restore RabbitMQ: {e}");
            }
        }
        if !redis_answers() {
            eprintln!("restoring Redis (redis-server)");
            if let Err(e) = start_redis() {
                eprintln!("could not restore Redis: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_and_redis_restart_loses_and_duplicates_nothing() {
    let started = Instant::now();
    for tool in ["rabbitmqctl", "redis-cli", "redis-server"] {
        if !on_path(tool) {
            assert!(
                !services_required(),
                "{tool} is required (IDEM_TEST_REQUIRE_SERVICES=1) to restart the services but is not installed"
            );
            eprintln!("skipped: {tool} is not installed; the services cannot be restarted");
            return;
        }
    }
    let (amqp, redis) = (common::amqp_url(), common::redis_url());
    if or_skip("RabbitMQ", common::amqp_reachable(&amqp).await).is_none()
        || or_skip("Redis", common::redis_ping(&redis).await).is_none()
    {
        return;
    }
    let ctl = tokio::task::block_in_place(|| {
        run_cmd("rabbitmqctl", &["await_startup"], Duration::from_secs(60))
    });
    if or_skip("rabbitmqctl", ctl).is_none() {
        return;
    }
    let Some(db) = or_skip("PostgreSQL", TestDb::create(&common::pg_url()).await) else {
        return;
    };
    // From here on, whatever happens, the services are running again when the test ends.
    let _restore = RestoreServices {
        amqp: common::host_port(&amqp, 5672).unwrap(),
    };
    let amqp_addr = common::host_port(&amqp, 5672).unwrap();
    let queue = unique_name("q");
    let receiver = Receiver::start().await;
    let env: Vec<(String, String)> = vec![
        ("IDEM_DATABASE_URL".into(), db.url.clone()),
        ("IDEM_BROKER_URL".into(), amqp.clone()),
        ("IDEM_REDIS_URL".into(), redis.clone()),
        ("IDEM_HTTP_ALLOW_PRIVATE".into(), "true".into()),
        ("IDEM_LEASE_SECONDS".into(), "2".into()),
        ("IDEM_POLL_SECONDS".into(), "0.5".into()),
        ("IDEM_DATABASE_MAX_CONNECTIONS".into(), "5".into()),
    ];
    let migrated = Command::new(env!("CARGO_BIN_EXE_idem"))
        .arg("migrate")
        .envs(env.iter().cloned())
        .env("IDEM_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "idem migrate: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let specs = vec![
        (
            vec!["api".to_owned(), "--bind".into(), "127.0.0.1:0".into()],
            env.clone(),
        ),
        (vec!["scheduler".to_owned()], env.clone()),
        (
            vec![
                "worker".to_owned(),
                "--queues".into(),
                queue.clone(),
                "--worker-concurrency".into(),
                "4".into(),
            ],
            env.clone(),
        ),
    ];
    let mut procs = tokio::task::block_in_place(|| Proc::spawn_roles(&specs));
    let names = ["api", "scheduler", "worker"];
    let base = procs[0].base.clone();
    let client = common::api_client();
    eprintln!(
        "processes up after {:?} (database {}, queue {queue})",
        started.elapsed(),
        db.name
    );

    let mut jobs = BTreeMap::new();
    for i in 0..5 {
        let id = format!("{queue}-j{i}");
        let body = json!({"job": i});
        let spec = json!({
            "id": id,
            "task": "http",
            "args": {"url": receiver.hook, "body": body},
            "trigger": {"type": "interval", "every_seconds": 1},
            "queue": queue,
            "max_instances": 5,
        });
        let (status, job) = common::post_json(&client, &format!("{base}/api/v1/jobs"), &spec)
            .await
            .unwrap();
        assert_eq!(status, 201, "{job}");
        jobs.insert(id, body);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    // A new key every 100 ms, twice at once (a concurrent duplicate), until `stop`.
    let submitter = tokio::spawn(common::submit_stream(
        base.clone(),
        receiver.hook.clone(),
        queue.clone(),
        2,
        Duration::from_millis(100),
        Duration::from_secs(60),
        move |_| !stopped.load(Ordering::Relaxed),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // RabbitMQ: stop the app, leave it down a moment, start it again.
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        run_cmd("rabbitmqctl", &["stop_app"], Duration::from_secs(120))
            .expect("rabbitmqctl stop_app");
        wait_for(
            "RabbitMQ to stop listening",
            Duration::from_secs(30),
            || !port_open(&amqp_addr),
        )
        .unwrap();
    });
    eprintln!("RabbitMQ stopped ({:?})", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| start_rabbitmq(&amqp_addr)).expect("starting RabbitMQ again");
    eprintln!("RabbitMQ back ({:?} after the stop began)", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Redis: shut it down without saving (its keys are gone), then start it again.
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        // redis-cli may report the closed connection as an error; the wait below decides.
        let _ = run_cmd(
            "redis-cli",
            &["-p", "6379", "shutdown", "nosave"],
            Duration::from_secs(10),
        );
        wait_for("Redis to stop", Duration::from_secs(20), || {
            !redis_answers()
        })
        .unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(start_redis).expect("starting Redis again");
    let restarted_at = chrono::Utc::now();
    eprintln!("Redis back ({:?} after the shutdown)", t.elapsed());

    // Let it run on both restarted services, then stop submitting and firing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for id in jobs.keys() {
        let url = format!("{base}/api/v1/jobs/{id}/pause");
        let (status, job) = common::post_json(&client, &url, &json!({})).await.unwrap();
        assert_eq!(status, 200, "{job}");
    }
    let submitted = submitter.await.unwrap();
    let mut keys = BTreeMap::new();
    let mut problems = Vec::new();
    let mut failed_tries = Vec::new();
    for s in &submitted {
        let mut ids = BTreeSet::new();
        for a in &s.answers {
            match a {
                Ok((_, task, failures)) => {
                    ids.insert(task["id"].as_str().unwrap_or_default().to_owned());
                    failed_tries.extend(failures.iter().map(|f| format!("{}: {f}", s.key)));
                }
                Err(e) => problems.push(format!("key {}: a submission was given up: {e}", s.key)),
            }
        }
        keys.insert(s.key.clone(), (s.body.clone(), ids));
    }
    let key_count = keys.len();

    let tasks = match common::wait_all_final(&client, &base, Duration::from_secs(40)).await {
        Ok(tasks) => tasks,
        Err(e) => {
            for (name, p) in names.iter().zip(&procs) {
                p.print_logs(name, 80);
            }
            panic!("{e} (database {} kept)", db.name);
        }
    };
    let expected = Expected {
        jobs,
        keys,
        fires_after: restarted_at + chrono::Duration::seconds(1),
    };
    let named: Vec<(&str, &Proc)> = names.iter().map(|n| n.as_ref()).zip(procs.iter()).collect();
    let stats = common::verify_or_fail(
        &client, &base, &db.name, &expected, &tasks, &receiver, problems, &named, 80,
    )
    .await;
    eprintln!(
        "ok after {:?}: {key_count} submission keys (2 submissions each), {} tasks ({} fires, {} \
         missed, {} skipped_overlap; {} ran more than one attempt); {} deliveries of {} keys, {} raw \
         duplicates (deduplicated by Idempotency-Key); {} submission tries failed and were retried{}",
        started.elapsed(),
        stats.tasks,
        stats.fires,
        stats.missed,
        stats.skipped_overlap,
        stats.retried_tasks,
        stats.deliveries,
        stats.distinct_keys,
        stats.raw_duplicates,
        failed_tries.len(),
        if failed_tries.is_empty() {
            String::new()
        } else {
            format!(": {:?}", &failed_tries[..failed_tries.len().min(5)])
        }
    );

    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    common::delete_amqp_queue(&amqp, &format!("idem.{queue}")).await;
    db.drop_db().await;
}
