//! The short fault suite (issue 9): real `gateway` processes over a real `redis-server`, with
//! Redis paused (`CLIENT PAUSE`), killed and restarted, and cut off (a network namespace whose
//! link the test takes down: a black hole; needs root), a node SIGKILLed mid-broadcast, a node
//! drained (SIGTERM) during traffic, slow consumers, and a reconnect storm after a node loss.
//!
//! Every test asserts what clients see (sessions kept, close codes, which sequence-numbered
//! broadcasts arrived), what operators see (`/readyz`, the `/metrics` series the README's
//! failure table names), that survivors are unaffected and that no node panicked. Loss is
//! allowed only where cross-node pub/sub is at-most-once, and then a metric must show it.
//!
//! The tests run one at a time (`SERIAL`): they measure timings on a 2-core machine. Sizes
//! come from environment variables so `loadtest/bench/faults.sh` can run the long version:
//! `FAULTS_CLIENTS` (clients per node), `FAULTS_PAUSE_MS`, `FAULTS_CUT_SECS`,
//! `FAULTS_KILL_SECS`, `FAULTS_STORM_SESSIONS`, `FAULTS_STORM_SOURCES` (source addresses of the
//! storm clients), `FAULTS_STORM_SURVIVOR_ARGS` (flags of the nodes taking the storm) and
//! `FAULTS_GATEWAY_ARGS` (flags of every node). The defaults keep the file under a minute.
//!
//! This file holds what every fault test shares (the serial lock, the sizes, starting nodes);
//! `record` the clients, publishers and readiness samples that see what happens; the tests
//! are grouped by what fails: `redis_faults`, `node_faults`, `slow_consumers`,
//! `reconnect_storm`.

#[path = "../common/mod.rs"]
mod common;
mod node_faults;
mod reconnect_storm;
mod record;
mod redis_faults;
mod slow_consumers;

use std::time::Duration;

use common::GatewayProcess;
use testkit::eventually;

/// One fault test at a time: they time recoveries and would disturb each other's figures.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const WS_PATH: &str = "/socket/websocket?vsn=2.0.0";

/// `room:*` without presence, so clients see exactly the broadcasts the tests count.
const CHANNELS: &str = r#"
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]
presence = false
"#;

fn channels_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // One file for every run (same content), written by rename so runs in parallel never
        // read half of it, and nothing piles up in the temp directory.
        let dir = std::env::temp_dir();
        let p = dir.join("gw-faults-channels.toml");
        let tmp = dir.join(format!("gw-faults-channels.{}.tmp", std::process::id()));
        std::fs::write(&tmp, CHANNELS).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p.to_string_lossy().into_owned()
    })
    .clone()
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Extra flags for every node (`FAULTS_GATEWAY_ARGS`, whitespace separated), e.g. admission
/// control limits in the long run.
pub fn extra_args() -> Vec<String> {
    std::env::var("FAULTS_GATEWAY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A node process in the cluster on `redis_url` (none: a single node) with `args` added.
pub async fn node(redis_url: Option<&str>, args: &[&str]) -> GatewayProcess {
    let config = channels_file();
    let mut all: Vec<String> = vec!["--config".into(), config];
    if let Some(url) = redis_url {
        all.extend(["--redis-url".into(), url.into()]);
    }
    all.extend(extra_args());
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    GatewayProcess::start(&refs).await
}

/// Three nodes on `redis_url`, all ready.
pub async fn cluster(redis_url: &str, args: [&[&str]; 3]) -> [GatewayProcess; 3] {
    let nodes = [
        node(Some(redis_url), args[0]).await,
        node(Some(redis_url), args[1]).await,
        node(Some(redis_url), args[2]).await,
    ];
    for n in &nodes {
        eventually(Duration::from_secs(15), "node ready", || n.ready()).await;
    }
    nodes
}
