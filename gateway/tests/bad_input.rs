//! Bad input gets its documented answer (close code or HTTP status), and other sessions on the
//! node are unaffected: every case ends by proving a witness session still gets broadcasts.

mod common;

use std::time::Duration;

use common::TestNode;
use gateway::Config;
use serde_json::json;
use testkit::{frame, jwt, now, Client};

async fn node() -> TestNode {
    TestNode::start(Config {
        max_message_size: 4096,
        ..Config::default()
    })
    .await
}

/// A joined session that must keep working whatever happens to the others.
async fn witness(node: &TestNode) -> Client {
    let mut w = node.ws().await;
    w.join_ok("room:witness").await;
    w
}

async fn witness_still_served(node: &TestNode, w: &mut Client) {
    node.broadcast("room:witness", "ping", json!({"ok": true}))
        .await;
    assert_eq!(
        w.recv_json().await,
        json!([null, null, "room:witness", "ping", {"ok": true}])
    );
}

async fn closes_with(node: &TestNode, bytes: &[u8], code: u16) {
    let mut w = witness(node).await;
    let mut c = node.ws().await;
    c.join_ok("room:bad").await;
    c.send_raw(bytes).await;
    assert_eq!(
        c.expect_close().await,
        Some(code),
        "for input {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
    );
    witness_still_served(node, &mut w).await;
}

#[tokio::test]
async fn malformed_json_wrong_arity_and_non_string_refs_close_4005() {
    let node = node().await;
    for text in [
        "not json at all",
        r#"["1","2","room:bad","new_msg"]"#,
        r#"[1,2,"room:bad","new_msg",{}]"#,
        r#"["1","2",7,"new_msg",{}]"#,
        r#"{"topic":"room:bad"}"#,
    ] {
        closes_with(&node, &frame(0x81, text.as_bytes(), true), 4005).await;
    }
}

#[tokio::test]
async fn garbage_binary_closes_4005_also_on_v1() {
    let node = node().await;
    closes_with(&node, &frame(0x82, &[9, 9, 9], true), 4005).await;
    closes_with(&node, &frame(0x82, &[1, 0, 0, 0, 0], true), 4005).await;
    let mut w = witness(&node).await;
    // V1 reads JSON whatever the opcode (tests/one_path.rs): binary that is not JSON is a
    // malformed message, as on V2.
    let mut v1 = Client::connect(node.addr, "/socket/websocket?vsn=1.0.0").await;
    v1.send_binary(&[0, 0, 0, 0, 0]).await;
    assert_eq!(v1.expect_close().await, Some(4005));
    witness_still_served(&node, &mut w).await;
}

#[tokio::test]
async fn oversized_messages_close_1009_also_across_fragments() {
    let node = node().await;
    closes_with(&node, &frame(0x81, &vec![b' '; 5000], true), 1009).await;
    // Three fragments of 2,000 bytes: each is under the limit, the message is not.
    let mut frags = frame(0x01, &[b' '; 2000], true);
    frags.extend(frame(0x00, &[b' '; 2000], true));
    frags.extend(frame(0x80, &[b' '; 2000], true));
    closes_with(&node, &frags, 1009).await;
}

#[tokio::test]
async fn whole_and_fragmented_messages_alternate_on_one_connection() {
    // A whole message needs no assembler; a fragmented one (with a ping between its
    // fragments) gets one only while it lasts; each is answered, in order, either way.
    let node = node().await;
    let mut c = node.ws().await;
    let heartbeat = |r: &str| format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#);
    let fragmented = |r: &str| {
        let text = heartbeat(r);
        let (a, b) = text.as_bytes().split_at(10);
        let mut bytes = frame(0x01, a, true);
        bytes.extend(frame(0x89, b"p", true));
        bytes.extend(frame(0x80, b, true));
        bytes
    };
    for (r, bytes) in [
        ("1", frame(0x81, heartbeat("1").as_bytes(), true)),
        ("2", fragmented("2")),
        ("3", frame(0x81, heartbeat("3").as_bytes(), true)),
        ("4", fragmented("4")),
    ] {
        c.send_raw(&bytes).await;
        // The pong answering a fragmented message's ping is skipped; no other text comes.
        let reply = c
            .until("the heartbeat's reply", |m| m[3] == "phx_reply")
            .await;
        assert_eq!(reply[1], r, "reply to heartbeat {r}: {reply}");
        assert_eq!(reply[4]["status"], "ok");
    }
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let node = node().await;
    closes_with(&node, &frame(0x81, &[b'[', 0xff, 0xfe, b']'], true), 1007).await;
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let node = node().await;
    closes_with(&node, &frame(0x81, b"[]", false), 1002).await; // unmasked
    closes_with(&node, &frame(0xC1, b"[]", true), 1002).await; // reserved bit
    closes_with(&node, &frame(0x83, b"[]", true), 1002).await; // reserved opcode
    closes_with(&node, &frame(0x80, b"[]", true), 1002).await; // continuation without start
}

#[tokio::test]
async fn unknown_vsn_is_refused_before_the_upgrade() {
    let node = node().await;
    for vsn in ["3.0.0", "2.1.0", "banana"] {
        let r = Client::connect_with(node.addr, &format!("/socket/websocket?vsn={vsn}"), &[]).await;
        assert_eq!(r.err(), Some(403), "vsn {vsn}");
    }
    let (status, _) = node
        .http("GET", "/socket/websocket?vsn=2.0.0", &[], "")
        .await;
    assert_eq!(status, 400, "a plain GET without upgrade headers");
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let node = TestNode::start(Config {
        jwt_secret: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    let good = jwt("s3cret", json!({"sub": "1", "exp": now() + 60}));
    let mut ok = Client::connect(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={good}"),
    )
    .await;
    ok.join_ok("room:t").await;
    let expired = jwt("s3cret", json!({"sub": "1", "exp": now() - 3600}));
    let wrong = jwt("other", json!({"sub": "1", "exp": now() + 60}));
    let no_exp = jwt("s3cret", json!({"sub": "1"}));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none"}"#),
        b64.encode(json!({"sub":"1","exp":now()+60}).to_string())
    );
    for (what, token) in [
        ("missing", None),
        ("expired", Some(expired)),
        ("wrong signature", Some(wrong)),
        ("no exp", Some(no_exp)),
        ("alg none", Some(none)),
        ("garbage", Some("x.y.z".into())),
    ] {
        let path = match token {
            Some(t) => format!("/socket/websocket?vsn=2.0.0&token={t}"),
            None => "/socket/websocket?vsn=2.0.0".into(),
        };
        assert_eq!(
            Client::connect_with(node.addr, &path, &[]).await.err(),
            Some(403),
            "{what}"
        );
    }
    // The authToken subprotocol: accepted and answered with `phoenix`.
    let proto = format!(
        "phoenix, base64url.bearer.phx.{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&good)
    );
    let (_, _) = testkit::ws::upgrade(
        node.addr,
        "/socket/websocket?vsn=2.0.0",
        &[("Sec-WebSocket-Protocol", &proto)],
    )
    .await
    .expect("authToken accepted");
    ok.assert_nothing_queued().await;
}

#[tokio::test]
async fn origin_outside_the_allow_list_is_refused() {
    let node = TestNode::start(Config {
        check_origin: vec!["https://app.example.com".into()],
        ..Config::default()
    })
    .await;
    let refused = Client::connect_with(
        node.addr,
        "/socket/websocket?vsn=2.0.0",
        &[("Origin", "https://evil.example.net")],
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    assert!(Client::connect_with(
        node.addr,
        "/socket/websocket?vsn=2.0.0",
        &[("Origin", "https://app.example.com")]
    )
    .await
    .is_ok());
    assert!(
        Client::connect_with(node.addr, "/socket/websocket?vsn=2.0.0", &[])
            .await
            .is_ok(),
        "no Origin header: allowed"
    );
}

#[tokio::test]
async fn idle_sessions_are_closed_4001() {
    let node = TestNode::start(Config {
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await;
    let mut c = node.ws().await;
    c.join_ok("room:idle").await;
    // The server closes on its own after ~1-2 s of silence (recv waits up to 5 s).
    assert_eq!(c.expect_close().await, Some(4001));
}

#[tokio::test]
async fn a_slow_consumer_is_closed_4002_and_nobody_else_slows_down() {
    let node = TestNode::start(Config {
        outbox_max_frames: 64,
        outbox_max_bytes: 1 << 20,
        ..Config::default()
    })
    .await;
    let mut w = witness(&node).await;
    // A client that joins and then never reads.
    let mut slow = node.ws().await;
    slow.join_ok("room:flood").await;
    slow.join_ok("room:witness").await;
    let big = "x".repeat(60_000);
    // Enough to fill the kernel buffers of the silent client and then its outbox.
    for _ in 0..400 {
        node.broadcast("room:flood", "blob", json!({ "d": big }))
            .await;
    }
    witness_still_served(&node, &mut w).await;
    let (_, metrics) = node.http("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("gateway_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    assert_eq!(slow.expect_close().await, Some(4002));
}

#[tokio::test]
async fn api_answers_bad_requests_clearly() {
    let node = TestNode::start(Config {
        api_key: Some("k3y".into()),
        ..Config::default()
    })
    .await;
    let body = json!({"topic": "room:1", "event": "e", "payload": {}}).to_string();
    assert_eq!(node.http("POST", "/api/broadcast", &[], &body).await.0, 401);
    assert_eq!(
        node.http(
            "POST",
            "/api/broadcast",
            &[("Authorization", "Bearer nope")],
            &body
        )
        .await
        .0,
        401
    );
    assert_eq!(
        node.http(
            "POST",
            "/api/broadcast",
            &[("Authorization", "Bearer k3y")],
            &body
        )
        .await
        .0,
        202
    );
    for bad in [
        "",
        "{",
        r#"{"topic":"room:1"}"#,
        r#"{"topic":"","event":"e"}"#,
        r#"{"topic":1,"event":"e"}"#,
        r#"{"id":"x"}"#,
    ] {
        let (status, text) = node
            .http(
                "POST",
                "/api/broadcast",
                &[("Authorization", "Bearer k3y")],
                bad,
            )
            .await;
        assert_eq!(status, 400, "{bad}");
        assert!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"].is_string());
    }
    let (status, _) = node
        .http(
            "POST",
            "/api/disconnect",
            &[("Authorization", "Bearer k3y")],
            "{}",
        )
        .await;
    assert_eq!(status, 400);
}
