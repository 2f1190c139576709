//! Monitoring against the real exporter: a real `idem serve` (SQLite, Redis where it answers, the
//! per-job series on, an operations listener) does real work through the API — tasks that succeed,
//! fail and retry, a replayed and a conflicting key, jobs that fire and that are skipped, a cancel —
//! and its `/metrics` (API and operations listener) is scraped once. Then:
//!
//! - every metric the Grafana dashboards and the Prometheus alert rules in `monitoring/` name is
//!   exported;
//! - the catalogue (`docs/metrics.md`) lists exactly the exported `idem_*` metrics, each with the
//!   type and labels it says, and every one has a HELP line;
//! - the work shows in the numbers (final states only in `idem_tasks_total`, and so on).
//!
//! A worker-only process (the real binary) serves health and metrics on its operations listener.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, wait_result, Proc, TestApp};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

/// Catalogue names that are not exported by the workload, and why. Empty: every metric is either
/// caused by the work or exported at 0 from the start.
const NOT_EXPORTED_BY_THE_WORKLOAD: &[(&str, &str)] = &[];

// ------------------------------------------------------------------------------------------------
// The exposition format, parsed.
// ------------------------------------------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One metric family: its `# TYPE`, whether it has a `# HELP`, and the label keys of its samples
/// (`le` of histogram buckets left out).
#[derive(Debug, Default, Clone)]
struct Family {
    kind: String,
    help: bool,
    label_sets: BTreeSet<BTreeSet<String>>,
}

#[derive(Debug, Default, Clone)]
struct Exported {
    families: BTreeMap<String, Family>,
    samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "label value not quoted: {s}");
        let mut value = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value: {s}"));
        out.insert(key, value);
        rest = &after[1 + end + 1..];
    }
    out
}

fn parse_exposition(text: &str) -> Exported {
    let mut ex = Exported::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap().to_owned();
            ex.families.entry(name).or_default().help = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_owned();
            ex.families.entry(name).or_default().kind = parts.next().unwrap().to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.find('{') {
            Some(i) => (&head[..i], parse_labels(&head[i + 1..head.len() - 1])),
            None => (head, BTreeMap::new()),
        };
        let family = family_of(name, &ex.families).unwrap_or_else(|| name.to_owned());
        let keys = labels.keys().filter(|k| *k != "le").cloned().collect();
        ex.families
            .entry(family)
            .or_default()
            .label_sets
            .insert(keys);
        ex.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    ex
}

/// The family a sample or a PromQL name belongs to: itself, or the histogram its `_bucket`, `_sum`
/// or `_count` suffix names.
fn family_of(name: &str, families: &BTreeMap<String, Family>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (families.get(base)?.kind == "histogram").then(|| base.to_owned())
    })
}

impl Exported {
    fn merge(&mut self, other: &Exported) {
        for (name, f) in &other.families {
            let mine = self.families.entry(name.clone()).or_default();
            if mine.kind.is_empty() {
                mine.kind = f.kind.clone();
            }
            mine.help |= f.help;
            mine.label_sets.extend(f.label_sets.iter().cloned());
        }
        self.samples.extend(other.samples.iter().cloned());
    }

    /// The samples named `name` carrying every label in `with`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples named `name` carrying every label in `with`; `None` when there is none.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, with).peekable();
        found.peek()?;
        Some(found.map(|s| s.value).sum())
    }
}

// ------------------------------------------------------------------------------------------------
// The catalogue and the monitoring files.
// ------------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One row of a `docs/metrics.md` table.
#[derive(Debug)]
struct Documented {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

fn catalogue() -> Vec<Documented> {
    let path = repo_root().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: Vec<Documented> = text
        .lines()
        .filter(|l| l.starts_with("| `idem_"))
        .map(|l| {
            let cells: Vec<&str> = l.splitn(5, '|').map(str::trim).collect();
            let labels = match cells[3] {
                "—" | "-" | "" => BTreeSet::new(),
                ls => ls
                    .split(',')
                    .map(|s| s.trim().trim_matches('`').to_owned())
                    .collect(),
            };
            Documented {
                name: cells[1].trim_matches('`').to_owned(),
                kind: cells[2].to_owned(),
                labels,
            }
        })
        .collect();
    assert!(
        rows.len() > 10,
        "docs/metrics.md: no catalogue tables found"
    );
    rows
}

/// Every `idem_*` identifier in a PromQL expression.
fn idem_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = expr[from..].find("idem_") {
        let start = from + pos;
        let mut end = start + "idem_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let standalone =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if standalone && end > start + "idem_".len() {
            out.push(expr[start..end].to_owned());
        }
        from = end;
    }
    out
}

/// Every query string of a Grafana dashboard: each target's `expr`, at any depth (rows, nested
/// panels, library panels), and the templating variables' `query` and `definition`.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if matches!(k.as_str(), "expr" | "query" | "definition") {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_owned());
                    }
                }
                dashboard_queries(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// `(where, expression)` of every query of every dashboard in `monitoring/grafana/dashboards/`.
fn dashboards() -> Vec<(String, String)> {
    let dir = repo_root().join("monitoring/grafana/dashboards");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the dashboards live in monitoring/, from branch mon)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let mut queries = Vec::new();
        dashboard_queries(&doc, &mut queries);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            queries.iter().any(|q| !idem_names(q).is_empty()),
            "{name} queries no idem metric"
        );
        out.extend(queries.into_iter().map(|q| (name.clone(), q)));
    }
    out
}

/// `(alert or record name, expr)` of every rule in `monitoring/prometheus/alerts.yml`.
fn alert_rules() -> Vec<(String, String)> {
    let path = repo_root().join("monitoring/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the alert rules live in monitoring/, from branch mon)",
            path.display()
        )
    });
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("alerts.yml: groups") {
        for rule in group["rules"]
            .as_sequence()
            .expect("alerts.yml: rules of a group")
        {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(|n| n.as_str())
                .unwrap_or("(unnamed)")
                .to_owned();
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("alerts.yml: rule {name} has no expr string"));
            out.push((name, expr.to_owned()));
        }
    }
    assert!(!out.is_empty(), "{}: no rules", path.display());
    out
}

// ------------------------------------------------------------------------------------------------
// The workload, run once for the tests of this file.
// ------------------------------------------------------------------------------------------------

struct Scrape {
    /// The API's `/metrics` and the operations listener's, of the same process.
    api: Exported,
    ops: Exported,
    /// Both together.
    all: Exported,
    /// Whether Redis was configured (it is wherever it answers; CI requires it).
    redis: bool,
}

static SCRAPE: OnceCell<Scrape> = OnceCell::const_new();

async fn scrape() -> &'static Scrape {
    SCRAPE.get_or_init(run_workload).await
}

async fn text(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn submit(app: &TestApp, body: Value) -> (u16, Value) {
    app.post("/api/v1/tasks/submit", body).await
}

async fn wait_outcome(app: &TestApp, job: &str, outcome: &str) {
    eventually(
        &format!("{job} to record {outcome}"),
        Duration::from_secs(30),
        || async {
            let (_, runs) = app.get(&format!("/api/v1/jobs/{job}/runs")).await;
            runs["items"]
                .as_array()?
                .iter()
                .any(|r| r["outcome"] == outcome)
                .then_some(())
        },
    )
    .await
}

async fn run_workload() -> Scrape {
    let redis_url = common::redis_url();
    let redis =
        idem_testkit::services::or_skip("Redis", common::redis_ping(&redis_url).await).is_some();
    let mut extra = vec![
        "--ops-bind",
        "127.0.0.1:0",
        "--metrics-job-labels",
        "--worker-concurrency",
        "4",
        "--shutdown-grace-seconds",
        "1",
    ];
    if redis {
        extra.extend(["--redis-url", redis_url.as_str()]);
    }
    let app = common::spawn_app(&extra).await;
    let ops = format!(
        "http://{}",
        app.running.ops_addr.expect("the operations listener")
    );
    // Keys unique to this run: the idempotency cache in Redis is shared with other runs.
    let key = format!("replayed-{}", uuid::Uuid::now_v7().simple());

    let (_, ok) = submit(&app, json!({"task": "noop"})).await;
    let (_, failed) = submit(&app, json!({"task": "fail", "max_retries": 0})).await;
    let (_, retried) = submit(
        &app,
        json!({"task": "fail", "args": {"times": 1}, "max_retries": 1}),
    )
    .await;

    let first = json!({"task": "echo", "args": {"n": 1}, "idempotency_key": key});
    assert_eq!(submit(&app, first.clone()).await.0, 202);
    assert_eq!(submit(&app, first).await.0, 200, "a replay");
    let other = json!({"task": "echo", "args": {"n": 2}, "idempotency_key": key});
    assert_eq!(submit(&app, other.clone()).await.0, 422, "a key conflict");
    let (status, _) = app
        .post("/api/v1/tasks/submit/batch", json!({"items": [other]}))
        .await;
    assert_eq!(status, 422, "a key conflict in a batch");

    let (_, doomed) = submit(&app, json!({"task": "noop", "countdown_seconds": 300})).await;
    let doomed = doomed["id"].as_str().unwrap().to_owned();
    let (_, cancelled) = app
        .post(&format!("/api/v1/tasks/{doomed}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    // Still waiting when scraped: the queue depth has something to show.
    submit(&app, json!({"task": "noop", "countdown_seconds": 300})).await;

    let (status, job) = app
        .post(
            "/api/v1/jobs",
            json!({"id": "tick", "task": "noop", "trigger": {"type": "interval", "every_seconds": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    // Each task outlives the next slot: with max_instances 1, that slot is skipped.
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            json!({"id": "slow", "task": "sleep", "args": {"seconds": 3}, "max_instances": 1,
                   "trigger": {"type": "interval", "every_seconds": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(app.get("/no/such/path").await.0, 404);

    assert_eq!(
        wait_result(&app, ok["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    assert_eq!(
        wait_result(&app, failed["id"].as_str().unwrap()).await["state"],
        "failed"
    );
    assert_eq!(
        wait_result(&app, retried["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    wait_outcome(&app, "tick", "fired").await;
    wait_outcome(&app, "slow", "skipped_overlap").await;

    // The operations listener: the API's health answers, nothing of its data.
    for path in ["/health", "/health/live", "/health/ready"] {
        let (status, body) = text(&app.client, &format!("{ops}{path}")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = text(&app.client, &format!("{ops}/api/v1/tasks")).await;
    assert_eq!(status, 404, "the operations listener serves no API");

    // The first dependency check runs at start; the worker's heartbeat is written as it starts.
    let api = eventually(
        "a scrape with the dependencies and the worker",
        Duration::from_secs(20),
        || async {
            let (status, body) = text(&app.client, &app.url("/metrics")).await;
            assert_eq!(status, 200);
            let ex = parse_exposition(&body);
            let ready = ex.value("idem_dependency_up", &[("dependency", "store")]) == Some(1.0)
                && ex
                    .value("idem_workers_alive", &[])
                    .is_some_and(|n| n >= 1.0);
            ready.then_some(ex)
        },
    )
    .await;
    let (status, body) = text(&app.client, &format!("{ops}/metrics")).await;
    assert_eq!(status, 200);
    let ops = parse_exposition(&body);
    app.stop().await;

    let mut all = api.clone();
    all.merge(&ops);
    Scrape {
        api,
        ops,
        all,
        redis,
    }
}

// ------------------------------------------------------------------------------------------------
// The tests.
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_reference_only_exported_metrics() {
    let s = scrape().await;
    let mut missing = BTreeSet::new();
    let mut referenced = BTreeSet::new();
    let sources = dashboards().into_iter().chain(
        alert_rules()
            .into_iter()
            .map(|(n, e)| (format!("alerts.yml: {n}"), e)),
    );
    for (source, expr) in sources {
        for name in idem_names(&expr) {
            match family_of(&name, &s.all.families) {
                Some(family) => {
                    referenced.insert(family);
                }
                None => {
                    missing.insert(format!("{name} ({source})"));
                }
            }
        }
    }
    assert!(
        !referenced.is_empty(),
        "the monitoring files reference no idem metric"
    );
    assert!(
        missing.is_empty(),
        "referenced by monitoring/ but not exported:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_lists_exactly_the_exported_metrics() {
    let s = scrape().await;
    let documented = catalogue();
    let names: BTreeSet<&str> = documented.iter().map(|d| d.name.as_str()).collect();
    let exempt: BTreeSet<&str> = NOT_EXPORTED_BY_THE_WORKLOAD
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let mut problems = Vec::new();

    for (name, family) in s
        .all
        .families
        .iter()
        .filter(|(n, _)| n.starts_with("idem_"))
    {
        if !names.contains(name.as_str()) {
            problems.push(format!("{name}: exported, not in docs/metrics.md"));
        }
        if !family.help {
            problems.push(format!("{name}: no # HELP line"));
        }
    }
    for d in &documented {
        if exempt.contains(d.name.as_str()) {
            continue;
        }
        // Reconnects exist for each configured dependency; without Redis (only outside CI) none is.
        if d.name == "idem_dependency_reconnects_total" && !s.redis {
            eprintln!("skipped: {} needs Redis configured", d.name);
            continue;
        }
        let Some(family) = s.all.families.get(&d.name) else {
            problems.push(format!("{}: in docs/metrics.md, not exported", d.name));
            continue;
        };
        if family.kind != d.kind {
            problems.push(format!(
                "{}: documented {}, exported {}",
                d.name, d.kind, family.kind
            ));
        }
        for labels in &family.label_sets {
            if *labels != d.labels {
                problems.push(format!(
                    "{}: documented labels {:?}, exported {:?}",
                    d.name, d.labels, labels
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "catalogue and exporter disagree:\n  {}",
        problems.join("\n  ")
    );
    // The list in code is the same list.
    let in_code: BTreeSet<&str> = idem_core::metrics::CATALOGUE
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        in_code, names,
        "idem_core::metrics::CATALOGUE and docs/metrics.md"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_shows_in_the_numbers() {
    let s = scrape().await;
    let ex = &s.api;
    let at_least = |name: &str, with: &[(&str, &str)], n: f64| {
        let v = ex.value(name, with);
        assert!(
            v.is_some_and(|v| v >= n),
            "{name}{with:?} = {v:?}, expected at least {n}"
        );
    };
    // Only this file's workload records in this test process, so the exact counts are its own.
    let exactly = |name: &str, with: &[(&str, &str)], n: f64| {
        assert_eq!(ex.value(name, with), Some(n), "{name}{with:?}");
    };

    at_least(
        "idem_tasks_total",
        &[("task", "noop"), ("state", "succeeded")],
        1.0,
    );
    exactly(
        "idem_tasks_total",
        &[("task", "fail"), ("state", "failed")],
        1.0,
    );
    exactly(
        "idem_tasks_total",
        &[("task", "fail"), ("state", "succeeded")],
        1.0,
    );
    exactly("idem_task_retries_total", &[("task", "fail")], 1.0);
    let states: BTreeSet<&str> = ex
        .matching("idem_tasks_total", &[])
        .map(|s| s.labels["state"].as_str())
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["failed", "succeeded"]),
        "final states only"
    );
    // Registered tasks are exported before their first event.
    exactly(
        "idem_tasks_total",
        &[("task", "shell"), ("state", "failed")],
        0.0,
    );
    exactly("idem_submissions_total", &[("task", "http")], 0.0);

    exactly("idem_submission_replays_total", &[("task", "echo")], 1.0);
    exactly("idem_submission_key_conflicts_total", &[], 2.0);
    exactly("idem_tasks_cancelled_total", &[], 1.0);
    at_least(
        "idem_queue_depth",
        &[("queue", "default"), ("state", "scheduled")],
        1.0,
    );

    at_least("idem_scheduler_fires_total", &[("outcome", "fired")], 1.0);
    at_least(
        "idem_scheduler_fires_total",
        &[("outcome", "skipped_overlap")],
        1.0,
    );
    exactly(
        "idem_scheduler_fires_total",
        &[("outcome", "key_conflict")],
        0.0,
    );
    at_least(
        "idem_job_fires_total",
        &[("job", "tick"), ("outcome", "fired")],
        1.0,
    );
    at_least(
        "idem_job_fires_total",
        &[("job", "slow"), ("outcome", "skipped_overlap")],
        1.0,
    );
    at_least("idem_job_lateness_seconds_count", &[("job", "tick")], 1.0);
    at_least("idem_scheduler_pass_duration_seconds_count", &[], 1.0);

    exactly("idem_worker_slots", &[], 4.0);
    exactly("idem_workers_alive", &[], 1.0);
    exactly("idem_worker_slots_alive", &[], 4.0);
    exactly(
        "idem_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("role", "serve")],
        1.0,
    );
    exactly("idem_dependency_up", &[("dependency", "store")], 1.0);
    assert_eq!(
        ex.value("idem_dependency_up", &[("dependency", "broker")]),
        None
    );
    if s.redis {
        exactly("idem_dependency_up", &[("dependency", "redis")], 1.0);
        exactly(
            "idem_dependency_reconnects_total",
            &[("dependency", "redis")],
            0.0,
        );
        exactly(
            "idem_lock_acquisitions_total",
            &[("lock", "maintenance"), ("outcome", "error")],
            0.0,
        );
    }
    at_least(
        "idem_http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/api/v1/tasks/submit"),
            ("status", "422"),
        ],
        1.0,
    );
    at_least(
        "idem_http_requests_total",
        &[("route", "unmatched"), ("status", "404")],
        1.0,
    );

    // Size histograms have their own buckets; durations theirs.
    let les = |name: &str| -> BTreeSet<String> {
        ex.matching(name, &[])
            .map(|s| s.labels["le"].clone())
            .collect()
    };
    let expected = |buckets: &[f64]| -> BTreeSet<String> {
        let mut set: BTreeSet<String> = buckets.iter().map(|b| b.to_string()).collect();
        set.insert("+Inf".into());
        set
    };
    assert_eq!(
        les("idem_claim_batch_size_bucket"),
        expected(idem_core::metrics::SIZE_BUCKETS)
    );
    assert_eq!(
        les("idem_task_duration_seconds_bucket"),
        expected(idem_core::metrics::DURATION_BUCKETS)
    );

    // The operations listener renders the same process's series.
    for name in ["idem_build_info", "idem_dependency_up", "idem_tasks_total"] {
        assert!(
            s.ops.families.contains_key(name),
            "{name} missing from the operations listener"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_health_and_metrics_on_its_operations_listener() {
    let db = format!("sqlite://{}", common::db_path().display());
    // Its first log line with an address is the operations listener's (a worker has no API).
    let mut p = Proc::spawn_role(
        &[
            "worker",
            "--database-url",
            &db,
            "--ops-bind",
            "127.0.0.1:0",
            "--worker-concurrency",
            "3",
        ],
        &[],
    );
    assert!(!p.base.is_empty(), "the worker logged no listener address");
    let client = reqwest::Client::new();
    for path in ["/health", "/health/live"] {
        assert_eq!(text(&client, &p.url(path)).await.0, 200, "{path}");
    }
    let (status, ready) = text(&client, &p.url("/health/ready")).await;
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready, json!({"status": "ready", "checks": {"store": "ok"}}));
    assert_eq!(text(&client, &p.url("/api/v1/tasks")).await.0, 404);

    let ex = eventually(
        "the first dependency check",
        Duration::from_secs(10),
        || async {
            let ex = parse_exposition(&text(&client, &p.url("/metrics")).await.1);
            ex.value("idem_dependency_up", &[("dependency", "store")])
                .is_some()
                .then_some(ex)
        },
    )
    .await;
    assert_eq!(ex.value("idem_worker_slots", &[]), Some(3.0));
    assert_eq!(
        ex.value("idem_build_info", &[("role", "worker")]),
        Some(1.0)
    );
    assert_eq!(
        ex.value(
            "idem_tasks_total",
            &[("task", "noop"), ("state", "succeeded")]
        ),
        Some(0.0)
    );
    // What only an API process (or a scheduler) exports is absent here.
    for name in [
        "idem_http_requests_total",
        "idem_queue_depth",
        "idem_submissions_total",
        "idem_scheduler_fires_total",
    ] {
        assert!(!ex.families.contains_key(name), "a worker exports {name}");
    }
    p.signal(15);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}
