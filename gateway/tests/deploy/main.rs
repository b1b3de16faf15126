//! The deployment files against the real tools and binaries: docker-compose.yml (Compose
//! Specification schema and Debian's docker-compose 1.29), the Dockerfile (hadolint), the
//! HAProxy configs (`haproxy -c`), the Kubernetes kustomizations (rendered by `kubectl
//! kustomize`, validated by `kubernetes-validate --strict`), the drain timing against the
//! grace period, the PrometheusRule against deploy/prometheus, and every flag, variable, path
//! and port those files name against `gateway --help`, `loadtest --help` and a running node.
//! Finally deploy/local starts the compose topology as processes (Redis, three nodes, a
//! round-robin proxy) and clients talk across nodes through the proxy.
//!
//! No Docker engine or Kubernetes cluster is needed: everything is checked offline. The
//! validators come from `bash .ci/setup-deploy`; a missing one fails the test with that
//! instruction (never a silent skip).
//!
//! By concern: `files` (compose, Dockerfile, build context, HAProxy, YAML lint), `k8s` (the
//! kustomizations, their drain arithmetic and settings on a real node, the load-test Job),
//! `names` (every flag, variable, path and port named exists), `local` (deploy/local).

#[path = "../common/mod.rs"]
mod common;
mod files;
mod k8s;
mod local;
mod names;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::tools::{check, stdout, yaml_docs};
use testkit::{eventually, http, metric, Client, Process};

use common::{deploy_tool as tool, workspace_root as root};

/// How long a node may take to become ready.
const WAIT: Duration = Duration::from_secs(10);

/// The gateway's HTTP surface (README "HTTP API", ARCHITECTURE §7).
pub const DOCUMENTED_PATHS: &[&str] = &[
    "/socket/websocket",
    "/socket/longpoll",
    "/api/broadcast",
    "/api/disconnect",
    "/metrics",
    "/healthz",
    "/readyz",
];

/// The kustomizations under deploy/k8s that must render.
pub const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "overlays/dev",
    "overlays/prod",
    "monitoring",
    "loadtest",
];

/// `kubectl kustomize deploy/k8s/<dir>`: (YAML text, documents).
pub fn kustomize(dir: &str) -> (String, Vec<Value>) {
    let kubectl = tool("kubectl");
    let out = check(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(root().join("deploy/k8s").join(dir)),
    );
    let text = stdout(&out);
    let docs = yaml_docs(&text);
    (text, docs)
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

/// `--flag` names and `GATEWAY_*`-style variables listed by a `--help` output.
#[derive(Debug, Default)]
pub struct Help {
    pub flags: BTreeSet<String>,
    pub envs: BTreeSet<String>,
}

impl Help {
    pub fn of(program: &Path, args: &[&str]) -> Help {
        let text = stdout(&check(Command::new(program).args(args).arg("--help")));
        let mut h = Help::default();
        for line in text.lines() {
            let t = line.trim_start();
            let t = t.strip_prefix("-h, ").unwrap_or(t);
            let t = t.split_once(", ").map_or(t, |(short, long)| {
                if short.len() == 2 && short.starts_with('-') {
                    long
                } else {
                    t
                }
            });
            if let Some(rest) = t.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                h.flags.insert(format!("--{name}"));
            }
            if let Some((_, rest)) = line.split_once("[env: ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                h.envs.insert(name);
            }
        }
        h
    }
}

pub fn gateway_help() -> Help {
    Help::of(Path::new(env!("CARGO_BIN_EXE_gateway")), &[])
}

/// The `loadtest` binary next to `gateway`, built (or confirmed fresh) with the same profile:
/// it belongs to another package, so cargo gives this test no path to it.
pub fn loadtest_bin() -> PathBuf {
    let gateway = Path::new(env!("CARGO_BIN_EXE_gateway"));
    let profile_dir = gateway.parent().expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args(["build", "--quiet", "-p", "loadtest", "--target-dir"])
        .arg(target_dir)
        .current_dir(root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    check(&mut cmd);
    profile_dir.join("loadtest")
}

/// The `gateway` binary with exactly `env` (plus PATH, and `RUST_LOG=info` unless `env` says
/// otherwise) and `args`: the settings a pod would give it, nothing from this machine.
pub async fn start_node(args: &[&str], env: &BTreeMap<String, String>) -> Process {
    common::gateway()
        .exact_env()
        .env("RUST_LOG", "info")
        .envs(env)
        .args(args)
        .start()
        .await
}

/// The WebSocket endpoint with the V2 serializer.
pub const WS: &str = "/socket/websocket?vsn=2.0.0";

/// Join `topic` with join ref "1" (the ref the tests' pushes carry); the reply must be ok.
pub async fn join(ws: &mut Client, topic: &str) {
    ws.send_json(json!(["1", "1", topic, "phx_join", {}])).await;
    let reply = ws
        .until("join reply", |m| m[1] == "1" && m[3] == "phx_reply")
        .await;
    assert_eq!(reply[4]["status"], "ok", "join {topic}: {reply}");
}

/// Waits until `node` answers `/readyz` with 200.
pub async fn wait_ready(node: SocketAddr) {
    eventually(WAIT, "node ready", || async {
        http(node, "GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
}

/// `gateway_sessions{transport="websocket"}` of one node.
pub async fn ws_sessions(node: SocketAddr) -> f64 {
    let (_, text) = http(node, "GET", "/metrics", &[], "").await;
    metric(&text, "gateway_sessions{transport=\"websocket\"}")
        .expect("gateway_sessions in the scrape")
}
