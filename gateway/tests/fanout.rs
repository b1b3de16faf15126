//! Fan-out to many sessions: broadcasts published one at a time and in a burst (where each
//! session's task writes several queued frames at once) reach every session exactly once and in
//! publish order, with the sessions' own replies interleaved whole.

mod common;

use common::TestNode;
use gateway::Config;
use serde_json::{json, Value};

/// Enough sessions that a burst's broadcasts queue up on them while they are written.
const SESSIONS: usize = 300;
const LONE: u64 = 5;
const BURST: u64 = 150;

/// The `n` of a `new_msg` broadcast, `None` for anything else.
fn seq(v: &Value) -> Option<u64> {
    (v[3] == "new_msg").then(|| v[4]["n"].as_u64()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_to_many_sessions_lone_and_in_a_burst_arrive_once_in_order() {
    let node = TestNode::start(Config::default()).await;
    let topic = "room:fan";
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let mut c = node.ws().await;
        c.join_ok(topic).await;
        clients.push(c);
    }
    // One at a time: every session has each before the next is published.
    for n in 0..LONE {
        node.broadcast(topic, "new_msg", json!({"n": n})).await;
        for (i, c) in clients.iter_mut().enumerate() {
            let v = c.recv_json().await;
            assert_eq!(seq(&v), Some(n), "session {i}: {v}");
        }
    }
    // A burst, published back to back while earlier ones are still being written; some
    // sessions send a heartbeat in the middle of it.
    let publisher = {
        let addr = node.addr;
        tokio::spawn(async move {
            for n in LONE..LONE + BURST {
                assert!(testkit::try_broadcast(addr, topic, "new_msg", json!({"n": n})).await);
            }
        })
    };
    for (i, c) in clients.iter_mut().enumerate().step_by(7) {
        c.send_json(json!([null, format!("hb{i}"), "phoenix", "heartbeat", {}]))
            .await;
    }
    publisher.await.unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut next = LONE;
        let mut replied = i % 7 != 0;
        while next < LONE + BURST || !replied {
            let v = c.recv_json().await;
            if v[3] == "phx_reply" {
                assert_eq!(v[1], format!("hb{i}"), "session {i}: {v}");
                assert!(!replied, "session {i}: a second reply {v}");
                replied = true;
                continue;
            }
            assert_eq!(seq(&v), Some(next), "session {i}: {v}");
            next += 1;
        }
        c.assert_nothing_queued().await;
    }
}
