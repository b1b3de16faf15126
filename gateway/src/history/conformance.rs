//! The conformance suite every history store must pass. A store's tests call [`run`] with a
//! fresh store (topics here are unique to one run).

use std::time::Duration;

use super::{HistoryStore, Limits, Position, Recovery};
use crate::cluster::Broadcast;
use crate::protocol::Payload;

fn msg(topic: &str, i: u32) -> Broadcast {
    Broadcast::plain(topic, "e", Payload::raw_json(format!("{{\"i\":{i}}}")))
}

fn numbers(recovery: &Recovery) -> Vec<String> {
    match recovery {
        Recovery::Exact(msgs) => msgs
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload.bytes()).into_owned())
            .collect(),
        Recovery::NotExact => panic!("expected an exact recovery"),
    }
}

/// Run every case against `store`.
pub async fn run(store: &dyn HistoryStore) {
    let limits = Limits {
        size: 5,
        ttl: Duration::from_secs(60),
    };
    let topic = format!("conf:{}", rand::random::<u32>());
    // A topic without broadcasts has a position at offset 0 of some epoch.
    let start = store.latest(&topic, limits).await.unwrap();
    assert_eq!(start.offset, 0);
    assert_eq!(Position::parse(&start.to_string()), Some(start.clone()));
    assert!(
        start.to_string().parse::<f64>().is_err(),
        "numeric position"
    );

    // Positions are unique and increasing, delivered with the broadcast.
    let delivered = std::sync::Mutex::new(Vec::new());
    let deliver = |b: std::sync::Arc<Broadcast>| {
        delivered.lock().unwrap().push(b.position.clone());
    };
    let mut positions = Vec::new();
    for i in 1..=3 {
        let stored = store
            .append(msg(&topic, i), limits, None, &deliver)
            .await
            .unwrap();
        assert!(stored.fresh);
        positions.push(stored.position);
    }
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(positions.iter().all(|p| p.epoch == start.epoch));
    let seen = delivered.lock().unwrap().clone();
    assert!(
        seen.is_empty()
            || seen
                == positions
                    .iter()
                    .map(|p| Some(p.to_string().into()))
                    .collect::<Vec<_>>(),
        "delivered out of position order: {seen:?}"
    );

    // Exactly what follows `since`, in order, with the positions they were given.
    let read = store.since(&topic, Some(&start), limits).await.unwrap();
    assert_eq!(read.latest, positions[2]);
    assert_eq!(
        numbers(&read.recovery),
        [r#"{"i":1}"#, r#"{"i":2}"#, r#"{"i":3}"#]
    );
    if let Recovery::Exact(msgs) = &read.recovery {
        let got: Vec<_> = msgs
            .iter()
            .map(|m| m.position.as_deref().map(str::to_owned))
            .collect();
        let want: Vec<_> = positions.iter().map(|p| Some(p.to_string())).collect();
        assert_eq!(got, want);
    }
    let read = store
        .since(&topic, Some(&positions[1]), limits)
        .await
        .unwrap();
    assert_eq!(numbers(&read.recovery), [r#"{"i":3}"#]);
    let read = store
        .since(&topic, Some(&positions[2]), limits)
        .await
        .unwrap();
    assert_eq!(numbers(&read.recovery), Vec::<String>::new());

    // No since, another epoch, a future offset: not exact, but the latest position.
    let read = store.since(&topic, None, limits).await.unwrap();
    assert_eq!((read.latest.offset, read.recovery), (3, Recovery::NotExact));
    for foreign in ["zzz-1", "zzz-0"] {
        let p = Position::parse(foreign).unwrap();
        let read = store.since(&topic, Some(&p), limits).await.unwrap();
        assert_eq!(read.recovery, Recovery::NotExact, "{foreign}");
    }
    let future = Position {
        epoch: start.epoch.clone(),
        offset: 99,
    };
    let read = store.since(&topic, Some(&future), limits).await.unwrap();
    assert_eq!(read.recovery, Recovery::NotExact);

    // Trimmed to `size`: a since before what is kept is not exact, after it still is.
    for i in 4..=8 {
        store
            .append(msg(&topic, i), limits, None, &|_| {})
            .await
            .unwrap();
    }
    let read = store
        .since(&topic, Some(&positions[1]), limits)
        .await
        .unwrap();
    assert_eq!(read.recovery, Recovery::NotExact, "entry 3 was trimmed");
    let read = store
        .since(&topic, Some(&positions[2]), limits)
        .await
        .unwrap();
    assert_eq!(numbers(&read.recovery).len(), 5);

    // An idempotency key used again returns the first position and stores nothing.
    let first = store
        .append(msg(&topic, 9), limits, Some("k1"), &|_| {})
        .await
        .unwrap();
    let again = store
        .append(msg(&topic, 10), limits, Some("k1"), &|_| {
            panic!("delivered a duplicate")
        })
        .await
        .unwrap();
    assert!(first.fresh && !again.fresh);
    assert_eq!(again.position, first.position);
    assert_eq!(store.latest(&topic, limits).await.unwrap(), first.position);
    let other = store
        .append(msg(&topic, 11), limits, Some("k2"), &|_| {})
        .await
        .unwrap();
    assert_eq!(other.position.offset, first.position.offset + 1);

    // Topics are independent.
    let other_topic = format!("{topic}:b");
    let b = store
        .append(msg(&other_topic, 1), limits, None, &|_| {})
        .await
        .unwrap();
    assert_eq!(b.position.offset, 1);

    // Expiry: `ttl` after its last broadcast a topic's history is gone, and positions from
    // before are not recoverable (a new epoch, or too old).
    let short = Limits {
        size: 5,
        ttl: Duration::from_secs(1),
    };
    let expiring = format!("{topic}:ttl");
    let p = store
        .append(msg(&expiring, 1), short, None, &|_| {})
        .await
        .unwrap();
    let since_start = Position {
        epoch: p.position.epoch.clone(),
        offset: 0,
    };
    let read = store
        .since(&expiring, Some(&since_start), short)
        .await
        .unwrap();
    assert_eq!(numbers(&read.recovery).len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Expiry is a matter of time passing; poll until it happened.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = store
            .since(&expiring, Some(&since_start), short)
            .await
            .unwrap();
        if read.recovery == Recovery::NotExact {
            assert_ne!(read.latest, p.position);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never expired"
        );
    }
}
