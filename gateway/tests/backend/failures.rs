//! A backend that is slow, down, crashing, answering garbage or saturated: every hook is
//! answered with the documented reason, counted, and nothing else waits for it.

use std::time::{Duration, Instant};

use gateway::config::BackendSpec;
use gateway::Config;
use serde_json::json;
use testkit::{eventually, http_full, metric_value, Client, LongPoll};

use crate::common::TestNode;
use crate::support::{call, config, push, spec, ws, ExampleBackend, SECRET};

async fn metric(node: &TestNode, series: &str) -> f64 {
    metric_value(&node.http("GET", "/metrics", &[], "").await.1, series)
}

fn error_reply(reason: &str) -> serde_json::Value {
    json!({"status": "error", "response": {"reason": reason}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_crashing_and_garbage_answers_get_the_documented_reasons() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(BackendSpec {
        timeout_ms: 300,
        ..spec(backend.url())
    }))
    .await;
    let mut ann = ws(node.addr, "ann").await;
    let (jr, _) = ann.join("game:1", json!({})).await;
    let started = Instant::now();
    let slow = call(&mut ann, &jr, "game:1", "slow", json!({"ms": 1500})).await;
    assert_eq!(slow[4], error_reply("backend timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "answered at the timeout"
    );
    let crash = call(&mut ann, &jr, "game:1", "crash", json!({})).await;
    assert_eq!(crash[4], error_reply("backend unavailable"));
    let garbage = call(&mut ann, &jr, "game:1", "garbage", json!({})).await;
    assert_eq!(garbage[4], error_reply("backend error"));
    let shape = call(&mut ann, &jr, "game:1", "bad_shape", json!({})).await;
    assert_eq!(shape[4], error_reply("backend error"));
    // The channel lives on.
    let pong = call(&mut ann, &jr, "game:1", "ping", json!({})).await;
    assert_eq!(pong[4]["status"], "ok");
    for (reason, n) in [("timeout", 1.0), ("unavailable", 1.0), ("error", 2.0)] {
        let series = format!("gateway_backend_errors_total{{hook=\"event\",reason=\"{reason}\"}}");
        assert_eq!(metric(&node, &series).await, n, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_refuses_joins_and_connects_with_503() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/phx");
    let node = TestNode::start(config(spec(url.clone()))).await;
    let mut ann = ws(node.addr, "ann").await;
    let (_, reply) = ann.join("game:1", json!({})).await;
    assert_eq!(reply[4], error_reply("backend unavailable"));

    let gated = TestNode::start(config(BackendSpec {
        connect: true,
        ..spec(url)
    }))
    .await;
    let ws_path = "/socket/websocket?vsn=2.0.0&user=ann";
    assert_eq!(
        Client::connect_with(gated.addr, ws_path, &[]).await.err(),
        Some(503)
    );
    let (status, head, _) = http_full(
        gated.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0&user=ann",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 503, "a real HTTP 503 that phoenix.js retries");
    assert!(head.contains("retry-after: 5"), "{head}");
    assert_eq!(
        metric(
            &gated,
            "gateway_connect_refusals_total{reason=\"backend_failed\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &gated,
            "gateway_backend_errors_total{hook=\"connect\",reason=\"unavailable\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_bound_hooks_fail_fast_with_backend_busy() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(Config {
        backend_max_in_flight: 1,
        ..config(spec(backend.url()))
    })
    .await;
    let (mut ann, mut bob) = (ws(node.addr, "ann").await, ws(node.addr, "bob").await);
    let (ann_jr, _) = ann.join("game:1", json!({})).await;
    let (bob_jr, _) = bob.join("game:1", json!({})).await;
    let slow = push(&mut ann, &ann_jr, "game:1", "slow", json!({"ms": 1500})).await;
    eventually(
        Duration::from_secs(5),
        "the slow event in flight",
        || async { metric(&node, "gateway_backend_requests_total{hook=\"event\"}").await == 1.0 },
    )
    .await;
    let started = Instant::now();
    let busy = call(&mut bob, &bob_jr, "game:1", "ping", json!({})).await;
    assert_eq!(busy[4], error_reply("backend busy"));
    let (_, refused) = bob.join("game:2", json!({})).await;
    assert_eq!(refused[4], error_reply("backend busy"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "busy is answered at once"
    );
    let done = ann.until("the slow reply", |f| f[1] == slow.as_str()).await;
    assert_eq!(done[4]["status"], "ok");
    assert_eq!(
        metric(
            &node,
            "gateway_backend_errors_total{hook=\"event\",reason=\"busy\"}"
        )
        .await
            + metric(
                &node,
                "gateway_backend_errors_total{hook=\"join\",reason=\"busy\"}"
            )
            .await,
        2.0
    );
    // Free again.
    let pong = call(&mut bob, &bob_jr, "game:1", "ping", json!({})).await;
    assert_eq!(pong[4]["status"], "ok");
}

/// While one session's event waits 1.5 s on the backend, that session's heartbeats, another
/// session's backend events and broadcasts, and long-poll sessions are served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_stalls_no_heartbeat_and_no_other_session() {
    /// Below the default 2 s hook timeout, so the slow event is answered ok in the end.
    const SLOW_MS: u64 = 1500;
    /// Far above an idle round trip (about a millisecond), far below the slow hook.
    const BOUND: Duration = Duration::from_millis(300);
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(spec(backend.url()))).await;
    let (mut ann, mut bob, mut cat) = (
        ws(node.addr, "ann").await,
        ws(node.addr, "bob").await,
        ws(node.addr, "cat").await,
    );
    let (ann_jr, _) = ann.join("game:1", json!({})).await;
    let (bob_jr, _) = bob.join("game:1", json!({})).await;
    cat.join("game:1", json!({})).await;
    let mut lp = LongPoll::open(node.addr, "", &[]).await.expect("open");

    let slow_at = Instant::now();
    let slow = push(&mut ann, &ann_jr, "game:1", "slow", json!({"ms": SLOW_MS})).await;
    eventually(
        Duration::from_secs(5),
        "the slow event in flight",
        || async { metric(&node, "gateway_backend_requests_total{hook=\"event\"}").await == 1.0 },
    )
    .await;

    let t = Instant::now();
    ann.assert_nothing_queued().await; // a heartbeat, answered before anything else
    let ann_heartbeat = t.elapsed();
    let t = Instant::now();
    bob.assert_nothing_queued().await;
    let bob_heartbeat = t.elapsed();
    let t = Instant::now();
    let pong = call(&mut bob, &bob_jr, "game:1", "ping", json!({})).await;
    let bob_event = t.elapsed();
    assert_eq!(pong[4]["status"], "ok");
    let t = Instant::now();
    push(&mut bob, &bob_jr, "game:1", "chat", json!({"m": 1})).await;
    assert_eq!(cat.recv_json().await[3], "chat");
    let broadcast = t.elapsed();
    let t = Instant::now();
    lp.post(&[json!([null, "1", "phoenix", "heartbeat", {}])])
        .await;
    assert_eq!(lp.recv().await[4]["status"], "ok");
    let longpoll_heartbeat = t.elapsed();
    let in_flight = slow_at.elapsed();
    eprintln!(
        "while one event waited {SLOW_MS} ms on the backend: its session's heartbeat \
         {ann_heartbeat:?}, another session's heartbeat {bob_heartbeat:?}, backend event \
         {bob_event:?}, broadcast {broadcast:?}, long-poll heartbeat {longpoll_heartbeat:?}"
    );
    assert!(
        in_flight < Duration::from_millis(SLOW_MS),
        "measured while the hook was slow"
    );
    for (what, took) in [
        ("own heartbeat", ann_heartbeat),
        ("other heartbeat", bob_heartbeat),
        ("other backend event", bob_event),
        ("broadcast", broadcast),
        ("long-poll heartbeat", longpoll_heartbeat),
    ] {
        assert!(
            took < BOUND,
            "{what} took {took:?} while the backend was slow"
        );
    }
    // Ann's own broadcast copy of bob's chat, then the slow reply, in order.
    assert_eq!(ann.recv_json().await[3], "chat");
    let done = ann.until("the slow reply", |f| f[1] == slow.as_str()).await;
    assert_eq!(done[4]["status"], "ok");
    assert!(slow_at.elapsed() >= Duration::from_millis(SLOW_MS));
}
