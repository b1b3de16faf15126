//! Delivery between nodes through a real redis-server: interest-based topics, unsubscribe,
//! direct messages, echo suppression, external publishers, the bounded incoming queue and the
//! duplicate node id check.

mod support;

use std::time::Duration;

use pubsub_redis::{Envelope, Error, Incoming, RedisPubSub};
use support::{config, init_tracing, node, recv};
use testkit::eventually;
use testkit::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(2);
const QUIET: Duration = Duration::from_millis(300);

fn topic_of(msg: Option<Incoming>) -> Envelope {
    match msg {
        Some(Incoming::Topic(env)) => env,
        other => panic!("expected a topic message, got {other:?}"),
    }
}

async fn wait_numsub(redis: &RedisServer, channel: &str, want: u64) {
    eventually(WAIT, &format!("NUMSUB {channel} == {want}"), || async {
        redis.numsub(channel).await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_topic_messages_by_interest() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, mut a_rx) = node(config(vec![redis.url()], "a")).await;
    let (b, mut b_rx) = node(config(vec![redis.url()], "b")).await;
    assert!(a.subscribe("room:1"));
    assert!(b.subscribe("room:1"));
    assert!(a.subscribe("room:2"));
    wait_numsub(&redis, &a.topic_channel("room:1"), 2).await;
    wait_numsub(&redis, &a.topic_channel("room:2"), 1).await;

    let env = a.envelope("room:1", "new_msg", &br#"{"body":"hi"}"#[..], false);
    assert_eq!(
        a.publish("room:1", &env).await.unwrap(),
        2,
        "both nodes' connections"
    );
    let got = topic_of(recv(&mut b_rx, WAIT).await);
    assert_eq!(got, env);
    assert_eq!(got.origin, "a");

    let reply = b.envelope("room:1", "shout", &b"\x00\x01"[..], true);
    b.publish("room:1", &reply).await.unwrap();
    assert_eq!(topic_of(recv(&mut a_rx, WAIT).await), reply);

    // room:2 is owned by `a` only: Redis delivers it to one connection, and `b` sees nothing
    // of it before a later marker on room:1.
    let only_a = a.envelope("room:2", "new_msg", &b"{}"[..], false);
    assert_eq!(a.publish("room:2", &only_a).await.unwrap(), 1);
    let marker = a.envelope("room:1", "marker", &b"{}"[..], false);
    a.publish("room:1", &marker).await.unwrap();
    assert_eq!(topic_of(recv(&mut b_rx, WAIT).await).event, "marker");
    assert!(
        recv(&mut a_rx, QUIET).await.is_none(),
        "own echoes are dropped"
    );

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.dropped_echoes, 3, "{sa:?}");
    assert_eq!(sa.received, 1, "{sa:?}");
    assert_eq!(sa.published, 3, "{sa:?}");
    assert_eq!(sa.subscribed_topics, 2, "{sa:?}");
    assert_eq!(sb.dropped_echoes, 1, "{sb:?}");
    assert_eq!(sb.received, 2, "{sb:?}");
    assert_eq!(sb.decode_errors, 0, "{sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_subscribe_is_idempotent() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, _a_rx) = node(config(vec![redis.url()], "a")).await;
    let (b, mut b_rx) = node(config(vec![redis.url()], "b")).await;
    let channel = a.topic_channel("room:7");
    a.subscribe("room:7");
    assert!(b.subscribe("room:7"));
    assert!(!b.subscribe("room:7"), "second subscribe is a no-op");
    wait_numsub(&redis, &channel, 2).await;
    assert_eq!(b.stats().subscribed_topics, 1);

    assert!(b.unsubscribe("room:7"));
    assert!(!b.unsubscribe("room:7"), "second unsubscribe is a no-op");
    wait_numsub(&redis, &channel, 1).await;
    assert_eq!(b.stats().subscribed_topics, 0);
    let env = a.envelope("room:7", "new_msg", &b"{}"[..], false);
    assert_eq!(
        a.publish("room:7", &env).await.unwrap(),
        1,
        "only a still listens"
    );
    assert!(recv(&mut b_rx, QUIET).await.is_none());

    // Many topics at once: spread over both connections, subscribed in batches.
    let topics: Vec<String> = (0..1500).map(|i| format!("bulk:{i}")).collect();
    for t in &topics {
        b.subscribe(t);
    }
    eventually(WAIT, "1500 bulk channels", || async {
        let chans: Vec<String> = redis
            .query(redis::cmd("PUBSUB").arg("CHANNELS").arg("gw:t:bulk:*"))
            .await;
        chans.len() == 1500
    })
    .await;
    for t in &topics {
        b.unsubscribe(t);
    }
    eventually(WAIT, "bulk channels gone", || async {
        let chans: Vec<String> = redis
            .query(redis::cmd("PUBSUB").arg("CHANNELS").arg("gw:t:bulk:*"))
            .await;
        chans.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_only_their_node() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, _a_rx) = node(config(vec![redis.url()], "a")).await;
    let (_b, mut b_rx) = node(config(vec![redis.url()], "b")).await;
    let (c, mut c_rx) = node(config(vec![redis.url()], "c")).await;
    let env = a.envelope("presence:sync", "sync", &b"{}"[..], false);
    assert_eq!(a.direct("b", &env).await.unwrap(), 1);
    match recv(&mut b_rx, WAIT).await {
        Some(Incoming::Direct(got)) => assert_eq!(got, env),
        other => panic!("expected a direct message, got {other:?}"),
    }
    assert_eq!(a.direct("nobody", &env).await.unwrap(), 0);
    assert!(recv(&mut c_rx, QUIET).await.is_none());
    assert_eq!(c.stats().received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_publish_straight_into_redis() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (b, mut b_rx) = node(config(vec![redis.url()], "b")).await;
    b.subscribe("room:1");
    wait_numsub(&redis, "gw:t:room:1", 1).await;

    // The README's redis-cli example, verbatim: a msgpack map without `origin`. redis-cli
    // expands \xNN escapes in commands it reads from stdin, not in argv.
    let line = r#"PUBLISH gw:t:room:1 "\x85\xa1v\x01\xa5topic\xa6room:1\xa5event\xa5shout\xa7payload\xc4\x0d{\"body\":\"hi\"}\xa6binary\xc2""#;
    let mut cli = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    use std::io::Write;
    writeln!(cli.stdin.take().unwrap(), "{line}").unwrap();
    let out = cli.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let got = topic_of(recv(&mut b_rx, WAIT).await);
    assert_eq!((got.origin.as_str(), got.event.as_str()), ("", "shout"));
    assert_eq!(&got.payload[..], br#"{"body":"hi"}"#);

    // Another version, garbage, and a topic mismatch are counted and not delivered.
    let mut v2 = Envelope::new("", "room:1", "e", &b"{}"[..], false);
    v2.v = 2;
    let wrong_topic = Envelope::new("", "room:2", "e", &b"{}"[..], false);
    for payload in [
        rmp_serde::to_vec_named(&v2).unwrap(),
        b"not msgpack".to_vec(),
        wrong_topic.encode().unwrap(),
    ] {
        let _: u64 = redis
            .query(redis::cmd("PUBLISH").arg("gw:t:room:1").arg(payload))
            .await;
    }
    eventually(WAIT, "3 decode errors", || async {
        b.stats().decode_errors == 3
    })
    .await;
    assert!(recv(&mut b_rx, QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incoming_queue_drops_and_node_stays_ready() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, _a_rx) = node(config(vec![redis.url()], "a")).await;
    let mut cfg = config(vec![redis.url()], "b");
    cfg.incoming_capacity = 2;
    let (b, mut b_rx) = node(cfg).await;
    b.subscribe("room:1");
    wait_numsub(&redis, "gw:t:room:1", 1).await;
    for i in 0..10 {
        let env = a.envelope("room:1", &format!("e{i}"), &b"{}"[..], false);
        a.publish("room:1", &env).await.unwrap();
    }
    eventually(WAIT, "8 dropped", || async { b.stats().dropped_full == 8 }).await;
    // The reader kept going: canaries are still heard after the queue filled up.
    let mut health = b.health();
    let before = health.borrow_and_update().canary_rtt;
    tokio::time::timeout(Duration::from_secs(3), health.changed())
        .await
        .expect("a canary round trip after the drops")
        .unwrap();
    assert!(
        health.borrow().ready,
        "{:?} (before {before:?})",
        *health.borrow()
    );
    assert_eq!(topic_of(recv(&mut b_rx, WAIT).await).event, "e0");
    assert_eq!(topic_of(recv(&mut b_rx, WAIT).await).event, "e1");
    assert_eq!(b.stats().received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_id_is_refused_and_topic_mismatch_rejected() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, _rx) = node(config(vec![redis.url()], "same")).await;
    match RedisPubSub::start(config(vec![redis.url()], "same")).await {
        Err(Error::DuplicateNodeId(id)) => assert_eq!(id, "same"),
        other => panic!(
            "expected DuplicateNodeId, got {:?}",
            other.map(|(n, _)| n.node_id().to_owned())
        ),
    }
    let env = a.envelope("room:1", "e", &b"{}"[..], false);
    assert!(matches!(
        a.publish("room:2", &env).await,
        Err(Error::TopicMismatch { .. })
    ));
    assert_eq!(a.stats().publish_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_everything() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (a, mut a_rx) = node(config(vec![redis.url()], "a")).await;
    a.subscribe("room:1");
    wait_numsub(&redis, "gw:t:room:1", 1).await;
    let clone = a.clone();
    drop(a);
    wait_numsub(&redis, "gw:t:room:1", 1).await;
    drop(clone);
    // The last handle is gone: connections close, and the queue reports the end.
    wait_numsub(&redis, "gw:t:room:1", 0).await;
    wait_numsub(&redis, "gw:n:a", 0).await;
    assert!(tokio::time::timeout(WAIT, a_rx.recv())
        .await
        .expect("queue closes")
        .is_none());
}
