//! What the fault tests watch with: recording clients (every broadcast they get, how each
//! connection ended, re-joins like phoenix.js), numbered publishers, `/readyz` samples, and the
//! arithmetic on what arrived.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::ws::try_connect;
use testkit::{metric_sum, try_broadcast, Client, Frame, WAIT};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::common::GatewayProcess;
use crate::WS_PATH;

/// How one connection of a [`Recorder`] ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// A close frame with this code.
    Close(Option<u16>),
    /// EOF or reset without a close frame (a crashed node).
    Eof,
}

#[derive(Debug, Default)]
struct Log {
    /// Broadcasts received, in arrival order: (connection number, event, payload `n`).
    got: Vec<(usize, String, u64)>,
    /// How each connection ended, and when.
    ends: Vec<(End, Instant)>,
    /// When each reconnection had joined again.
    rejoins: Vec<Instant>,
}

/// A joined client whose frames a task records; it answers heartbeat checks on demand and,
/// when given targets, reconnects and re-joins after its connection ends (like phoenix.js).
pub struct Recorder {
    log: Arc<Mutex<Log>>,
    check: mpsc::Sender<oneshot::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn start(addr: SocketAddr, topic: &str, reconnect_to: Vec<SocketAddr>) -> Recorder {
        let mut client = Client::connect(addr, WS_PATH).await;
        client.join_ok(topic).await;
        let log = Arc::new(Mutex::new(Log::default()));
        let (check, mut checks) = mpsc::channel::<oneshot::Sender<bool>>(4);
        let (keep, topic) = (log.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let mut conn = 0usize;
            let mut pending: Option<(String, oneshot::Sender<bool>)> = None;
            loop {
                let end = tokio::select! {
                    f = client.recv_within(Duration::from_secs(3600)) => match f {
                        Ok(Some(Frame::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).expect("server text is JSON");
                            let is_reply = v[3] == "phx_reply";
                            let answers = pending.as_ref().is_some_and(|(r, _)| is_reply && v[1] == r.as_str());
                            if answers {
                                let _ = pending.take().unwrap().1.send(true);
                            } else if let Some(n) = v[4]["n"].as_u64() {
                                let event = v[3].as_str().unwrap_or_default().to_string();
                                keep.lock().unwrap().got.push((conn, event, n));
                            }
                            continue;
                        }
                        Ok(Some(Frame::Close(code))) => End::Close(code),
                        Ok(Some(_)) => continue,
                        Ok(None) => End::Eof,
                        Err(()) => continue,
                    },
                    Some(reply) = checks.recv() => {
                        let r = client.next_ref();
                        client.send_json(json!([null, r, "phoenix", "heartbeat", {}])).await;
                        pending = Some((r, reply));
                        continue;
                    }
                };
                keep.lock().unwrap().ends.push((end, Instant::now()));
                if let Some((_, reply)) = pending.take() {
                    let _ = reply.send(false);
                }
                // Answer a close frame as browsers do; a dropped connection is just dropped.
                if let End::Close(_) = end {
                    client.close_politely(Duration::from_millis(200)).await;
                } else {
                    drop(client);
                }
                if reconnect_to.is_empty() {
                    return;
                }
                // phoenix.js's schedule: retry after 10, 50, 100 … ms, to the next node.
                let mut attempt = 0usize;
                client = loop {
                    let target = reconnect_to[(conn + attempt) % reconnect_to.len()];
                    if let Ok(mut c) = try_connect(target, WS_PATH, WAIT).await {
                        if c.try_join(&topic, WAIT).await.is_ok() {
                            break c;
                        }
                    }
                    let wait = [10, 50, 100, 150, 200, 250, 500, 1000][attempt.min(7)];
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    attempt += 1;
                };
                conn += 1;
                keep.lock().unwrap().rejoins.push(Instant::now());
            }
        });
        Recorder { log, check, task }
    }

    /// The `n`s of `event` received on any connection, in arrival order.
    pub fn seqs(&self, event: &str) -> Vec<u64> {
        self.seqs_where(event, |_| true)
    }

    /// The `n`s of `event` received on connection number `conn`.
    pub fn seqs_on(&self, conn: usize, event: &str) -> Vec<u64> {
        self.seqs_where(event, |c| c == conn)
    }

    fn seqs_where(&self, event: &str, conn: impl Fn(usize) -> bool) -> Vec<u64> {
        let log = self.log.lock().unwrap();
        log.got
            .iter()
            .filter(|(c, e, _)| conn(*c) && e == event)
            .map(|(_, _, n)| *n)
            .collect()
    }

    pub fn ends(&self) -> Vec<(End, Instant)> {
        self.log.lock().unwrap().ends.clone()
    }

    pub fn rejoins(&self) -> Vec<Instant> {
        self.log.lock().unwrap().rejoins.clone()
    }

    /// Whether the live connection answers a heartbeat within 5 s: the session is still there
    /// and nothing is stuck in front of the reply.
    pub async fn heartbeat(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.check.send(tx).await.is_err() {
            return false;
        }
        tokio::time::timeout(WAIT, rx)
            .await
            .is_ok_and(|r| r.unwrap_or(false))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publish `probe` broadcasts on `via` until every recorder has received one: from then on
/// every node with a recorder is subscribed in Redis.
pub async fn until_all_hear(via: &GatewayProcess, topic: &str, recorders: &[&Recorder]) {
    let start = Instant::now();
    let mut n = 0;
    while !recorders.iter().all(|r| !r.seqs("probe").is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "probes never reached every node"
        );
        n += 1;
        assert!(via.try_broadcast(topic, "probe", json!({"n": n})).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task posting `event` broadcasts numbered 0, 1, … to one node every `every`, recording
/// for each whether the API accepted it (202) and when the answer came.
pub struct Publisher {
    acks: Arc<Mutex<Vec<(u64, bool, Instant)>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(addr: SocketAddr, topic: &str, event: &str, every: Duration) -> Publisher {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let (keep, topic, event) = (acks.clone(), topic.to_string(), event.to_string());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let ok = try_broadcast(addr, &topic, &event, json!({"n": n})).await;
                keep.lock().unwrap().push((n, ok, Instant::now()));
            }
        });
        Publisher { acks, stop, task }
    }

    /// Stop and return every attempt.
    pub async fn finish(self) -> Vec<(u64, bool, Instant)> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let acks = self.acks.lock().unwrap().clone();
        acks
    }

    pub fn sent(&self) -> usize {
        self.acks.lock().unwrap().len()
    }
}

/// One node's `/readyz` samples: (when, ready).
pub type Samples = Vec<(Instant, bool)>;

/// Samples `/readyz` of each node every 50 ms.
pub struct ReadyLog {
    samples: Arc<Mutex<Vec<Samples>>>,
    task: JoinHandle<()>,
}

impl ReadyLog {
    pub fn start(addrs: Vec<SocketAddr>) -> ReadyLog {
        let samples = Arc::new(Mutex::new(vec![Vec::new(); addrs.len()]));
        let keep = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                for (i, a) in addrs.iter().enumerate() {
                    let ready = testkit::http(*a, "GET", "/readyz", &[], "").await.0 == 200;
                    keep.lock().unwrap()[i].push((Instant::now(), ready));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        ReadyLog { samples, task }
    }

    /// For node `i`: when it was first seen not ready after `from`, and when it was first seen
    /// ready again after that.
    pub fn outage(&self, i: usize, from: Instant) -> (Option<Instant>, Option<Instant>) {
        let s = self.samples.lock().unwrap();
        let down = s[i].iter().find(|(t, r)| *t >= from && !r).map(|(t, _)| *t);
        let up = down.and_then(|d| s[i].iter().find(|(t, r)| *t > d && *r).map(|(t, _)| *t));
        (down, up)
    }

    /// Whether node `i` was ready at `t`: the samples on both sides of `t` said so.
    pub fn ready_at(&self, i: usize, t: Instant) -> bool {
        let s = self.samples.lock().unwrap();
        let before = s[i]
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .is_none_or(|(_, r)| *r);
        let after = s[i].iter().find(|(at, _)| *at > t).is_none_or(|(_, r)| *r);
        before && after
    }

    /// Whether node `i` answered ready in every sample after `from`.
    pub fn always_ready(&self, i: usize, from: Instant) -> bool {
        let s = self.samples.lock().unwrap();
        s[i].iter().filter(|(t, _)| *t >= from).all(|(_, r)| *r)
    }
}

impl Drop for ReadyLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seqs in `got` more than once.
pub fn duplicates(got: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    got.iter().filter(|n| !seen.insert(**n)).copied().collect()
}

/// Seqs of `want` absent from `got`.
pub fn missing(got: &[u64], want: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let have: BTreeSet<u64> = got.iter().copied().collect();
    want.into_iter().filter(|n| !have.contains(n)).collect()
}

pub fn is_increasing(got: &[u64]) -> bool {
    got.windows(2).all(|w| w[0] < w[1])
}

/// Wait until every recorder has received `event` number `last` (or `limit` passes).
pub async fn settle(recorders: &[&Recorder], event: &str, last: u64, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit
        && !recorders
            .iter()
            .all(|r| r.seqs(event).last().is_some_and(|n| *n >= last))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of every `gateway_disconnects_total` series.
pub async fn disconnects(node: &GatewayProcess) -> f64 {
    metric_sum(&node.metrics().await, "gateway_disconnects_total")
}
