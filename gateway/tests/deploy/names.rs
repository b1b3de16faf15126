//! Every flag, variable, path and port that compose and the Kubernetes files name exists:
//! flags and variables in `gateway --help` / `loadtest <scenario> --help`, paths among the
//! documented ones and answered by a running node, ports all 4000 = GATEWAY_PORT.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use testkit::http;
use testkit::tools::{read, yaml_file};

use crate::{
    gateway_help, kustomize, loadtest_bin, root, start_node, Help, DOCUMENTED_PATHS, KUSTOMIZATIONS,
};

/// Every `GATEWAY_*` name in `text` (word boundaries).
fn gateway_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(j) = text[i..].find("GATEWAY_") {
        let start = i + j;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_uppercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        // `GATEWAY_*` in prose is a pattern, not a name
        let whole = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if whole && !text[start..end].ends_with('_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every `--flag` token in a command line or shell script.
fn flags_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '=')
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| t.trim_end_matches(['\\', ',']).to_string())
        .collect()
}

fn deploy_text_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("docker-compose.yml"), root().join("Dockerfile")];
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let p = entry.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name != "node_modules" {
                    stack.push(p);
                }
            } else if !name.ends_with(".json") && name != "package-lock.json" {
                out.push(p);
            }
        }
    }
    out
}

/// Every flag, variable, path and port that compose and the Kubernetes files name exists:
/// flags and variables in `gateway --help` / `loadtest <scenario> --help`, paths among the
/// documented ones and answered by a running node, ports all 4000 = GATEWAY_PORT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_variable_path_and_port_named_exists() {
    let gw = gateway_help();
    let loadtest = loadtest_bin();
    let mut lt = Help::default();
    for scenario in ["capacity", "fanout", "churn"] {
        let h = Help::of(&loadtest, &[scenario]);
        lt.flags.extend(h.flags);
        lt.envs.extend(h.envs);
    }
    assert!(gw.flags.contains("--redis-url") && gw.envs.contains("GATEWAY_REDIS_URL"));

    // variables, anywhere in the deployment files and the guide (comments included)
    let mut unknown = Vec::new();
    for file in deploy_text_files() {
        for var in gateway_vars(&read(&file)) {
            if !gw.envs.contains(&var) && !lt.envs.contains(&var) {
                unknown.push(format!("{}: {var}", file.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "variables no binary reads:\n{}",
        unknown.join("\n")
    );

    // compose: gateway services' variables and flags; loadtest's flags
    let compose = yaml_file(&root().join("docker-compose.yml"));
    let mut paths = BTreeSet::new();
    for (name, svc) in compose["services"].as_object().expect("services") {
        if svc["image"] != "gateway:local" {
            continue;
        }
        let command = svc["command"].to_string();
        if svc["entrypoint"].to_string().contains("loadtest") {
            let scenario = svc["command"][0].as_str().expect("scenario");
            let h = Help::of(&loadtest, &[scenario]);
            for f in flags_in(&command) {
                assert!(
                    h.flags.contains(&f),
                    "compose {name}: loadtest {scenario} has no {f}"
                );
            }
            paths.extend(ws_paths(&command));
        } else {
            for f in flags_in(&command) {
                assert!(gw.flags.contains(&f), "compose {name}: gateway has no {f}");
            }
            for var in svc["environment"].as_object().expect("environment").keys() {
                assert!(
                    !var.starts_with("GATEWAY_") || gw.envs.contains(var),
                    "compose {name}: gateway reads no {var}"
                );
            }
            assert_eq!(svc["environment"]["GATEWAY_PORT"], "4000", "compose {name}");
        }
    }
    let prom = yaml_file(&root().join("deploy/prometheus/prometheus.yml"));
    let gw_job = prom["scrape_configs"]
        .as_array()
        .expect("scrape configs")
        .iter()
        .find(|j| j["job_name"] == "gateway")
        .expect("gateway job");
    paths.insert(
        gw_job["metrics_path"]
            .as_str()
            .expect("metrics_path")
            .to_string(),
    );
    for t in gw_job["static_configs"][0]["targets"]
        .as_array()
        .expect("targets")
    {
        let t = t.as_str().expect("target");
        assert!(t.ends_with(":4000"), "prometheus target {t}");
        assert!(
            compose["services"][t.trim_end_matches(":4000")].is_object(),
            "{t}"
        );
    }
    for cfg in [
        "deploy/haproxy/haproxy.cfg",
        "deploy/k8s/loadtest/haproxy.cfg",
    ] {
        for line in read(&root().join(cfg)).lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("option httpchk GET ") {
                paths.insert(rest.trim().to_string());
            }
            if line.starts_with("server ") {
                assert!(line.contains(":4000"), "{cfg}: {line}");
            }
        }
    }

    // Kubernetes: containers of every rendered kustomization
    for dir in KUSTOMIZATIONS {
        let (_, docs) = kustomize(dir);
        let data_of = |kind: &str, name: &str| -> Vec<String> {
            docs.iter()
                .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .flat_map(|d| {
                    ["data", "stringData"]
                        .iter()
                        .filter_map(|k| d[*k].as_object())
                        .flat_map(|m| m.keys().cloned())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for d in &docs {
            let spec = match d["kind"].as_str() {
                Some("Deployment" | "StatefulSet" | "Job") => &d["spec"]["template"]["spec"],
                _ => continue,
            };
            let containers = spec["containers"]
                .as_array()
                .into_iter()
                .chain(spec["initContainers"].as_array())
                .flatten();
            for c in containers {
                let cname = c["name"].as_str().unwrap_or("");
                let is_gw = cname == "gateway";
                let is_lt = cname == "loadtest";
                if !is_gw && !is_lt {
                    continue;
                }
                let known = if is_gw { &gw } else { &lt };
                let mut vars: Vec<String> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect();
                for src in c["envFrom"].as_array().into_iter().flatten() {
                    if let Some(n) = src["configMapRef"]["name"].as_str() {
                        let keys = data_of("ConfigMap", n);
                        assert!(!keys.is_empty(), "{dir}: ConfigMap {n} not rendered");
                        vars.extend(keys);
                    }
                    if let Some(n) = src["secretRef"]["name"].as_str() {
                        vars.extend(data_of("Secret", n));
                    }
                }
                for v in vars.iter().filter(|v| v.starts_with("GATEWAY_")) {
                    assert!(known.envs.contains(v), "{dir}/{cname}: no binary reads {v}");
                }
                let cmdline = format!("{} {}", c["command"], c["args"]);
                if is_gw {
                    for f in flags_in(&cmdline) {
                        assert!(gw.flags.contains(&f), "{dir}: gateway has no {f}");
                    }
                    assert_eq!(c["ports"][0]["containerPort"], 4000, "{dir}");
                    assert_eq!(c["ports"][0]["name"], "http", "{dir}");
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert_eq!(c[probe]["httpGet"]["port"], "http", "{dir}");
                        paths.insert(c[probe]["httpGet"]["path"].as_str().expect("path").into());
                    }
                } else {
                    let scenario = c["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["name"] == "SCENARIO")
                        .and_then(|e| e["value"].as_str())
                        .expect("SCENARIO");
                    let extra = c["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["name"] == "LOADTEST_ARGS")
                        .and_then(|e| e["value"].as_str())
                        .unwrap_or("");
                    let h = Help::of(&loadtest, &[scenario]);
                    for f in flags_in(&cmdline).into_iter().chain(flags_in(extra)) {
                        assert!(
                            h.flags.contains(&f),
                            "{dir}: loadtest {scenario} has no {f}"
                        );
                    }
                    paths.extend(ws_paths(&cmdline));
                }
            }
        }
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if let Some(port) = d["data"]["GATEWAY_PORT"].as_str() {
                assert_eq!(port, "4000", "{dir}");
            }
        }
        for d in docs
            .iter()
            .filter(|d| d["kind"] == "Service" && d["metadata"]["name"] == "gateway")
        {
            assert_eq!(d["spec"]["ports"][0]["port"], 4000);
            assert_eq!(d["spec"]["ports"][0]["targetPort"], "http");
        }
        for d in docs.iter().filter(|d| d["kind"] == "ServiceMonitor") {
            for e in d["spec"]["endpoints"].as_array().expect("endpoints") {
                paths.insert(e["path"].as_str().expect("path").to_string());
            }
        }
    }
    let dockerfile = read(&root().join("Dockerfile"));
    assert!(dockerfile.contains("GET /healthz"));
    paths.insert("/healthz".into());

    assert!(paths.len() >= 4, "found too few paths: {paths:?}");
    for p in &paths {
        assert!(
            DOCUMENTED_PATHS.contains(&p.as_str()),
            "undocumented path {p}"
        );
    }
    // and a node answers each of them (a 404 would mean the route does not exist)
    let node = start_node(&["--port", "0", "--bind", "127.0.0.1"], &BTreeMap::new()).await;
    for p in &paths {
        let (status, _) = http(node.addr, "GET", p, &[], "").await;
        assert_ne!(status, 404, "GET {p} is 404 on a real node");
    }
}

/// `/socket/...` paths in ws:// URLs of a command line.
fn ws_paths(text: &str) -> Vec<String> {
    text.split("ws://")
        .skip(1)
        .map(|rest| {
            let url: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '?' | '\\'))
                .collect();
            assert!(
                url.starts_with("127.0.0.1:"),
                "loadtest refuses non-loopback {url}"
            );
            url.find('/').map_or("/".into(), |i| url[i..].to_string())
        })
        .collect()
}
