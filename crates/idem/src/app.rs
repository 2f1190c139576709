//! Wiring: opens the store the configuration names, registers the tasks, and starts the roles a
//! command asks for (API, scheduler, worker, maintenance) under one shutdown token.
//!
//! Invariant: every background service runs on the returned `Running`'s tracker, so `wait` returns
//! only after each has stopped (workers drain or hand back their tasks first).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use idem_core::maintenance::Maintenance;
use idem_core::scheduler::Scheduler;
use idem_core::worker::{Worker, WorkerConfig};
use idem_core::{Registry, Store};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
}

/// Opens the store the configuration names (and migrates it unless told not to).
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &cfg.store {
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
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(_) => {
            anyhow::bail!("IDEM_DATABASE_URL: PostgreSQL is not supported yet")
        }
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

/// The process-wide Prometheus recorder (installed once, shared by every app in the process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const LATENCY: &[f64] = &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host application's); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The running roles of one process.
pub struct Running {
    /// The API's bound address, when the API runs.
    pub addr: Option<SocketAddr>,
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

/// Starts the roles on an open store.
pub async fn start(
    cfg: &Config,
    roles: Roles,
    store: Arc<dyn Store>,
    registry: Registry,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = Arc::new(registry);
    let metrics = metrics_handle();

    let mut addr = None;
    if roles.api {
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .with_context(|| format!("IDEM_BIND: cannot listen on {}", cfg.bind))?;
        addr = Some(listener.local_addr()?);
        let app = idem_api::router(idem_api::AppState {
            store: store.clone(),
            registry: registry.clone(),
            metrics: Some(metrics),
            probes: Vec::new(),
            max_body_bytes: cfg.max_body_bytes,
        });
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "API server failed");
            }
        });
        tracing::info!(addr = %addr.unwrap(), "API listening");
    }
    if roles.scheduler {
        let s = Scheduler::new(store.clone(), cfg.poll);
        tracker.spawn(s.run(shutdown.clone()));
    }
    if roles.scheduler || roles.worker {
        let m = Maintenance::new(store.clone(), cfg.maintenance_every);
        tracker.spawn(m.run(shutdown.clone()));
    }
    if roles.worker {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let w = Worker::new(
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
            },
        );
        tracker.spawn(w.run(shutdown.clone()));
    }
    Ok(Running {
        addr,
        store,
        shutdown,
        tracker,
    })
}
