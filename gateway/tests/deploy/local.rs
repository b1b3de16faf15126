//! deploy/local: `cluster.py run` starts the compose topology as processes (Redis, three
//! nodes, a round-robin proxy: HAProxy or the Python one), and clients talk across nodes
//! through the proxy: WebSocket pushes, API broadcasts, a long-poll session whose requests
//! land on different nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use testkit::tools::{temp_dir, TempDir};
use testkit::{http, Client, LongPoll, Process, Spawn};

use crate::{join, root, tool, ws_sessions, WS};

/// `deploy/local/cluster.py run`: Redis, three nodes and a proxy; stopped (SIGTERM to the
/// script, which stops what it started) on drop.
struct LocalCluster {
    /// The script; dropped before its state directory.
    process: Process,
    proxy: SocketAddr,
    nodes: Vec<SocketAddr>,
    kind: String,
    _state: TempDir,
}

impl LocalCluster {
    async fn start(proxy: &str) -> LocalCluster {
        let state = temp_dir(&format!("local-{proxy}"));
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let process = Spawn::new("python3")
            .without_env("GATEWAY_*")
            .arg(root().join("deploy/local/cluster.py"))
            .args(["run", "--nodes", "3", "--proxy", proxy, "--bin-dir"])
            .arg(&bin_dir)
            .arg("--state")
            .arg(state.path())
            // short long-poll window: an empty poll in this test ends quickly
            .args(["--", "--longpoll-window-ms", "1000"])
            .spawn();
        // it prints KEY=VALUE lines, STATE last
        if let Err(output) = process
            .wait_line(Duration::from_secs(30), |l| l.starts_with("STATE="))
            .await
        {
            panic!("cluster.py did not start: {output}");
        }
        let vars: BTreeMap<String, String> = process
            .output()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let addr = |u: &str| -> SocketAddr {
            let a = u.trim_start_matches("http://");
            a.parse()
                .unwrap_or_else(|e| panic!("cluster.py printed {u:?}: {e}"))
        };
        LocalCluster {
            proxy: addr(&vars["PROXY_URL"]),
            nodes: vars["NODE_URLS"].split(',').map(addr).collect(),
            kind: vars["PROXY"].clone(),
            process,
            _state: state,
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM to our own child by pid: cluster.py stops its processes in order and exits
        self.process.terminate_blocking(Duration::from_secs(40));
    }
}

/// Clients through the proxy land on every node (round-robin, no stickiness) and still share
/// topics: client pushes, API broadcasts and a long-poll session whose every request may
/// reach a different node.
async fn exercise_local_cluster(proxy_kind: &str) {
    let cluster = LocalCluster::start(proxy_kind).await;
    assert_eq!(cluster.kind, proxy_kind);
    assert_eq!(cluster.nodes.len(), 3);

    // three WebSocket sessions, one per node
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(cluster.proxy, WS).await;
        join(&mut c, "room:deploy").await;
        clients.push(c);
    }
    let mut per_node = Vec::new();
    for n in &cluster.nodes {
        per_node.push(ws_sessions(*n).await);
    }
    assert_eq!(per_node, vec![1.0, 1.0, 1.0], "round-robin over the nodes");

    // a client push reaches the sessions on the other two nodes (through Redis)
    clients[0]
        .send_json(json!(["1", "2", "room:deploy", "new_msg", {"body": "across"}]))
        .await;
    for c in &mut clients {
        let m = c.until("cross-node new_msg", |m| m[3] == "new_msg").await;
        assert_eq!(m[4]["body"], "across");
    }
    // the HTTP API through the proxy, on whichever node it lands
    let body = json!({"topic": "room:deploy", "event": "shout", "payload": {"n": 7}}).to_string();
    let headers = [("Content-Type", "application/json")];
    assert_eq!(
        http(cluster.proxy, "POST", "/api/broadcast", &headers, &body)
            .await
            .0,
        202
    );
    for c in &mut clients {
        let m = c.until("API shout", |m| m[3] == "shout").await;
        assert_eq!(m[4]["n"], 7);
    }

    // long-poll: every request is a new connection, so the proxy spreads them over the nodes
    let mut lp = LongPoll::open(cluster.proxy, "", &[])
        .await
        .expect("long-poll open refused");
    let join = json!(["1", "1", "room:deploy", "phx_join", {}]);
    assert_eq!(lp.post(&[join]).await, json!({"status": 200}));
    lp.until("join reply", |m| {
        m[3] == "phx_reply" && m[4]["status"] == "ok"
    })
    .await;
    clients[2]
        .send_json(json!(["1", "3", "room:deploy", "new_msg", {"body": "to lp"}]))
        .await;
    lp.until("broadcast", |m| {
        m[3] == "new_msg" && m[4]["body"] == "to lp"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_through_haproxy() {
    tool("haproxy");
    exercise_local_cluster("haproxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_through_the_python_proxy() {
    exercise_local_cluster("python").await;
}
