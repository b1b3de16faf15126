//! The reconnect storm: every session on one node, that node SIGKILLed, everyone back on the
//! other two (phoenix.js retry schedule) with bounded connect latency, then gone again with
//! nothing left behind (sessions, topics, subscriptions, memory over a second wave).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::redis::RedisServer;
use testkit::ws::try_connect_from;
use testkit::{eventually, metric_sum, metric_value};
use tokio::sync::watch;

use crate::{cluster, env_usize, extra_args, SERIAL, WS_PATH};

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
        refusals += metric_sum(&n.metrics().await, "gateway_connect_refusals_total");
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
                if metric_value(&m, "gateway_topics") == 0.0
                    && metric_value(&m, "gateway_pubsub_subscribed_topics") == base_subs
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
                metric_value(&m, "gateway_topics"),
                metric_value(&m, "gateway_pubsub_subscribed_topics"),
                n.sessions().await,
                metric_value(&m, "gateway_joins_total"),
                metric_value(&m, "gateway_leaves_total"),
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
