//! A Rust channel with history that intercepts an event (`handle_out`): its pushes of that
//! event still carry the broadcast's position in the ref slot (with the channel's join ref), live
//! and when replayed on a join with `since`, so a client recovering from them neither misses
//! nor repeats anything.

use std::time::Duration;

use async_trait::async_trait;
use gateway::history::Limits;
use gateway::{Channel, ChannelContext, ChannelError, Config, Gateway, Join, Payload, Reply};
use serde_json::{json, Value};
use testkit::Client;

use crate::common::TestNode;
use crate::offset;

/// Keeps 100 broadcasts per topic and adds `"seen": true` to every outgoing `tagged`.
struct Tagging;

#[async_trait]
impl Channel for Tagging {
    async fn join(
        &mut self,
        _topic: &str,
        _payload: &Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError> {
        Ok(Join::Ok(Payload::empty()))
    }

    async fn handle_in(
        &mut self,
        _event: &str,
        _payload: Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        Err(ChannelError("no client events".into()))
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
        let mut v: Value = serde_json::from_slice(payload.bytes())
            .map_err(|e| ChannelError(e.to_string().into()))?;
        v["seen"] = json!(true);
        Ok(Some(Payload::json(&v)))
    }

    fn history(&self) -> Option<Limits> {
        Some(Limits {
            size: 100,
            ttl: Duration::from_secs(300),
        })
    }
}

async fn tagged(n: &TestNode, topic: &str, i: u64) -> String {
    let body = json!({"topic": topic, "event": "tagged", "payload": {"i": i}}).to_string();
    let (status, text) = n.http("POST", "/api/broadcast", &[], &body).await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["position"].as_str().expect("a position").to_owned()
}

/// The next frame: an intercepted `tagged` push for channel `jr`; (its position, its `i`).
async fn next_tagged(c: &mut Client, jr: &str, topic: &str) -> (String, u64) {
    let m = c.recv_json().await;
    assert_eq!(
        (&m[0], &m[2], &m[3], &m[4]["seen"]),
        (&json!(jr), &json!(topic), &json!("tagged"), &json!(true)),
        "{m}"
    );
    let pos = m[1]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {m}"));
    (pos.to_owned(), m[4]["i"].as_u64().expect("i"))
}

#[tokio::test]
async fn intercepted_broadcasts_carry_their_position_live_and_on_replay() {
    let gw = Gateway::new(Config::default()).channel("tag:*", |_| Tagging);
    let n = TestNode::start_gateway(gw).await;
    let topic = "tag:x";
    let mut a = n.ws().await;
    let (jr, reply) = a.join(topic, json!({})).await;
    assert_eq!(reply[4]["response"]["recovered"], false, "{reply}");
    let first = tagged(&n, topic, 0).await;
    let (seen, i) = next_tagged(&mut a, &jr, topic).await;
    assert_eq!((seen.as_str(), i), (first.as_str(), 0));
    drop(a);

    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(tagged(&n, topic, i).await);
    }
    let mut b = n.ws().await;
    let (jr, reply) = b.join(topic, json!({ "since": seen })).await;
    assert_eq!(reply[4]["response"]["recovered"], true, "{reply}");
    for (i, want) in (1..=5).zip(&missed) {
        assert_eq!(next_tagged(&mut b, &jr, topic).await, (want.clone(), i));
    }
    let live = tagged(&n, topic, 6).await;
    let (pos, i) = next_tagged(&mut b, &jr, topic).await;
    assert_eq!((pos.as_str(), i), (live.as_str(), 6));
    assert_eq!(offset(&live), offset(&first) + 6);
}
