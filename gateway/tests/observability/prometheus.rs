//! Prometheus: promtool checks the compose config and the rules and runs the alert unit tests
//! (every alert fires in one), parses every dashboard query, and a real Prometheus server
//! scraping a real node evaluates every rule without error, fires nothing on a healthy node and
//! finds series for every panel.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::longpoll::urlencode;
use testkit::redis::free_port;
use testkit::tools::{check, temp_dir, yaml_file, TempDir};
use testkit::{eventually, http, Process, Spawn};

use crate::scrape::start_node_with_backend;
use crate::{dashboard_queries, root, rule_queries, tool};

/// How long Prometheus may take to become ready.
const WAIT: Duration = Duration::from_secs(10);

/// promtool: the compose Prometheus config, the rules, and the alert unit tests; every alert
/// has a unit test in which it fires.
#[test]
fn prometheus_config_rules_and_alert_unit_tests() {
    let promtool = tool("promtool");
    let dir = root().join("deploy/prometheus");
    check(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    let mut rule_files: Vec<PathBuf> = std::fs::read_dir(dir.join("rules"))
        .expect("rules dir")
        .map(|e| e.expect("entry").path())
        .collect();
    rule_files.sort();
    check(
        Command::new(&promtool)
            .args(["check", "rules"])
            .args(&rule_files),
    );
    let tests: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .expect("tests dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!tests.is_empty());
    check(Command::new(&promtool).args(["test", "rules"]).args(&tests));

    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in &tests {
        for case in yaml_file(t)["tests"].as_array().expect("tests") {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().expect("alertname").to_string();
                if a["exp_alerts"].as_array().is_some_and(|v| !v.is_empty()) {
                    fired.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    let alerts: Vec<String> = rule_queries().into_iter().map(|(n, _)| n).collect();
    for name in &alerts {
        assert!(
            fired.contains(name),
            "alert {name} has no unit test where it fires"
        );
    }
    for required in [
        "GatewayPubSubDeaf",
        "GatewayNotReady",
        "GatewaySlowConsumerDisconnectsHigh",
        "GatewayFanoutLatencyHigh",
        "GatewayNearConnectionLimit",
        "GatewayPubSubPublishErrors",
        "GatewayDrainingTooLong",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "missing alert {required}"
        );
    }
    // the deaf alert is the one with a contract: 0 for 30 s
    let deaf = yaml_file(&dir.join("rules/gateway.yml"))["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .find(|r| r["alert"] == "GatewayPubSubDeaf")
        .expect("deaf alert");
    assert_eq!(deaf["expr"], "gateway_pubsub_healthy == 0");
    assert_eq!(deaf["for"], "30s");
    assert!(
        !quiet.is_empty(),
        "no unit test shows an alert staying quiet"
    );
}

/// Every panel query is valid PromQL: with Grafana's variables replaced by values, promtool
/// parses them as recording rules (a typo in a panel query is otherwise only seen in Grafana).
#[test]
fn dashboard_queries_are_valid_promql() {
    let promtool = tool("promtool");
    let rules: Vec<Value> = dashboard_queries()
        .into_iter()
        .filter(|(origin, _)| origin.starts_with("panels"))
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unreplaced Grafana variable in {expr}");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() > 20, "only {} panel queries", rules.len());
    let tmp = temp_dir("dashboard-promql");
    let file = tmp.path().join("dashboard-queries.json");
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).expect("write rules");
    check(Command::new(&promtool).args(["check", "rules"]).arg(&file));
}

/// A Prometheus server (Debian's `prometheus`) on a free port with its own storage; killed on
/// drop.
struct Prometheus {
    /// The server; dropped before its storage directory.
    _process: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    async fn start(config: &str) -> Prometheus {
        let dir = temp_dir("prometheus");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let process = Spawn::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .spawn();
        let ready = || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, "GET", "/-/ready", &[], "").await.0 == 200
        };
        eventually(WAIT, "prometheus ready", ready).await;
        Prometheus {
            _process: process,
            addr,
            _dir: dir,
        }
    }

    /// An instant query; panics unless Prometheus answers `success`.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let q = urlencode(expr);
        let path = format!("/api/v1/query?query={q}");
        let (status, body) = http(self.addr, "GET", &path, &[], "").await;
        let v: Value = serde_json::from_str(&body).expect("query answer JSON");
        assert!(
            status == 200 && v["status"] == "success",
            "query failed: {expr}\n{body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The real thing: Prometheus scrapes a node and loads the alert rules; every rule evaluates
/// without error (vector matching problems only show up here), no alert fires on a healthy
/// node, and every panel query returns series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_evaluates_every_rule_and_panel_against_a_node() {
    let (node, _config) = start_node_with_backend(&[]).await;
    let rules = root().join("deploy/prometheus/rules");
    let prom = Prometheus::start(&format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: ['{}/*.yml']\n\
         scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{}']\n",
        rules.display(),
        node.addr
    ))
    .await;
    // enough samples for the rate windows below, and every rule evaluated at least once
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = prom
            .query(r#"count_over_time(up{job="gateway"}[10s])"#)
            .await;
        let have = samples
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let (_, body) = http(prom.addr, "GET", "/api/v1/rules", &[], "").await;
        let rules: Value = serde_json::from_str(&body).expect("rules JSON");
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !all.is_empty()
            && all.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        if have >= 4.0 && evaluated {
            let broken: Vec<String> = all
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            assert!(
                broken.is_empty(),
                "rules failing to evaluate:\n{}",
                broken.join("\n")
            );
            assert_eq!(
                all.len(),
                rule_queries().len(),
                "Prometheus loaded other rules"
            );
            let active: Vec<String> = all
                .iter()
                .filter(|r| r["state"] != "inactive")
                .map(|r| format!("{} {}", r["name"], r["state"]))
                .collect();
            assert!(active.is_empty(), "alerts on a healthy node: {active:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has {have} samples, rules evaluated: {evaluated}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (origin, expr) in dashboard_queries() {
        if !origin.starts_with("panels") {
            continue;
        }
        let expr = expr
            .replace("$__rate_interval", "10s")
            .replace("$__interval", "10s")
            .replace("$__range", "10s")
            .replace("$instance", ".*");
        let result = prom.query(&expr).await;
        assert!(!result.is_empty(), "{origin} returns no series: {expr}");
    }
}
