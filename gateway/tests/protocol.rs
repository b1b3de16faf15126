//! Every "Protocol core" row of the reference checklist (§10), against a node started in-process,
//! with a raw WebSocket client so the exact frames are asserted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::TestNode;
use gateway::config::{ChannelSpec, JoinPolicy};
use gateway::{
    Channel, ChannelContext, ChannelError, Config, Gateway, Join, Payload, Reply, Terminate,
};
use serde_json::{json, Value};
use testkit::{Client, Frame};

/// Counts `terminate` calls and lets a test await them.
#[derive(Default)]
struct Terminations {
    count: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Terminations {
    fn load(&self, o: Ordering) -> usize {
        self.count.load(o)
    }

    async fn wait_for(&self, n: usize) {
        tokio::time::timeout(testkit::WAIT, async {
            loop {
                let notified = self.notify.notified();
                if self.count.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("terminate was not called");
    }
}

/// A channel exercising the trait: custom reply statuses, pushes during join, failures,
/// interception, and a count of `terminate` calls.
struct TestChannel {
    terminated: Arc<Terminations>,
}

#[async_trait]
impl Channel for TestChannel {
    async fn join(
        &mut self,
        topic: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError> {
        if topic == "test:panic" {
            panic!("join panics");
        }
        if topic == "test:crash" {
            return Err(ChannelError("join fails".into()));
        }
        ctx.push("welcome", Payload::raw_json(r#"{"hello":true}"#));
        if payload.bytes().as_ref() == br#"{"deny":true}"# {
            return Ok(Join::Refuse(Payload::raw_json(r#"{"reason":"denied"}"#)));
        }
        Ok(Join::Ok(Payload::raw_json(r#"{"joined":1}"#)))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "custom" => Ok(Some(Reply {
                status: "accepted".into(),
                payload,
            })),
            "push" => {
                ctx.push("pushed", payload);
                Ok(None)
            }
            "shout" => {
                ctx.broadcast("shout", payload);
                Ok(Some(Reply::ok(Payload::empty())))
            }
            "tagged" => {
                ctx.broadcast("tagged", payload);
                Ok(None)
            }
            "later" => {
                let reply = ctx.deferred_reply().expect("message has a ref");
                tokio::spawn(async move {
                    reply.send(Reply::ok(Payload::raw_json(r#"{"late":true}"#)))
                });
                Ok(None)
            }
            "fail" => Err(ChannelError("handler failed".into())),
            "panic" => panic!("handler panics"),
            "stop" => {
                ctx.stop();
                Ok(Some(Reply::ok(Payload::empty())))
            }
            _ => Ok(Some(Reply::reason("unknown event"))),
        }
    }

    fn intercepts(&self) -> &[&'static str] {
        &["tagged"]
    }

    async fn handle_out(
        &mut self,
        _event: &str,
        payload: Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Payload>, ChannelError> {
        let mut v: Value = serde_json::from_slice(payload.bytes()).unwrap();
        v["intercepted"] = json!(true);
        Ok(Some(Payload::json(&v)))
    }

    async fn terminate(&mut self, _reason: Terminate, _ctx: &mut ChannelContext<'_>) {
        self.terminated.count.fetch_add(1, Ordering::SeqCst);
        self.terminated.notify.notify_waiters();
    }
}

fn config() -> Config {
    Config {
        max_channels: 3,
        channels: vec![
            ChannelSpec::public("room:*", &["new_msg", "shout"]),
            ChannelSpec {
                pattern: "private:*".into(),
                join: JoinPolicy::Token,
                broadcast: vec![],
                broadcast_from: vec![],
                handle_in: Default::default(),
                presence: false,
                presence_key: "user".into(),
                presence_meta: vec![],
                history_size: 0,
                history_ttl_secs: 300,
            },
        ],
        ..Config::default()
    }
}

async fn node() -> (TestNode, Arc<Terminations>) {
    let terminated = Arc::new(Terminations::default());
    let t = terminated.clone();
    let gw = Gateway::new(config()).channel("test:*", move |_| TestChannel {
        terminated: t.clone(),
    });
    (TestNode::start_gateway(gw).await, terminated)
}

fn ok(jr: &str, r: &str, topic: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", {"status": "ok", "response": response}])
}

#[tokio::test]
async fn heartbeat_is_answered_without_a_join() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    c.send_json(json!([null, "5", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // Other events on `phoenix` are an unjoined topic.
    c.send_json(json!([null, "6", "phoenix", "other", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "6", "phoenix", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}

#[tokio::test]
async fn join_outcomes() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    c.join_ok("room:lobby").await;
    // Refused by the channel: error reply with join_ref and the channel's payload.
    let (jr, reply) = c.join("private:1", json!({})).await;
    assert_eq!(
        reply,
        json!([jr, jr, "private:1", "phx_reply", {"status": "error", "response": {"reason": "unauthorized"}}])
    );
    // Unmatched topic: join_ref is null.
    let (jr, reply) = c.join("nope:1", json!({})).await;
    assert_eq!(
        reply,
        json!([null, jr, "nope:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    // Join crash and join panic: "join crashed", the session lives on.
    for topic in ["test:crash", "test:panic"] {
        let (jr, reply) = c.join(topic, json!({})).await;
        assert_eq!(
            reply,
            json!([jr, jr, topic, "phx_reply", {"status": "error", "response": {"reason": "join crashed"}}])
        );
    }
    c.assert_nothing_queued().await;
}

#[tokio::test]
async fn too_many_channels() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    for i in 0..3 {
        c.join_ok(&format!("room:{i}")).await;
    }
    let (jr, reply) = c.join("room:3", json!({})).await;
    assert_eq!(
        reply,
        json!([jr, jr, "room:3", "phx_reply", {"status": "error", "response": {"reason": "too many channels joined"}}])
    );
}

#[tokio::test]
async fn join_reply_comes_before_the_joins_pushes() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    let (jr, reply) = c.join("test:1", json!({})).await;
    assert_eq!(reply, ok(&jr, &jr, "test:1", json!({"joined": 1})));
    assert_eq!(
        c.recv_json().await,
        json!([jr, null, "test:1", "welcome", {"hello": true}])
    );
    // A refused join sends none of its pushes.
    let (jr, reply) = c.join("test:2", json!({"deny": true})).await;
    assert_eq!(
        reply,
        json!([jr, jr, "test:2", "phx_reply", {"status": "error", "response": {"reason": "denied"}}])
    );
    c.assert_nothing_queued().await;
}

#[tokio::test]
async fn duplicate_join_closes_the_old_instance_then_joins() {
    let (node, terminated) = node().await;
    let mut c = node.ws().await;
    let (old, _) = c.join("test:dup", json!({})).await;
    c.recv_json().await; // welcome
    let (new, _) = (c.next_ref(), ());
    c.send_json(json!([new, new, "test:dup", "phx_join", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([old, old, "test:dup", "phx_close", {}])
    );
    assert_eq!(
        c.recv_json().await,
        ok(&new, &new, "test:dup", json!({"joined": 1}))
    );
    assert_eq!(
        c.recv_json().await,
        json!([new, null, "test:dup", "welcome", {"hello": true}])
    );
    assert_eq!(terminated.load(Ordering::SeqCst), 1);
    // Still subscribed exactly once.
    node.broadcast("test:dup", "news", json!({"n": 1})).await;
    assert_eq!(
        c.recv_json().await,
        json!([null, null, "test:dup", "news", {"n": 1}])
    );
    c.assert_nothing_queued().await;
}

#[tokio::test]
async fn leave_replies_then_closes_and_stops_delivery() {
    let (node, terminated) = node().await;
    let mut c = node.ws().await;
    let jr = c.join_ok("room:l").await;
    c.send_json(json!([jr, "9", "room:l", "phx_leave", {}]))
        .await;
    assert_eq!(c.recv_json().await, ok(&jr, "9", "room:l", json!({})));
    assert_eq!(
        c.recv_json().await,
        json!([jr, jr, "room:l", "phx_close", {}])
    );
    node.broadcast("room:l", "news", json!({})).await;
    c.assert_nothing_queued().await;
    // Leave of a topic that is not joined: ok, no close.
    c.send_json(json!(["77", "10", "room:other", "phx_leave", {}]))
        .await;
    assert_eq!(c.recv_json().await, ok("77", "10", "room:other", json!({})));
    c.assert_nothing_queued().await;
    // A Rust channel's terminate runs on leave.
    let (jr, _) = c.join("test:t", json!({})).await;
    c.recv_json().await;
    c.send_json(json!([jr, "11", "test:t", "phx_leave", {}]))
        .await;
    c.recv_json().await;
    c.recv_json().await;
    assert_eq!(terminated.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn events_on_unjoined_topics_and_join_ref_filtering() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    c.send_json(json!(["3", "20", "gone:1", "ev", {}])).await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "20", "gone:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    let (jr, _) = c.join("test:f", json!({})).await;
    c.recv_json().await; // welcome
                         // Stale join_ref: dropped silently.
    c.send_json(json!(["stale", "21", "test:f", "custom", {"x": 1}]))
        .await;
    c.assert_nothing_queued().await;
    // Null join_ref: accepted; the reply carries the channel's join_ref and any status string.
    c.send_json(json!([null, "22", "test:f", "custom", {"x": 2}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([jr, "22", "test:f", "phx_reply", {"status": "accepted", "response": {"x": 2}}])
    );
    // A stale leave is ignored too.
    c.send_json(json!(["stale", "23", "test:f", "phx_leave", {}]))
        .await;
    c.assert_nothing_queued().await;
}

#[tokio::test]
async fn pushes_broadcasts_and_async_replies_have_the_right_refs() {
    let (node, _) = node().await;
    let mut a = node.ws().await;
    let mut b = node.ws().await;
    let (ja, _) = a.join("test:p", json!({})).await;
    a.recv_json().await;
    let (_, _) = b.join("test:p", json!({})).await;
    b.recv_json().await;
    a.send_json(json!([ja, "30", "test:p", "push", {"only": "a"}]))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!([ja, null, "test:p", "pushed", {"only": "a"}])
    );
    a.send_json(json!([ja, "31", "test:p", "shout", {"all": 1}]))
        .await;
    let broadcast = json!([null, null, "test:p", "shout", {"all": 1}]);
    assert_eq!(a.recv_json().await, broadcast);
    assert_eq!(a.recv_json().await, ok(&ja, "31", "test:p", json!({})));
    assert_eq!(b.recv_json().await, broadcast);
    a.send_json(json!([ja, "32", "test:p", "later", {}])).await;
    assert_eq!(
        a.recv_json().await,
        ok(&ja, "32", "test:p", json!({"late": true}))
    );
    b.assert_nothing_queued().await;
}

#[tokio::test]
async fn intercepted_events_go_through_handle_out() {
    let (node, _) = node().await;
    let mut a = node.ws().await;
    let (ja, _) = a.join("test:i", json!({})).await;
    a.recv_json().await;
    a.send_json(json!([ja, "40", "test:i", "tagged", {"v": 1}]))
        .await;
    // handle_out pushes (join_ref set, ref null) with the added field.
    assert_eq!(
        a.recv_json().await,
        json!([ja, null, "test:i", "tagged", {"v": 1, "intercepted": true}])
    );
}

#[tokio::test]
async fn a_failing_channel_errors_alone() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    let room = c.join_ok("room:safe").await;
    for event in ["fail", "panic"] {
        let (jr, _) = c.join("test:x", json!({})).await;
        c.recv_json().await;
        c.send_json(json!([jr, "50", "test:x", event, {}])).await;
        assert_eq!(
            c.recv_json().await,
            json!([jr, jr, "test:x", "phx_error", {"reason": "channel_crash"}])
        );
        // The crashed channel is gone; the other channel and the session still work.
        c.send_json(json!([jr, "51", "test:x", "custom", {}])).await;
        assert_eq!(
            c.recv_json().await,
            json!([null, "51", "test:x", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
        );
    }
    c.send_json(json!([room, "52", "room:safe", "new_msg", {"still": "alive"}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, null, "room:safe", "new_msg", {"still": "alive"}])
    );
    assert_eq!(c.recv_json().await, ok(&room, "52", "room:safe", json!({})));
}

#[tokio::test]
async fn a_channel_may_stop_itself() {
    let (node, terminated) = node().await;
    let mut c = node.ws().await;
    let (jr, _) = c.join("test:s", json!({})).await;
    c.recv_json().await;
    c.send_json(json!([jr, "60", "test:s", "stop", {}])).await;
    assert_eq!(c.recv_json().await, ok(&jr, "60", "test:s", json!({})));
    assert_eq!(
        c.recv_json().await,
        json!([jr, jr, "test:s", "phx_close", {}])
    );
    assert_eq!(terminated.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn closing_the_connection_terminates_its_channels() {
    let (node, terminated) = node().await;
    let mut c = node.ws().await;
    c.join("test:c1", json!({})).await;
    c.recv_json().await;
    c.join("test:c2", json!({})).await;
    c.recv_json().await;
    c.send_raw(&testkit::frame(0x88, &1000u16.to_be_bytes(), true))
        .await;
    assert_eq!(c.expect_close().await, Some(1000));
    terminated.wait_for(2).await;
    assert_eq!(terminated.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn v1_serializer_speaks_objects_without_join_ref() {
    let (node, _) = node().await;
    let mut c = Client::connect(node.addr, "/socket/websocket?vsn=1.0.0").await;
    c.send_json(json!({"topic": "room:v1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "room:v1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"})
    );
    c.send_json(json!({"topic": "room:v1", "event": "new_msg", "payload": {"a": 1}, "ref": "2"}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "room:v1", "event": "new_msg", "payload": {"a": 1}, "ref": null})
    );
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "room:v1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "2"})
    );
    // No vsn at all also means V1.
    let mut d = Client::connect(node.addr, "/socket/websocket").await;
    d.send_json(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "h"}))
        .await;
    assert_eq!(
        d.recv_json().await,
        json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "h"})
    );
}

#[tokio::test]
async fn binary_push_is_broadcast_as_a_binary_frame() {
    let (node, _) = node().await;
    let mut a = node.ws().await;
    let mut b = node.ws().await;
    let ja = a.join_ok("room:bin").await;
    b.join_ok("room:bin").await;
    // kind 0 push: join_ref, ref, topic, event, payload.
    let mut frame = vec![0u8, ja.len() as u8, 2, 8, 7];
    frame.extend_from_slice(ja.as_bytes());
    frame.extend_from_slice(b"70room:binnew_msg");
    frame.extend_from_slice(&[1, 2, 3]);
    a.send_binary(&frame).await;
    let mut expected = vec![2u8, 8, 7];
    expected.extend_from_slice(b"room:binnew_msg");
    expected.extend_from_slice(&[1, 2, 3]);
    assert_eq!(b.recv().await, Some(Frame::Binary(expected.clone())));
    assert_eq!(a.recv().await, Some(Frame::Binary(expected)));
    assert_eq!(a.recv_json().await, ok(&ja, "70", "room:bin", json!({})));
}

/// A channel answering with a binary response gets a kind-1 binary reply frame (protocol §2.3):
/// status `accepted`, the pushed bytes as the response; never a JSON `phx_reply`.
#[tokio::test]
async fn a_binary_response_is_a_kind_1_reply() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    let (jr, _) = c.join("test:bin", json!({})).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome[3], "welcome");
    // kind 0 push of `custom`, which TestChannel answers with its payload as the response
    let mut frame = vec![0u8, jr.len() as u8, 2, 8, 6];
    frame.extend_from_slice(jr.as_bytes());
    frame.extend_from_slice(b"71test:bincustom");
    frame.extend_from_slice(&[0, 255, 7]);
    c.send_binary(&frame).await;
    // kind 1: join_ref, ref, topic, status, then the response bytes
    let mut expected = vec![1u8, jr.len() as u8, 2, 8, 8];
    expected.extend_from_slice(jr.as_bytes());
    expected.extend_from_slice(b"71test:binaccepted");
    expected.extend_from_slice(&[0, 255, 7]);
    assert_eq!(c.recv().await, Some(Frame::Binary(expected)));
}

#[tokio::test]
async fn server_pings_get_pongs_and_client_pings_are_answered() {
    let (node, _) = node().await;
    let mut c = node.ws().await;
    c.send_raw(&testkit::frame(0x89, b"ping!", true)).await;
    assert_eq!(c.recv().await, Some(Frame::Pong(b"ping!".to_vec())));
}
