//! Where one benchmark run lives in the machine's services: a fresh PostgreSQL database, and for
//! the shapes with a broker its own RabbitMQ vhost and Redis database index. Named like the chaos
//! suite's namespaces (`chaos_bench_{pid}_{random}`), so a leftover of a runner that died is
//! recognised and dropped by the next run of either suite.
//!
//! Invariant: every namespace created is recorded in the run's registry until it is dropped, and the
//! runner drops whatever is still recorded after each scenario — also when the scenario failed or
//! was interrupted.

use std::sync::{Arc, Mutex};

use crate::rig::Services;
use crate::services::{self, Pg, Rabbit, Redis};

#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub database_url: String,
    /// `(amqp url, redis db index, redis url)` when a broker was asked for.
    pub broker: Option<(String, u32, String)>,
    /// Whether a vhost may have been made (set before `add_vhost` is called).
    vhost: bool,
    pg: Pg,
    rabbit: Rabbit,
    redis: Redis,
}

/// The namespaces created and not yet dropped.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Namespace>>>);

impl Registry {
    /// Creates a database (and with `broker` a vhost and a Redis index) and records it.
    pub async fn create(&self, broker: bool) -> anyhow::Result<Namespace> {
        let machine = Services::machine();
        let name = services::namespace("bench");
        services::create_database(&machine.pg, &name).await?;
        let mut ns = Namespace {
            database_url: machine.pg.url(&name),
            name: name.clone(),
            broker: None,
            vhost: false,
            pg: machine.pg.clone(),
            rabbit: machine.rabbit.clone(),
            redis: machine.redis.clone(),
        };
        if broker {
            // Recorded before the vhost exists, so a failure half-way is still cleaned up.
            ns.vhost = true;
        }
        self.0.lock().unwrap().push(ns.clone());
        if broker {
            let r = async {
                ns.rabbit.ctl(&["add_vhost", &name]).await?;
                ns.rabbit
                    .ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
                    .await?;
                let db = services::claim_redis_db(&ns.redis, &name).await?;
                anyhow::Ok((ns.rabbit.url(&name), db, ns.redis.url(db)))
            }
            .await;
            match r {
                Ok(b) => {
                    ns.broker = Some(b);
                    self.0
                        .lock()
                        .unwrap()
                        .iter_mut()
                        .filter(|n| n.name == name)
                        .for_each(|n| n.broker = ns.broker.clone());
                }
                Err(e) => {
                    self.drop_one(&name).await;
                    return Err(e);
                }
            }
        }
        Ok(ns)
    }

    /// Drops one namespace (best effort); the problems, if any.
    pub async fn drop_one(&self, name: &str) -> Vec<String> {
        let ns = {
            let mut all = self.0.lock().unwrap();
            let Some(i) = all.iter().position(|n| n.name == name) else {
                return Vec::new();
            };
            all.remove(i)
        };
        let mut problems = Vec::new();
        if let Err(e) = services::drop_database(&ns.pg, &ns.name).await {
            problems.push(format!("dropping database {}: {e:#}", ns.name));
        }
        if ns.vhost {
            if let Err(e) = ns.rabbit.ctl(&["delete_vhost", &ns.name]).await {
                problems.push(format!("deleting vhost {}: {e:#}", ns.name));
            }
        }
        if let Some((_, db, _)) = &ns.broker {
            if let Err(e) = services::release_redis_db(&ns.redis, *db, &ns.name).await {
                problems.push(format!("freeing Redis db {db}: {e:#}"));
            }
        }
        problems
    }

    /// Drops every namespace still recorded.
    pub async fn drop_all(&self) -> Vec<String> {
        let names: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let mut problems = Vec::new();
        for n in names {
            problems.extend(self.drop_one(&n).await);
        }
        problems
    }
}
