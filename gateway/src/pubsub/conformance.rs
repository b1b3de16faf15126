//! The conformance suite every PubSub adapter must pass. An adapter's tests call [`run`] with a
//! factory that attaches a new node (with the given id) to one shared cluster.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::SharedPubSub;
use crate::cluster::{Broadcast, ClusterMessage, LongPollMessage, NodeRef, PresenceMessage, Share};
use crate::protocol::Payload;

type Rx = mpsc::Receiver<ClusterMessage>;

fn msg(topic: &str, event: &str) -> ClusterMessage {
    ClusterMessage::Broadcast(Broadcast::new(topic, event, Payload::empty()))
}

/// A direct message recognisable by `id`.
fn marker(id: u64) -> ClusterMessage {
    ClusterMessage::LongPoll(LongPollMessage::Ack { id })
}

fn event_of(m: &ClusterMessage) -> Option<&str> {
    match m {
        ClusterMessage::Broadcast(b) => Some(&b.event),
        _ => None,
    }
}

fn is_marker(m: &ClusterMessage, want: u64) -> bool {
    matches!(m, ClusterMessage::LongPoll(LongPollMessage::Ack { id }) if *id == want)
}

/// Publish `event` on `topic` from `from` until `rx` sees it (subscriptions of asynchronous
/// adapters take effect a little after `subscribe` returns).
async fn until_delivered(from: &SharedPubSub, rx: &mut Rx, topic: &str, event: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        from.publish(topic, msg(topic, event));
        match timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(m)) if event_of(&m) == Some(event) => return,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("delivery queue closed"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broadcast never delivered"
        );
    }
}

async fn next(rx: &mut Rx) -> ClusterMessage {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no delivery within 5 s")
        .expect("queue closed")
}

fn drain(rx: &mut Rx) -> Vec<ClusterMessage> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Run every conformance case. `attach(id)` adds a node to the shared cluster.
pub async fn run<F, Fut>(mut attach: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = (SharedPubSub, Rx)>,
{
    let (a, mut rx_a) = attach("node-a".into()).await;
    let (b, mut rx_b) = attach("node-b".into()).await;
    let (c, mut rx_c) = attach("node-c".into()).await;
    assert_eq!(a.node_id(), "node-a");

    // Interest-based: only subscribed nodes receive, and never the origin.
    a.subscribe("t:1");
    b.subscribe("t:1");
    until_delivered(&a, &mut rx_b, "t:1", "probe").await;
    drain(&mut rx_b);
    a.publish("t:1", msg("t:1", "hello"));
    match next(&mut rx_b).await {
        ClusterMessage::Broadcast(m) => {
            assert_eq!((m.topic.as_str(), m.event.as_str()), ("t:1", "hello"))
        }
        other => panic!("unexpected {other:?}"),
    }
    c.direct("node-c", marker(1));
    assert!(is_marker(&next(&mut rx_c).await, 1));
    assert!(
        drain(&mut rx_c).is_empty(),
        "node-c is not subscribed to t:1 but received it"
    );
    assert!(
        drain(&mut rx_a).iter().all(|m| event_of(m).is_none()),
        "origin heard its own broadcast"
    );

    // Every kind of cluster message arrives as it was sent, on its route.
    let me = NodeRef {
        node: "node-a".into(),
        inc: 9,
    };
    let kinds = [
        ClusterMessage::Presence(PresenceMessage::Sync {
            topic: "t:1".into(),
            from: me.clone(),
        }),
        ClusterMessage::Presence(PresenceMessage::Heartbeat(me.clone())),
    ];
    for kind in kinds {
        a.publish("t:1", kind.clone());
        assert_eq!(next(&mut rx_b).await, kind);
    }
    let share = ClusterMessage::Presence(PresenceMessage::State(Share {
        topic: "t:1".into(),
        from: me,
        metas: vec![("ann".into(), serde_json::json!({"phx_ref": "r"}))],
    }));
    a.direct("node-b", share.clone());
    assert_eq!(next(&mut rx_b).await, share);

    // Direct messages reach exactly their node.
    a.direct("node-b", marker(2));
    assert!(is_marker(&next(&mut rx_b).await, 2));
    c.direct("node-c", marker(3));
    assert!(is_marker(&next(&mut rx_c).await, 3));
    assert!(drain(&mut rx_a).is_empty());

    // Unsubscribe stops delivery.
    b.unsubscribe("t:1");
    c.subscribe("t:1");
    until_delivered(&a, &mut rx_c, "t:1", "probe2").await;
    b.direct("node-b", marker(4));
    // Probes published before b's unsubscribe took effect may still reach b, before or after
    // the marker (its direct route is another Redis channel): skip those, nothing else.
    loop {
        let m = next(&mut rx_b).await;
        if is_marker(&m, 4) {
            break;
        }
        assert_eq!(event_of(&m), Some("probe2"), "{m:?}");
    }
    a.publish("t:1", msg("t:1", "after-unsub"));
    assert_eq!(event_of(&next(&mut rx_c).await), Some("after-unsub"));
    b.direct("node-b", marker(5));
    let after: Vec<_> = loop {
        let m = next(&mut rx_b).await;
        if is_marker(&m, 5) {
            break drain(&mut rx_b);
        }
        assert_ne!(
            event_of(&m),
            Some("after-unsub"),
            "unsubscribed node still receives"
        );
    };
    assert!(after.iter().all(|m| event_of(m) != Some("after-unsub")));
}
