//! The conformance suite every PubSub adapter must pass. An adapter's tests call [`run`] with a
//! factory that attaches a new node (with the given id) to one shared cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{Broadcast, Delivery, SharedPubSub};
use crate::protocol::Payload;

fn msg(topic: &str, event: &str) -> Arc<Broadcast> {
    Arc::new(Broadcast {
        topic: topic.into(),
        event: event.into(),
        payload: Payload::empty(),
    })
}

/// Broadcast `m` from `from` until `rx` sees an event named `m.event` (subscriptions of
/// asynchronous adapters take effect a little after `subscribe` returns).
async fn until_delivered(
    from: &SharedPubSub,
    rx: &mut mpsc::Receiver<Delivery>,
    m: Arc<Broadcast>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        from.broadcast(m.clone());
        match timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(Delivery::Topic(b))) if b.event == m.event => return,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("delivery queue closed"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broadcast never delivered"
        );
    }
}

async fn next(rx: &mut mpsc::Receiver<Delivery>) -> Delivery {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no delivery within 5 s")
        .expect("queue closed")
}

fn drain(rx: &mut mpsc::Receiver<Delivery>) -> Vec<Delivery> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Run every conformance case. `attach(id)` adds a node to the shared cluster.
pub async fn run<F, Fut>(mut attach: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = (SharedPubSub, mpsc::Receiver<Delivery>)>,
{
    let (a, mut rx_a) = attach("node-a".into()).await;
    let (b, mut rx_b) = attach("node-b".into()).await;
    let (c, mut rx_c) = attach("node-c".into()).await;
    assert_eq!(a.node_id(), "node-a");

    // Interest-based: only subscribed nodes receive, and never the origin.
    a.subscribe("t:1");
    b.subscribe("t:1");
    until_delivered(&a, &mut rx_b, msg("t:1", "probe")).await;
    drain(&mut rx_b);
    a.broadcast(msg("t:1", "hello"));
    match next(&mut rx_b).await {
        Delivery::Topic(m) => assert_eq!((m.topic.as_str(), m.event.as_str()), ("t:1", "hello")),
        other => panic!("unexpected {other:?}"),
    }
    c.direct("node-c", msg("", "marker"));
    assert!(matches!(next(&mut rx_c).await, Delivery::Direct(m) if m.event == "marker"));
    assert!(
        drain(&mut rx_c).is_empty(),
        "node-c is not subscribed to t:1 but received it"
    );
    assert!(
        drain(&mut rx_a)
            .iter()
            .all(|d| !matches!(d, Delivery::Topic(m) if m.topic == "t:1")),
        "origin heard its own broadcast"
    );

    // Direct messages reach exactly their node.
    a.direct("node-b", msg("", "only-b"));
    assert!(matches!(next(&mut rx_b).await, Delivery::Direct(m) if m.event == "only-b"));
    c.direct("node-c", msg("", "marker2"));
    assert!(matches!(next(&mut rx_c).await, Delivery::Direct(m) if m.event == "marker2"));
    assert!(drain(&mut rx_a).is_empty());

    // Unsubscribe stops delivery.
    b.unsubscribe("t:1");
    c.subscribe("t:1");
    until_delivered(&a, &mut rx_c, msg("t:1", "probe2")).await;
    b.direct("node-b", msg("", "marker3"));
    let got: Vec<_> = std::iter::from_fn(|| rx_b.try_recv().ok()).collect();
    let mut saw_marker = got
        .iter()
        .any(|d| matches!(d, Delivery::Direct(m) if m.event == "marker3"));
    if !saw_marker {
        saw_marker = matches!(next(&mut rx_b).await, Delivery::Direct(m) if m.event == "marker3");
    }
    assert!(saw_marker);
    a.broadcast(msg("t:1", "after-unsub"));
    assert!(matches!(next(&mut rx_c).await, Delivery::Topic(m) if m.event == "after-unsub"));
    b.direct("node-b", msg("", "marker4"));
    let after: Vec<_> = loop {
        let d = next(&mut rx_b).await;
        if matches!(&d, Delivery::Direct(m) if m.event == "marker4") {
            break drain(&mut rx_b);
        }
        assert!(
            !matches!(&d, Delivery::Topic(m) if m.event == "after-unsub"),
            "unsubscribed node still receives"
        );
    };
    assert!(after
        .iter()
        .all(|d| !matches!(d, Delivery::Topic(m) if m.event == "after-unsub")));
}
