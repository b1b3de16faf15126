//! Admission and rate limits, each with its documented answer while other sessions carry on:
//! the session cap (HTTP 503 + Retry-After on both transports), the per-IP connect rate (HTTP
//! 429 + Retry-After, per source address), and the per-session message rate (error replies,
//! then close 4029).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestNode;
use gateway::Config;
use serde_json::{json, Value};
use testkit::{eventually, http_full, metric_value, Client, Frame, LongPoll, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WS: &str = "/socket/websocket?vsn=2.0.0";
const LP: &str = "/socket/longpoll?vsn=2.0.0";

async fn metrics(node: &TestNode) -> String {
    node.http("GET", "/metrics", &[], "").await.1
}

/// The HTTP status a WebSocket handshake from source address `from` gets (101: upgraded).
async fn upgrade_from(from: &str, to: SocketAddr) -> u16 {
    match testkit::ws::upgrade_from(Some(from.parse().unwrap()), to, WS, &[]).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

/// A session that still joins and gets a broadcast.
async fn assert_serves(node: &TestNode, witness: &mut Client, topic: &str) {
    node.broadcast(topic, "new_msg", json!({"n": 1})).await;
    let got = witness.recv_json().await;
    assert_eq!(got[3], "new_msg", "{got}");
}

#[tokio::test]
async fn the_session_cap_answers_503_with_retry_after_on_both_transports() {
    let node = TestNode::start(Config {
        max_sessions: 2,
        ..Config::default()
    })
    .await;
    let mut witness = node.ws().await;
    witness.join_ok("room:w").await;
    let mut second = node.ws().await;
    second.join_ok("room:w").await;

    assert_eq!(
        Client::connect_with(node.addr, WS, &[]).await.err(),
        Some(503)
    );
    let (status, head, _) = http_full(node.addr, "GET", LP, &[], "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: *"),
        "a browser page must be able to read the refusal: {head}"
    );
    let m = metrics(&node).await;
    assert_eq!(
        metric_value(&m, r#"gateway_connect_refusals_total{reason="full"}"#),
        2.0
    );
    assert_serves(&node, &mut witness, "room:w").await;

    // A freed slot is taken again.
    second.close_politely(WAIT).await;
    eventually(WAIT, "a new session after one left", || async {
        Client::connect_with(node.addr, WS, &[]).await.is_ok()
    })
    .await;
    assert_serves(&node, &mut witness, "room:w").await;
}

#[tokio::test]
async fn the_per_ip_connect_rate_answers_429_per_source_address() {
    let node = TestNode::start(Config {
        connect_rate_per_ip: 1,
        ..Config::default()
    })
    .await;
    // 127.0.0.1 spends its one-connect burst on the witness.
    let mut witness = node.ws().await;
    witness.join_ok("room:w").await;
    assert_eq!(upgrade_from("127.0.0.1", node.addr).await, 429);
    let (status, head, _) = http_full(node.addr, "GET", LP, &[], "").await;
    assert_eq!(status, 429, "long-poll connects count too: {head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    // Another source address has its own budget.
    assert_eq!(upgrade_from("127.0.0.2", node.addr).await, 101);
    let m = metrics(&node).await;
    assert_eq!(
        metric_value(&m, r#"gateway_connect_refusals_total{reason="ip_rate"}"#),
        2.0
    );
    assert_serves(&node, &mut witness, "room:w").await;
    // The bucket refills: the address may connect again.
    eventually(Duration::from_secs(3), "the bucket to refill", || async {
        upgrade_from("127.0.0.1", node.addr).await == 101
    })
    .await;
}

#[tokio::test]
async fn a_message_flood_gets_error_replies_then_close_4029() {
    let node = TestNode::start(Config {
        max_messages_per_sec: 10,
        ..Config::default()
    })
    .await;
    let mut witness = node.ws().await;
    witness.join_ok("room:w").await;
    let mut flood = node.ws().await;
    // Forty heartbeats in one write: ten fit the burst, the rest are over the rate.
    let mut burst = Vec::new();
    for i in 0..40 {
        let text = json!([null, i.to_string(), "phoenix", "heartbeat", {}]).to_string();
        burst.extend(testkit::frame(0x81, text.as_bytes(), true));
    }
    flood.send_raw(&burst).await;
    let (mut ok, mut limited) = (0, 0);
    let code = loop {
        match flood.recv().await {
            Some(Frame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match (&v[4]["status"], &v[4]["response"]["reason"]) {
                    (s, _) if s == "ok" => ok += 1,
                    (s, r) if s == "error" && r == "rate limited" => limited += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
            Some(Frame::Close(code)) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(4029));
    assert!(ok >= 10, "the burst is served: {ok}");
    assert!(limited >= 1, "over the rate gets error replies first");
    // The session is counted as ended once the close handshake completes.
    drop(flood);
    eventually(WAIT, "the disconnect to be counted", || async {
        let m = metrics(&node).await;
        metric_value(&m, r#"gateway_disconnects_total{reason="rate_limited"}"#) == 1.0
    })
    .await;
    let m = metrics(&node).await;
    assert!(metric_value(&m, "gateway_rate_limited_messages_total") >= limited as f64);
    assert_serves(&node, &mut witness, "room:w").await;
}

/// Open a long-poll session: its token.
async fn lp_open(node: &TestNode) -> String {
    LongPoll::open(node.addr, "", &[])
        .await
        .expect("long-poll open refused")
        .token
}

#[tokio::test]
async fn a_long_poll_line_over_the_message_limit_ends_that_session_only() {
    let node = TestNode::start(Config {
        max_message_size: 2048,
        ..Config::default()
    })
    .await;
    let mut witness = node.ws().await;
    witness.join_ok("room:w").await;
    let token = lp_open(&node).await;
    let path = format!("{LP}&token={token}");
    let ndjson = [("Content-Type", "application/x-ndjson")];
    let big = json!(["1", "1", "room:w", "phx_join", {"pad": "x".repeat(4096)}]).to_string();
    let small = json!(["2", "2", "room:w", "phx_join", {}]).to_string();
    let (status, body) = node
        .http("POST", &path, &ndjson, &format!("{small}\n{big}"))
        .await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":413}"#));
    // The session is gone: its token opens nothing.
    let (_, body) = node.http("GET", &path, &[], "").await;
    assert_eq!(body, r#"{"status":410}"#);
    let m = metrics(&node).await;
    assert_eq!(
        metric_value(&m, r#"gateway_disconnects_total{reason="too_big"}"#),
        1.0
    );
    assert_serves(&node, &mut witness, "room:w").await;
}

#[tokio::test]
async fn a_long_poll_body_trickled_in_times_out_with_408() {
    let node = TestNode::start(Config::default()).await;
    let token = lp_open(&node).await;
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST {LP}&token={token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100\r\n\r\n[\"1\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes: the node answers on its own within the body timeout.
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut b = [0u8; 256];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed without an answer");
            out.extend_from_slice(&b[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn request_headers_trickled_in_are_cut_off() {
    let node = TestNode::start(Config::default()).await;
    let mut witness = node.ws().await;
    witness.join_ok("room:w").await;
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    // A WebSocket handshake whose headers never end (slow-loris).
    s.write_all(format!("GET {WS} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_)) | Ok(Err(_))),
        "the connection was still open after 20 s"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "nothing but a timeout answer: {text}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "cut off by the header timeout, not at once"
    );
    assert_serves(&node, &mut witness, "room:w").await;
}

#[tokio::test]
async fn the_binary_caps_sessions_below_its_open_files_limit() {
    // The binary raises its soft limit to the hard one, which it inherits from this process.
    let hard = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
    let Ok(hard) = hard.parse::<u64>() else {
        panic!("this test needs a finite open-files limit, not {hard:?}");
    };
    let gw = common::gateway_on_free_port(&[], &[]).start().await;
    let want = format!("max_sessions={}", hard - 256);
    let out = gw.output();
    assert!(
        out.lines()
            .any(|l| l.contains("session cap from the open-files limit") && l.contains(&want)),
        "{want} not logged:\n{out}"
    );
    // An explicit --max-sessions is taken as given (here: none).
    let gw = common::gateway_on_free_port(&["--max-sessions", "0"], &[])
        .start()
        .await;
    assert!(!gw
        .output()
        .contains("session cap from the open-files limit"));
}
