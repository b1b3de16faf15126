//! The fan-out publisher: paced `POST /api/broadcast` requests over a few keep-alive
//! connections, each carrying a probe `{"seq", "ts"}` so subscribers can measure end-to-end
//! latency, loss and duplicates.
//!
//! Publish `n` (0-based, global) goes to topic `n mod topics` with `seq = n / topics`, and is due
//! at `start + n / rate`; a publisher that falls behind sends at once (the achieved rate is
//! reported), so the count, not the clock, bounds the run.

use crate::http::HttpConn;
use crate::phoenix;
use crate::session::now_us;
use crate::stats::{new_hist, record};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Nodes to publish to (publisher `p` uses `nodes[p mod len]`).
    pub nodes: Vec<SocketAddr>,
    /// Topic prefix (same as the subscribers').
    pub topic_prefix: String,
    /// Number of topics.
    pub topics: u64,
    /// Publishes per second.
    pub rate: f64,
    /// Total publishes.
    pub count: u64,
    /// Concurrent connections.
    pub publishers: usize,
    /// Padding string added to every payload.
    pub pad: String,
    /// Bearer token for the API.
    pub api_key: Option<String>,
    /// Hard time limit.
    pub limit: Duration,
}

/// What happened.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Publishes attempted.
    pub attempted: u64,
    /// 2xx publishes per topic index.
    pub ok_by_topic: Vec<u64>,
    /// Failed publishes (non-2xx or transport error).
    pub errors: u64,
    /// First send, µs since epoch.
    pub first_us: u64,
    /// Wall time from first to last response, seconds.
    pub secs: f64,
    /// Request round trip, µs.
    pub latency: Histogram<u64>,
}

/// State shared by the publisher tasks.
struct Shared {
    /// The plan.
    plan: PublishPlan,
    /// Next publish number.
    next: AtomicU64,
    /// 2xx per topic.
    ok_by_topic: Vec<AtomicU64>,
    /// Failures.
    errors: AtomicU64,
    /// Round trips.
    latency: Mutex<Histogram<u64>>,
}

/// Runs the plan to completion (or its time limit).
pub async fn run(plan: PublishPlan) -> PublishOutcome {
    let topics = plan.topics.max(1);
    let sh = Arc::new(Shared {
        ok_by_topic: (0..topics).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latency: Mutex::new(new_hist()),
        plan,
    });
    let start = Instant::now();
    let first_us = now_us();
    let tasks: Vec<_> = (0..sh.plan.publishers.max(1))
        .map(|p| tokio::spawn(publisher(sh.clone(), p, start)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let latency = sh.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    PublishOutcome {
        attempted: sh.next.load(Ordering::Relaxed).min(sh.plan.count),
        ok_by_topic: sh
            .ok_by_topic
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        errors: sh.errors.load(Ordering::Relaxed),
        first_us,
        secs: start.elapsed().as_secs_f64(),
        latency,
    }
}

/// One publisher connection's loop.
async fn publisher(sh: Arc<Shared>, p: usize, start: Instant) {
    let plan = &sh.plan;
    let node = plan.nodes[p % plan.nodes.len()];
    let deadline = start + plan.limit;
    let per = 1.0 / plan.rate.max(0.001);
    let auth = plan.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let mut conn: Option<HttpConn> = None;
    loop {
        let n = sh.next.fetch_add(1, Ordering::Relaxed);
        if n >= plan.count || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(per * n as f64)).await;
        let topic_idx = n % plan.topics.max(1);
        let topic = format!("{}{}", plan.topic_prefix, topic_idx);
        let body = phoenix::probe_body(&topic, n / plan.topics.max(1), now_us(), &plan.pad);
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let t0 = Instant::now();
        if conn.is_none() {
            conn = HttpConn::connect(node).await.ok();
        }
        let res = match conn.as_mut() {
            Some(c) => {
                c.request("POST", "/api/broadcast", &headers, body.as_bytes())
                    .await
            }
            None => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        record(&sh.latency, t0.elapsed().as_micros() as u64);
        match res {
            Ok(r) if (200..300).contains(&r.status) => {
                sh.ok_by_topic[topic_idx as usize].fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "publish {n}: HTTP {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            Err(e) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("publish {n}: {e}");
                conn = None; // reconnect for the next publish
            }
        }
    }
}
