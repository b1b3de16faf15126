//! The LongPoll transport over raw HTTP: statuses in the JSON body, CORS, token handling, ndjson
//! POSTs (line limit, base64 binary), poll window, expiry, bad input, forced disconnect, and
//! requests routed to the owner node from another node (no sticky sessions).

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::TestNode;
use gateway::pubsub::local::LocalBus;
use gateway::{Config, Gateway};
use serde_json::{json, Value};
use testkit::{eventually, http_full, jwt, metric, now, Frame, LongPoll};

fn config() -> Config {
    Config {
        longpoll_window: Duration::from_millis(300),
        longpoll_expiry: Duration::from_millis(800),
        ..Config::default()
    }
}

/// Whether `node` reports exactly 0 live long-poll sessions.
async fn no_long_poll_sessions(node: &TestNode) -> bool {
    let (_, text) = node.http("GET", "/metrics", &[], "").await;
    metric(&text, "gateway_sessions{transport=\"longpoll\"}") == Some(0.0)
}

/// Open a long-poll session on `node`, checking the answer's headers and body.
async fn open(node: &TestNode) -> LongPoll {
    let (status, head, body) =
        http_full(node.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains("cache-control: no-store") && head.contains("access-control-allow-origin: *"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["messages"].clone()),
        (Some(410), json!([])),
        "{body}"
    );
    LongPoll::with_token(node.addr, v["token"].as_str().unwrap())
}

#[tokio::test]
async fn open_join_push_poll_and_window() {
    let node = TestNode::start(config()).await;
    let mut lp = open(&node).await;
    assert_eq!(
        lp.post(&[json!(["1", "1", "room:lp", "phx_join", {}])])
            .await,
        json!({"status": 200})
    );
    assert_eq!(
        lp.messages(1).await,
        vec![json!(["1", "1", "room:lp", "phx_reply", {"status": "ok", "response": {}}])]
    );
    // Two frames in one POST are handled in order; replies wait for the next GET.
    let post = lp
        .post(&[
            json!(["1", "2", "room:lp", "new_msg", {"a": 1}]),
            json!(["1", "3", "room:lp", "nope", {}]),
        ])
        .await;
    assert_eq!(
        post,
        json!({"status": 200}),
        "an error reply is still POST status 200"
    );
    let got = lp.messages(3).await;
    assert_eq!(got[0], json!([null, null, "room:lp", "new_msg", {"a": 1}]));
    assert_eq!(
        got[1],
        json!(["1", "2", "room:lp", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        got[2],
        json!(["1", "3", "room:lp", "phx_reply", {"status": "error", "response": {"reason": "unknown event"}}])
    );
    // Nothing queued: the poll is held for the window, then 204 with the token.
    let start = Instant::now();
    let v = lp.poll().await;
    assert_eq!(
        (
            v["status"].clone(),
            v["messages"].clone(),
            v["token"].clone()
        ),
        (json!(204), json!([]), json!(lp.token))
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    // A held poll returns as soon as something arrives.
    let poll = tokio::spawn({
        let (addr, path) = (lp.addr, lp.path());
        async move { http_full(addr, "GET", &path, &[], "").await }
    });
    node.broadcast("room:lp", "news", json!({"n": 1})).await;
    let (_, _, body) = poll.await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(
        v["messages"],
        json!([json!([null, null, "room:lp", "news", {"n": 1}]).to_string()])
    );
}

#[tokio::test]
async fn cors_methods_and_token_sources() {
    let node = TestNode::start(config()).await;
    let (status, head, _) = http_full(
        node.addr,
        "OPTIONS",
        "/socket/longpoll",
        &[(
            "Access-Control-Request-Headers",
            "content-type,x-phoenix-authtoken",
        )],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(
        head.contains("access-control-allow-methods: get, post, options"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: content-type,x-phoenix-authtoken"),
        "{head}"
    );
    assert!(head.contains("access-control-max-age: 3600"), "{head}");
    assert_eq!(
        http_full(node.addr, "PUT", "/socket/longpoll", &[], "")
            .await
            .0,
        400
    );
    let lp = open(&node).await;
    // The session token may come in the header, or as the *last* `token` query value (an app's
    // own `token` param comes first).
    let join = json!(["1", "1", "room:t", "phx_join", {}]).to_string();
    let path = format!(
        "/socket/longpoll?token=app-user-token&vsn=2.0.0&token={}",
        testkit::longpoll::urlencode(&lp.token)
    );
    let (_, _, body) = http_full(
        node.addr,
        "POST",
        &path,
        &[("Content-Type", "application/x-ndjson")],
        &join,
    )
    .await;
    assert_eq!(body, r#"{"status":200}"#);
    let (_, _, body) = http_full(
        node.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[("X-Phoenix-Longpoll-Token", &lp.token)],
        "",
    )
    .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 200);
    // A POST without a session, or with a forged one, is 410.
    let (_, _, body) = http_full(node.addr, "POST", "/socket/longpoll?vsn=2.0.0", &[], &join).await;
    assert_eq!(body, r#"{"status":410}"#);
    let forged = lp.token.replacen("v1:", "v1:9", 1);
    let (_, _, body) = http_full(
        node.addr,
        "POST",
        &format!(
            "/socket/longpoll?token={}",
            testkit::longpoll::urlencode(&forged)
        ),
        &[],
        &join,
    )
    .await;
    assert_eq!(body, r#"{"status":410}"#);
    // A refused connect is {"status":403}.
    let (_, _, body) = http_full(node.addr, "GET", "/socket/longpoll?vsn=9.9.9", &[], "").await;
    assert_eq!(body, r#"{"status":403}"#);
}

#[tokio::test]
async fn auth_token_header_and_jwt_mode() {
    let node = TestNode::start(Config {
        jwt_secret: Some("s".into()),
        ..config()
    })
    .await;
    let (_, _, body) = http_full(node.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], "").await;
    assert_eq!(body, r#"{"status":403}"#);
    let token = jwt("s", json!({"sub": "9", "exp": now() + 60}));
    let (_, _, body) = http_full(
        node.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[("X-Phoenix-AuthToken", &token)],
        "",
    )
    .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 410);
}

#[tokio::test]
async fn ndjson_limits_binary_lines_and_bad_input() {
    let node = TestNode::start(config()).await;
    let mut lp = open(&node).await;
    lp.post(&[json!(["1", "1", "room:b", "phx_join", {}])])
        .await;
    lp.messages(1).await;
    // 101 heartbeats in one POST: only the first 100 are handled.
    let beats: Vec<Value> = (0..101)
        .map(|i| json!([null, format!("h{i}"), "phoenix", "heartbeat", {}]))
        .collect();
    assert_eq!(lp.post(&beats).await, json!({"status": 200}));
    let replies = lp.messages(100).await;
    assert_eq!(replies.len(), 100);
    assert_eq!(replies[99][1], "h99");
    // A base64 line is a binary frame: broadcast to a WebSocket subscriber as binary.
    let mut ws = node.ws().await;
    ws.join_ok("room:b").await;
    let mut push = vec![0u8, 1, 1, 6, 7];
    push.extend_from_slice(b"12room:bnew_msg");
    push.extend_from_slice(&[0xde, 0xad]);
    let line = base64::engine::general_purpose::STANDARD.encode(&push);
    assert_eq!(
        lp.post_lines(lp.addr, &[line], &[]).await,
        json!({"status": 200})
    );
    let mut expected = vec![2u8, 6, 7];
    expected.extend_from_slice(b"room:bnew_msg");
    expected.extend_from_slice(&[0xde, 0xad]);
    assert_eq!(ws.recv().await, Some(Frame::Binary(expected)));
    // A line that is neither JSON nor base64 ends the session.
    assert_eq!(
        lp.post_lines(lp.addr, &["%%% not a frame".to_string()], &[])
            .await,
        json!({"status": 400})
    );
    assert_eq!(lp.poll().await, json!({"status": 410}));
}

#[tokio::test]
async fn sessions_expire_without_polls_and_forced_disconnect_ends_them() {
    let node = TestNode::start(Config {
        jwt_secret: Some("s".into()),
        ..config()
    })
    .await;
    let token = jwt("s", json!({"sub": "77", "exp": now() + 60}));
    let open = |t: String| {
        let addr = node.addr;
        async move {
            let (_, _, body) = http_full(
                addr,
                "GET",
                "/socket/longpoll?vsn=2.0.0",
                &[("X-Phoenix-AuthToken", &t)],
                "",
            )
            .await;
            let v: Value = serde_json::from_str(&body).unwrap();
            LongPoll::with_token(addr, v["token"].as_str().unwrap())
        }
    };
    let mut lp = open(token.clone()).await;
    lp.post(&[json!(["1", "1", "room:e", "phx_join", {}])])
        .await;
    lp.messages(1).await;
    // Forced disconnect: the next poll learns the session is gone.
    node.http(
        "POST",
        "/api/disconnect",
        &[],
        &json!({"id": "user_socket:77"}).to_string(),
    )
    .await;
    assert_eq!(lp.poll().await, json!({"status": 410}));
    // Expiry: no poll for longer than the expiry ends the session and its channels.
    let lp = open(token).await;
    lp.post(&[json!(["1", "1", "room:e", "phx_join", {}])])
        .await;
    let expired = eventually(Duration::from_secs(5), "the session to expire", || {
        no_long_poll_sessions(&node)
    })
    .await;
    assert!(
        expired >= Duration::from_millis(500),
        "expired too early: {expired:?}"
    );
    assert_eq!(lp.poll().await, json!({"status": 410}));
}

#[tokio::test]
async fn requests_reach_the_owner_from_any_node_and_a_dead_owner_is_410() {
    let bus = LocalBus::new();
    let mut a = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let b = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let lp = open(&a).await;
    // Join through B, read the reply through B, push through A, read through B.
    assert_eq!(
        lp.post_lines(
            b.addr,
            &[json!(["1", "1", "room:f", "phx_join", {}]).to_string()],
            &[]
        )
        .await,
        json!({"status": 200})
    );
    let v = lp.poll_with(b.addr, &[]).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["token"], lp.token);
    // The demo channel keeps history: its ok reply carries `recovered` and `position`.
    let reply: Value = serde_json::from_str(v["messages"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        reply.as_array().unwrap()[..4],
        json!(["1", "1", "room:f", "phx_reply"]).as_array().unwrap()[..],
        "{reply}"
    );
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    assert_eq!(reply[4]["response"]["recovered"], false, "{reply}");
    assert_eq!(
        lp.post_lines(
            a.addr,
            &[json!(["1", "2", "room:f", "new_msg", {"x": 1}]).to_string()],
            &[]
        )
        .await,
        json!({"status": 200})
    );
    let v = lp.poll_with(b.addr, &[]).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "{v}");
    // The owner goes away: B answers 410 (after the acknowledgement timeout), never hangs.
    let task = a.begin_shutdown();
    task.await.unwrap().unwrap();
    drop(a);
    let start = Instant::now();
    assert_eq!(lp.poll_with(b.addr, &[]).await, json!({"status": 410}));
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_abandoned_held_poll_does_not_keep_the_session_alive() {
    let node = TestNode::start(Config {
        longpoll_window: Duration::from_secs(10),
        ..config()
    })
    .await;
    let lp = open(&node).await;
    // A poll is held (nothing queued), then the client goes away mid-wait.
    let held = tokio::spawn({
        let (addr, path) = (lp.addr, lp.path());
        async move { http_full(addr, "GET", &path, &[], "").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.abort();
    eventually(
        Duration::from_secs(5),
        "the abandoned session to expire",
        || no_long_poll_sessions(&node),
    )
    .await;
}
