//! Wiring: opens the store the configuration names, registers the tasks, and starts the roles a
//! command asks for (API, scheduler, worker, maintenance) under one shutdown token.
//!
//! Invariant: every background service runs on the returned `Running`'s tracker, so `wait` returns
//! only after each has stopped (workers drain or hand back their tasks first); both listeners are
//! bound before anything starts, so a listener that cannot bind starts nothing.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use idem_core::broker::Broker;
use idem_core::dispatcher::Dispatcher;
use idem_core::locks::{IdempotencyCache, Locks};
use idem_core::maintenance::Maintenance;
use idem_core::metrics as m;
use idem_core::scheduler::Scheduler;
use idem_core::worker::{Worker, WorkerConfig};
use idem_core::{Registry, Store};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Command, Config, StoreUrl};

/// Which roles one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub scheduler: bool,
    pub worker: bool,
}

impl Roles {
    pub fn of(command: Command) -> Self {
        match command {
            Command::Serve => Roles {
                api: true,
                scheduler: true,
                worker: true,
            },
            Command::Api => Roles {
                api: true,
                scheduler: false,
                worker: false,
            },
            Command::Scheduler => Roles {
                api: false,
                scheduler: true,
                worker: false,
            },
            Command::Worker => Roles {
                api: false,
                scheduler: false,
                worker: true,
            },
            Command::Migrate => Roles {
                api: false,
                scheduler: false,
                worker: false,
            },
        }
    }

    /// The `role` label of `idem_build_info`: the command that runs these roles.
    pub fn name(self) -> &'static str {
        match (self.api, self.scheduler, self.worker) {
            (true, true, true) => "serve",
            (true, false, false) => "api",
            (false, true, false) => "scheduler",
            (false, false, true) => "worker",
            (true, true, false) => "api+scheduler",
            (true, false, true) => "api+worker",
            (false, true, true) => "scheduler+worker",
            (false, false, false) => "none",
        }
    }
}

/// The backends one process uses: the store always; a broker and Redis when configured, otherwise
/// the store's queue table and the store's lease rows stand in.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub locks: Arc<dyn Locks>,
    pub cache: Option<Arc<dyn IdempotencyCache>>,
    pub broker: Option<Arc<dyn Broker>>,
}

/// Opens the store (migrating it unless told not to), the broker and Redis the configuration
/// names. Any of them unreachable at start is an error that names its setting.
pub async fn open_backends(cfg: &Config) -> anyhow::Result<Backends> {
    let (store, store_locks): (Arc<dyn Store>, Arc<dyn Locks>) = match &cfg.store {
        StoreUrl::Sqlite(url) => {
            let store = idem_sql::SqliteStore::connect(url)
                .await
                .with_context(|| format!("IDEM_DATABASE_URL: cannot open {url}"))?;
            if cfg.migrate {
                store
                    .migrate()
                    .await
                    .context("IDEM_DATABASE_URL: migrations failed")?;
            }
            let store = Arc::new(store);
            (store.clone(), store)
        }
        StoreUrl::Postgres(url) => {
            let opts = idem_sql::PgOptions {
                max_connections: cfg.database_max_connections,
                ..Default::default()
            };
            let store = idem_sql::PgStore::connect(url, opts)
                .await
                .context("IDEM_DATABASE_URL: cannot connect to PostgreSQL")?;
            if cfg.migrate {
                store
                    .migrate()
                    .await
                    .context("IDEM_DATABASE_URL: migrations failed")?;
            }
            let store = Arc::new(store);
            (store.clone(), store)
        }
    };
    let (locks, cache): (Arc<dyn Locks>, Option<Arc<dyn IdempotencyCache>>) = match &cfg.redis {
        None => (store_locks, None),
        Some(url) => {
            let redis = idem_redis::RedisLocks::connect(url, idem_redis::RedisOptions::default())
                .await
                .context("IDEM_REDIS_URL: cannot connect to Redis")?;
            let redis = Arc::new(redis);
            (redis.clone(), Some(redis))
        }
    };
    let broker: Option<Arc<dyn Broker>> = match &cfg.broker {
        None => None,
        Some(url) => Some(Arc::new(
            idem_amqp::AmqpBroker::connect(url, idem_amqp::AmqpOptions::default())
                .await
                .context("IDEM_BROKER_URL: cannot connect to RabbitMQ")?,
        )),
    };
    Ok(Backends {
        store,
        locks,
        cache,
        broker,
    })
}

/// A readiness probe over the broker.
struct BrokerProbe(Arc<dyn Broker>);

impl idem_api::Probe for BrokerProbe {
    fn name(&self) -> &'static str {
        "broker"
    }
    fn check(&self) -> idem_api::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| e.to_string()) })
    }
}

/// A readiness probe over Redis.
struct RedisProbe(Arc<dyn Locks>);

impl idem_api::Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> idem_api::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| e.to_string()) })
    }
}

/// The built-in tasks, configured.
pub fn builtin_registry(cfg: &Config) -> Registry {
    let mut registry = Registry::new();
    idem_tasks::register_builtins(
        &mut registry,
        idem_tasks::BuiltinConfig {
            http_allow_private: cfg.http_allow_private,
            shell_allow: cfg.shell_allow.clone(),
        },
    );
    registry
}

/// The process-wide Prometheus recorder (installed once, shared by every app in the process), with
/// every metric of the catalogue described.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(m::DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), m::SIZE_BUCKETS)
                })
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host application's); then ours only renders.
            if metrics::set_global_recorder(recorder).is_ok() {
                m::describe();
            }
            handle
        })
        .clone()
}

/// Exports the process's own series: `idem_build_info`, and at 0 the counters of events that may
/// happen in any role (publishes from the outbox, reconnects of each configured dependency).
fn register_process_series(cfg: &Config, roles: Roles) {
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "role" => roles.name())
        .set(1.0);
    // Also without a broker (then it stays 0), so dashboards find the series in every mode.
    metrics::counter!(m::DISPATCHED_TOTAL).increment(0);
    for (dependency, configured) in [
        ("broker", cfg.broker.is_some()),
        ("redis", cfg.redis.is_some()),
    ] {
        if configured {
            metrics::counter!(m::DEPENDENCY_RECONNECTS_TOTAL, "dependency" => dependency)
                .increment(0);
        }
    }
    if roles.api && matches!(cfg.store, StoreUrl::Sqlite(_)) {
        let _ = metrics::histogram!(m::SUBMIT_GROUP_SIZE);
    }
}

/// Readiness checks beyond the store: the broker and Redis, when configured.
fn probes(
    cfg: &Config,
    broker: &Option<Arc<dyn Broker>>,
    locks: &Arc<dyn Locks>,
) -> Vec<Arc<dyn idem_api::Probe>> {
    let mut probes: Vec<Arc<dyn idem_api::Probe>> = Vec::new();
    if let Some(b) = broker {
        probes.push(Arc::new(BrokerProbe(b.clone())));
    }
    if cfg.redis.is_some() {
        probes.push(Arc::new(RedisProbe(locks.clone())));
    }
    probes
}

/// The running roles of one process.
pub struct Running {
    /// The API's bound address, when the API runs.
    pub addr: Option<SocketAddr>,
    /// The operations listener's bound address, when `IDEM_OPS_BIND` is set.
    pub ops_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every role has stopped.
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts the roles on open backends.
pub async fn start(
    cfg: &Config,
    roles: Roles,
    backends: Backends,
    registry: Registry,
) -> anyhow::Result<Running> {
    let Backends {
        store,
        locks,
        cache,
        broker,
    } = backends;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = Arc::new(registry);
    let metrics = metrics_handle();
    register_process_series(cfg, roles);

    // Both listeners are bound before anything runs: a setting that cannot be served starts nothing.
    let api_listener = match roles.api {
        false => None,
        true => Some(
            tokio::net::TcpListener::bind(cfg.bind)
                .await
                .with_context(|| format!("IDEM_BIND: cannot listen on {}", cfg.bind))?,
        ),
    };
    let ops_listener = match cfg.ops_bind {
        None => None,
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("IDEM_OPS_BIND: cannot listen on {at}"))?,
        ),
    };
    let state = idem_api::AppState {
        store: store.clone(),
        registry: registry.clone(),
        metrics: Some(metrics),
        probes: probes(cfg, &broker, &locks),
        max_body_bytes: cfg.max_body_bytes,
        request_timeout: cfg.request_timeout,
        cache: cache.clone(),
    };

    let mut addr = None;
    if let Some(listener) = api_listener {
        let bound = listener.local_addr()?;
        addr = Some(bound);
        serve(
            &tracker,
            &shutdown,
            listener,
            idem_api::router(state.clone()),
            "API",
        );
        tracing::info!(addr = %bound, "API listening");
    }
    let mut ops_addr = None;
    if let Some(listener) = ops_listener {
        let bound = listener.local_addr()?;
        ops_addr = Some(bound);
        serve(
            &tracker,
            &shutdown,
            listener,
            idem_api::ops_router(state.clone()),
            "operations listener",
        );
        tracing::info!(addr = %bound, "operations listener (health, metrics) listening");
    }
    let watch = idem_api::DependencyWatch::new(store.clone(), state.probes.clone());
    tracker.spawn(watch.run(shutdown.clone().cancelled_owned()));
    if roles.scheduler {
        let s = Scheduler::new(store.clone(), cfg.poll).with_job_labels(cfg.metrics_job_labels);
        tracker.spawn(s.run(shutdown.clone()));
    }
    if roles.scheduler || roles.worker {
        let m =
            Maintenance::new(store.clone(), cfg.maintenance_every).with_leader_lease(locks.clone());
        tracker.spawn(m.run(shutdown.clone()));
    }
    if let Some(broker) = &broker {
        // Every role that commits tasks also publishes them; concurrent dispatchers split the work.
        let d = Dispatcher::new(store.clone(), broker.clone(), cfg.redeliver_after, cfg.poll);
        tracker.spawn(d.run(shutdown.clone()));
    }
    if roles.worker {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let mut w = Worker::new(
            store.clone(),
            registry.clone(),
            WorkerConfig {
                id: WorkerConfig::make_id(&host),
                host,
                queues: cfg.queues.clone(),
                concurrency: cfg.worker_concurrency,
                lease: cfg.lease,
                shutdown_grace: cfg.shutdown_grace,
                max_idle: cfg.poll,
                prefetch: cfg.worker_prefetch,
            },
        );
        if let Some(broker) = &broker {
            w = w.with_broker(broker.clone());
        }
        tracker.spawn(w.run(shutdown.clone()));
    }
    Ok(Running {
        addr,
        ops_addr,
        store,
        shutdown,
        tracker,
    })
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (graceful).
fn serve(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    what: &'static str,
) {
    let stop = shutdown.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}
