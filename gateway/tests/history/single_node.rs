//! One in-process node with the memory store: the contract of positions, recovery, the API and
//! client pushes, over WebSocket (V1 and V2) and LongPoll.

use gateway::Config;
use serde_json::{json, Value};
use testkit::{Client, LongPoll};

use crate::common::TestNode;
use crate::{history_spec, join_since, next_msg, nothing_more, offset, publish};

async fn node(size: u32) -> TestNode {
    TestNode::start(Config {
        channels: vec![history_spec(size)],
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn a_client_that_missed_fifty_broadcasts_gets_exactly_those_then_live_ones() {
    let n = node(100).await;
    let topic = "room:recover";
    let mut a = n.ws().await;
    let joined = join_since(&mut a, topic, None).await;
    assert_eq!(joined["recovered"], false, "no since: nothing to recover");
    let start = joined["position"].as_str().expect("a position").to_owned();
    assert_eq!(offset(&start), 0);
    assert!(start.parse::<f64>().is_err(), "positions are not numbers");
    let first = publish(&n, topic, 0).await;
    let (seen, i) = next_msg(&mut a, topic).await;
    assert_eq!((seen.as_str(), i), (first.as_str(), 0));
    drop(a);

    let mut positions = Vec::new();
    for i in 1..=50 {
        positions.push(publish(&n, topic, i).await);
    }
    let offsets: Vec<u64> = positions.iter().map(|p| offset(p)).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");

    let mut b = n.ws().await;
    let joined = join_since(&mut b, topic, Some(&seen)).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["position"], positions[49].as_str());
    for (i, want) in (1..=50).zip(&positions) {
        assert_eq!(next_msg(&mut b, topic).await, (want.clone(), i));
    }
    nothing_more(&mut b).await;
    let live = publish(&n, topic, 51).await;
    assert_eq!(next_msg(&mut b, topic).await, (live, 51));
}

#[tokio::test]
async fn unrecoverable_since_values_give_recovered_false_and_no_replay() {
    let n = node(5).await;
    let topic = "room:gone";
    let mut c = n.ws().await;
    let start = join_since(&mut c, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut last = String::new();
    for i in 0..10 {
        last = publish(&n, topic, i).await;
    }
    let epoch = start.rsplit_once('-').unwrap().0;
    let too_old = start.clone();
    let future = format!("{epoch}-999");
    let foreign = "zzzz-3".to_owned();
    for since in [
        too_old,
        future,
        foreign,
        "12".into(),
        "".into(),
        "a-b-c".into(),
    ] {
        let mut d = n.ws().await;
        let joined = join_since(&mut d, topic, Some(&since)).await;
        assert_eq!(joined["recovered"], false, "since {since:?}: {joined}");
        assert_eq!(joined["position"], last.as_str());
        nothing_more(&mut d).await;
    }
    // A non-string since is malformed too, not a crash.
    let mut d = n.ws().await;
    let (_, reply) = d.join(topic, json!({"since": 7})).await;
    assert_eq!(reply[4]["response"]["recovered"], false, "{reply}");
    // Within what is kept it recovers the rest.
    let kept = format!("{epoch}-7");
    let mut e = n.ws().await;
    assert_eq!(
        join_since(&mut e, topic, Some(&kept)).await["recovered"],
        true
    );
    assert_eq!(next_msg(&mut e, topic).await.1, 7);
    assert_eq!(next_msg(&mut e, topic).await.1, 8);
    assert_eq!(next_msg(&mut e, topic).await.1, 9);
    nothing_more(&mut e).await;
    // Every outcome is counted.
    let text = n.http("GET", "/metrics", &[], "").await.1;
    let m = |name: &str| testkit::metric_value(&text, name);
    assert_eq!(m(r#"gateway_history_appends_total{result="stored"}"#), 10.0);
    assert_eq!(
        m(r#"gateway_history_recoveries_total{outcome="none"}"#),
        1.0
    );
    assert_eq!(
        m(r#"gateway_history_recoveries_total{outcome="not_exact"}"#),
        7.0
    );
    assert_eq!(
        m(r#"gateway_history_recoveries_total{outcome="exact"}"#),
        1.0
    );
    assert_eq!(m("gateway_history_replayed_total"), 3.0);
    assert!(m("gateway_history_memory_bytes") > 0.0);
    assert_eq!(m("gateway_history_errors_total"), 0.0);
}

#[tokio::test]
async fn positions_travel_in_the_ref_slot_of_v1_and_v2_and_client_pushes_get_theirs() {
    let n = node(100).await;
    let topic = "room:refs";
    let mut v1 = Client::connect(n.addr, "/socket/websocket?vsn=1.0.0").await;
    v1.send_json(
        json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    let reply = v1.recv_json().await;
    assert_eq!(reply["payload"]["response"]["recovered"], false, "{reply}");
    let mut v2 = n.ws().await;
    let (jr, joined) = v2.join(topic, json!({})).await;
    assert_eq!(joined[4]["response"]["recovered"], false, "{joined}");
    v2.send_json(json!([jr, "10", topic, "new_msg", {"i": 1}]))
        .await;
    // Stored, then delivered (the sender too), then the ok reply with the same position.
    let (seen, i) = next_msg(&mut v2, topic).await;
    let reply = v2.recv_json().await;
    assert_eq!(reply[1], "10", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let pos = reply[4]["response"]["position"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!((seen.as_str(), i), (pos.as_str(), 1));
    let m = v1.recv_json().await;
    assert_eq!(m["ref"], pos.as_str(), "V1 carries it in ref: {m}");
    assert_eq!(m["join_ref"], Value::Null, "{m}");
    assert_eq!(m["payload"], json!({"i": 1}));
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_first_position() {
    let n = node(100).await;
    let topic = "room:idem";
    let mut c = n.ws().await;
    join_since(&mut c, topic, None).await;
    let body =
        json!({"topic": topic, "event": "new_msg", "payload": {"i": 1}, "idempotency_key": "k-1"})
            .to_string();
    let first = n.http("POST", "/api/broadcast", &[], &body).await;
    let again = n.http("POST", "/api/broadcast", &[], &body).await;
    assert_eq!((first.0, again.0), (202, 202));
    assert_eq!(first.1, again.1, "the retry answers the first position");
    let (_, i) = next_msg(&mut c, topic).await;
    assert_eq!(i, 1);
    nothing_more(&mut c).await;
    // Topics without history keep the plain answer.
    let plain = json!({"topic": "other:1", "event": "e", "payload": {}}).to_string();
    assert_eq!(
        n.http("POST", "/api/broadcast", &[], &plain).await,
        (202, r#"{"ok":true}"#.into())
    );
}

#[tokio::test]
async fn broadcasts_racing_a_join_arrive_exactly_once_in_order() {
    let n = node(1000).await;
    let topic = "room:race";
    let mut first = n.ws().await;
    let start = join_since(&mut first, topic, None).await["position"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(first);
    let addr = n.addr;
    let (published, mut progress) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for i in 1..=300u64 {
            let body =
                json!({"topic": "room:race", "event": "new_msg", "payload": {"i": i}}).to_string();
            let (s, _) = testkit::http(addr, "POST", "/api/broadcast", &[], &body).await;
            assert_eq!(s, 202);
            published.send_replace(i);
        }
    });
    // Joins land while the publisher runs (one every 50 broadcasts): each must see a gapless,
    // duplicate-free sequence.
    let mut joiners = Vec::new();
    for k in 0..5u64 {
        progress.wait_for(|n| *n >= k * 50).await.unwrap();
        let mut c = n.ws().await;
        assert_eq!(
            join_since(&mut c, topic, Some(&start)).await["recovered"],
            true
        );
        joiners.push(c);
    }
    publisher.await.unwrap();
    for mut c in joiners {
        let mut offsets = Vec::new();
        while offsets.len() < 300 {
            let (pos, i) = next_msg(&mut c, topic).await;
            assert_eq!(offset(&pos), i);
            offsets.push(i);
        }
        assert_eq!(offsets, (1..=300).collect::<Vec<_>>());
        nothing_more(&mut c).await;
    }
}

#[tokio::test]
async fn long_poll_sessions_recover_too() {
    let n = node(100).await;
    let topic = "room:lp";
    let p0 = publish(&n, topic, 0).await;
    let p1 = publish(&n, topic, 1).await;
    let p2 = publish(&n, topic, 2).await;
    let mut lp = LongPoll::open(n.addr, "", &[]).await.unwrap();
    lp.post(&[json!(["1", "1", topic, "phx_join", {"since": p0}])])
        .await;
    let frames = lp.messages(3).await;
    assert_eq!(frames[0][3], "phx_reply", "{frames:?}");
    assert_eq!(
        frames[0][4]["response"],
        json!({"recovered": true, "position": p2})
    );
    assert_eq!(frames[1], json!([null, p1, topic, "new_msg", {"i": 1}]));
    assert_eq!(frames[2], json!([null, p2, topic, "new_msg", {"i": 2}]));
    assert_eq!(frames.len(), 3, "{frames:?}");
}
