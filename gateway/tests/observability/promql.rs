//! The reference checker: a `/metrics` scrape parsed into families, types and label sets, the
//! metric selectors of a PromQL expression, and whether Prometheus would find series for a
//! selector in that scrape (tested against what it must reject).

use std::collections::BTreeMap;

/// Prometheus adds these to every series from the scrape target; a scrape never has them.
const TARGET_LABELS: &[&str] = &["instance", "job", "node", "pod", "namespace"];

/// A parsed `/metrics` scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name -> `# TYPE` (counter, gauge, histogram, ...).
    types: BTreeMap<String, String>,
    /// Sample name (with `_bucket`/`_sum`/`_count` for histograms) -> label sets.
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let mut labels = BTreeMap::new();
            if line[name_end..].starts_with('{') {
                let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
                for (k, _, v) in parse_matchers(body) {
                    labels.insert(k, v);
                }
            }
            s.samples.entry(name.to_string()).or_default().push(labels);
        }
        s
    }

    /// The value of the sample `name` whose labels include `want`.
    pub fn value(&self, text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
        for line in text.lines().filter(|l| l.starts_with(name)) {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let (sname, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_matchers(l.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            if sname == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, _, lv)| lk == k && lv == v))
            {
                return value.parse().expect("numeric sample");
            }
        }
        panic!("no sample {name}{want:?} in the scrape");
    }

    /// Whether a PromQL selector would find series in this scrape; `Err` says why not.
    pub fn check(&self, sel: &Selector) -> Result<(), String> {
        let name = &sel.name;
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).is_some_and(|t| t == "histogram") {
                    break;
                }
                if suffix == "_bucket" {
                    return Err(format!("{name}: {base} is not a histogram"));
                }
            }
        }
        let Some(series) = self.samples.get(name) else {
            if self.types.get(name).is_some_and(|t| t == "histogram") {
                return Err(format!(
                    "{name} is a histogram: query {name}_bucket, _sum or _count"
                ));
            }
            return Err(format!("{name} is not exported by the node"));
        };
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !series.iter().any(|l| l.contains_key(label)) {
                return Err(format!("{name} has no label {label:?}"));
            }
            // an equality (or inequality) on a value that never occurs is a typo: the first
            // selects nothing, the second filters nothing
            let literal = !value.contains('$');
            if (op == "=" || op == "!=")
                && literal
                && !series
                    .iter()
                    .any(|l| l.get(label).is_some_and(|v| v == value))
            {
                return Err(format!("{name} never has {label}={value:?}"));
            }
        }
        Ok(())
    }
}

/// A metric selector found in a PromQL expression.
#[derive(Debug, PartialEq)]
pub struct Selector {
    pub name: String,
    /// (label, operator, value) from `{...}`.
    pub matchers: Vec<(String, String, String)>,
}

/// `label op "value", ...` as found between `{` and `}`.
fn parse_matchers(body: &str) -> Vec<(String, String, String)> {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let label = body[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = body[op_start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if label.is_empty() || op.is_empty() || i >= b.len() {
            break;
        }
        let (value, used) = string_literal(&body[i..]);
        out.push((label, op, value));
        i += used;
    }
    out
}

/// The string literal at the start of `s` (`"…"`, `'…'` or `` `…` ``): (content, bytes used).
fn string_literal(s: &str) -> (String, usize) {
    let mut chars = s.char_indices();
    let Some((_, quote)) = chars.next() else {
        return (String::new(), 0);
    };
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' && quote != '`' {
            escaped = true;
        } else if c == quote {
            return (out, i + c.len_utf8());
        } else {
            out.push(c);
        }
    }
    (out, s.len())
}

/// Every `gateway_*` / `process_*` selector in a PromQL expression (Grafana variables such as
/// `$instance` and string contents are not metric names).
pub fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i += string_literal(&expr[i..]).1;
        } else if c == b'{' {
            // a selector without a name before it, or label matchers already consumed
            let end = expr[i..].find('}').map_or(b.len(), |j| i + j + 1);
            i = end;
        } else if (c.is_ascii_alphabetic() || c == b'_')
            && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'$'))
        {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let mut matchers = Vec::new();
            if j < b.len() && b[j] == b'{' {
                let end = expr[j..].find('}').map_or(b.len(), |k| j + k);
                matchers = parse_matchers(&expr[j + 1..end]);
                i = (end + 1).min(b.len());
            }
            if name.starts_with("gateway_") || name.starts_with("process_") {
                out.push(Selector {
                    name: name.to_string(),
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The reference checker itself: what Prometheus would not find is reported.
#[test]
fn reference_checker_rejects_what_prometheus_would_not_find() {
    let scrape = Scrape::parse(
        "# TYPE gateway_lat_seconds histogram\n\
         gateway_lat_seconds_bucket{le=\"0.1\"} 1\ngateway_lat_seconds_bucket{le=\"+Inf\"} 1\n\
         gateway_lat_seconds_sum 0.05\ngateway_lat_seconds_count 1\n\
         # TYPE gateway_drops_total counter\n\
         gateway_drops_total{reason=\"full\"} 0\ngateway_drops_total{reason=\"own_echo\"} 3\n",
    );
    let ok = |e: &str| {
        let sels = selectors(e);
        assert!(!sels.is_empty(), "no selector found in {e}");
        sels.iter().try_for_each(|s| scrape.check(s))
    };
    ok("histogram_quantile(0.99, sum by (le) (rate(gateway_lat_seconds_bucket[5m])))").unwrap();
    ok("rate(gateway_lat_seconds_sum[5m]) / rate(gateway_lat_seconds_count[5m])").unwrap();
    ok(r#"rate(gateway_drops_total{reason!="own_echo", instance=~"$instance"}[5m])"#).unwrap();
    // a histogram family without its suffix selects nothing
    assert!(ok("rate(gateway_lat_seconds[5m])").is_err());
    // a counter has no buckets
    assert!(ok("rate(gateway_drops_total_bucket[5m])").is_err());
    // a misspelt label value: selects nothing, or filters nothing
    assert!(ok(r#"gateway_drops_total{reason="ful"}"#).is_err());
    assert!(ok(r#"gateway_drops_total{reason!="own-echo"}"#).is_err());
    // an unknown label
    assert!(ok(r#"gateway_drops_total{kind="full"}"#).is_err());
    // an unknown metric
    assert!(ok("gateway_drops_totals").is_err());
    // string contents and Grafana variables are not metric names
    assert_eq!(
        selectors(r#"label_values(gateway_sessions, "gateway_fake") + $gateway_var"#),
        vec![Selector {
            name: "gateway_sessions".into(),
            matchers: vec![]
        }]
    );
}
