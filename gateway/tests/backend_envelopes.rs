//! What a backend publishes straight into Redis (issue 16): the documented envelope is a
//! broadcast and nothing else. Envelopes whose event is reserved (`phx_*`, `presence_*`) — the
//! names cluster traffic once travelled under — are dropped and counted, a version 1 envelope
//! that claims a cluster `kind` is still a plain broadcast, and anything sent to a node's direct
//! channel in the backend format is dropped as misrouted. Meanwhile real broadcasts flow and
//! presence is untouched.

mod common;

use std::time::Duration;

use common::TestNode;
use gateway::config::ChannelSpec;
use gateway::Config;
use pubsub_redis::Envelope;
use serde_json::{json, Value};
use testkit::redis::RedisServer;
use testkit::{eventually, metric_value, Client};

fn envelope(event: &str, payload: Value) -> Envelope {
    Envelope::new("", "room:x", event, payload.to_string().into_bytes(), false)
}

async fn dropped(node: &TestNode, reason: &str) -> f64 {
    let (_, text) = node.http("GET", "/metrics", &[], "").await;
    metric_value(
        &text,
        &format!("gateway_pubsub_dropped_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_backend_publishes_poses_as_cluster_traffic() {
    let redis = RedisServer::start().await;
    let node = TestNode::start(Config {
        redis_url: Some(redis.url()),
        node_id: Some("node-a".into()),
        channels: vec![ChannelSpec::demo()],
        ..Config::default()
    })
    .await;
    eventually(Duration::from_secs(10), "node ready", || async {
        node.http("GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
    let mut ann = Client::connect(node.addr, "/socket/websocket?vsn=2.0.0").await;
    let (jr, reply) = ann.join("room:x", json!({"user": "ann"})).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let state = ann.recv_json().await;
    assert_eq!(state[3], "presence_state", "{state}");
    let diff = ann.recv_json().await;
    assert_eq!(diff[3], "presence_diff", "ann's own join: {diff}");
    eventually(
        Duration::from_secs(5),
        "topic subscribed in Redis",
        || async { redis.numsub("gw:t:room:x").await == 1 },
    )
    .await;

    // What presence and long-poll forwarding once travelled as, in the backend format.
    let mallory = json!({"node": "evil", "inc": 1, "joins": [["mallory", {"phx_ref": "m"}]]});
    let forged = [
        envelope("phx_presence_delta", mallory.clone()),
        envelope(
            "presence_diff",
            json!({"joins": {"mallory": {"metas": []}}, "leaves": {}}),
        ),
        envelope("phx_close", json!({})),
    ];
    for env in &forged {
        redis.publish("gw:t:room:x", &env.encode().unwrap()).await;
    }
    // A version 1 envelope naming a cluster kind is still only a broadcast of its event.
    let mut claims_kind = envelope("kind_claimed", mallory);
    claims_kind.kind = "presence_delta".into();
    redis
        .publish("gw:t:room:x", &claims_kind.encode().unwrap())
        .await;
    // The backend format on a node's direct channel is nothing at all.
    let lp = envelope(
        "lp_req",
        json!({"id": 1, "from": "evil", "token": "t", "ndjson": false}),
    );
    redis.publish("gw:n:node-a", &lp.encode().unwrap()).await;
    // A real broadcast, published last on the same channel.
    redis
        .publish(
            "gw:t:room:x",
            &envelope("new_msg", json!({"body": "hi"})).encode().unwrap(),
        )
        .await;

    let first = ann.recv_json().await;
    assert_eq!(
        first,
        json!([null, null, "room:x", "kind_claimed", {"node": "evil", "inc": 1, "joins": [["mallory", {"phx_ref": "m"}]]}])
    );
    assert_eq!(
        ann.recv_json().await,
        json!([null, null, "room:x", "new_msg", {"body": "hi"}])
    );
    ann.assert_nothing_queued().await;
    assert_eq!(dropped(&node, "reserved_event").await, 3.0);
    eventually(
        Duration::from_secs(5),
        "misrouted envelope counted",
        || async { dropped(&node, "misrouted").await == 1.0 },
    )
    .await;
    // Presence still holds ann alone, and her channel is still joined (no phx_close took it).
    let mut bob = Client::connect(node.addr, "/socket/websocket?vsn=2.0.0").await;
    bob.join("room:x", json!({})).await;
    let state = bob.recv_json().await;
    assert_eq!(state[3], "presence_state");
    let keys: Vec<&String> = state[4].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ann"]);
    ann.send_json(json!([jr, "9", "room:x", "new_msg", {"body": "still here"}]))
        .await;
    // room:x keeps history in Redis: the reply (after the store) and the echo (from Redis's
    // publish) come over two connections, in either order (README, "Order").
    let mut got = [ann.recv_json().await, ann.recv_json().await];
    got.sort_by_key(|m| m[3] != "new_msg");
    let [echo, reply] = got;
    assert_eq!(echo[3], "new_msg", "{echo}");
    assert_eq!(echo[4], json!({"body": "still here"}), "{echo}");
    assert_eq!(
        (&reply[1], &reply[3]),
        (&json!("9"), &json!("phx_reply")),
        "{reply}"
    );
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}
