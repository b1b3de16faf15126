//! The observability files in `deploy/` against the real tools and a real node: a `gateway`
//! process (clustered through a private `redis-server`) serves some WebSocket and HTTP traffic,
//! its `/metrics` scrape must pass `promtool check metrics`, and every metric that the alert
//! rules (`deploy/prometheus/rules`) and the Grafana dashboard
//! (`deploy/grafana/dashboards`) query must be in that scrape, with the label values they
//! match on. `promtool` checks the Prometheus config and rules and runs the alert unit tests;
//! the dashboard is validated against a JSON Schema generated from npm `@grafana/schema`.
//!
//! The validators come from `bash .ci/setup-deploy`; a missing one fails the test with that
//! instruction (never a silent skip).
//!
//! By concern: `scrape` (a live node's scrape against every query), `promql` (the reference
//! checker that reads scrapes and PromQL selectors), `prometheus` (promtool and a real
//! Prometheus server), `grafana` (the dashboard's schema, layout and provisioning).

#[path = "../common/mod.rs"]
mod common;
mod grafana;
mod prometheus;
mod promql;
mod scrape;

use serde_json::Value;
use testkit::tools::yaml_file;

use common::{deploy_tool as tool, workspace_root as root};

/// Every string under a key named `key`, anywhere in `v`, with its JSON path.
pub fn strings_under(v: &Value, key: &str, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}.{k}");
                if k == key {
                    if let Some(s) = child.as_str() {
                        out.push((p.clone(), s.to_string()));
                    }
                }
                strings_under(child, key, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                strings_under(child, key, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

pub fn dashboard() -> Value {
    let path = root().join("deploy/grafana/dashboards/gateway-cluster.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard JSON"))
        .expect("dashboard is JSON")
}

/// (where, PromQL) of every query the dashboard runs: panel targets and variable queries.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    strings_under(&d["panels"], "expr", "panels", &mut out);
    for (i, var) in d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .enumerate()
    {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .expect("variable query");
            out.push((format!("templating.list[{i}]"), q.to_string()));
        }
    }
    out
}

/// (alert or record name, PromQL) of every rule in deploy/prometheus/rules.
pub fn rule_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy/prometheus/rules")).expect("rules dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            for group in yaml_file(&path)["groups"].as_array().expect("groups") {
                for rule in group["rules"].as_array().expect("rules") {
                    let name = rule["alert"].as_str().or(rule["record"].as_str());
                    out.push((
                        name.expect("rule name").to_string(),
                        rule["expr"].as_str().expect("expr").to_string(),
                    ));
                }
            }
        }
    }
    out
}
