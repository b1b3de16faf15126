//! `--svg FILE`: a latency percentile-spectrum plot of a report's histograms, written as plain
//! SVG text (no plotting dependency: a few polylines and labels are all it takes).
//!
//! The x axis is `-log10(1 - q)` so 90 %, 99 %, 99.9 %, 99.99 % are evenly spaced — the tail is
//! what a load test is about; the y axis is linear milliseconds.

use crate::report::Report;
use crate::stats::HistError;
use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Canvas width.
const W: f64 = 800.0;
/// Canvas height.
const H: f64 = 420.0;
/// Left margin (y labels).
const ML: f64 = 70.0;
/// Right margin.
const MR: f64 = 20.0;
/// Top margin (title).
const MT: f64 = 30.0;
/// Bottom margin (x labels).
const MB: f64 = 50.0;
/// Decades of the x axis (up to 99.99 %).
const DECADES: f64 = 4.0;
/// Line colours per series.
const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// SVG of the report's non-empty histograms.
pub fn svg(report: &Report) -> Result<String, HistError> {
    let [cj, del, leave] = report.histograms.decode()?;
    let series: Vec<(&str, &Histogram<u64>)> =
        [("connect+join", &cj), ("delivery", &del), ("leave", &leave)]
            .into_iter()
            .filter(|(_, h)| !h.is_empty())
            .collect();
    Ok(render(
        &format!("{} latency by percentile", report.scenario),
        &series,
    ))
}

/// Renders the series.
fn render(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let top_us = series
        .iter()
        .map(|(_, h)| h.value_at_quantile(1.0 - 10f64.powf(-DECADES)))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let x = |d: f64| ML + pw * d / DECADES;
    let y = |us: f64| MT + ph * (1.0 - (us / top_us).min(1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" font-size="14">{title}</text>"#,
        ML
    );
    for d in 0..=DECADES as u32 {
        let label = ["0%", "90%", "99%", "99.9%", "99.99%"][d as usize];
        let xx = x(d as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" y1="{MT}" x2="{xx}" y2="{}" stroke="#ddd"/><text x="{xx}" y="{}" text-anchor="middle">{label}</text>"##,
            MT + ph,
            MT + ph + 18.0
        );
    }
    for i in 0..=5 {
        let us = top_us * i as f64 / 5.0;
        let yy = y(us);
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.1} ms</text>"##,
            ML + pw,
            ML - 6.0,
            yy + 4.0,
            us / 1000.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        ML + pw / 2.0,
        H - 8.0
    );
    for (i, (name, h)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = (0..=400)
            .map(|k| {
                let d = DECADES * k as f64 / 400.0;
                let q = 1.0 - 10f64.powf(-d);
                format!("{:.1},{:.1}", x(d), y(h.value_at_quantile(q) as f64))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{name} (n={})</text>"#,
            ML + 10.0,
            MT + 16.0 * (i + 1) as f64,
            h.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Hists;
    use crate::stats::new_hist;

    #[test]
    fn plots_only_non_empty_series() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let report = Report {
            scenario: "fanout".into(),
            histograms: Hists::encode(&[new_hist(), h, new_hist()]),
            ..Default::default()
        };
        let out = svg(&report).unwrap();
        assert!(out.starts_with("<svg"));
        assert!(out.contains("delivery (n=1000)"));
        assert!(!out.contains("connect+join"));
        assert_eq!(out.matches("<polyline").count(), 1);
    }
}
