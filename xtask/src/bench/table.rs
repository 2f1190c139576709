//! The Markdown table printed at the end of a run and written to `table.md`: one row per idem
//! result with the peer it is compared with, the ratio, the goal and whether it was met; above it
//! the machine and the versions.
//!
//! Invariant: the table is computed from the result lines alone, so `table.md` always agrees with
//! `results.jsonl`.

use serde_json::Value;

use super::Ctx;

fn find<'a>(rs: &'a [Value], scenario: &str, system: &str, shape: Option<&str>) -> Vec<&'a Value> {
    rs.iter()
        .filter(|r| {
            r["scenario"] == scenario
                && r["system"] == system
                && shape.is_none_or(|s| r["shape"] == s)
        })
        .collect()
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// 20123.4 → "20,123".
pub fn int(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
        None => "—".into(),
    }
}

fn error_of(v: &Value) -> Option<String> {
    v.get("error").and_then(Value::as_str).map(|e| {
        let first = e.lines().next().unwrap_or("");
        let short: String = first.chars().take(70).collect();
        format!(
            "error: {}{}",
            short.replace('|', "/"),
            if first.len() > 70 { "…" } else { "" }
        )
    })
}

fn ratio(x: Option<f64>) -> String {
    x.filter(|r| r.is_finite())
        .map(|r| format!("{r:.1}×"))
        .unwrap_or_else(|| "—".into())
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "**no**" }.to_owned()
}

struct Row {
    scenario: String,
    shape: String,
    idem: String,
    peer: String,
    peer_value: String,
    ratio: String,
    goal: String,
    met: String,
}

impl Row {
    fn new(scenario: &str, shape: &str) -> Row {
        Row {
            scenario: scenario.into(),
            shape: shape.into(),
            idem: "—".into(),
            peer: "—".into(),
            peer_value: "—".into(),
            ratio: "—".into(),
            goal: "—".into(),
            met: "—".into(),
        }
    }
}

fn throughput_rows(rs: &[Value], rows: &mut Vec<Row>) {
    let celery = find(rs, "throughput", "celery", None).into_iter().next();
    let celery_per_s = celery.and_then(|c| f(c, "per_s"));
    let rust: Vec<(&str, f64)> = ["graphile_worker", "apalis"]
        .iter()
        .filter_map(|s| {
            find(rs, "peers", s, None)
                .first()
                .and_then(|v| f(v, "per_s"))
                .map(|p| (*s, p))
        })
        .collect();
    let fastest = rust.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    for (shape, goal_abs, goal_x) in [
        ("embedded", Some(20_000.0), Some(24.0)),
        ("pg", None, None),
        ("full", Some(10_000.0), Some(12.0)),
    ] {
        for r in find(rs, "throughput", "idem", Some(shape)) {
            let mut row = Row::new("throughput", shape);
            if let Some(e) = error_of(r) {
                row.idem = e;
                rows.push(row);
                continue;
            }
            let per_s = f(r, "per_s").unwrap_or(f64::NAN);
            row.idem = format!("{}/s", int(per_s));
            if shape == "pg" {
                row.goal = "≥ 1.5× the faster of graphile_worker/apalis".into();
                match fastest {
                    Some((name, p)) => {
                        row.peer = name.into();
                        row.peer_value = format!("{}/s", int(p));
                        row.ratio = ratio(Some(per_s / p));
                        row.met = yes(per_s >= 1.5 * p);
                    }
                    None => row.met = "n/a (no peer figure)".into(),
                }
            } else {
                let (abs, x) = (goal_abs.unwrap_or(0.0), goal_x.unwrap_or(0.0));
                row.goal = format!("≥ {}/s and ≥ {x:.0}× Celery", int(abs));
                row.peer = "Celery".into();
                match (celery, celery_per_s) {
                    (_, Some(c)) => {
                        row.peer_value = format!("{}/s", int(c));
                        row.ratio = ratio(Some(per_s / c));
                        row.met = yes(per_s >= abs && per_s >= x * c);
                    }
                    (Some(c), None) => {
                        row.peer_value = error_of(c).unwrap_or_else(|| "—".into());
                        row.met = format!("{} (Celery part not judged)", yes(per_s >= abs));
                    }
                    (None, None) => {
                        row.met = format!("{} (no Celery figure)", yes(per_s >= abs));
                    }
                }
            }
            rows.push(row);
        }
    }
    let idem_pg = find(rs, "throughput", "idem", Some("pg"))
        .first()
        .and_then(|v| f(v, "per_s"));
    for system in ["graphile_worker", "apalis"] {
        for r in find(rs, "peers", system, None) {
            let mut row = Row::new("peers", r["shape"].as_str().unwrap_or(""));
            row.peer = system.into();
            row.idem = idem_pg
                .map(|p| format!("{}/s (pg)", int(p)))
                .unwrap_or_else(|| "—".into());
            match (error_of(r), f(r, "per_s")) {
                (Some(e), _) => row.peer_value = e,
                (None, Some(p)) => {
                    row.peer_value = format!("{}/s", int(p));
                    row.ratio = ratio(idem_pg.map(|i| i / p));
                }
                _ => {}
            }
            rows.push(row);
        }
    }
}

fn submit_rows(rs: &[Value], rows: &mut Vec<Row>) {
    for r in find(rs, "submit", "idem", None) {
        let keys = r["keys"].as_bool();
        let shape = match keys {
            Some(true) => "embedded, with keys",
            Some(false) => "embedded, no keys",
            None => "embedded",
        };
        let mut row = Row::new("submit", shape);
        match error_of(r) {
            Some(e) => row.idem = e,
            None => {
                let p = f(r, "per_s").unwrap_or(f64::NAN);
                row.idem = format!("{}/s", int(p));
                if keys == Some(true) {
                    row.goal = "≥ 10,000/s".into();
                    row.met = yes(p >= 10_000.0);
                }
            }
        }
        rows.push(row);
    }
}

fn latency_text(v: &Value) -> String {
    error_of(v)
        .unwrap_or_else(|| format!("p50 {} / p99 {}", ms(f(v, "p50_ms")), ms(f(v, "p99_ms"))))
}

fn latency_rows(rs: &[Value], rows: &mut Vec<Row>) {
    let celery = find(rs, "latency", "celery", None).into_iter().next();
    let graphile = find(rs, "latency", "graphile_worker", None)
        .into_iter()
        .next();
    for (shape, goal) in [("embedded", 1.5), ("full", 2.5)] {
        for r in find(rs, "latency", "idem", Some(shape)) {
            let mut row = Row::new("latency", shape);
            row.idem = latency_text(r);
            row.goal = format!("p50 ≤ {goal} ms");
            let p50 = f(r, "p50_ms");
            if let Some(p) = p50 {
                row.met = yes(p <= goal);
            }
            if let Some(c) = celery {
                row.peer = "Celery .delay().get()".into();
                row.peer_value = latency_text(c);
                row.ratio = ratio(f(c, "p50_ms").zip(p50).map(|(c, i)| c / i));
            }
            rows.push(row);
            if shape == "embedded" {
                if let Some(g) = graphile {
                    let mut row = Row::new("latency", "embedded");
                    row.idem = latency_text(r);
                    row.peer = "graphile_worker add→start".into();
                    row.peer_value = latency_text(g);
                    row.ratio = ratio(f(g, "p50_ms").zip(p50).map(|(g, i)| g / i));
                    rows.push(row);
                }
            }
        }
    }
}

fn schedule_text(v: &Value) -> String {
    error_of(v).unwrap_or_else(|| {
        let mut s = format!(
            "p99 {}, missed {}",
            ms(f(v, "p99_ms")),
            int(f(v, "missed").unwrap_or(f64::NAN))
        );
        if let Some(sk) = f(v, "skipped").filter(|x| *x > 0.0) {
            s.push_str(&format!(", skipped {}", int(sk)));
        }
        if let Some(c) = f(v, "cpu_pct") {
            s.push_str(&format!(", CPU {c:.0}%"));
        }
        s
    })
}

fn schedule_rows(rs: &[Value], rows: &mut Vec<Row>) {
    let mut ns: Vec<i64> = rs
        .iter()
        .filter(|r| r["scenario"] == "schedule")
        .filter_map(|r| r["jobs"].as_i64())
        .collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        let aps = rs.iter().find(|r| {
            r["scenario"] == "schedule" && r["system"] == "apscheduler" && r["jobs"] == n
        });
        for shape in ["embedded", "pg"] {
            for r in find(rs, "schedule", "idem", Some(shape))
                .into_iter()
                .filter(|r| r["jobs"] == n)
            {
                let label = if shape == "embedded" {
                    "SQLite"
                } else {
                    "PostgreSQL"
                };
                let mut row = Row::new("schedule", &format!("{label}, {} jobs", int(n as f64)));
                row.idem = schedule_text(r);
                let missed = f(r, "missed");
                let p99 = f(r, "p99_ms");
                if shape == "pg" && n == 10_000 {
                    row.goal = "0 missed, p99 ≤ 50 ms".into();
                    if let (Some(m), Some(p)) = (missed, p99) {
                        row.met = yes(m == 0.0 && p <= 50.0);
                    }
                } else if n == 50_000 {
                    row.goal = "0 missed".into();
                    if let Some(m) = missed {
                        row.met = yes(m == 0.0);
                    }
                }
                if let Some(a) = aps {
                    row.peer = "APScheduler 3, PG store".into();
                    row.peer_value = schedule_text(a);
                    row.ratio = ratio(f(a, "p99_ms").zip(p99).map(|(a, i)| a / i));
                }
                rows.push(row);
            }
        }
    }
}

fn idle_rows(rs: &[Value], rows: &mut Vec<Row>) {
    for r in find(rs, "idle", "idem", None) {
        let jobs = f(r, "jobs").map(int).unwrap_or_default();
        let mut row = Row::new("idle", &format!("SQLite, {jobs} cron jobs"));
        row.goal = "< 1 % CPU, RSS ≤ 200 MB".into();
        match error_of(r) {
            Some(e) => row.idem = e,
            None => {
                let cpu = f(r, "cpu_pct").unwrap_or(f64::NAN);
                let rss = f(r, "rss_mb").unwrap_or(f64::NAN);
                row.idem = format!("CPU {cpu:.2} %, RSS {rss:.0} MB");
                row.met = yes(cpu < 1.0 && rss <= 200.0);
            }
        }
        rows.push(row);
    }
}

fn failover_rows(rs: &[Value], rows: &mut Vec<Row>) {
    for r in find(rs, "failover", "idem", None) {
        let shape = r["shape"].as_str().unwrap_or("");
        if shape == "-" {
            continue;
        }
        let mut row = Row::new("failover", &format!("{shape}, 2 schedulers, one killed"));
        row.idem = error_of(r).unwrap_or_else(|| {
            let every = match (
                f(r, "every_job_fired_again_within_ms"),
                f(r, "jobs_silent_after_kill"),
            ) {
                (Some(ms), _) => format!("every job within {} ms", int(ms)),
                (None, Some(k)) => format!("{} jobs silent for 5 s", int(k)),
                _ => "—".into(),
            };
            format!(
                "fires resumed {} ms after the kill, {every}; {} slots not fired",
                int(f(r, "first_fire_after_kill_ms").unwrap_or(f64::NAN)),
                int(f(r, "not_fired").unwrap_or(f64::NAN)),
            )
        });
        rows.push(row);
    }
}

fn failures(rs: &[Value], rows: &mut Vec<Row>) {
    for r in rs
        .iter()
        .filter(|r| r["system"] == "idem" && r["shape"] == "-")
    {
        let mut row = Row::new(r["scenario"].as_str().unwrap_or("?"), "—");
        row.idem = error_of(r).unwrap_or_default();
        rows.push(row);
    }
}

fn machine(rs: &[Value]) -> String {
    let Some(m) = rs.iter().find(|r| r["scenario"] == "machine") else {
        return String::new();
    };
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = format!(
        "Machine: {} × {}, {} GiB, Linux {} (load {} at the start); {} binary.\n\n",
        m["nproc"],
        s(&m["cpu"]),
        m["mem_gib"],
        s(&m["kernel"]),
        s(&m["load_avg"]),
        s(&m["binary"]),
    );
    if let Some(v) = m["versions"].as_object() {
        let parts: Vec<String> = v
            .iter()
            .filter(|(_, x)| !x.is_null())
            .map(|(k, x)| format!("{k} {}", s(x)))
            .collect();
        out.push_str(&format!("Versions: {}.\n\n", parts.join(", ")));
    }
    out
}

pub fn render(ctx: &Ctx) -> String {
    let rs = &ctx.results;
    let mut rows = Vec::new();
    throughput_rows(rs, &mut rows);
    submit_rows(rs, &mut rows);
    latency_rows(rs, &mut rows);
    schedule_rows(rs, &mut rows);
    idle_rows(rs, &mut rows);
    failover_rows(rs, &mut rows);
    failures(rs, &mut rows);
    let mut out = String::from("# cargo xtask bench\n\n");
    out.push_str(&machine(rs));
    if ctx.quick {
        out.push_str(
            "**Quick run** (`--quick`): tiny sizes, no peers; it only shows that the bench runs. \
             Its numbers are not benchmarks and its goal column is not a verdict.\n\n",
        );
    }
    out.push_str(
        "Ratio: how many times better idem is (throughput: idem ÷ peer; latency and lateness: \
         peer ÷ idem).\n\n",
    );
    out.push_str("| scenario | shape | idem | peer | peer value | ratio | goal | met? |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for mut r in rows {
        if ctx.quick && r.goal != "—" {
            r.met = "— (quick)".into();
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario, r.shape, r.idem, r.peer, r.peer_value, r.ratio, r.goal, r.met
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(int(20123.4), "20,123");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(1234567.0), "1,234,567");
        assert_eq!(int(f64::NAN), "—");
    }
}
