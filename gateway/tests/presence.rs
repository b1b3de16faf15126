//! Presence as phoenix.js consumes it: `presence_state` after every join, `presence_diff` on
//! joins, leaves and updates (several metas per key), replicated across nodes (late joiners get
//! the full state), and a node that goes silent has its presences leave everywhere.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::TestNode;
use gateway::pubsub::local::LocalBus;
use gateway::{Config, Gateway};
use serde_json::{json, Value};
use testkit::Client;

fn config() -> Config {
    Config {
        presence_heartbeat: Duration::from_millis(100),
        presence_down_after: Duration::from_millis(600),
        ..Config::default()
    }
}

/// What a phoenix.js Presence would hold: key → phx_refs, built from state + diffs.
#[derive(Default, Debug)]
struct View {
    keys: BTreeMap<String, BTreeSet<String>>,
    joined_ref: Option<String>,
}

impl View {
    fn refs(metas: &Value) -> impl Iterator<Item = String> + '_ {
        metas["metas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
    }

    fn apply(&mut self, frame: &Value) {
        match frame[3].as_str().unwrap() {
            "presence_state" => {
                assert_eq!(
                    frame[0].as_str(),
                    self.joined_ref.as_deref(),
                    "state carries the current join_ref"
                );
                self.keys = frame[4]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), Self::refs(v).collect()))
                    .collect();
            }
            "presence_diff" => {
                assert!(frame[0].is_null(), "diffs are broadcasts");
                for (k, v) in frame[4]["joins"].as_object().unwrap() {
                    self.keys
                        .entry(k.clone())
                        .or_default()
                        .extend(Self::refs(v));
                }
                for (k, v) in frame[4]["leaves"].as_object().unwrap() {
                    let set = self.keys.entry(k.clone()).or_default();
                    for r in Self::refs(v) {
                        set.remove(&r);
                    }
                    if set.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
            _ => {}
        }
    }

    fn summary(&self) -> BTreeMap<String, usize> {
        self.keys
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }
}

struct Member {
    c: Client,
    view: View,
    jr: String,
}

impl Member {
    async fn join(node: &TestNode, topic: &str, payload: Value) -> Member {
        let mut c = node.ws().await;
        let (jr, reply) = c.join(topic, payload).await;
        assert_eq!(reply[4]["status"], "ok");
        let mut view = View {
            joined_ref: Some(jr.clone()),
            ..View::default()
        };
        let state = c.recv_json().await;
        assert_eq!(state[3], "presence_state", "{state}");
        view.apply(&state);
        Member { c, view, jr }
    }

    /// Apply frames until the view equals `want` (bounded wait).
    async fn until(&mut self, want: &[(&str, usize)]) {
        let want: BTreeMap<String, usize> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let start = Instant::now();
        while self.view.summary() != want {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "view {:?} never became {want:?}",
                self.view.summary()
            );
            let f = self.c.recv_json().await;
            self.view.apply(&f);
        }
    }
}

#[tokio::test]
async fn joins_tabs_updates_and_leaves_on_one_node() {
    let node = TestNode::start_gateway(Gateway::new(config())).await;
    let mut ann = Member::join(
        &node,
        "room:p",
        json!({"user": "ann", "status": "here", "secret": "x"}),
    )
    .await;
    assert_eq!(ann.view.summary(), BTreeMap::from([("ann".to_string(), 1)]));
    let mut bob = Member::join(&node, "room:p", json!({"user": "bob"})).await;
    assert_eq!(bob.view.summary().len(), 2);
    ann.until(&[("ann", 1), ("bob", 1)]).await;
    // Metas carry online_at and allow-listed fields only.
    let state: Value = {
        let mut viewer = node.ws().await;
        viewer.join("room:p", json!({})).await;
        viewer.recv_json().await
    };
    let meta = &state[4]["ann"]["metas"][0];
    assert!(
        meta["online_at"].is_u64() && meta["status"] == "here" && meta.get("secret").is_none(),
        "{meta}"
    );
    // A viewer without `user` is not tracked.
    assert_eq!(state[4].as_object().unwrap().len(), 2);
    // Same key from a second tab: two metas.
    let _ann2 = Member::join(&node, "room:p", json!({"user": "ann"})).await;
    bob.until(&[("ann", 2), ("bob", 1)]).await;
    // Update: one diff joins the new meta (phx_ref_prev) and leaves the old.
    ann.c
        .send_json(json!([ann.jr, "9", "room:p", "presence_update", {"status": "away"}]))
        .await;
    let (mut saw_update, start) = (false, Instant::now());
    while !saw_update {
        assert!(start.elapsed() < Duration::from_secs(5));
        let f = bob.c.recv_json().await;
        if f[3] == "presence_diff"
            && f[4]["joins"]["ann"].is_object()
            && f[4]["leaves"]["ann"].is_object()
        {
            let new = &f[4]["joins"]["ann"]["metas"][0];
            assert_eq!(new["status"], "away");
            assert_eq!(
                new["phx_ref_prev"],
                f[4]["leaves"]["ann"]["metas"][0]["phx_ref"]
            );
            saw_update = true;
        }
        bob.view.apply(&f);
    }
    bob.until(&[("ann", 2), ("bob", 1)]).await;
    // Leave, then disconnect: each removes its meta.
    ann.c
        .send_json(json!([ann.jr, "10", "room:p", "phx_leave", {}]))
        .await;
    bob.until(&[("ann", 1), ("bob", 1)]).await;
    drop(_ann2);
    bob.until(&[("bob", 1)]).await;
}

#[tokio::test]
async fn presence_is_replicated_and_late_nodes_get_the_full_state() {
    let bus = LocalBus::new();
    let a = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let b = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let c = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let mut ann = Member::join(&a, "room:x", json!({"user": "ann"})).await;
    let mut bob = Member::join(&b, "room:x", json!({"user": "bob"})).await;
    // B was the first subscriber on its node: it fetched A's share of the state.
    bob.until(&[("ann", 1), ("bob", 1)]).await;
    ann.until(&[("ann", 1), ("bob", 1)]).await;
    // C joins late: full state (its own join plus what the others hold) arrives.
    let mut cat = Member::join(&c, "room:x", json!({"user": "cat"})).await;
    cat.until(&[("ann", 1), ("bob", 1), ("cat", 1)]).await;
    ann.until(&[("ann", 1), ("bob", 1), ("cat", 1)]).await;
    bob.until(&[("ann", 1), ("bob", 1), ("cat", 1)]).await;
    // A rejoin gets a fresh presence_state with the current join_ref.
    let (jr, _) = cat.c.join("room:x", json!({"user": "cat"})).await;
    cat.view.joined_ref = Some(jr);
    cat.until(&[("ann", 1), ("bob", 1), ("cat", 1)]).await;
}

#[tokio::test]
async fn a_silent_node_has_its_presences_leave_everywhere() {
    let bus = LocalBus::new();
    let a = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let b = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let mut ann = Member::join(&a, "room:d", json!({"user": "ann"})).await;
    let _bob = Member::join(&b, "room:d", json!({"user": "bob"})).await;
    ann.until(&[("ann", 1), ("bob", 1)]).await;
    // B stops abruptly (no drain): its heartbeats stop.
    let killed = Instant::now();
    drop(b);
    ann.until(&[("ann", 1)]).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(600 + 1000),
        "down detection took {took:?}"
    );
}
