//! SLO gates: `--fail-if 'p99>50ms'` expressions evaluated against a finished report; the
//! process exits 1 when any holds. A gate on a figure the run did not measure counts as
//! violated, so a gate can never pass silently.
//!
//! Metrics: `p50 p90 p99 p999 max mean` (latency of the scenario's main histogram: delivery for
//! fan-out, connect+join otherwise), `loss`, `duplicates`, `errors`, `failed` (counts, or with
//! `%` relative to expected deliveries / sessions), `bytes_per_session`, `rate` (connect+join
//! sessions/s), `deliveries_per_sec`, `cycles_per_sec`, `recovery` (failover: first close to last
//! re-join), `full_delivery` (fan-out: first publish to last delivery, measured only when
//! nothing was lost). Units: `us ms s` for latency, `%`,
//! `B KiB MiB` for bytes.

use crate::report::{Latency, Report};
use serde::{Deserialize, Serialize};

/// Outcome of one gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloResult {
    /// The expression as given.
    pub expr: String,
    /// The measured value in the gate's unit (µs for latency, % for percent gates).
    pub value: Option<f64>,
    /// Whether the failure condition held.
    pub violated: bool,
}

/// Why a gate expression did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SloError {
    /// No comparison operator.
    #[error("no operator (> >= < <= ==) in {0:?}")]
    NoOperator(String),
    /// Unknown metric name.
    #[error("unknown metric {0:?} (p50 p90 p99 p999 max mean loss duplicates errors failed bytes_per_session rate deliveries_per_sec cycles_per_sec recovery full_delivery)")]
    Metric(String),
    /// Threshold not a number with a known unit.
    #[error("bad threshold {0:?}")]
    Threshold(String),
}

/// A parsed gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Source text.
    pub expr: String,
    /// Metric name.
    pub metric: String,
    /// Operator.
    pub op: String,
    /// Threshold in base units (µs, bytes, count) or percent when `percent`.
    pub threshold: f64,
    /// Threshold was given in `%`.
    pub percent: bool,
}

const METRICS: &[&str] = &[
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "mean",
    "loss",
    "duplicates",
    "errors",
    "failed",
    "bytes_per_session",
    "rate",
    "deliveries_per_sec",
    "cycles_per_sec",
    "recovery",
    "full_delivery",
];

/// Parses `metric op threshold[unit]`.
pub fn parse(expr: &str) -> Result<Gate, SloError> {
    let e: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let (pos, op) = [">=", "<=", "==", ">", "<"]
        .iter()
        .find_map(|op| e.find(op).map(|p| (p, *op)))
        .ok_or_else(|| SloError::NoOperator(expr.to_string()))?;
    let metric = e[..pos].to_ascii_lowercase();
    if !METRICS.contains(&metric.as_str()) {
        return Err(SloError::Metric(metric));
    }
    let raw = &e[pos + op.len()..];
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| SloError::Threshold(raw.to_string()))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "%" => 1.0,
        "kib" | "kb" => 1024.0,
        "mib" | "mb" => 1048576.0,
        _ => return Err(SloError::Threshold(raw.to_string())),
    };
    Ok(Gate {
        expr: expr.to_string(),
        metric,
        op: op.to_string(),
        threshold: n * scale,
        percent: unit == "%",
    })
}

/// Percentage of `part` in `whole` (0 when whole is 0).
fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The measured value for `g`, if the report has it.
fn value(g: &Gate, r: &Report) -> Option<f64> {
    let main: &Latency = match &r.fanout {
        Some(f) => &f.latency,
        None => &r.connect_join,
    };
    let expected = r.fanout.as_ref().map_or(0, |f| f.expected);
    Some(match g.metric.as_str() {
        "p50" => main.p50_us as f64,
        "p90" => main.p90_us as f64,
        "p99" => main.p99_us as f64,
        "p999" => main.p999_us as f64,
        "max" => main.max_us as f64,
        "mean" => main.mean_us,
        "loss" | "duplicates" => {
            let f = r.fanout.as_ref()?;
            let n = if g.metric == "loss" {
                f.loss
            } else {
                f.duplicates
            };
            if g.percent {
                pct(n, expected)
            } else {
                n as f64
            }
        }
        "errors" if g.percent => pct(r.errors_total, r.sessions_requested),
        "errors" => r.errors_total as f64,
        "failed" if g.percent => pct(r.sessions_failed, r.sessions_requested),
        "failed" => r.sessions_failed as f64,
        "bytes_per_session" => match (&r.capacity, &r.memory) {
            (Some(c), _) => c.bytes_per_session_proc.or(c.bytes_per_session_metrics)?,
            (None, Some(m)) => m.server_bytes_per_session?,
            (None, None) => return None,
        },
        "rate" => r.connect_join_rate,
        "deliveries_per_sec" => r.fanout.as_ref()?.deliveries_per_sec,
        "cycles_per_sec" => r.churn.as_ref()?.cycles_per_sec,
        "recovery" => r.failover.as_ref()?.recovery_secs? * 1e6,
        "full_delivery" => r.fanout.as_ref()?.full_delivery_secs? * 1e6,
        _ => return None,
    })
}

/// Evaluates every gate against `r`.
pub fn evaluate(gates: &[Gate], r: &Report) -> Vec<SloResult> {
    gates
        .iter()
        .map(|g| {
            let value = value(g, r);
            let violated = value.is_none_or(|v| match g.op.as_str() {
                ">" => v > g.threshold,
                ">=" => v >= g.threshold,
                "<" => v < g.threshold,
                "<=" => v <= g.threshold,
                _ => v == g.threshold,
            });
            SloResult {
                expr: g.expr.clone(),
                value,
                violated,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Capacity, Fanout};

    #[test]
    fn parses_units_and_operators() {
        let g = parse("p99 > 50ms").unwrap();
        assert_eq!(
            (g.metric.as_str(), g.op.as_str(), g.threshold),
            ("p99", ">", 50_000.0)
        );
        assert_eq!(parse("bytes_per_session>=2KiB").unwrap().threshold, 2048.0);
        assert!(parse("loss>0.5%").unwrap().percent);
        assert_eq!(parse("rate<1000").unwrap().op, "<");
        assert!(matches!(parse("p98>1ms"), Err(SloError::Metric(_))));
        assert!(matches!(parse("p99 50ms"), Err(SloError::NoOperator(_))));
        assert!(matches!(parse("p99>5parsecs"), Err(SloError::Threshold(_))));
    }

    #[test]
    fn evaluates_against_a_report() {
        let mut r = Report {
            sessions_requested: 100,
            errors_total: 1,
            ..Default::default()
        };
        r.fanout = Some(Fanout {
            expected: 1000,
            loss: 5,
            latency: Latency {
                p99_us: 40_000,
                ..Default::default()
            },
            ..Default::default()
        });
        let gates: Vec<Gate> = [
            "p99>50ms",
            "p99>30ms",
            "loss>0",
            "loss>1%",
            "errors>0",
            "bytes_per_session>2048",
        ]
        .iter()
        .map(|e| parse(e).unwrap())
        .collect();
        let v: Vec<bool> = evaluate(&gates, &r).iter().map(|x| x.violated).collect();
        // bytes_per_session is not measured by fan-out: the gate fails rather than passing silently.
        assert_eq!(v, [false, true, true, false, true, true]);
        r.capacity = Some(Capacity {
            bytes_per_session_metrics: Some(1500.0),
            ..Default::default()
        });
        let res = evaluate(&gates[5..], &r);
        assert_eq!((res[0].value, res[0].violated), (Some(1500.0), false));
    }

    #[test]
    fn full_delivery_is_measured_only_without_loss() {
        let gate = [parse("full_delivery>2s").unwrap()];
        let mut f = Fanout {
            expected: 10,
            unique: 10,
            deliveries: 10,
            first_publish_us: 1_000_000,
            last_delivery_us: 3_500_000,
            ..Default::default()
        };
        f.derive();
        assert_eq!(f.full_delivery_secs, Some(2.5));
        let mut r = Report {
            fanout: Some(f.clone()),
            ..Default::default()
        };
        let res = evaluate(&gate, &r);
        assert_eq!((res[0].value, res[0].violated), (Some(2.5e6), true));
        // One delivery missing: there is no full-delivery time, so the gate cannot pass.
        f.unique = 9;
        f.derive();
        assert_eq!((f.loss, f.full_delivery_secs), (1, None));
        r.fanout = Some(f);
        let res = evaluate(&gate, &r);
        assert_eq!((res[0].value, res[0].violated), (None, true));
    }
}
