//! A node SIGKILLed mid-broadcast (survivors whole, the dead node's loss bounded) and a node
//! drained with SIGTERM during traffic (its clients closed 1012 in paced batches and back on
//! the others without a gap).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use testkit::redis::RedisServer;
use testkit::{eventually, metric_value};

use crate::record::{
    disconnects, duplicates, is_increasing, settle, until_all_hear, End, Publisher, ReadyLog,
    Recorder,
};
use crate::{cluster, env_usize, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled_mid_broadcast_leaves_survivors_whole() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start().await;
    let [mut a, b, c] = cluster(&redis.url(), [&[], &[], &[]]).await;
    let topic = "room:kill";
    let per_node = env_usize("FAULTS_CLIENTS", 3);
    let mut on = [Vec::new(), Vec::new(), Vec::new()];
    for (i, n) in [&a, &b, &c].iter().enumerate() {
        for _ in 0..per_node {
            on[i].push(Recorder::start(n.addr, topic, vec![]).await);
        }
    }
    let all: Vec<&Recorder> = on.iter().flatten().collect();
    until_all_hear(&b, topic, &all).await;
    let ready = ReadyLog::start(vec![b.addr, c.addr]);

    // Two publishers: one on a survivor, one on the node that will die.
    let via_b = Publisher::start(b.addr, topic, "seq", Duration::from_millis(10));
    let via_a = Publisher::start(a.addr, topic, "seqa", Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    a.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acks_b = via_b.finish().await;
    let acks_a = via_a.finish().await;
    let last_b = acks_b.last().unwrap().0;
    let survivors: Vec<&Recorder> = on[1].iter().chain(&on[2]).collect();
    settle(&survivors, "seq", last_b, Duration::from_secs(5)).await;

    // A's clients saw their connection drop without a close frame.
    for r in &on[0] {
        assert_eq!(r.ends().first().map(|e| e.0), Some(End::Eof));
    }
    assert!(acks_b.iter().all(|(_, ok, _)| *ok), "B refused a broadcast");
    let accepted_a: Vec<(u64, Instant)> = acks_a
        .iter()
        .filter(|(_, ok, _)| *ok)
        .map(|(n, _, t)| (*n, *t))
        .collect();
    assert!(
        acks_a.iter().any(|(_, ok, _)| !ok),
        "A kept answering after SIGKILL"
    );
    let mut lost_a = BTreeSet::new();
    for r in &survivors {
        // Every broadcast a survivor accepted reaches every survivor's client, once, in order.
        let got = r.seqs("seq");
        assert_eq!(
            got,
            (0..=last_b).collect::<Vec<_>>(),
            "a survivor's client lost messages"
        );
        // Of A's accepted broadcasts only the last few before the kill may be lost (accepted
        // with 202 but not yet handed to Redis: at-most-once).
        let got_a = r.seqs("seqa");
        assert!(duplicates(&got_a).is_empty() && is_increasing(&got_a));
        for (n, t) in &accepted_a {
            if !got_a.contains(n) {
                assert!(
                    *t + Duration::from_millis(500) > killed,
                    "message {n} accepted by A {:?} before the kill was lost",
                    killed.duration_since(*t)
                );
                lost_a.insert(*n);
            }
        }
        assert!(r.ends().is_empty(), "a survivor's session ended");
        assert!(r.heartbeat().await);
    }
    for (i, n) in [&b, &c].iter().enumerate() {
        assert!(ready.always_ready(i, killed), "a survivor turned not ready");
        assert_eq!(n.sessions().await, per_node as f64);
        assert_eq!(disconnects(n).await, 0.0);
        assert_eq!(n.metric("gateway_pubsub_publish_errors_total").await, 0.0);
        n.assert_no_panic();
    }
    eprintln!(
        "FAULT node-sigkill: {} clients per node; B published {} (all delivered to survivors); \
         A accepted {} before dying, {} of them lost",
        per_node,
        last_b + 1,
        accepted_a.len(),
        lost_a.len()
    );
}

// ---------------------------------------------------------------- node drained

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drained_during_traffic_moves_its_clients_in_batches() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start().await;
    let batch = 4;
    let interval_ms = 250u64;
    let drain_args = [
        "--drain-batch-size",
        &batch.to_string(),
        "--drain-interval-ms",
        &interval_ms.to_string(),
    ]
    .map(String::from);
    let drain_refs: Vec<&str> = drain_args.iter().map(String::as_str).collect();
    let [mut a, b, c] = cluster(&redis.url(), [&drain_refs, &[], &[]]).await;
    let topic = "room:drain";
    let on_a = env_usize("FAULTS_CLIENTS", 3) * 4;
    let mut movers = Vec::new();
    for _ in 0..on_a {
        movers.push(Recorder::start(a.addr, topic, vec![b.addr, c.addr]).await);
    }
    let mut stayers = Vec::new();
    for n in [&b, &c] {
        for _ in 0..3 {
            stayers.push(Recorder::start(n.addr, topic, vec![]).await);
        }
    }
    let all: Vec<&Recorder> = movers.iter().chain(&stayers).collect();
    until_all_hear(&b, topic, &all).await;

    let publisher = Publisher::start(b.addr, topic, "seq", Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let termed = Instant::now();
    a.term();
    // While draining, A says so to load balancers and operators.
    let mut saw_draining = false;
    let mut drain_disconnects = 0.0;
    while a.wait_exit(Duration::from_millis(1)).await.is_none() {
        // A may close its listener between the exit check and the probe: a probe that cannot
        // connect or read (its task panics) means A is exiting, and the loop checks again.
        let addr = a.addr;
        let probe = tokio::spawn(async move {
            let (status, body) = testkit::http(addr, "GET", "/readyz", &[], "").await;
            let draining = status == 503 && body == "draining";
            let metrics = if draining {
                testkit::http(addr, "GET", "/metrics", &[], "").await.1
            } else {
                String::new()
            };
            (draining, metrics)
        });
        if let Ok((true, m)) = probe.await {
            saw_draining = true;
            assert_eq!(metric_value(&m, "gateway_draining"), 1.0);
            drain_disconnects = metric_value(&m, "gateway_disconnects_total{reason=\"drain\"}")
                .max(drain_disconnects);
        }
        if termed.elapsed() > Duration::from_secs(15) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = a
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the drained node did not exit");
    assert!(status.success(), "drained node exited with {status}");
    let exited = termed.elapsed();
    assert!(saw_draining, "/readyz never said draining");
    assert!(
        drain_disconnects >= batch as f64,
        "drain closes not counted"
    );
    // Everyone moved back in before traffic ends.
    eventually(
        Duration::from_secs(10),
        "every client re-joined",
        || async { movers.iter().all(|r| !r.rejoins().is_empty()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = publisher.finish().await;
    let last = acks.last().unwrap().0;
    let everyone: Vec<&Recorder> = movers.iter().chain(&stayers).collect();
    settle(&everyone, "seq", last, Duration::from_secs(5)).await;

    // A's clients: close 1012, paced in batches, then back on B or C without gaps there.
    let mut closes: Vec<Instant> = Vec::new();
    for r in &movers {
        let ends = r.ends();
        assert_eq!(ends.first().map(|e| e.0), Some(End::Close(Some(1012))));
        closes.push(ends[0].1);
        let before = r.seqs_on(0, "seq");
        if let (Some(first), Some(end)) = (before.first(), before.last()) {
            assert_eq!(
                before,
                (*first..=*end).collect::<Vec<_>>(),
                "gap while on A"
            );
        }
        let after = r.seqs_on(1, "seq");
        let first = *after.first().expect("nothing received after re-joining");
        assert_eq!(
            after,
            (first..=last).collect::<Vec<_>>(),
            "gap after re-joining"
        );
    }
    closes.sort();
    let spread = closes.last().unwrap().duration_since(closes[0]);
    let batches = on_a.div_ceil(batch) as u32;
    assert!(
        spread >= Duration::from_millis(interval_ms) * (batches - 1) * 8 / 10,
        "closes were not paced: all within {spread:?}"
    );
    // Everyone else saw every broadcast and kept the session.
    for r in &stayers {
        assert_eq!(r.seqs("seq"), (0..=last).collect::<Vec<_>>());
        assert!(r.ends().is_empty());
        assert!(r.heartbeat().await);
    }
    assert!(
        a.log().contains("drained"),
        "the drain did not finish cleanly"
    );
    let on_bc = b.sessions().await + c.sessions().await;
    assert_eq!(on_bc, (on_a + 6) as f64);
    for n in [&a, &b, &c] {
        n.assert_no_panic();
    }
    eprintln!(
        "FAULT node-drain: {on_a} sessions on A in batches of {batch} every {interval_ms} ms: \
         closes spread over {spread:?}, A exited {exited:?} after SIGTERM; all re-joined, \
         {} broadcasts without a gap on the other nodes",
        last + 1
    );
}
