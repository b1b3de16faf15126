//! A node with traffic behind it (clustered through a private `redis-server`): its scrape
//! passes `promtool check metrics`, reflects the traffic, and has every metric, label and
//! label value that the alert rules and the dashboard query.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use testkit::redis::RedisServer;
use testkit::tools::{run_with_input, temp_dir, write_file, TempDir};
use testkit::{eventually, http, Client, Process};

use crate::promql::{selectors, Scrape};
use crate::{dashboard_queries, rule_queries, tool};

/// How long the node may take to become ready.
const WAIT: Duration = Duration::from_secs(10);

/// The `gateway` binary on a free port at `RUST_LOG=info`.
pub async fn start_node(args: &[&str]) -> Process {
    crate::common::gateway_on_free_port(args, &[("RUST_LOG", "info")])
        .start()
        .await
}

/// `start_node` with `--config`: the demo channel's rules plus a `game:*` pattern whose
/// backend is a closed port (a join there is answered `backend unavailable`), so the backend
/// hook series exist. Also returns the directory holding the config (removed on drop).
pub async fn start_node_with_backend(args: &[&str]) -> (Process, TempDir) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = temp_dir("observability");
    let config = write_file(dir.path(), "gateway.toml", &channels_with_backend(closed));
    let config = config.to_str().unwrap();
    let mut all = vec!["--config", config];
    all.extend_from_slice(args);
    (start_node(&all).await, dir)
}

/// The demo channel's rules (`ChannelSpec::demo`) and a `game:*` pattern answered by a
/// backend at `backend`.
fn channels_with_backend(backend: std::net::SocketAddr) -> String {
    format!(
        r#"
[backend]
url = "http://{backend}/phx"

[[channels]]
pattern = "room:*"
broadcast = ["new_msg", "shout"]
presence = true
presence_meta = ["name", "status"]

[[channels]]
pattern = "game:*"
join = "backend"
handle_in = "backend"
"#
    )
}

/// A node with traffic behind it: its scrape passes promtool's linter, and every metric the
/// rules and the dashboard use is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scrape_lints_clean_and_has_every_queried_metric() {
    let promtool = tool("promtool");
    let redis = RedisServer::start().await;
    let (node, _config) =
        start_node_with_backend(&["--redis-url", &redis.url(), "--node-id", "obs-1"]).await;
    eventually(WAIT, "node ready", || async {
        http(node.addr, "GET", "/readyz", &[], "").await.0 == 200
    })
    .await;

    // traffic: a join, a client broadcast, an API broadcast, an unknown event, a refusal
    let mut ws = Client::connect(node.addr, "/socket/websocket?vsn=2.0.0").await;
    ws.send_json(json!(["1", "1", "room:1", "phx_join", {}]))
        .await;
    let reply = ws
        .until("join reply", |m| m[1] == "1" && m[3] == "phx_reply")
        .await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    ws.send_json(json!(["1", "2", "room:1", "new_msg", {"body": "hi"}]))
        .await;
    ws.until("own new_msg broadcast", |m| m[3] == "new_msg")
        .await;
    let (status, body) = http(
        node.addr,
        "POST",
        "/api/broadcast",
        &[],
        &json!({"topic": "room:1", "event": "shout", "payload": {"n": 1}}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    ws.until("API broadcast", |m| m[3] == "shout").await;
    ws.send_json(json!(["1", "3", "room:1", "no_such_event", {}]))
        .await;
    let err = ws.until("error reply", |m| m[1] == "3").await;
    assert_eq!(err[4]["status"], "error", "{err}");
    ws.send_json(json!(["4", "4", "game:1", "phx_join", {}]))
        .await;
    let err = ws.until("backend join reply", |m| m[1] == "4").await;
    assert_eq!(err[4]["response"]["reason"], "backend unavailable", "{err}");
    let refused = Client::connect_with(node.addr, "/socket/websocket?vsn=9.9.9", &[])
        .await
        .err();
    assert_eq!(refused, Some(403));

    let (status, text) = http(node.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let lint = run_with_input(
        Command::new(&promtool).args(["check", "metrics"]),
        text.as_bytes(),
    );
    assert!(
        lint.status.success(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let scrape = Scrape::parse(&text);
    // the scrape reflects the traffic (so it is this node's real state, not a stub)
    let ws_sessions = [("transport", "websocket")];
    assert_eq!(scrape.value(&text, "gateway_sessions", &ws_sessions), 1.0);
    assert!(scrape.value(&text, "gateway_joins_total", &[]) >= 1.0);
    assert!(scrape.value(&text, "gateway_broadcast_deliveries_total", &[]) >= 2.0);
    let vsn = [("reason", "vsn")];
    assert!(scrape.value(&text, "gateway_connect_refusals_total", &vsn) >= 1.0);
    assert_eq!(scrape.value(&text, "gateway_pubsub_healthy", &[]), 1.0);
    let join_unavailable = [("hook", "join"), ("reason", "unavailable")];
    assert_eq!(
        scrape.value(&text, "gateway_backend_errors_total", &join_unavailable),
        1.0
    );

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let queries = rule_queries()
        .into_iter()
        .map(|(n, q)| (format!("rule {n}"), q))
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|(w, q)| (format!("dashboard {w}"), q)),
        );
    for (origin, expr) in queries {
        let sels = selectors(&expr);
        assert!(
            !sels.is_empty() || expr.contains("up{"),
            "{origin} queries no gateway metric: {expr}"
        );
        for sel in sels {
            used.insert(sel.name.clone());
            if let Err(why) = scrape.check(&sel) {
                problems.push(format!("{origin}: {why}\n    in {expr}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries that would find nothing:\n{}",
        problems.join("\n")
    );
    // the brief's signals are all on the dashboard or in the alerts
    for name in [
        "gateway_sessions",
        "gateway_joins_total",
        "gateway_messages_received_total",
        "gateway_fanout_duration_seconds_bucket",
        "gateway_pubsub_healthy",
        "gateway_pubsub_canary_rtt_seconds_bucket",
        "gateway_pubsub_dropped_total",
        "gateway_memory_bytes_per_session",
        "gateway_draining",
        "gateway_slow_consumer_disconnects_total",
        "gateway_backend_errors_total",
        "gateway_backend_request_duration_seconds_bucket",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(used.contains(name), "{name} is queried nowhere");
    }
    drop(ws);
}
