//! The contract working end to end with the example backend.

use std::time::Duration;

use gateway::config::BackendSpec;
use gateway::Config;
use serde_json::json;
use testkit::{eventually, metric_value, LongPoll};

use crate::common::TestNode;
use crate::support::{call, config, push, spec, ws, ExampleBackend, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_events_are_answered_by_the_backend() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(spec(backend.url()))).await;
    let (mut ann, mut bob) = (ws(node.addr, "ann").await, ws(node.addr, "bob").await);

    // Joins: accepted with the backend's response, refused with its error response.
    let (jr, reply) = ann.join("game:1", json!({})).await;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"welcome": null, "topic": "game:1"}}),
        "no connect hook: no assigns yet"
    );
    let (_, refused) = ann.join("game:closed", json!({})).await;
    assert_eq!(
        refused[4],
        json!({"status": "error", "response": {"reason": "closed"}})
    );
    let (_, refused) = ann.join("game:2", json!({"password": "wrong"})).await;
    assert_eq!(refused[4]["response"], json!({"reason": "bad password"}));
    let (bob_jr, _) = bob.join("game:1", json!({})).await;

    // A reply, with the assigns the join answer set.
    let pong = call(&mut ann, &jr, "game:1", "ping", json!({"x": 1})).await;
    assert_eq!(
        pong[4],
        json!({"status": "ok", "response": {"pong": {"x": 1}, "user": null, "room": "game:1"}})
    );
    // A broadcast reaches both (the sender's before its reply), then the reply.
    let r = push(&mut ann, &jr, "game:1", "shout", json!({"body": "hi"})).await;
    assert_eq!(
        ann.recv_json().await,
        json!([null, null, "game:1", "shout", {"body": "hi"}])
    );
    assert_eq!(ann.recv_json().await[1], r.as_str());
    assert_eq!(
        bob.recv_json().await,
        json!([null, null, "game:1", "shout", {"body": "hi"}])
    );
    // broadcast_from: everyone but the sender, and no reply at all.
    push(&mut ann, &jr, "game:1", "typing", json!({"on": true})).await;
    assert_eq!(bob.recv_json().await[3], "typing");
    // push: the sender only.
    push(&mut ann, &jr, "game:1", "whisper", json!({"psst": 1})).await;
    assert_eq!(
        ann.recv_json().await,
        json!([jr, null, "game:1", "whisper", {"psst": 1}])
    );
    ann.assert_nothing_queued().await;
    bob.assert_nothing_queued().await;
    // An error reply of the backend's own, and a listed broadcast that never reaches it.
    let unknown = call(&mut bob, &bob_jr, "game:1", "dance", json!({})).await;
    assert_eq!(
        unknown[4],
        json!({"status": "error", "response": {"reason": "unknown event"}})
    );
    let events_before = backend.get("stats").await["event"].clone();
    let chat = call(&mut bob, &bob_jr, "game:1", "chat", json!({"m": 1})).await;
    assert_eq!(chat[4]["status"], "ok");
    assert_eq!(backend.get("stats").await["event"], events_before);

    // Every request was signed and verified.
    let stats = backend.get("stats").await;
    assert_eq!(stats["bad_signature"], 0, "{stats}");
    assert_eq!(stats["join"], 4, "{stats}");
    let (_, m) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(
        metric_value(&m, "gateway_backend_requests_total{hook=\"join\"}"),
        4.0
    );
    assert_eq!(
        metric_value(&m, "gateway_backend_requests_total{hook=\"event\"}"),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            "gateway_backend_request_duration_seconds_count{hook=\"event\"}"
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_refused_by_the_backend() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(BackendSpec {
        secret: Some("not-the-secret".into()),
        ..BackendSpec::new(backend.url())
    }))
    .await;
    let mut ann = ws(node.addr, "ann").await;
    let (_, reply) = ann.join("game:1", json!({})).await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "backend error"}})
    );
    let stats = backend.get("stats").await;
    assert_eq!(
        (stats["bad_signature"].clone(), stats["join"].clone()),
        (json!(1), json!(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_admits_identifies_and_assigns_on_both_transports() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(BackendSpec {
        connect: true,
        ..spec(backend.url())
    }))
    .await;
    let path = |q: &str| format!("/socket/websocket?vsn=2.0.0{q}");
    assert_eq!(
        testkit::Client::connect_with(node.addr, &path(""), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        testkit::Client::connect_with(node.addr, &path("&user=mallory"), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        LongPoll::open(node.addr, "&user=mallory", &[]).await.err(),
        Some(403)
    );

    // Accepted: the assigns reach the join and event hooks.
    let mut ann = ws(node.addr, "ann").await;
    let (jr, reply) = ann.join("game:1", json!({})).await;
    assert_eq!(
        reply[4]["response"],
        json!({"welcome": "ann", "topic": "game:1"})
    );
    let pong = call(&mut ann, &jr, "game:1", "ping", json!({})).await;
    assert_eq!(pong[4]["response"]["user"], "ann");

    let mut lp = LongPoll::open(node.addr, "&user=lou", &[])
        .await
        .expect("accepted");
    lp.post(&[json!(["1", "1", "game:1", "phx_join", {}])])
        .await;
    let reply = lp.recv().await;
    assert_eq!(
        reply[4]["response"],
        json!({"welcome": "lou", "topic": "game:1"})
    );

    // The backend's id is the session id: a disconnect by id closes ann.
    let (status, _) = node
        .http(
            "POST",
            "/api/disconnect",
            &[],
            r#"{"id":"user_socket:ann"}"#,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(ann.expect_close().await, Some(1001));
    let stats = backend.get("stats").await;
    assert_eq!(
        (stats["connect"].clone(), stats["bad_signature"].clone()),
        (json!(5), json!(0))
    );
    let (_, m) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(
        metric_value(
            &m,
            "gateway_connect_refusals_total{reason=\"backend_refused\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leave_hook_hears_leaves_and_closed_sessions() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(BackendSpec {
        connect: true,
        leave: true,
        ..spec(backend.url())
    }))
    .await;
    let mut ann = ws(node.addr, "ann").await;
    let (jr, _) = ann.join("game:1", json!({})).await;
    ann.join("game:2", json!({})).await;
    // An event first: the leave follows what was queued before it.
    call(&mut ann, &jr, "game:1", "ping", json!({})).await;
    let r = push(&mut ann, &jr, "game:1", "phx_leave", json!({})).await;
    ann.until("the leave reply", |f| f[1] == r.as_str()).await;
    drop(ann);
    eventually(
        Duration::from_secs(5),
        "both leaves reach the backend",
        || async {
            backend
                .get("leaves")
                .await
                .as_array()
                .is_some_and(|l| l.len() == 2)
        },
    )
    .await;
    let mut leaves = backend.get("leaves").await.as_array().cloned().unwrap();
    leaves.sort_by_key(|l| l["topic"].to_string());
    assert_eq!(
        leaves,
        vec![
            json!({"topic": "game:1", "reason": "leave", "id": "user_socket:ann"}),
            json!({"topic": "game:2", "reason": "closed", "id": "user_socket:ann"}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigns_over_the_cap_are_refused() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    // `{"user":"ann"}` (14 B) fits; with the joined room (29 B) it does not.
    let node = TestNode::start(Config {
        backend_assigns_max_bytes: 20,
        ..config(BackendSpec {
            connect: true,
            ..spec(backend.url())
        })
    })
    .await;
    let mut ann = ws(node.addr, "ann").await;
    let (_, reply) = ann.join("game:1", json!({})).await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "backend error"}})
    );
    let (_, m) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(
        metric_value(
            &m,
            "gateway_backend_errors_total{hook=\"join\",reason=\"error\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rapid_pushes_are_handled_in_order() {
    let backend = ExampleBackend::start(Some(SECRET)).await;
    let node = TestNode::start(config(spec(backend.url()))).await;
    let mut ann = ws(node.addr, "ann").await;
    let (jr, _) = ann.join("game:1", json!({})).await;
    let mut refs = Vec::new();
    for n in 1..=200 {
        refs.push(push(&mut ann, &jr, "game:1", "seq", json!({"n": n})).await);
    }
    for (i, r) in refs.iter().enumerate() {
        let reply = ann.recv_json().await;
        assert_eq!(reply[1], r.as_str(), "replies come in push order");
        assert_eq!(
            reply[4],
            json!({"status": "ok", "response": {"n": i + 1, "in_order": true}}),
            "the backend saw push {} right after push {i}",
            i + 1
        );
    }
}
