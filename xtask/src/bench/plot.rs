//! The two plots of a run, drawn from its result lines with plotters' bitmap backend and an
//! embedded DejaVu Sans (the `dejavu` crate), so no system font is needed:
//!
//! * `throughput.png`: tasks per second end to end, idem's shapes beside Celery and the Rust peers
//!   (bars);
//! * `lateness.png`: p99 fire lateness against the number of one-second jobs, idem on SQLite and
//!   PostgreSQL beside APScheduler (log–log lines).
//!
//! Invariant: a plot that cannot be drawn (no data, a drawing error) is reported, never a failure.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use serde_json::Value;

use super::table::int;
use super::Ctx;

const FONT: &str = "sans-serif";
const IDEM: RGBColor = RGBColor(31, 119, 180);
const PEER: RGBColor = RGBColor(160, 160, 160);
const IDEM_PG: RGBColor = RGBColor(44, 160, 44);
const APS: RGBColor = RGBColor(214, 39, 40);

fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = dejavu::sans::regular();
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(())
    } else {
        bail!("the embedded font could not be loaded")
    }
}

/// Draws both plots into the run directory: (file name, outcome) of each.
pub fn draw_all(ctx: &Ctx) -> Vec<(&'static str, anyhow::Result<()>)> {
    let font = font();
    let mut out = Vec::new();
    for (name, draw) in [
        (
            "throughput.png",
            throughput as fn(&[Value], &Path) -> anyhow::Result<()>,
        ),
        ("lateness.png", lateness),
    ] {
        let r = match &font {
            Ok(()) => draw(&ctx.results, &ctx.dir.join(name)),
            Err(e) => Err(anyhow!("{e}")),
        };
        out.push((name, r));
    }
    out
}

fn per_s(rs: &[Value], scenario: &str, system: &str, shape: Option<&str>) -> Option<f64> {
    rs.iter()
        .find(|r| {
            r["scenario"] == scenario
                && r["system"] == system
                && shape.is_none_or(|s| r["shape"] == s)
        })
        .and_then(|r| r["per_s"].as_f64())
}

fn throughput(rs: &[Value], path: &Path) -> anyhow::Result<()> {
    let mut bars: Vec<(String, f64, RGBColor)> = Vec::new();
    for (shape, label) in [
        ("embedded", "idem embedded"),
        ("pg", "idem pg"),
        ("full", "idem full"),
    ] {
        if let Some(v) = per_s(rs, "throughput", "idem", Some(shape)) {
            bars.push((label.into(), v, IDEM));
        }
    }
    if let Some(v) = per_s(rs, "throughput", "celery", None) {
        bars.push(("Celery".into(), v, PEER));
    }
    for s in ["graphile_worker", "apalis"] {
        if let Some(v) = per_s(rs, "peers", s, None) {
            bars.push((s.into(), v, PEER));
        }
    }
    if bars.is_empty() {
        bail!("no throughput results");
    }
    let n = rs
        .iter()
        .find(|r| r["scenario"] == "throughput")
        .and_then(|r| r["n"].as_u64())
        .unwrap_or(0);
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.15 + 1.0;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Throughput, {} no-op tasks end to end (tasks/s)",
                int(n as f64)
            ),
            (FONT, 24),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(80)
        // Integer ranges are inclusive in plotters: 0..len-1 is len segments.
        .build_cartesian_2d((0..bars.len() - 1).into_segmented(), 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| int(*y))
        .label_style((FONT, 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, c))| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                c.filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(|e| anyhow!("{e}"))?;
    let above = (FONT, 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v, _))| {
            Text::new(
                int(*v),
                (SegmentValue::CenterOf(i), *v + top * 0.01),
                above.clone(),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn lateness(rs: &[Value], path: &Path) -> anyhow::Result<()> {
    let series_of = |system: &str, shape: Option<&str>| -> Vec<(f64, f64, String)> {
        let mut pts: Vec<(f64, f64, String)> = rs
            .iter()
            .filter(|r| {
                r["scenario"] == "schedule"
                    && r["system"] == system
                    && shape.is_none_or(|s| r["shape"] == s)
                    && r.get("error").is_none()
            })
            .filter_map(|r| {
                let (n, p) = (r["jobs"].as_f64()?, r["p99_ms"].as_f64()?);
                let missed = r["missed"].as_f64().unwrap_or(0.0);
                let mut label = if p >= 10.0 {
                    format!("{p:.0} ms")
                } else {
                    format!("{p:.1} ms")
                };
                if missed > 0.0 {
                    label.push_str(&format!(", {} missed", int(missed)));
                }
                // Log scale: a p99 under 0.1 ms is drawn at 0.1 ms.
                Some((n, p.max(0.1), label))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let series = [
        ("idem SQLite", series_of("idem", Some("embedded")), IDEM),
        ("idem PostgreSQL", series_of("idem", Some("pg")), IDEM_PG),
        (
            "APScheduler 3, PG store",
            series_of("apscheduler", None),
            APS,
        ),
    ];
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| (p.0, p.1)))
        .collect();
    let mut ns: Vec<f64> = all.iter().map(|p| p.0).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    if all.is_empty() {
        bail!("no schedule results");
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("p99 fire lateness, one-second interval jobs", (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            ((xmin / 1.5)..(xmax * 3.0)).log_scale().with_key_points(ns),
            ((ymin / 2.0)..(ymax * 2.0)).log_scale(),
        )
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("jobs (each firing every second)")
        .y_desc("p99 lateness (ms)")
        .x_label_formatter(&|x| int(*x))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                int(*y)
            } else {
                format!("{y:.1}")
            }
        })
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (k, (name, pts, color)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let c = *color;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        let style = (FONT, 13).into_font().color(&c);
        // Each series' labels a line lower than the previous one's, so that points that coincide
        // (every system at ~1 s when it cannot keep up) stay readable.
        let dy = 4 + 15 * k as i32;
        chart
            .draw_series(pts.iter().map(|p| {
                EmptyElement::at((p.0, p.1)) + Text::new(p.2.clone(), (8, dy), style.clone())
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Vec<Value> {
        let mut rs = vec![
            json!({"scenario": "throughput", "system": "idem", "shape": "embedded", "n": 20000, "per_s": 25000.0}),
            json!({"scenario": "throughput", "system": "idem", "shape": "pg", "n": 20000, "per_s": 21000.0}),
            json!({"scenario": "throughput", "system": "idem", "shape": "full", "n": 20000, "per_s": 12000.0}),
            json!({"scenario": "throughput", "system": "celery", "shape": "x", "n": 20000, "per_s": 900.0}),
            json!({"scenario": "peers", "system": "graphile_worker", "shape": "x", "per_s": 19000.0}),
            json!({"scenario": "peers", "system": "apalis", "shape": "x", "error": "boom"}),
        ];
        for (n, a, b, c) in [
            (1000, 2.0, 3.0, 90.0),
            (10000, 8.0, 20.0, 900.0),
            (50000, 40.0, 60.0, 5000.0),
        ] {
            rs.push(json!({"scenario": "schedule", "system": "idem", "shape": "embedded", "jobs": n, "p99_ms": a, "missed": 0}));
            rs.push(json!({"scenario": "schedule", "system": "idem", "shape": "pg", "jobs": n, "p99_ms": b, "missed": 0}));
            rs.push(json!({"scenario": "schedule", "system": "apscheduler", "shape": "pg job store", "jobs": n, "p99_ms": c, "missed": 1200}));
        }
        rs
    }

    #[test]
    fn both_plots_draw_with_the_embedded_font() {
        font().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rs = sample();
        throughput(&rs, &dir.path().join("t.png")).unwrap();
        lateness(&rs, &dir.path().join("l.png")).unwrap();
        for f in ["t.png", "l.png"] {
            let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
            assert!(len > 10_000, "{f}: {len} bytes");
        }
        if let Some(keep) = std::env::var_os("BENCH_PLOT_SAMPLES") {
            for f in ["t.png", "l.png"] {
                std::fs::copy(dir.path().join(f), std::path::Path::new(&keep).join(f)).unwrap();
            }
        }
    }

    #[test]
    fn no_data_is_an_error_not_a_panic() {
        font().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(throughput(&[], &dir.path().join("t.png")).is_err());
        assert!(lateness(&[], &dir.path().join("l.png")).is_err());
    }
}
