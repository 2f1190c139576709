//! The one configuration struct: every setting is a flag and an `IDEM_*` variable, parsed
//! and checked here, at the edge, so the roles start from values that are known to be valid.
//!
//! Invariant: nothing else in idem reads the environment; a bad setting becomes a `ConfigError` that
//! names the setting, and `main` turns it into one line and exit code 2.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use idem_core::QueueName;

#[derive(Debug, Parser)]
#[command(
    name = "idem",
    version,
    about = "An idempotent, distributed task scheduler"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// API + scheduler + worker pool in one process (the default way to run).
    Serve,
    /// The HTTP API only.
    Api,
    /// The scheduler only (fires due jobs; runs the lease reaper).
    Scheduler,
    /// A worker pool only.
    Worker,
    /// Applies the store's schema migrations and exits.
    Migrate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// API address.
    #[arg(
        long,
        global = true,
        env = "IDEM_BIND",
        default_value = "127.0.0.1:8000"
    )]
    pub bind: SocketAddr,
    /// `sqlite://PATH` or `postgres://...`.
    #[arg(
        long,
        global = true,
        env = "IDEM_DATABASE_URL",
        default_value = "sqlite://idem.db"
    )]
    pub database_url: String,
    /// `amqp://user:pass@host:5672/vhost` selects RabbitMQ; unset: the store's queue.
    #[arg(long, global = true, env = "IDEM_BROKER_URL")]
    pub broker_url: Option<String>,
    /// `redis://host:6379/0` selects Redis for locks and the idempotency cache; unset: the store.
    #[arg(long, global = true, env = "IDEM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Connections in the PostgreSQL pool of each process.
    #[arg(long, global = true, env = "IDEM_DATABASE_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// With a broker: publish a queued task's message again when it is still unclaimed this long
    /// after the last publish (a message lost in a broker failure). Duplicates are dropped by the claim.
    #[arg(
        long,
        global = true,
        env = "IDEM_REDELIVER_SECONDS",
        default_value_t = 300.0
    )]
    pub redeliver_seconds: f64,
    /// Tasks run at once by one worker process.
    #[arg(long, global = true, env = "IDEM_WORKER_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub worker_concurrency: u32,
    /// Claims a worker may hold beyond its free slots while its tasks are short (under 50 ms on
    /// average): claimed in the same transaction, started as slots free. 0 turns prefetching off.
    #[arg(long, global = true, env = "IDEM_WORKER_PREFETCH", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub worker_prefetch: u32,
    /// Queues a worker consumes, comma-separated.
    #[arg(
        long,
        global = true,
        env = "IDEM_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queues: Vec<String>,
    /// `name:secret:scope[+scope],...` (not supported yet: see the README).
    #[arg(long, global = true, env = "IDEM_API_KEYS")]
    pub api_keys: Option<String>,
    /// Let the `http` task reach loopback and private addresses.
    #[arg(long, global = true, env = "IDEM_HTTP_ALLOW_PRIVATE", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub http_allow_private: bool,
    /// Programs the `shell` task may run, comma-separated; unset: the shell task is off.
    #[arg(long, global = true, env = "IDEM_SHELL_ALLOW", value_delimiter = ',')]
    pub shell_allow: Vec<String>,
    /// Log filter (tracing's `EnvFilter` syntax).
    #[arg(long, global = true, env = "IDEM_LOG", default_value = "info")]
    pub log: String,
    /// `text` or `json`.
    #[arg(long, global = true, env = "IDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/HTTP collector to export spans to (`http://collector:4318`; `/v1/traces` is added when
    /// the URL has no path). Unset: no traces are exported.
    #[arg(long, global = true, env = "IDEM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Do not apply migrations at start.
    #[arg(long, global = true, env = "IDEM_NO_MIGRATE", default_value_t = false)]
    pub no_migrate: bool,
    /// Allow binding the API to a non-loopback address without API keys.
    #[arg(
        long,
        global = true,
        env = "IDEM_INSECURE_NO_AUTH",
        default_value_t = false
    )]
    pub insecure_no_auth: bool,
    /// How long a worker's claim on a task is leased (renewed every third of it); a dead worker's
    /// tasks return to the queue this long after it died.
    #[arg(
        long,
        global = true,
        env = "IDEM_LEASE_SECONDS",
        default_value_t = 30.0
    )]
    pub lease_seconds: f64,
    /// How long running tasks may finish after SIGTERM/SIGINT before they are handed back.
    #[arg(
        long,
        global = true,
        env = "IDEM_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 30.0
    )]
    pub shutdown_grace_seconds: f64,
    /// Largest accepted request body.
    #[arg(long, global = true, env = "IDEM_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Longest an API request may take before it is answered 503 (a long-poll's wait comes on top).
    #[arg(
        long,
        global = true,
        env = "IDEM_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30.0
    )]
    pub request_timeout_seconds: f64,
    /// How often the maintenance pass (lease reaper, expiry, pruning) runs.
    #[arg(
        long,
        global = true,
        env = "IDEM_MAINTENANCE_INTERVAL_SECONDS",
        default_value_t = 1.0
    )]
    pub maintenance_interval_seconds: f64,
    /// Longest a scheduler or an idle worker sleeps without a wake-up (bounds the delay for changes
    /// made by another process sharing the store).
    #[arg(long, global = true, env = "IDEM_POLL_SECONDS", default_value_t = 1.0)]
    pub poll_seconds: f64,
    /// Operations listener of any role (`host:port`): `/health`, `/health/live`, `/health/ready`
    /// and `/metrics`; unset or empty: none. It serves nothing else, so a non-loopback address
    /// needs no API keys.
    #[arg(long, global = true, env = "IDEM_OPS_BIND")]
    pub ops_bind: Option<String>,
    /// Also record the per-job series (`idem_job_fires_total{job,outcome}`,
    /// `idem_job_lateness_seconds{job}`): one series per job, so off unless asked for.
    #[arg(long, global = true, env = "IDEM_METRICS_JOB_LABELS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_job_labels: bool,
}

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// The store a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(String),
    Postgres(String),
}

/// Settings checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub store: StoreUrl,
    pub broker: Option<String>,
    pub redis: Option<String>,
    pub database_max_connections: u32,
    pub redeliver_after: Duration,
    pub queues: Vec<QueueName>,
    pub worker_concurrency: u32,
    pub worker_prefetch: u32,
    pub http_allow_private: bool,
    pub shell_allow: Vec<String>,
    pub migrate: bool,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub maintenance_every: Duration,
    pub poll: Duration,
    /// Where the operations listener (health and metrics) listens, if anywhere.
    pub ops_bind: Option<SocketAddr>,
    pub metrics_job_labels: bool,
}

fn positive_secs(setting: &'static str, v: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v <= max) {
        return Err(bad(
            setting,
            format!("must be a number of seconds in (0, {max}], got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Settings {
    /// Checks every setting; the one place that matches on URL kinds.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let url = self.database_url.trim();
        let store = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(bad(
                    "IDEM_DATABASE_URL",
                    "sqlite URLs need a file path, e.g. sqlite://idem.db",
                ));
            }
            StoreUrl::Sqlite(url.to_owned())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            StoreUrl::Postgres(url.to_owned())
        } else {
            return Err(bad(
                "IDEM_DATABASE_URL",
                format!("expected sqlite://PATH or postgres://..., got {url:?}"),
            ));
        };
        let broker = match self
            .broker_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(u) if u.starts_with("amqp://") || u.starts_with("amqps://") => Some(u.to_owned()),
            Some(u) => {
                return Err(bad(
                    "IDEM_BROKER_URL",
                    format!("expected amqp://user:pass@host:5672/vhost, got {u:?}"),
                ))
            }
        };
        let redis = match self
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                Some(u.to_owned())
            }
            Some(u) => {
                return Err(bad(
                    "IDEM_REDIS_URL",
                    format!("expected redis://host:6379/0, got {u:?}"),
                ))
            }
        };
        if broker.is_some() && matches!(store, StoreUrl::Sqlite(_)) {
            return Err(bad(
                "IDEM_BROKER_URL",
                "a broker needs a shared store: set IDEM_DATABASE_URL to postgres://...",
            ));
        }
        if self.api_keys.as_deref().is_some_and(|k| !k.is_empty()) {
            return Err(bad(
                "IDEM_API_KEYS",
                "API keys are not supported yet in this build; bind to loopback instead",
            ));
        }
        if !self.bind.ip().is_loopback() && !self.insecure_no_auth {
            return Err(bad(
                "IDEM_BIND",
                format!("{} is not a loopback address and no API keys are configured; pass --insecure-no-auth to serve it without authentication", self.bind),
            ));
        }
        // Parsed here rather than by clap, so that empty means unset (as for the URLs).
        let ops_bind = match self.ops_bind.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "IDEM_OPS_BIND",
                    format!("expected host:port such as 0.0.0.0:9464, got {a:?}"),
                )
            })?),
        };
        let queues = self
            .queues
            .iter()
            .map(|q| QueueName::try_from(q.trim()).map_err(|e| bad("IDEM_QUEUES", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if queues.is_empty() {
            return Err(bad("IDEM_QUEUES", "name at least one queue"));
        }
        Ok(Config {
            bind: self.bind,
            store,
            broker,
            redis,
            database_max_connections: self.database_max_connections,
            redeliver_after: positive_secs(
                "IDEM_REDELIVER_SECONDS",
                self.redeliver_seconds,
                86_400.0,
            )?,
            queues,
            worker_concurrency: self.worker_concurrency,
            worker_prefetch: self.worker_prefetch,
            http_allow_private: self.http_allow_private,
            shell_allow: self
                .shell_allow
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            migrate: !self.no_migrate,
            lease: positive_secs("IDEM_LEASE_SECONDS", self.lease_seconds, 86_400.0)?,
            shutdown_grace: Duration::from_secs_f64(
                positive_secs(
                    "IDEM_SHUTDOWN_GRACE_SECONDS",
                    self.shutdown_grace_seconds.max(1e-3),
                    86_400.0,
                )?
                .as_secs_f64(),
            ),
            request_timeout: positive_secs(
                "IDEM_REQUEST_TIMEOUT_SECONDS",
                self.request_timeout_seconds,
                3600.0,
            )?,
            max_body_bytes: if self.max_body_bytes == 0 {
                return Err(bad("IDEM_MAX_BODY_BYTES", "must be positive"));
            } else {
                self.max_body_bytes
            },
            maintenance_every: positive_secs(
                "IDEM_MAINTENANCE_INTERVAL_SECONDS",
                self.maintenance_interval_seconds,
                3600.0,
            )?,
            poll: positive_secs("IDEM_POLL_SECONDS", self.poll_seconds, 3600.0)?,
            ops_bind,
            metrics_job_labels: self.metrics_job_labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["idem", "serve"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.settings.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_embedded_shape() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(c.store, StoreUrl::Sqlite("sqlite://idem.db".into()));
        assert_eq!(c.queues, vec![QueueName::default_queue()]);
        assert_eq!(c.worker_concurrency, 16);
        assert!(!c.http_allow_private);
        assert!(c.shell_allow.is_empty());
        assert_eq!(c.ops_bind, None);
        assert!(!c.metrics_job_labels);
    }

    #[test]
    fn bad_settings_name_themselves() {
        for (args, setting) in [
            (&["--database-url", "mysql://x"][..], "IDEM_DATABASE_URL"),
            (&["--database-url", "sqlite://"][..], "IDEM_DATABASE_URL"),
            (&["--queues", "a b"][..], "IDEM_QUEUES"),
            (&["--bind", "0.0.0.0:8000"][..], "IDEM_BIND"),
            (&["--lease-seconds", "0"][..], "IDEM_LEASE_SECONDS"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn non_loopback_binds_need_the_explicit_opt_out() {
        assert!(parse(&["--bind", "0.0.0.0:8000", "--insecure-no-auth"]).is_ok());
    }

    #[test]
    fn the_ops_listener_may_bind_any_address_without_api_keys() {
        let c = parse(&["--ops-bind", "0.0.0.0:9464"]).unwrap();
        assert_eq!(c.ops_bind, Some("0.0.0.0:9464".parse().unwrap()));
        let err = parse(&["--ops-bind", "nowhere"]).unwrap_err();
        assert!(err.starts_with("IDEM_OPS_BIND"), "{err}");
        assert_eq!(parse(&["--ops-bind", ""]).unwrap().ops_bind, None);
    }

    #[test]
    fn job_labels_are_a_flag_with_an_optional_value() {
        assert!(parse(&["--metrics-job-labels"]).unwrap().metrics_job_labels);
        assert!(
            parse(&["--metrics-job-labels", "true"])
                .unwrap()
                .metrics_job_labels
        );
        assert!(
            !parse(&["--metrics-job-labels", "false"])
                .unwrap()
                .metrics_job_labels
        );
    }

    #[test]
    fn lists_split_on_commas() {
        let c = parse(&["--queues", "a,b", "--shell-allow", "echo,ls"]).unwrap();
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.shell_allow, vec!["echo", "ls"]);
    }
}
