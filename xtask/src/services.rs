//! The services a run uses and its isolation inside them: its own PostgreSQL database, its own
//! RabbitMQ vhost, its own Redis database index. The machine's services are shared with other
//! engineers' tests, so a run only ever creates and drops *its own* namespaces there; whatever a
//! scenario restarts or kills is a private instance (see `private.rs`).
//!
//! Invariants: every namespace is named `chaos_{scenario}_{pid}_{random}`, so a leftover of a
//! runner that died can be recognised (its pid is gone) and dropped by the next run; a Redis
//! database index is taken with `SET NX` on a claim key, so two runs never share one; and when the
//! runner exits, [`ensure_machine_services`] starts any machine service that is not answering.

use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::Connection;

use crate::cmd;

/// A PostgreSQL server (the machine's, or a private one) reached as `postgres` with trust auth.
#[derive(Debug, Clone)]
pub struct Pg {
    pub port: u16,
}

impl Pg {
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn admin(&self) -> anyhow::Result<sqlx::PgConnection> {
        let url = self.url("postgres");
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
            .await
            .with_context(|| format!("{url}: no answer within 5 s"))?
            .with_context(|| format!("connecting to {url}"))
    }
}

/// A RabbitMQ node: the machine's (`node: None`) or a private one, administered with `rabbitmqctl`.
#[derive(Debug, Clone)]
pub struct Rabbit {
    pub port: u16,
    pub node: Option<String>,
}

impl Rabbit {
    /// `rabbitmqctl [-n node] args`, within 60 s (each call starts an Erlang VM: 1–3 s).
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<&str> = Vec::new();
        if let Some(node) = &self.node {
            all.extend(["-n", node.as_str()]);
        }
        all.extend_from_slice(args);
        cmd::run("rabbitmqctl", &all, Duration::from_secs(60)).await
    }

    pub fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }
}

/// A Redis server (the machine's or a private one).
#[derive(Debug, Clone)]
pub struct Redis {
    pub port: u16,
}

impl Redis {
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

/// Where one run lives inside the services.
#[derive(Debug, Clone)]
pub struct Isolated {
    pub name: String,
    pub pg: Pg,
    pub rabbit: Rabbit,
    pub redis: Redis,
    pub database_url: String,
    pub amqp_url: String,
    pub redis_db: u32,
    pub redis_url: String,
}

/// The key that marks a Redis database index as taken by a run.
const REDIS_CLAIM: &str = "chaos:owner";

/// A namespace name for one run: `chaos_{scenario}_{pid}_{random}` (lower case, so PostgreSQL
/// needs no quoting rules beyond the usual).
pub fn namespace(scenario: &str) -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "chaos_{}_{}_{}",
        scenario.to_ascii_lowercase(),
        std::process::id(),
        &rand[..8]
    )
}

/// The runner pid inside a namespace name, if it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("chaos_")?;
    let mut parts = rest.split('_');
    let _scenario = parts.next()?;
    parts.next()?.parse().ok()
}

impl Isolated {
    /// Creates the run's database, vhost and Redis database index.
    pub async fn create(
        name: &str,
        pg: &Pg,
        rabbit: &Rabbit,
        redis: &Redis,
    ) -> anyhow::Result<Isolated> {
        let mut conn = pg.admin().await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = conn.close().await;

        rabbit.ctl(&["add_vhost", name]).await?;
        rabbit
            .ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])
            .await?;

        let redis_db = claim_redis_db(redis, name).await?;
        Ok(Isolated {
            name: name.to_owned(),
            pg: pg.clone(),
            rabbit: rabbit.clone(),
            redis: redis.clone(),
            database_url: pg.url(name),
            amqp_url: rabbit.url(name),
            redis_db,
            redis_url: redis.url(redis_db),
        })
    }

    /// Drops the database and the vhost and empties and frees the Redis index (best effort; each
    /// failure is reported and the rest still runs).
    pub async fn drop_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = drop_database(&self.pg, &self.name).await {
            problems.push(format!("dropping database {}: {e:#}", self.name));
        }
        if let Err(e) = self.rabbit.ctl(&["delete_vhost", &self.name]).await {
            problems.push(format!("deleting vhost {}: {e:#}", self.name));
        }
        if let Err(e) = release_redis_db(&self.redis, self.redis_db, &self.name).await {
            problems.push(format!("freeing Redis db {}: {e:#}", self.redis_db));
        }
        problems
    }
}

/// Creates database `name` (the bench's namespaces use this without a vhost or a Redis index).
pub async fn create_database(pg: &Pg, name: &str) -> anyhow::Result<()> {
    let mut conn = pg.admin().await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = conn.close().await;
    Ok(())
}

pub async fn drop_database(pg: &Pg, name: &str) -> anyhow::Result<()> {
    let mut conn = pg.admin().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

async fn redis_conn(redis: &Redis, db: u32) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis.url(db))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("Redis: no answer within 5 s")??;
    Ok(conn)
}

/// Takes the first free database index in 1..16 (0 is where everybody else's tests live). An index
/// claimed by a runner that is gone is taken over and emptied.
pub async fn claim_redis_db(redis: &Redis, name: &str) -> anyhow::Result<u32> {
    for db in 1..16u32 {
        let mut conn = redis_conn(redis, db).await?;
        let taken: Option<String> = redis::cmd("SET")
            .arg(REDIS_CLAIM)
            .arg(name)
            .arg("NX")
            .arg("EX")
            .arg(4 * 3600)
            .query_async(&mut conn)
            .await?;
        if taken.is_some() {
            let _: () = flush_except_claim(&mut conn).await?;
            return Ok(db);
        }
        let owner: Option<String> = redis::cmd("GET")
            .arg(REDIS_CLAIM)
            .query_async(&mut conn)
            .await?;
        if let Some(owner) = owner {
            if owner_pid(&owner).is_some_and(|pid| !cmd::alive(pid)) {
                let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
                let _: () = redis::cmd("SET")
                    .arg(REDIS_CLAIM)
                    .arg(name)
                    .arg("EX")
                    .arg(4 * 3600)
                    .query_async(&mut conn)
                    .await?;
                return Ok(db);
            }
        }
    }
    bail!("every Redis database index 1..15 is claimed by a running chaos run")
}

async fn flush_except_claim(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("idem:*").query_async(conn).await?;
    for k in keys {
        let _: () = redis::cmd("DEL").arg(k).query_async(conn).await?;
    }
    Ok(())
}

pub async fn release_redis_db(redis: &Redis, db: u32, name: &str) -> anyhow::Result<()> {
    let mut conn = redis_conn(redis, db).await?;
    let owner: Option<String> = redis::cmd("GET")
        .arg(REDIS_CLAIM)
        .query_async(&mut conn)
        .await?;
    if owner.as_deref() == Some(name) {
        let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
    }
    Ok(())
}

/// Drops the databases and vhosts that runners which are gone left on the machine's services.
pub async fn drop_leftovers(pg: &Pg, rabbit: &Rabbit) -> Vec<String> {
    let mut dropped = Vec::new();
    if let Ok(mut conn) = pg.admin().await {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'chaos\\_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        let _ = conn.close().await;
        for n in names {
            if owner_pid(&n).is_some_and(|pid| !cmd::alive(pid))
                && drop_database(pg, &n).await.is_ok()
            {
                dropped.push(format!("database {n}"));
            }
        }
    }
    if let Ok(out) = rabbit
        .ctl(&["list_vhosts", "--quiet", "--no-table-headers"])
        .await
    {
        for n in out.lines().map(str::trim) {
            if owner_pid(n).is_some_and(|pid| !cmd::alive(pid))
                && rabbit.ctl(&["delete_vhost", n]).await.is_ok()
            {
                dropped.push(format!("vhost {n}"));
            }
        }
    }
    dropped
}

/// The machine's services as CI starts them; a service not answering on its port is started.
/// Called when the runner exits, whatever happened, so no scenario leaves one down.
pub async fn ensure_machine_services() -> Vec<String> {
    let mut notes = Vec::new();
    if !cmd::port_open(5432).await {
        let versions = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|d| d.flatten().next())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_else(|| "15".into());
        let r = cmd::run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &versions, "main", "start"],
            Duration::from_secs(60),
        )
        .await;
        notes.push(format!("PostgreSQL was down; started it: {r:?}"));
    }
    if !cmd::port_open(6379).await {
        let r = cmd::run(
            "redis-server",
            &[
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
            ],
            Duration::from_secs(30),
        )
        .await;
        notes.push(format!("Redis was down; started it: {r:?}"));
    }
    if !cmd::port_open(5672).await {
        let r = cmd::run("rabbitmq-server", &["-detached"], Duration::from_secs(30)).await;
        notes.push(format!("RabbitMQ was down; started it: {r:?}"));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_name_their_runner() {
        let n = namespace("S2");
        assert!(n.starts_with("chaos_s2_"), "{n}");
        assert_eq!(owner_pid(&n), Some(std::process::id()));
        assert_eq!(owner_pid("idem_t_123"), None);
        assert_eq!(owner_pid("chaos_s1_notapid_x"), None);
    }
}
