//! The Kubernetes files: every kustomization renders and passes strict validation, the
//! Deployments drain within their grace period and stay locked down, the PrometheusRule is the
//! compose rules file, the overlays' settings run a real node whose channel rules behave as
//! documented, and the load-test Job's script runs a shard against a real node.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{json, Value};
use testkit::redis::RedisServer;
use testkit::tools::{check, python3, run, stdout, temp_dir, write_file, yaml_file};
use testkit::{http, Client};

use crate::{
    find, join, kustomize, loadtest_bin, root, start_node, tool, wait_ready, KUSTOMIZATIONS, WS,
};

#[test]
fn kustomizations_render_and_pass_strict_kubernetes_validation() {
    let validate = tool("kubernetes-validate");
    let tmp = temp_dir("k8s");
    let mut files = Vec::new();
    for dir in KUSTOMIZATIONS {
        let (text, docs) = kustomize(dir);
        assert!(!docs.is_empty(), "{dir} renders nothing");
        files.push(write_file(
            tmp.path(),
            &format!("{}.yaml", dir.replace('/', "-")),
            &text,
        ));
    }
    files.push(root().join("deploy/k8s/base/secret.example.yaml"));
    let out = check(
        Command::new(&validate)
            .args(["--strict", "-k", "1.30.0"])
            .args(&files),
    );
    // CRDs (ServiceMonitor, PrometheusRule) have no bundled schema: a warning, checked below
    // by other means; every built-in kind must have passed
    let report = stdout(&out);
    assert!(!report.contains("ERROR"), "{report}");

    // --strict must really catch a misspelt field, or this test proves little
    let (dev, _) = kustomize("overlays/dev");
    let broken = write_file(
        tmp.path(),
        "broken.yaml",
        &dev.replacen("readinessProbe:", "readinessProbes:", 1),
    );
    let out = run(Command::new(&validate)
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .arg(&broken));
    assert!(!out.status.success(), "a misspelt field passed validation");
}

/// The overlays keep the base's contract: readiness on /readyz, liveness on /healthz,
/// non-root read-only containers, Redis configured, and a grace period that covers the
/// preStop pause plus the longest drain.
#[test]
fn deployments_drain_within_the_grace_period_and_stay_locked_down() {
    for overlay in ["overlays/dev", "overlays/prod"] {
        let (_, docs) = kustomize(overlay);
        let deploy = find(&docs, "Deployment", "gateway");
        let env = &find(&docs, "ConfigMap", "gateway-env")["data"];
        let pod = &deploy["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        let sleep: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .and_then(|cmd| (cmd[0] == "sleep").then(|| cmd[1].as_str()).flatten())
            .and_then(|s| s.parse().ok())
            .expect("preStop: sleep N");
        let ms = |k: &str| -> u64 {
            env[k]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{overlay}: {k} not set"))
        };
        let timeout_s = ms("GATEWAY_SHUTDOWN_TIMEOUT_MS").div_ceil(1000);
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(
            grace >= sleep + timeout_s + 5,
            "{overlay}: grace {grace}s < preStop {sleep}s + drain {timeout_s}s + 5s"
        );
        // the pacing can close at least 100,000 sessions before the timeout
        let per_s = ms("GATEWAY_DRAIN_BATCH_SIZE") * 1000 / ms("GATEWAY_DRAIN_INTERVAL_MS");
        assert!(
            per_s * timeout_s >= 100_000,
            "{overlay}: drain too slow: {per_s}/s"
        );
        assert!(env["GATEWAY_REDIS_URL"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis://")));

        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        // only sysctls that Kubernetes 1.29+ allows without a kubelet allow-list
        let safe = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ];
        for s in pod["securityContext"]["sysctls"]
            .as_array()
            .expect("sysctls")
        {
            let name = s["name"].as_str().expect("sysctl name");
            assert!(safe.contains(&name), "{overlay}: unsafe sysctl {name}");
        }
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|t| !t.is_empty()));
        for kind in [
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Namespace",
        ] {
            find(&docs, kind, "gateway");
        }
    }
    let (_, dev) = kustomize("overlays/dev");
    find(&dev, "StatefulSet", "redis");
    let (_, prod) = kustomize("overlays/prod");
    assert_eq!(
        find(&prod, "ConfigMap", "gateway-env")["data"]["GATEWAY_REDIS_CLUSTER"],
        "true"
    );
    // prod never ships a Secret: keys are created out of band
    assert!(!prod.iter().any(|d| d["kind"] == "Secret"));
}

/// The PrometheusRule carries exactly the groups of deploy/prometheus/rules, which promtool
/// accepts.
#[test]
fn prometheus_rule_is_the_compose_rules_file() {
    check(
        Command::new(python3())
            .arg(root().join("deploy/k8s/monitoring/sync-rules.py"))
            .arg("--check"),
    );
    let (_, docs) = kustomize("monitoring");
    let rule = find(&docs, "PrometheusRule", "gateway");
    let tmp = temp_dir("promrule");
    let file = write_file(
        tmp.path(),
        "rules.json",
        &json!({"groups": rule["spec"]["groups"]}).to_string(),
    );
    check(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(file),
    );
    let sm = find(&docs, "ServiceMonitor", "gateway");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // the alerts select job="gateway": the jobLabel's value on the Service
    let label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    let (_, base) = kustomize("base");
    assert_eq!(
        find(&base, "Service", "gateway")["metadata"]["labels"][label],
        "gateway"
    );
}

/// The dev and prod overlays' settings (ConfigMap + Secret, as a pod would get them) start a
/// real node, and the channel rules of the ConfigMap behave as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_settings_and_channel_rules_run_a_real_node() {
    let tmp = temp_dir("overlay-env");
    let redis = RedisServer::start().await;
    for overlay in ["overlays/dev", "overlays/prod"] {
        let (_, docs) = kustomize(overlay);
        let channels = find(&docs, "ConfigMap", "gateway-channels")["data"]["channels.toml"]
            .as_str()
            .expect("channels.toml")
            .to_string();
        let config = write_file(tmp.path(), "channels.toml", &channels);
        let mut env = BTreeMap::new();
        for (k, v) in find(&docs, "ConfigMap", "gateway-env")["data"]
            .as_object()
            .expect("data")
        {
            env.insert(k.clone(), v.as_str().expect("string value").to_string());
        }
        let secret = if overlay.ends_with("prod") {
            yaml_file(&root().join("deploy/k8s/base/secret.example.yaml"))
        } else {
            find(&docs, "Secret", "gateway-secrets").clone()
        };
        for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
            env.insert(k.clone(), v.as_str().expect("string").to_string());
        }
        for (k, v) in secret["data"].as_object().into_iter().flatten() {
            let bytes = base64_decode(v.as_str().expect("base64"));
            env.insert(k.clone(), String::from_utf8(bytes).expect("utf-8 secret"));
        }
        // the pod's values, except where this machine differs: a free port, the file's path,
        // a local Redis (prod's Redis Cluster seeds do not exist here)
        let api_key = env.get("GATEWAY_API_KEY").cloned().expect("an API key");
        env.insert("GATEWAY_PORT".into(), "0".into());
        env.insert("GATEWAY_BIND".into(), "127.0.0.1".into());
        env.insert("GATEWAY_CONFIG".into(), config.display().to_string());
        env.insert(
            "GATEWAY_REDIS_URL".into(),
            format!("redis://127.0.0.1:{}/", redis.port),
        );
        env.remove("GATEWAY_REDIS_CLUSTER");
        let jwt = env.contains_key("GATEWAY_JWT_SECRET");
        let node = start_node(&[], &env).await;
        wait_ready(node.addr).await;

        let body = json!({"topic": "room:1", "event": "shout", "payload": {}}).to_string();
        assert_eq!(
            http(node.addr, "POST", "/api/broadcast", &[], &body)
                .await
                .0,
            401
        );
        let auth = format!("Bearer {api_key}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        assert_eq!(
            http(node.addr, "POST", "/api/broadcast", &headers, &body)
                .await
                .0,
            202,
            "{overlay}"
        );
        if jwt {
            // prod: every connect needs a token
            let refused = Client::connect_with(node.addr, WS, &[]).await.err();
            assert_eq!(refused, Some(403), "{overlay}: connect without a token");
            continue;
        }
        let mut ws = Client::connect(node.addr, WS).await;
        join(&mut ws, "room:1").await;
        ws.send_json(json!(["1", "2", "room:1", "shout", {"x": 1}]))
            .await;
        ws.until("shout broadcast", |m| m[3] == "shout").await;
        // token channels refuse joins in open mode
        ws.send_json(json!(["3", "3", "private:1", "phx_join", {}]))
            .await;
        let r = ws.until("private join reply", |m| m[1] == "3").await;
        assert_eq!(r[4]["status"], "error", "{r}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// The load-test Job's shell script, run here exactly as the pod runs it (shard 2 of 2 of a
/// small capacity run against a real node), with the relay's port swapped for the node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_job_script_runs_a_shard() {
    let (_, docs) = kustomize("loadtest");
    let job = find(&docs, "Job", "gateway-loadtest");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let c = &spec["template"]["spec"]["containers"][0];
    let env_of = |name: &str| -> String {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("Job env {name}"))
            .to_string()
    };
    assert_eq!(
        env_of("SHARDS"),
        spec["completions"].to_string(),
        "SHARDS must equal completions"
    );
    assert_eq!(spec["parallelism"], spec["completions"]);
    assert_eq!(c["command"], json!(["/bin/sh", "-c"]));
    let script = c["args"][0].as_str().expect("script");
    assert!(script.contains("$((JOB_COMPLETION_INDEX + 1))/$SHARDS"));
    let relay = &spec["template"]["spec"]["initContainers"][0];
    assert_eq!(
        relay["restartPolicy"], "Always",
        "the relay is a native sidecar"
    );

    let loadtest = loadtest_bin();
    let node = start_node(&["--port", "0", "--bind", "127.0.0.1"], &BTreeMap::new()).await;
    let script = script.replace("127.0.0.1:4000", &node.addr.to_string());
    let tmp = temp_dir("loadtest-job");
    let report = tmp.path().join("report.json");
    let script = script.replace("/tmp/report.json", &report.display().to_string());
    let path = format!(
        "{}:{}",
        loadtest.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = check(
        Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", path)
            .env("SCENARIO", "capacity")
            .env("SESSIONS", "20")
            .env("SHARDS", "2")
            .env("JOB_COMPLETION_INDEX", "1")
            .env("LOADTEST_ARGS", "--hold-secs 0 --sources 2"),
    );
    let text = stdout(&out);
    let (_, json_text) = text
        .split_once("=== report shard 2/2\n")
        .unwrap_or_else(|| panic!("no report marker in:\n{text}"));
    let report: Value = serde_json::from_str(json_text).expect("the report is JSON");
    assert_eq!(report["scenario"], "capacity", "{report}");
    assert_eq!(report["shard"], json!([2, 2]), "{report}");
    // shard 2 of 2 of 20 sessions: 10, all joined
    assert_eq!(report["sessions_joined"], 10, "{report}");
    assert_eq!(report["sessions_failed"], 0, "{report}");
}
