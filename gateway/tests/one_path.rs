//! One protocol path for both transports (issue 16): a client message is decoded, checked and
//! counted by the Session whichever transport carried it, so WebSocket and LongPoll agree.
//! Phoenix's V1 serializer ignores the frame opcode, so JSON in a binary frame (a WebSocket
//! binary frame, a base64 long-poll line) is a message on a V1 session; what is not JSON closes
//! the session as undecodable on both (4005 / HTTP 400). `gateway_received_bytes_total` counts the
//! message bytes the same way on both.

mod common;

use base64::Engine;
use common::TestNode;
use gateway::Config;
use serde_json::{json, Value};
use testkit::{http, metric_value, Client, Frame, LongPoll};

const V1_HEARTBEAT: &str = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#;

fn is_heartbeat_reply(v: &Value) -> bool {
    v["topic"] == "phoenix"
        && v["event"] == "phx_reply"
        && v["ref"] == "7"
        && v["payload"]["status"] == "ok"
}

async fn bytes_in(node: &TestNode) -> f64 {
    let (_, text) = http(node.addr, "GET", "/metrics", &[], "").await;
    metric_value(&text, "gateway_received_bytes_total")
}

/// A V1 long-poll session.
async fn lp_open(node: &TestNode) -> LongPoll {
    LongPoll::open_vsn(node.addr, "1.0.0", "", &[])
        .await
        .expect("long-poll open refused")
}

#[tokio::test]
async fn v1_json_in_a_binary_websocket_frame_is_a_message() {
    let node = TestNode::start(Config::default()).await;
    let mut v1 = Client::connect(node.addr, "/socket/websocket?vsn=1.0.0").await;
    v1.send_binary(V1_HEARTBEAT.as_bytes()).await;
    let reply = v1.recv_json().await;
    assert!(is_heartbeat_reply(&reply), "{reply}");
    // A join in a binary frame works too, and the session stays open.
    let join = json!({"topic": "room:bin", "event": "phx_join", "payload": {}, "ref": "8"});
    v1.send_binary(join.to_string().as_bytes()).await;
    let reply = v1.recv_json().await;
    assert_eq!(
        (reply["ref"].clone(), reply["payload"]["status"].clone()),
        (json!("8"), json!("ok")),
        "{reply}"
    );
    // Binary that is not JSON is undecodable, as on V2.
    v1.send_binary(&[0xde, 0xad, 0xbe, 0xef]).await;
    assert_eq!(v1.expect_close().await, Some(4005));
}

#[tokio::test]
async fn v1_json_in_a_base64_longpoll_line_is_a_message() {
    let node = TestNode::start(Config::default()).await;
    let mut lp = lp_open(&node).await;
    let line = base64::engine::general_purpose::STANDARD.encode(V1_HEARTBEAT);
    assert_eq!(
        lp.post_lines(lp.addr, &[line], &[]).await,
        json!({"status": 200})
    );
    let got = lp.messages(1).await;
    assert!(got.len() == 1 && is_heartbeat_reply(&got[0]), "{got:?}");
    // Base64 of something that is not JSON ends the session like WebSocket's 4005.
    let garbage = base64::engine::general_purpose::STANDARD.encode([0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        lp.post_lines(lp.addr, &[garbage], &[]).await,
        json!({"status": 400})
    );
    assert_eq!(lp.poll().await["status"], 410);
}

#[tokio::test]
async fn bytes_in_counts_the_same_message_alike_on_both_transports() {
    let node = TestNode::start(Config::default()).await;
    let msg = r#"["1","1","phoenix","heartbeat",{}]"#;
    let mut ws = Client::connect(node.addr, "/socket/websocket?vsn=2.0.0").await;
    let before = bytes_in(&node).await;
    ws.send_text(msg).await;
    assert!(matches!(ws.recv().await, Some(Frame::Text(_))));
    let over_ws = bytes_in(&node).await - before;

    let lp = LongPoll::open(node.addr, "", &[])
        .await
        .expect("long-poll open refused");
    let before = bytes_in(&node).await;
    lp.post_lines(lp.addr, &[msg.to_string()], &[]).await;
    let over_lp = bytes_in(&node).await - before;
    assert_eq!(
        over_ws,
        msg.len() as f64,
        "WebSocket counts the message bytes"
    );
    assert_eq!(over_lp, over_ws, "LongPoll counts them alike");
}
