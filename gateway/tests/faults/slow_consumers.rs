//! Slow consumers: subscribers that stop reading while the API floods their topic are cut
//! off alone (4002) and counted, memory stays bounded by the outbox limit, and a reader that
//! resumes sees a well-formed stream ending in the close frame.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::process::rss_of;
use testkit::{eventually, metric_value, Frame, WAIT};

use crate::record::{settle, End, Recorder};
use crate::{node, SERIAL};

/// POST `count` broadcasts `new_msg` `{"n": 0.., "pad": …}` of `pad` bytes to `topic` over one
/// keep-alive HTTP connection, in order. The flood comes through the API, which has no
/// per-session message rate limit, so only the subscribers' speed is under test.
async fn api_flood(addr: SocketAddr, topic: &str, count: u64, pad: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let padding = "x".repeat(pad);
    let mut buf = Vec::new();
    for n in 0..count {
        let body = json!({"topic": topic, "event": "new_msg", "payload": {"n": n, "pad": padding}})
            .to_string();
        let req = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // One response: the head, then Content-Length bytes of body.
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                assert!(head.starts_with("http/1.1 202"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let k = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("API answer")
                .unwrap();
            assert!(k > 0, "the API closed the connection");
            buf.extend_from_slice(&chunk[..k]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_cut_off_alone_counted_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    let outbox = 1 << 20;
    let node = node(None, &["--outbox-max-bytes", &outbox.to_string()]).await;
    let topic = "room:flood";
    let fast: Vec<Recorder> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(Recorder::start(node.addr, topic, vec![]).await);
        }
        v
    };
    // Two clients that join and then never read again.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = node.ws().await;
        s.join_ok(topic).await;
        stalled.push(s);
    }
    let rss_before = node.rss();
    let peak = Arc::new(Mutex::new(rss_before));
    let sampler = {
        let (peak, pid) = (peak.clone(), node.pid);
        tokio::spawn(async move {
            loop {
                let rss = rss_of(pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let count = 1500u64;
    let pad = 16000;
    api_flood(node.addr, topic, count, pad).await;
    settle(
        &fast.iter().collect::<Vec<_>>(),
        "new_msg",
        count - 1,
        Duration::from_secs(10),
    )
    .await;
    sampler.abort();
    let peak = *peak.lock().unwrap();
    // Fast clients on the same topic got everything, in order.
    for r in &fast {
        assert_eq!(r.seqs("new_msg"), (0..count).collect::<Vec<_>>());
        assert!(r.ends().is_empty());
        assert!(r.heartbeat().await);
    }
    // Exactly the two stalled sessions were cut off as slow consumers, and counted.
    eventually(
        Duration::from_secs(10),
        "slow consumers counted",
        || async { node.metric("gateway_slow_consumer_disconnects_total").await == 2.0 },
    )
    .await;
    // Memory is bounded by the outbox limit, not by the flood.
    // Unbounded, each stalled session would hold most of the flood (24 MB each).
    let growth = peak.saturating_sub(rss_before);
    let bound = 2 * 4 * outbox as u64 + (4 << 20);
    assert!(
        growth < bound,
        "RSS grew by {growth} B during the flood, more than {bound} B"
    );
    node.assert_no_panic();
    eprintln!(
        "FAULT slow-consumer: {count} × {pad} B broadcasts; outbox limit {outbox} B; RSS before \
         {rss_before} B, peak +{growth} B; 2 stalled sessions counted, 3 fast clients got all \
         {count}"
    );
    drop(stalled);
}

/// A client that stops reading for good (its socket buffers full) but keeps sending
/// heartbeats is disconnected once it overflowed, like any slow consumer: the session ends and
/// the gauge drops. (Without heartbeats the idle timeout would end it; with them nothing else
/// will.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_is_disconnected_after_overflowing() {
    let _serial = SERIAL.lock().await;
    let node = node(
        None,
        &[
            "--outbox-max-bytes",
            &(1 << 20).to_string(),
            "--idle-timeout-secs",
            "3",
        ],
    )
    .await;
    let topic = "room:stalled";
    let fast = Recorder::start(node.addr, topic, vec![]).await;
    let mut stalled = node.ws().await;
    stalled.join_ok(topic).await;
    let count = 1500u64;
    api_flood(node.addr, topic, count, 16000).await;
    eventually(
        Duration::from_secs(10),
        "the slow consumer counted",
        || async { node.metric("gateway_slow_consumer_disconnects_total").await == 1.0 },
    )
    .await;
    let counted = Instant::now();
    let mut closed = false;
    while counted.elapsed() < Duration::from_secs(10) {
        // Write only: a heartbeat every 500 ms, never reading the answers.
        let _ = stalled
            .try_send_json(json!([null, "1", "phoenix", "heartbeat", {}]))
            .await;
        // The fast client keeps its session alive the normal way.
        assert!(fast.heartbeat().await, "the fast client was dropped");
        let m = node.metrics().await;
        if metric_value(&m, "gateway_disconnects_total{reason=\"slow_consumer\"}") == 1.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = node.metrics().await;
    assert!(
        closed,
        "{:?} after it was counted as a slow consumer the stalled session is still open: \
         gateway_sessions {}, gateway_disconnects_total{{reason=\"slow_consumer\"}} {}",
        counted.elapsed(),
        metric_value(&m, "gateway_sessions{transport=\"websocket\"}"),
        metric_value(&m, "gateway_disconnects_total{reason=\"slow_consumer\"}"),
    );
    assert_eq!(node.sessions().await, 1.0);
    assert!(fast.heartbeat().await);
    node.assert_no_panic();
    eprintln!(
        "FAULT stalled-reader: a client that never reads again but keeps writing heartbeats \
         was disconnected within {:?} of being counted as a slow consumer",
        counted.elapsed()
    );
}

/// A slow client that catches up after being cut off reads a well-formed stream ending in
/// the close frame 4002 (README: "that client alone is closed with 4002").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_resumes_reading_sees_close_4002() {
    let _serial = SERIAL.lock().await;
    let node = node(None, &["--outbox-max-bytes", &(1 << 20).to_string()]).await;
    let topic = "room:slow";
    let mut slow = node.ws().await;
    slow.join_ok(topic).await;
    let count = 1500u64;
    let flooding = tokio::spawn(api_flood(node.addr, topic, count, 16000));
    eventually(
        Duration::from_secs(30),
        "the slow consumer counted",
        || async { node.metric("gateway_slow_consumer_disconnects_total").await >= 1.0 },
    )
    .await;
    // Catch up now: every frame must parse, and the last thing is the close frame 4002.
    let mut last_n = None;
    let end = loop {
        match slow.recv_within(Duration::from_secs(10)).await {
            Ok(Some(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("corrupt frame after {last_n:?}: {e}: {:.80}", t));
                let n = v[4]["n"].as_u64().expect("a flood message");
                assert!(
                    last_n.is_none_or(|l| n == l + 1),
                    "gap after {last_n:?}: {n}"
                );
                last_n = Some(n);
            }
            Ok(Some(Frame::Close(code))) => break End::Close(code),
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => break End::Eof,
            Err(()) => panic!("the slow consumer was neither closed nor sent anything"),
        }
    };
    flooding.await.unwrap();
    assert_eq!(
        end,
        End::Close(Some(4002)),
        "after message {last_n:?} the slow consumer saw {end:?}"
    );
    node.assert_no_panic();
}
