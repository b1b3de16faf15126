//! History and recovery (issue 12) against real nodes: positions in the `ref` slot, joins with
//! `since` that replay exactly what was missed (in order, once, before live broadcasts), the
//! `recovered: false` cases, the HTTP API's 202-with-position / 503 / idempotency, and the
//! client push whose ok reply follows storage. `single_node` runs in-process nodes with the
//! memory store; `cluster` runs nodes over real `redis-server` processes.
//!
//! This file holds what both share: the channel rule, joining with `since`, publishing through
//! the API, and reading positioned broadcasts off a WebSocket.

mod bench;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod gaps;
mod intercept;
mod single_node;

use gateway::config::ChannelSpec;
use gateway::Config;
use serde_json::{json, Value};
use testkit::redis::RedisServer;
use testkit::Client;

use common::TestNode;

/// `room:*` keeping `size` broadcasts of `new_msg` for 300 s.
pub fn history_spec(size: u32) -> ChannelSpec {
    ChannelSpec {
        history_size: size,
        history_ttl_secs: 300,
        ..ChannelSpec::public("room:*", &["new_msg"])
    }
}

/// Join `topic` with `since` (none: no field); returns the ok reply's response.
pub async fn join_since(c: &mut Client, topic: &str, since: Option<&str>) -> Value {
    let payload = match since {
        Some(s) => json!({ "since": s }),
        None => json!({}),
    };
    let (jr, reply) = c.join(topic, payload).await;
    assert_eq!(reply[0], jr.as_str(), "{reply}");
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    reply[4]["response"].clone()
}

/// Broadcast `{"i": i}` through `/api/broadcast`; the position from the 202 answer.
pub async fn publish(node: &TestNode, topic: &str, i: u64) -> String {
    let body = json!({"topic": topic, "event": "new_msg", "payload": {"i": i}}).to_string();
    let (status, text) = node.http("POST", "/api/broadcast", &[], &body).await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], true, "{text}");
    v["position"].as_str().expect("a position").to_owned()
}

/// The next `new_msg` broadcast: (its position, its `i`). It must be the very next frame.
pub async fn next_msg(c: &mut Client, topic: &str) -> (String, u64) {
    let m = c.recv_json().await;
    assert_eq!(
        (m[0].clone(), m[2].clone(), m[3].clone()),
        (Value::Null, json!(topic), json!("new_msg")),
        "{m}"
    );
    let pos = m[1]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {m}"));
    (pos.to_owned(), m[4]["i"].as_u64().expect("i"))
}

/// The offset part of a position.
pub fn offset(position: &str) -> u64 {
    let (epoch, off) = position.rsplit_once('-').expect("epoch-offset");
    assert!(
        epoch.starts_with(|c: char| c.is_ascii_alphabetic()),
        "{position}"
    );
    off.parse().expect("numeric offset")
}

/// Nothing more is queued for `c` (a heartbeat reply comes next).
pub async fn nothing_more(c: &mut Client) {
    c.assert_nothing_queued().await;
}

/// A node over `redis` with one history rule (`history_spec(1000)`).
pub fn redis_config(redis: &RedisServer) -> Config {
    Config {
        redis_url: Some(redis.url()),
        channels: vec![history_spec(1000)],
        ..Config::default()
    }
}

/// Whether `node` answers `/readyz` with 200.
pub async fn ready(node: &TestNode) -> bool {
    node.http("GET", "/readyz", &[], "").await.0 == 200
}
