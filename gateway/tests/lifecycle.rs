//! Node lifecycle through its HTTP surface: forced disconnect, drain on shutdown, health and
//! readiness, broadcast_from, and several nodes sharing an in-process bus.

mod common;

use std::time::Duration;

use common::{room_with_typing, TestNode};
use gateway::pubsub::local::LocalBus;
use gateway::{Config, Gateway};
use serde_json::json;
use testkit::{jwt, now, Client};

#[tokio::test]
async fn forced_disconnect_closes_every_session_of_that_id_with_1001() {
    let node = TestNode::start(Config {
        jwt_secret: Some("s".into()),
        api_key: Some("k".into()),
        ..Config::default()
    })
    .await;
    let t42 = jwt("s", json!({"sub": "42", "exp": now() + 60}));
    let t7 = jwt("s", json!({"sub": "7", "exp": now() + 60}));
    let mut a = Client::connect(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={t42}"),
    )
    .await;
    let mut b = Client::connect(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={t42}"),
    )
    .await;
    let mut other = Client::connect(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={t7}"),
    )
    .await;
    a.join_ok("room:1").await;
    other.join_ok("room:1").await;
    let body = json!({"id": "user_socket:42"}).to_string();
    assert_eq!(
        node.http("POST", "/api/disconnect", &[], &body).await.0,
        401
    );
    assert_eq!(
        node.http(
            "POST",
            "/api/disconnect",
            &[("Authorization", "Bearer k")],
            &body
        )
        .await
        .0,
        202
    );
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(b.expect_close().await, Some(1001));
    other.assert_nothing_queued().await;
    // The same through a broadcast of `disconnect` on the id topic.
    let body = json!({"topic": "user_socket:7", "event": "disconnect", "payload": {}}).to_string();
    assert_eq!(
        node.http(
            "POST",
            "/api/broadcast",
            &[("Authorization", "Bearer k")],
            &body
        )
        .await
        .0,
        202
    );
    assert_eq!(other.expect_close().await, Some(1001));
}

#[tokio::test]
async fn drain_closes_sessions_with_1012_in_batches_and_fails_readiness() {
    let mut node = TestNode::start(Config {
        drain_batch_size: 2,
        drain_interval: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 200);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = node.ws().await;
        c.join_ok("room:d").await;
        clients.push(c);
    }
    let addr = node.addr;
    let started = std::time::Instant::now();
    let task = node.begin_shutdown();
    for c in &mut clients {
        assert_eq!(c.expect_close().await, Some(1012));
    }
    // Five sessions in batches of two: three batches, two pauses of 300 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "drain was not paced: {:?}",
        started.elapsed()
    );
    task.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after the drain"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_during_a_drain() {
    let mut node = TestNode::start(Config {
        drain_batch_size: 1,
        drain_interval: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let mut first = node.ws().await;
    first.join_ok("room:r").await;
    let mut second = node.ws().await;
    second.join_ok("room:r").await;
    let (status, body) = node.http("GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, metrics) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("gateway_sessions{transport=\"websocket\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    let addr = node.addr;
    let task = node.begin_shutdown();
    // One of the two is closed in the first batch; the other waits for the next batch.
    let closed = tokio::select! {
        c = first.expect_close() => c,
        c = second.expect_close() => c,
    };
    assert_eq!(closed, Some(1012));
    let (status, body) = testkit::http(addr, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body.as_str()), (503, "draining"));
    assert_eq!(
        Client::connect_with(addr, "/socket/websocket?vsn=2.0.0", &[])
            .await
            .err(),
        Some(503)
    );
    let (_, metrics) = testkit::http(addr, "GET", "/metrics", &[], "").await;
    assert!(metrics.contains("gateway_draining 1"), "{metrics}");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn broadcast_from_excludes_only_the_sender() {
    let config = Config {
        channels: vec![room_with_typing()],
        ..Config::default()
    };
    let node = TestNode::start(config).await;
    let mut a = node.ws().await;
    let mut b = node.ws().await;
    let ja = a.join_ok("room:x").await;
    b.join_ok("room:x").await;
    a.send_json(json!([ja, "5", "room:x", "typing", {"who": "a"}]))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!([ja, "5", "room:x", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        b.recv_json().await,
        json!([null, null, "room:x", "typing", {"who": "a"}])
    );
    a.assert_nothing_queued().await;
    a.send_json(json!([ja, "6", "room:x", "other", {}])).await;
    assert_eq!(
        a.recv_json().await,
        json!([ja, "6", "room:x", "phx_reply", {"status": "error", "response": {"reason": "unknown event"}}])
    );
}

#[tokio::test]
async fn nodes_on_one_bus_share_topics_and_sender_exclusion_is_per_node() {
    let bus = LocalBus::new();
    let config = || Config {
        channels: vec![room_with_typing()],
        ..Config::default()
    };
    let n1 = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let n2 = TestNode::start_gateway(Gateway::new(config()).local_bus(&bus)).await;
    let mut a = n1.ws().await;
    let mut a2 = n1.ws().await;
    let mut b = n2.ws().await;
    let ja = a.join_ok("room:c").await;
    a2.join_ok("room:c").await;
    b.join_ok("room:c").await;
    a.send_json(json!([ja, "7", "room:c", "typing", {}])).await;
    a.recv_json().await; // ok reply
    assert_eq!(
        a2.recv_json().await,
        json!([null, null, "room:c", "typing", {}])
    );
    assert_eq!(
        b.recv_json().await,
        json!([null, null, "room:c", "typing", {}])
    );
    a.assert_nothing_queued().await;
    n2.broadcast("room:c", "from_api", json!({"n": 2})).await;
    for c in [&mut a, &mut a2, &mut b] {
        assert_eq!(
            c.recv_json().await,
            json!([null, null, "room:c", "from_api", {"n": 2}])
        );
    }
}
