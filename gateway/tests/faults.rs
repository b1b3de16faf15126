//! The short fault suite (issue 9): real `gateway` processes over a real `redis-server`, with
//! Redis paused (`CLIENT PAUSE`), killed and restarted, and cut off (a network namespace whose
//! link the test takes down: a black hole; needs root), a node SIGKILLed mid-broadcast, a node
//! drained (SIGTERM) during traffic, slow consumers, and a reconnect storm after a node loss.
//!
//! Every test asserts what clients see (sessions kept, close codes, which sequence-numbered
//! broadcasts arrived), what operators see (`/readyz`, the `/metrics` series the README's
//! failure table names), that survivors are unaffected and that no node panicked. Loss is
//! allowed only where cross-node pub/sub is at-most-once, and then a metric must show it.
//!
//! The tests run one at a time (`SERIAL`): they measure timings on a 2-core machine. Sizes
//! come from environment variables so `loadtest/bench/faults.sh` can run the long version:
//! `FAULTS_CLIENTS` (clients per node), `FAULTS_PAUSE_MS`, `FAULTS_CUT_SECS`,
//! `FAULTS_KILL_SECS`, `FAULTS_STORM_SESSIONS`, `FAULTS_STORM_SOURCES` (source addresses of the
//! storm clients), `FAULTS_STORM_SURVIVOR_ARGS` (flags of the nodes taking the storm) and
//! `FAULTS_GATEWAY_ARGS` (flags of every node). The defaults keep the file under a minute.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{NetnsRedis, RedisServer};
use common::{eventually, try_broadcast, try_connect, try_connect_from, Frame, GatewayProcess};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// One fault test at a time: they time recoveries and would disturb each other's figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WS_PATH: &str = "/socket/websocket?vsn=2.0.0";

/// `room:*` without presence, so clients see exactly the broadcasts the tests count.
const CHANNELS: &str = r#"
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]
presence = false
"#;

fn channels_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // One file for every run (same content), written by rename so runs in parallel never
        // read half of it, and nothing piles up in the temp directory.
        let dir = std::env::temp_dir();
        let p = dir.join("gw-faults-channels.toml");
        let tmp = dir.join(format!("gw-faults-channels.{}.tmp", std::process::id()));
        std::fs::write(&tmp, CHANNELS).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p.to_string_lossy().into_owned()
    })
    .clone()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Extra flags for every node (`FAULTS_GATEWAY_ARGS`, whitespace separated), e.g. admission
/// control limits in the long run.
fn extra_args() -> Vec<String> {
    std::env::var("FAULTS_GATEWAY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A node process in the cluster on `redis_url` (none: a single node) with `args` added.
async fn node(redis_url: Option<&str>, args: &[&str]) -> GatewayProcess {
    let config = channels_file();
    let mut all: Vec<String> = vec!["--config".into(), config];
    if let Some(url) = redis_url {
        all.extend(["--redis-url".into(), url.into()]);
    }
    all.extend(extra_args());
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    GatewayProcess::start(&refs).await
}

/// Three nodes on `redis_url`, all ready.
async fn cluster(redis_url: &str, args: [&[&str]; 3]) -> [GatewayProcess; 3] {
    let nodes = [
        node(Some(redis_url), args[0]).await,
        node(Some(redis_url), args[1]).await,
        node(Some(redis_url), args[2]).await,
    ];
    for n in &nodes {
        eventually(Duration::from_secs(15), "node ready", || n.ready()).await;
    }
    nodes
}

// ---------------------------------------------------------------- recording clients

/// How one connection of a [`Recorder`] ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
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
struct Recorder {
    log: Arc<Mutex<Log>>,
    check: mpsc::Sender<oneshot::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start(addr: SocketAddr, topic: &str, reconnect_to: Vec<SocketAddr>) -> Recorder {
        let mut client = common::Client::connect(addr, WS_PATH).await;
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
                    if let Ok(mut c) = try_connect(target, WS_PATH, common::WAIT).await {
                        if c.try_join(&topic, common::WAIT).await.is_ok() {
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
    fn seqs(&self, event: &str) -> Vec<u64> {
        self.seqs_where(event, |_| true)
    }

    /// The `n`s of `event` received on connection number `conn`.
    fn seqs_on(&self, conn: usize, event: &str) -> Vec<u64> {
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

    fn ends(&self) -> Vec<(End, Instant)> {
        self.log.lock().unwrap().ends.clone()
    }

    fn rejoins(&self) -> Vec<Instant> {
        self.log.lock().unwrap().rejoins.clone()
    }

    /// Whether the live connection answers a heartbeat within 5 s: the session is still there
    /// and nothing is stuck in front of the reply.
    async fn heartbeat(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.check.send(tx).await.is_err() {
            return false;
        }
        tokio::time::timeout(common::WAIT, rx)
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
async fn until_all_hear(via: &GatewayProcess, topic: &str, recorders: &[&Recorder]) {
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
struct Publisher {
    acks: Arc<Mutex<Vec<(u64, bool, Instant)>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    fn start(addr: SocketAddr, topic: &str, event: &str, every: Duration) -> Publisher {
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
    async fn finish(self) -> Vec<(u64, bool, Instant)> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let acks = self.acks.lock().unwrap().clone();
        acks
    }

    fn sent(&self) -> usize {
        self.acks.lock().unwrap().len()
    }
}

/// One node's `/readyz` samples: (when, ready).
type Samples = Vec<(Instant, bool)>;

/// Samples `/readyz` of each node every 50 ms.
struct ReadyLog {
    samples: Arc<Mutex<Vec<Samples>>>,
    task: JoinHandle<()>,
}

impl ReadyLog {
    fn start(addrs: Vec<SocketAddr>) -> ReadyLog {
        let samples = Arc::new(Mutex::new(vec![Vec::new(); addrs.len()]));
        let keep = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                for (i, a) in addrs.iter().enumerate() {
                    let ready = common::http(*a, "GET", "/readyz", &[], "").await.0 == 200;
                    keep.lock().unwrap()[i].push((Instant::now(), ready));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        ReadyLog { samples, task }
    }

    /// For node `i`: when it was first seen not ready after `from`, and when it was first seen
    /// ready again after that.
    fn outage(&self, i: usize, from: Instant) -> (Option<Instant>, Option<Instant>) {
        let s = self.samples.lock().unwrap();
        let down = s[i].iter().find(|(t, r)| *t >= from && !r).map(|(t, _)| *t);
        let up = down.and_then(|d| s[i].iter().find(|(t, r)| *t > d && *r).map(|(t, _)| *t));
        (down, up)
    }

    /// Whether node `i` was ready at `t`: the samples on both sides of `t` said so.
    fn ready_at(&self, i: usize, t: Instant) -> bool {
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
    fn always_ready(&self, i: usize, from: Instant) -> bool {
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
fn duplicates(got: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    got.iter().filter(|n| !seen.insert(**n)).copied().collect()
}

/// Seqs of `want` absent from `got`.
fn missing(got: &[u64], want: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let have: BTreeSet<u64> = got.iter().copied().collect();
    want.into_iter().filter(|n| !have.contains(n)).collect()
}

fn is_increasing(got: &[u64]) -> bool {
    got.windows(2).all(|w| w[0] < w[1])
}

/// Wait until every recorder has received `event` number `last` (or `limit` passes).
async fn settle(recorders: &[&Recorder], event: &str, last: u64, limit: Duration) {
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
async fn disconnects(node: &GatewayProcess) -> f64 {
    node.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("gateway_disconnects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- Redis paused or cut off

/// What happens to Redis in [`redis_fault`].
#[derive(Debug, Clone, Copy)]
enum RedisFault {
    /// `CLIENT PAUSE <ms> <mode>`; whether it is long enough that every node must report
    /// not-ready.
    Pause {
        mode: &'static str,
        ms: u64,
        expect_not_ready: bool,
    },
    /// The network path black-holed for this long, then healed.
    Cut { secs: u64 },
    /// The server SIGKILLed, and restarted on the same port after this long.
    Kill { secs: u64 },
}

/// Where Redis runs for [`redis_fault`].
enum AnyRedis {
    Local(RedisServer),
    Netns(NetnsRedis),
}

/// Three nodes with `FAULTS_CLIENTS` (default 1) clients each on one topic, node A publishing
/// 50 broadcasts/s through the API; `fault` hits Redis. Asserts what the README's failure
/// table promises: every session stays, A's own clients get everything, the other nodes lose
/// only what was published during the fault and A counts those losses as publish errors
/// (none waits in a queue), readiness drops while Redis is unusable and returns after, and
/// every node hears everything published once all are ready again (never deaf).
async fn redis_fault(fault: RedisFault) {
    let _serial = SERIAL.lock().await;
    let mut redis = match fault {
        RedisFault::Pause { .. } | RedisFault::Kill { .. } => {
            AnyRedis::Local(RedisServer::start().await)
        }
        RedisFault::Cut { .. } => AnyRedis::Netns(NetnsRedis::start().await),
    };
    let url = match &redis {
        AnyRedis::Local(r) => r.url(),
        AnyRedis::Netns(r) => r.url(),
    };
    let nodes = cluster(&url, [&[], &[], &[]]).await;
    let [a, b, _] = &nodes;
    let topic = "room:redisfault";
    let per_node = env_usize("FAULTS_CLIENTS", 1);
    let mut groups: Vec<Vec<Recorder>> = Vec::new();
    for n in &nodes {
        let mut g = Vec::new();
        for _ in 0..per_node {
            g.push(Recorder::start(n.addr, topic, vec![]).await);
        }
        groups.push(g);
    }
    let all: Vec<&Recorder> = groups.iter().flatten().collect();
    until_all_hear(a, topic, &all).await;
    let ready = ReadyLog::start(nodes.iter().map(|n| n.addr).collect());
    let base_reconnects = b.metric("gateway_pubsub_reconnects_total").await;
    let base_resubscribes = b.metric("gateway_pubsub_resubscribes_total").await;

    let publisher = Publisher::start(a.addr, topic, "seq", Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n_before = publisher.sent() as u64;
    let started = Instant::now();
    let mut during = 0;
    let mut errors_during = 0.0;
    let ended = match (fault, &mut redis) {
        (RedisFault::Pause { mode, ms, .. }, AnyRedis::Local(r)) => {
            let ok = r.cmd(&["CLIENT", "PAUSE", &ms.to_string(), mode]).await;
            assert_eq!(ok.as_deref(), Some("OK"));
            // Sessions stay while Redis does not answer: every client answers a heartbeat.
            tokio::time::sleep(Duration::from_millis(ms / 2)).await;
            for r in &all {
                assert!(r.heartbeat().await, "a session stopped answering");
            }
            tokio::time::sleep_until((started + Duration::from_millis(ms)).into()).await;
            started + Duration::from_millis(ms)
        }
        (RedisFault::Cut { secs } | RedisFault::Kill { secs }, redis) => {
            match redis {
                AnyRedis::Netns(r) => r.cut(),
                AnyRedis::Local(r) => r.kill(),
            }
            // Not ready within the canary window (3 s threshold + 1 s canary period + slack).
            for i in 0..3 {
                eventually(
                    Duration::from_secs(7),
                    "node not ready during the outage",
                    || {
                        let down = ready.outage(i, started).0.is_some();
                        async move { down }
                    },
                )
                .await;
            }
            for r in &all {
                assert!(r.heartbeat().await, "a session stopped answering");
            }
            tokio::time::sleep_until((started + Duration::from_secs(secs)).into()).await;
            during = publisher.sent() as u64 - n_before;
            // Fail fast: by now the outage's publishes have failed and been counted; none
            // waits in a queue.
            errors_during = a.metric("gateway_pubsub_publish_errors_total").await;
            assert!(
                errors_during >= during as f64 - 60.0,
                "{during} publishes during the outage, only {errors_during} failed: they queue"
            );
            match redis {
                AnyRedis::Netns(r) => r.heal(),
                AnyRedis::Local(r) => r.restart().await,
            }
            Instant::now()
        }
        _ => unreachable!(),
    };
    for n in &nodes {
        eventually(
            Duration::from_secs(15),
            "node ready after the fault",
            || n.ready(),
        )
        .await;
    }
    let all_ready = Instant::now();
    // Traffic after recovery must arrive everywhere.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acks = publisher.finish().await;
    let last = acks.last().unwrap().0;
    assert!(
        acks.iter().all(|(_, ok, _)| *ok),
        "the API refused a broadcast"
    );
    settle(&all, "seq", last, Duration::from_secs(5)).await;

    // Local delivery on the publishing node never stopped.
    for r in &groups[0] {
        assert_eq!(
            r.seqs("seq"),
            (0..=last).collect::<Vec<_>>(),
            "A's client lost some"
        );
    }
    let errors = a.metric("gateway_pubsub_publish_errors_total").await;
    let published_after: Vec<u64> = acks
        .iter()
        .filter(|(_, _, t)| *t > all_ready + Duration::from_millis(300))
        .map(|(n, _, _)| *n)
        .collect();
    // Accepted by the API in the last 250 ms before the fault: possibly inside Redis or on
    // the wire to a subscriber connection when the path went dark.
    let in_flight = acks
        .iter()
        .filter(|(_, _, t)| *t <= started && *t + Duration::from_millis(250) > started)
        .count();
    let acked_at: HashMap<u64, Instant> = acks.iter().map(|(n, _, t)| (*n, *t)).collect();
    let (mut lost_max, mut uncounted_max, mut unready_max, mut in_order) = (0, 0.0f64, 0, true);
    for (i, name, g) in [(1, "B", &groups[1]), (2, "C", &groups[2])] {
        for r in g {
            let got = r.seqs("seq");
            assert!(duplicates(&got).is_empty(), "{name} got duplicates");
            let lost = missing(&got, 0..=last);
            // Only messages published during the fault may be lost …
            assert!(
                lost.iter().all(|n| *n >= n_before.saturating_sub(2)),
                "{name} lost messages published before the fault: {lost:?}"
            );
            // … never deaf: everything published once the nodes are ready again arrives …
            assert!(
                missing(&got, published_after.iter().copied()).is_empty(),
                "{name} did not get messages published after recovery"
            );
            // … and each loss shows in a metric. Those published during the fault fail on the
            // publishing node and are counted as publish errors, except messages Redis had
            // accepted but not yet delivered when the path went dark (they die with the
            // subscriber connection). After the fault, a receiver whose subscriber connection
            // comes back later than the publisher's misses messages that were published
            // fine: no counter has them, but the receiver was not ready (`/readyz` 503,
            // `gateway_pubsub_healthy 0`) while it missed them.
            let unready_after = lost
                .iter()
                .filter(|n| acked_at[n] > ended && !ready.ready_at(i, acked_at[n]))
                .count();
            let uncounted = (lost.len() as f64 - errors).max(0.0);
            assert!(
                uncounted <= (in_flight + unready_after) as f64,
                "{name} lost {} messages; A counted {errors} publish errors; {in_flight} were \
                 on their way when the fault began and {unready_after} were published after it \
                 while {name} was not ready",
                lost.len()
            );
            lost_max = lost_max.max(lost.len());
            uncounted_max = uncounted_max.max(uncounted);
            unready_max = unready_max.max(unready_after);
            in_order &= is_increasing(&got);
        }
    }
    assert_eq!(
        a.metric("gateway_pubsub_dropped_total{reason=\"publish_queue_full\"}")
            .await,
        0.0,
        "publishes queued up instead of failing fast"
    );
    let mut outages = Vec::new();
    for i in 0..3 {
        let (down, up) = ready.outage(i, started);
        if let RedisFault::Pause {
            ms,
            expect_not_ready: true,
            ..
        } = fault
        {
            let down = down.expect("a node stayed ready while Redis was paused");
            assert!(down.duration_since(started) < Duration::from_millis(ms));
        }
        outages.push(format!(
            "{}: not ready after {:?}, ready {:?} after the fault ended",
            ["A", "B", "C"][i],
            down.map(|d| d.duration_since(started)),
            up.map(|u| u.saturating_duration_since(ended))
        ));
    }
    // Whether the subscriber connections were rebuilt depends on timing (the deaf watchdog
    // only counts canaries Redis accepted); either way the nodes hear again, as checked above.
    let reconnects = b.metric("gateway_pubsub_reconnects_total").await - base_reconnects;
    let resubscribes = b.metric("gateway_pubsub_resubscribes_total").await - base_resubscribes;
    // No session was dropped, on any node.
    for n in &nodes {
        assert_eq!(n.sessions().await, per_node as f64);
        assert_eq!(disconnects(n).await, 0.0);
        assert_eq!(n.metric("gateway_pubsub_healthy").await, 1.0);
        n.assert_no_panic();
    }
    for r in &all {
        assert!(r.heartbeat().await);
        assert!(r.ends().is_empty());
    }
    eprintln!(
        "FAULT redis {fault:?}: {per_node} clients per node; A published {}, {during} during \
         the outage; publish errors on A {errors} ({errors_during} by its end); lost per client \
         on B/C at most {lost_max}, of them not counted as publish errors at most \
         {uncounted_max}, published after the fault while the receiver was not ready at most \
         {unready_max}; in order: {in_order}; B reconnects {reconnects}, resubscribes \
         {resubscribes}; {}",
        last + 1,
        outages.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_pause_all_keeps_sessions_counts_loss_and_recovers() {
    // Longer than the 3 s canary threshold: every node must report not-ready.
    let ms = env_usize("FAULTS_PAUSE_MS", 5000) as u64;
    redis_fault(RedisFault::Pause {
        mode: "ALL",
        ms,
        expect_not_ready: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_pause_write_blocks_publishes_which_are_counted() {
    // PUBLISH is paused by WRITE too (it propagates to replicas); shorter than the canary
    // threshold, so readiness may not flip, but every loss must still be counted.
    redis_fault(RedisFault::Pause {
        mode: "WRITE",
        ms: 2000,
        expect_not_ready: false,
    })
    .await;
}

/// Redis SIGKILLed for a while, then restarted empty on the same port (connections refused
/// meanwhile, so every publish fails at once; subscriptions must be made again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_keeps_sessions_and_counts_loss() {
    let secs = env_usize("FAULTS_KILL_SECS", 5) as u64;
    redis_fault(RedisFault::Kill { secs }).await;
}

/// The cut is made with a network namespace and a veth pair (see `NetnsRedis`): the
/// namespace's end goes down, packets vanish, nothing is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_by_a_black_hole_then_healed_never_leaves_a_node_deaf() {
    let secs = env_usize("FAULTS_CUT_SECS", 8) as u64;
    redis_fault(RedisFault::Cut { secs }).await;
}

// ---------------------------------------------------------------- node SIGKILLed

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
    a.term().await;
    // While draining, A says so to load balancers and operators.
    let mut saw_draining = false;
    let mut drain_disconnects = 0.0;
    while a.wait_exit(Duration::from_millis(1)).await.is_none() {
        let (status, body) = a.http("GET", "/readyz", "").await;
        if status == 503 && body == "draining" {
            saw_draining = true;
            let m = a.metrics().await;
            assert_eq!(common::metric_value(&m, "gateway_draining"), 1.0);
            drain_disconnects =
                common::metric_value(&m, "gateway_disconnects_total{reason=\"drain\"}")
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

// ---------------------------------------------------------------- slow consumers

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
            let k = tokio::time::timeout(common::WAIT, s.read(&mut chunk))
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
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024;
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
        if common::metric_value(&m, "gateway_disconnects_total{reason=\"slow_consumer\"}") == 1.0 {
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
        common::metric_value(&m, "gateway_sessions{transport=\"websocket\"}"),
        common::metric_value(&m, "gateway_disconnects_total{reason=\"slow_consumer\"}"),
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

// ---------------------------------------------------------------- reconnect storm

#[allow(unsafe_code)]
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One storm client's timeline.
#[derive(Debug, Default, Clone)]
struct Rejoin {
    /// When the client noticed the loss of its node.
    lost: Option<Instant>,
    /// When it had joined again.
    rejoined: Option<Instant>,
    /// Connect + upgrade + join of the successful attempt.
    connect: Option<Duration>,
    /// Failed attempts, by error.
    failures: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Source address of storm client `i`: with `sources` > 1, 127.0.0.2 … so per-IP limits see
/// several clients; with 1, whatever the kernel picks.
fn source(i: usize, sources: usize) -> Option<std::net::IpAddr> {
    (sources > 1).then(|| std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8).into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_a_node_loss_rejoins_everyone_and_leaks_nothing() {
    let _serial = SERIAL.lock().await;
    raise_nofile();
    let sessions = env_usize("FAULTS_STORM_SESSIONS", 2000);
    let topics = 10;
    let redis = RedisServer::start().await;
    // Admission limits for the nodes that take the storm (FAULTS_STORM_SURVIVOR_ARGS); A,
    // which holds every session first, keeps its defaults.
    let survivor_args: Vec<String> = std::env::var("FAULTS_STORM_SURVIVOR_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let survivor: Vec<&str> = survivor_args.iter().map(String::as_str).collect();
    let [mut a, b, c] = cluster(&redis.url(), [&[], &survivor, &survivor]).await;
    let (rss_b0, rss_c0) = (b.rss(), c.rss());
    // Subscriptions every node holds without any session (the presence heartbeat topic).
    let base_subs = b.metric("gateway_pubsub_subscribed_topics").await;
    let targets = [b.addr, c.addr];
    let sources = env_usize("FAULTS_STORM_SOURCES", 1);

    // Ramp: every session on A, at most 256 connecting at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let joined = Arc::new(tokio::sync::Semaphore::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let ramp = Instant::now();
    for i in 0..sessions {
        let (gate, joined, mut stop) = (gate.clone(), joined.clone(), stop_rx.clone());
        let src = source(i, sources);
        let (a_addr, topic) = (a.addr, format!("room:storm{}", i % topics));
        tasks.push(tokio::spawn(async move {
            let mut t = Rejoin::default();
            let permit = gate.acquire_owned().await.unwrap();
            let mut client = None;
            for _ in 0..20 {
                if let Ok(mut cl) =
                    try_connect_from(src, a_addr, WS_PATH, Duration::from_secs(10)).await
                {
                    if cl.try_join(&topic, Duration::from_secs(10)).await.is_ok() {
                        client = Some(cl);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(permit);
            let mut client = client.expect("could not join on A");
            joined.add_permits(1);
            // Idle until A dies: the next read is EOF or a reset.
            while let Ok(Some(_)) = client.recv_within(Duration::from_secs(3600)).await {}
            let lost = Instant::now();
            t.lost = Some(lost);
            // Its socket goes now: at 15,000 sessions the old and new ones together would
            // exceed the process's open-files limit.
            drop(client);
            // phoenix.js: retry at once, then after 10, 50, 100, … ms, alternating nodes.
            let schedule = [0u64, 10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000];
            let mut client = None;
            for attempt in 0..40 {
                let wait = schedule[attempt.min(schedule.len() - 1)];
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let target = targets[(i + attempt) % 2];
                let t0 = Instant::now();
                let limit = Duration::from_secs(10);
                let result = match try_connect_from(src, target, WS_PATH, limit).await {
                    Ok(mut cl) => cl.try_join(&topic, limit).await.map(|()| cl),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(cl) => {
                        t.connect = Some(t0.elapsed());
                        t.rejoined = Some(Instant::now());
                        client = Some(cl);
                        break;
                    }
                    Err(e) => t.failures.push(e),
                }
            }
            let Some(client) = client else { return t };
            let _ = stop.wait_for(|s| *s).await;
            client.close_politely(Duration::from_secs(5)).await;
            t
        }));
    }
    let ramp_limit = Duration::from_secs(30 + sessions as u64 / 100);
    tokio::time::timeout(ramp_limit, joined.acquire_many(sessions as u32))
        .await
        .expect("the ramp did not finish")
        .unwrap()
        .forget();
    let ramp = ramp.elapsed();
    assert_eq!(a.sessions().await, sessions as f64);
    let (rss_b1, rss_c1) = (b.rss(), c.rss());

    // The storm: A dies with every session on it.
    let killed = Instant::now();
    a.kill().await;
    let rejoin_limit = Duration::from_secs(60 + sessions as u64 / 250);
    eventually(
        rejoin_limit,
        "every session re-joined on B or C",
        || async { b.sessions().await + c.sessions().await >= sessions as f64 },
    )
    .await;
    let seen_all = killed.elapsed();
    let (on_b, on_c) = (b.sessions().await, c.sessions().await);
    assert_eq!(on_b + on_c, sessions as f64, "more sessions than clients");
    let (rss_b2, rss_c2) = (b.rss(), c.rss());
    let mut refusals = 0.0;
    for n in [&b, &c] {
        refusals += n
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("gateway_connect_refusals_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }

    // Leave: every client closes; B and C must forget every session, topic and subscription.
    let _ = stop_tx.send(true);
    let mut timelines = Vec::new();
    for t in tasks {
        timelines.push(t.await.expect("storm client panicked"));
    }
    for n in [&b, &c] {
        eventually(
            Duration::from_secs(20),
            "sessions gone after the storm",
            || async { n.sessions().await == 0.0 },
        )
        .await;
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = n.metrics().await;
                if common::metric_value(&m, "gateway_topics") == 0.0
                    && common::metric_value(&m, "gateway_pubsub_subscribed_topics") == base_subs
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if gone.is_err() {
            let m = n.metrics().await;
            panic!(
                "topics left after every session is gone: gateway_topics {}, \
                 gateway_pubsub_subscribed_topics {}, gateway_sessions {}, joins {}, leaves {}",
                common::metric_value(&m, "gateway_topics"),
                common::metric_value(&m, "gateway_pubsub_subscribed_topics"),
                n.sessions().await,
                common::metric_value(&m, "gateway_joins_total"),
                common::metric_value(&m, "gateway_leaves_total"),
            );
        }
        n.assert_no_panic();
    }
    for t in 0..topics {
        assert_eq!(redis.numsub(&format!("gw:t:room:storm{t}")).await, 0);
    }
    let (rss_b3, rss_c3) = (b.rss(), c.rss());
    // A second wave of as many sessions straight onto B and C, then gone again: with no leak
    // it reuses what the first left behind, so RSS after it stays where the first left it.
    wave(&targets, sessions, topics, sources).await;
    for n in [&b, &c] {
        eventually(Duration::from_secs(20), "second wave gone", || async {
            n.sessions().await == 0.0
        })
        .await;
    }
    let (rss_b4, rss_c4) = (b.rss(), c.rss());

    let rejoined: Vec<&Rejoin> = timelines.iter().filter(|t| t.rejoined.is_some()).collect();
    assert_eq!(rejoined.len(), sessions, "sessions left behind");
    let last = rejoined.iter().filter_map(|t| t.rejoined).max().unwrap();
    let all_rejoined = last.duration_since(killed);
    let mut connect: Vec<Duration> = rejoined.iter().filter_map(|t| t.connect).collect();
    connect.sort();
    let mut per_session: Vec<Duration> = rejoined
        .iter()
        .map(|t| t.rejoined.unwrap().duration_since(t.lost.unwrap()))
        .collect();
    per_session.sort();
    let failures: usize = timelines.iter().map(|t| t.failures.len()).sum();
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for f in timelines.iter().flat_map(|t| &t.failures) {
        *kinds
            .entry(f.split(':').next().unwrap_or("").to_string())
            .or_default() += 1;
    }
    // Accept latency stays bounded during the storm.
    let p99 = percentile(&connect, 0.99);
    assert!(
        p99 < Duration::from_secs(5),
        "p99 connect+join during the storm: {p99:?}"
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    for (name, before, loaded, after1, after2) in [
        ("B", rss_b1, rss_b2, rss_b3, rss_b4),
        ("C", rss_c1, rss_c2, rss_c3, rss_c4),
    ] {
        let held = loaded.saturating_sub(before);
        let grew = after2.saturating_sub(after1);
        assert!(
            grew <= (held / 10).max(2 << 20),
            "{name}: RSS grew {:.1} MiB over a second wave of sessions that took {:.1} MiB: a leak",
            mib(grew),
            mib(held)
        );
    }
    eprintln!(
        "STORM sessions={sessions} ramp_ms={:.0} killed_to_all_rejoined_ms={:.0} \
         killed_to_gauges_ms={:.0} on_b={on_b} on_c={on_c} lost={} \
         connect_p50_ms={:.1} connect_p99_ms={:.1} connect_max_ms={:.1} \
         rejoin_p50_ms={:.1} rejoin_p99_ms={:.1} failed_attempts={failures} kinds={kinds:?} \
         refusals={refusals} rss_b_mib=start:{:.1},loaded:{:.1},left:{:.1},after_wave2:{:.1} \
         rss_c_mib=start:{:.1},loaded:{:.1},left:{:.1},after_wave2:{:.1} sources={sources} \
         args={:?} survivor_args={survivor_args:?}",
        ms(ramp),
        ms(all_rejoined),
        ms(seen_all),
        sessions - rejoined.len(),
        ms(percentile(&connect, 0.5)),
        ms(p99),
        ms(*connect.last().unwrap()),
        ms(percentile(&per_session, 0.5)),
        ms(percentile(&per_session, 0.99)),
        mib(rss_b0),
        mib(rss_b2),
        mib(rss_b3),
        mib(rss_b4),
        mib(rss_c0),
        mib(rss_c2),
        mib(rss_c3),
        mib(rss_c4),
        extra_args(),
    );
}

/// `count` sessions joined over `targets` (round robin, 256 connecting at once, retrying
/// refusals), then all closed.
async fn wave(targets: &[SocketAddr], count: usize, topics: usize, sources: usize) {
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut opened = Vec::new();
    for i in 0..count {
        let gate = gate.clone();
        let (addr, topic) = (
            targets[i % targets.len()],
            format!("room:storm{}", i % topics),
        );
        opened.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            // Admission limits may refuse some attempts (429/503): retry like a client would.
            let mut last = String::new();
            for _ in 0..300 {
                let limit = Duration::from_secs(10);
                match try_connect_from(source(i, sources), addr, WS_PATH, limit).await {
                    Ok(mut c) => match c.try_join(&topic, limit).await {
                        Ok(()) => return c,
                        Err(e) => last = e,
                    },
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("second wave: session {i} never joined: {last}");
        }));
    }
    let mut clients = Vec::new();
    for t in opened {
        clients.push(t.await.unwrap());
    }
    let closing: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(c.close_politely(Duration::from_secs(5))))
        .collect();
    for t in closing {
        let _ = t.await;
    }
}
