//! Small runs of every scenario against a real gateway node started in-process (library
//! `gateway::run` on 127.0.0.1:0), driving the real `loadtest` binary and checking that its JSON
//! report is consistent with what was asked for.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::sync::oneshot;

/// A gateway node running in this test process; dropped = shut down.
struct Node {
    /// `ws://IP:PORT/socket/websocket`.
    url: String,
    /// Fires the shutdown future.
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_node() -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(gateway::run(
        listener,
        gateway::Config::default(),
        async move {
            let _ = rx.await;
        },
    ));
    Node {
        url: format!("ws://{addr}/socket/websocket"),
        stop: Some(tx),
    }
}

/// A fresh report path under the cargo target tmpdir.
fn report_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "lt-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ))
}

/// Runs `loadtest ARGS --json FILE`; returns (exit code, report) and removes the file.
async fn loadtest(args: Vec<String>) -> (i32, Value) {
    let json = report_path();
    let r = loadtest_to(args, json.clone()).await;
    let _ = std::fs::remove_file(&json);
    r
}

/// Runs `loadtest ARGS --json JSON` off the async threads; returns (exit code, report).
async fn loadtest_to(args: Vec<String>, json: PathBuf) -> (i32, Value) {
    let json2 = json.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(&args)
            .arg("--json")
            .arg(&json2)
            .arg("--quiet")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("loadtest bounded")
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).unwrap();
    (out.status.code().unwrap_or(-1), report)
}

/// Distinguishes report files of tests running in parallel.
fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_joins_every_session_and_reads_server_memory() {
    let node = start_node().await;
    let pid = std::process::id().to_string();
    let (code, r) = loadtest(s(&[
        "capacity",
        "--url",
        &node.url,
        "-n",
        "300",
        "--workers",
        "2",
        "--hold-secs",
        "1",
        "--server-pid",
        &pid,
        "--topics",
        "7",
        "--fail-if",
        "errors>0",
        "--fail-if",
        "failed>0",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    assert_eq!(u(&r["sessions_requested"]), 300);
    assert_eq!(u(&r["sessions_joined"]), 300);
    assert_eq!(u(&r["sessions_failed"]), 0);
    assert_eq!(u(&r["errors_total"]), 0);
    assert_eq!(u(&r["connect_join"]["count"]), 300);
    assert!(r["connect_join_rate"].as_f64().unwrap() > 0.0);
    let cap = &r["capacity"];
    assert_eq!(
        cap["loaded"]["sessions"].as_f64().unwrap(),
        300.0,
        "server gauge sees every session"
    );
    assert!(cap["proc_rss_loaded"].as_u64().unwrap() > 0);
    assert!(cap["bytes_per_session_proc"].is_number());
    assert!(cap["bytes_per_session_metrics"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_with_heartbeats_reports_both_sides_cpu_per_heartbeat() {
    let node = start_node().await;
    let pid = std::process::id().to_string();
    let (code, r) = loadtest(s(&[
        "capacity",
        "--url",
        &node.url,
        "-n",
        "100",
        "--workers",
        "2",
        "--hold-secs",
        "3",
        "--heartbeat-secs",
        "1",
        "--server-pid",
        &pid,
        "--fail-if",
        "errors>0",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    let h = &r["hold"];
    let hb = u(&h["heartbeats"]);
    // 100 sessions, one heartbeat a second, for 3 s: about 300 in the hold (the workers'
    // progress reports come every 200 ms, so its edges move by a fraction of a second).
    assert!((150..=450).contains(&hb), "heartbeats in the hold: {hb}");
    assert!(hb <= u(&r["heartbeats"]));
    assert_eq!(u(&r["errors"]["heartbeat_timeout"]), 0);
    let secs = h["secs"].as_f64().unwrap();
    assert!((3.0..4.0).contains(&secs), "hold {secs} s");
    let per = |cpu: &str, us: &str| {
        let cpu = h[cpu]
            .as_f64()
            .unwrap_or_else(|| panic!("{cpu}: {}", h[cpu]));
        let us = h[us].as_f64().unwrap();
        assert!((us - cpu * 1e6 / hb as f64).abs() < 1e-6, "{us} us");
    };
    per("gateway_cpu_secs", "gateway_cpu_us_per_heartbeat");
    per("loadgen_cpu_secs", "loadgen_cpu_us_per_heartbeat");
    assert!(h["loadgen_sys_cpu_secs"].as_f64().unwrap() <= h["loadgen_cpu_secs"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publish_to_every_subscriber() {
    let node = start_node().await;
    let (code, r) = loadtest(s(&[
        "fanout",
        "--url",
        &node.url,
        "-n",
        "300",
        "--workers",
        "2",
        "--topics",
        "3",
        "--publish-rate",
        "20",
        "--duration-secs",
        "1",
        "--fail-if",
        "loss>0",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    let f = &r["fanout"];
    assert_eq!(u(&r["sessions_joined"]), 300);
    assert_eq!(u(&f["publishes_ok"]), 20);
    // 20 publishes over 3 topics = 7 + 7 + 6, each topic has 100 subscribers.
    assert_eq!(u(&f["expected"]), 2000);
    assert_eq!(u(&f["deliveries"]), 2000);
    assert_eq!(u(&f["unique"]), 2000);
    assert_eq!(u(&f["duplicates"]), 0);
    assert_eq!(u(&f["loss"]), 0);
    assert_eq!(u(&f["latency"]["count"]), 2000);
    assert!(f["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    // No --server-pid, no floor: those figures are absent, not zero.
    assert!(f["gateway_cpu_secs"].is_null());
    assert!(f["full_delivery_to_floor"].is_null());
    assert!(f["loadgen_cpu_secs"].as_f64().unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broadcast_after_a_hold_reaches_everyone_and_memory_is_read() {
    let node = start_node().await;
    // The gateway runs inside this test process: its pid is the server pid.
    let pid = std::process::id().to_string();
    let (code, r) = loadtest(s(&[
        "fanout",
        "--url",
        &node.url,
        "-n",
        "240",
        "--workers",
        "3",
        "--topics",
        "1",
        "--hold-secs",
        "3",
        "--server-pid",
        &pid,
        "--publish-rate",
        "1",
        "--duration-secs",
        "1",
        "--fail-if",
        "loss>0",
        "--fail-if",
        "full_delivery>30s",
        "--floor-writes-per-sec",
        "100000",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    let f = &r["fanout"];
    assert_eq!(u(&f["publishes_ok"]), 1, "exactly one broadcast");
    assert_eq!(u(&f["expected"]), 240);
    assert_eq!(u(&f["unique"]), 240);
    assert_eq!(u(&f["subscribers_at_publish"]), 240);
    assert_eq!(u(&f["subscribers_after"]), 240);
    let window = (u(&f["last_delivery_us"]) - u(&f["first_publish_us"])) as f64 / 1e6;
    let full = f["full_delivery_secs"].as_f64().expect("measured");
    assert!(
        full > 0.0 && (full - window).abs() < 1e-9,
        "{full} vs {window}"
    );
    // The floor ratio is the full delivery over 240 writes at 100,000 writes/s.
    let floor_secs = f["floor_secs"].as_f64().expect("floor given");
    assert!((floor_secs - 240.0 / 100_000.0).abs() < 1e-12);
    let ratio = f["full_delivery_to_floor"].as_f64().expect("ratio");
    assert!((ratio - full / floor_secs).abs() < 1e-9, "{ratio}");
    // CPU of both sides over the broadcast (10 ms ticks: may round to 0 for 240 frames), per
    // distinct delivery. The gateway is this test process; the load generator is the loadtest
    // coordinator and its 3 workers.
    let gw = f["gateway_cpu_secs"].as_f64().expect("gateway cpu read");
    let lg = f["loadgen_cpu_secs"].as_f64().expect("generator cpu read");
    assert!(gw >= 0.0 && lg >= 0.0, "gateway {gw} s, generator {lg} s");
    let per = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    assert!((per("gateway_cpu_us_per_delivery") - gw * 1e6 / 240.0).abs() < 1e-6);
    assert!((per("loadgen_cpu_us_per_delivery") - lg * 1e6 / 240.0).abs() < 1e-6);
    // The broadcast waited for the hold: it left at least 3 s after the run started.
    let started_us = u(&r["started_unix"]) * 1_000_000;
    assert!(u(&f["first_publish_us"]) >= started_us + 3_000_000);
    let m = &r["memory"];
    assert_eq!(u(&m["sessions"]), 240);
    assert!(u(&m["server_rss_loaded"]) > 0);
    assert!(m["server_bytes_per_session"].is_number());
    // Coordinator + 3 workers, each a whole process: well above 1 MiB in total.
    assert!(
        u(&m["loadgen_rss"]) > 1 << 20,
        "loadgen rss {}",
        m["loadgen_rss"]
    );
    let per = m["loadgen_bytes_per_session"].as_f64().unwrap();
    assert!((per - u(&m["loadgen_rss"]) as f64 / 240.0).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_completes_every_cycle() {
    let node = start_node().await;
    let (code, r) = loadtest(s(&[
        "churn",
        "--url",
        &node.url,
        "-n",
        "40",
        "--workers",
        "2",
        "--cycles",
        "200",
        "--fail-if",
        "errors>0",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    let c = &r["churn"];
    assert_eq!(u(&c["cycles"]), 200);
    assert_eq!(u(&r["sessions_joined"]), 200);
    assert_eq!(u(&c["leave_latency"]["count"]), 200);
    assert_eq!(u(&r["errors_total"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violated_gate_exits_1_and_unjoinable_topic_counts_refusals() {
    let node = start_node().await;
    // `nope:*` matches no channel of the default config: every join is refused.
    let (code, r) = loadtest(s(&[
        "capacity",
        "--url",
        &node.url,
        "-n",
        "20",
        "--hold-secs",
        "0",
        "--topic-prefix",
        "nope:",
        "--fail-if",
        "failed>0",
    ]))
    .await;
    assert_eq!(code, 1);
    assert_eq!(u(&r["sessions_failed"]), 20);
    assert_eq!(u(&r["errors"]["join_refused"]), 20);
    assert_eq!(r["passed"], Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_reports_merge_into_the_whole_run() {
    let node = start_node().await;
    let (a, b) = (report_path(), report_path());
    let run = |shard: &str| {
        s(&[
            "capacity",
            "--url",
            &node.url,
            "-n",
            "101",
            "--hold-secs",
            "0",
            "--shard",
            shard,
        ])
    };
    let (ca, ra) = loadtest_to(run("1/2"), a.clone()).await;
    let (cb, rb) = loadtest_to(run("2/2"), b.clone()).await;
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(
        (u(&ra["sessions_requested"]), u(&rb["sessions_requested"])),
        (51, 50)
    );
    let (cm, m) = loadtest(vec![
        "merge".into(),
        a.display().to_string(),
        b.display().to_string(),
        "--fail-if".into(),
        "failed>0".into(),
    ])
    .await;
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    assert_eq!(cm, 0, "merged gates: {}", m["slo"]);
    assert_eq!(u(&m["sessions_requested"]), 101);
    assert_eq!(u(&m["sessions_joined"]), 101);
    assert_eq!(u(&m["connect_join"]["count"]), 101, "histograms were added");
    assert_eq!(m["shard"], serde_json::json!([1, 1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sessions_heartbeat_and_get_replies() {
    let node = start_node().await;
    let (code, r) = loadtest(s(&[
        "capacity",
        "--url",
        &node.url,
        "-n",
        "50",
        "--heartbeat-secs",
        "1",
        "--hold-secs",
        "3",
        "--fail-if",
        "errors>0",
    ]))
    .await;
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    // Each session sends one heartbeat per second while held; an unanswered one would have
    // counted as a heartbeat_timeout error when the next was due.
    assert!(
        u(&r["heartbeats"]) >= 100,
        "heartbeats: {}",
        r["heartbeats"]
    );
    assert_eq!(u(&r["errors"]["heartbeat_timeout"]), 0);
    assert_eq!(r["capacity"]["loaded"]["sessions"].as_f64(), Some(50.0));
}

/// `gateway_sessions` (every transport) of the node behind `url`, read from its `/metrics`.
async fn server_sessions(url: &str) -> f64 {
    let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
    let (_, text) = testkit::http(addr, "GET", "/metrics", &[], "").await;
    testkit::metric_sum(&text, "gateway_sessions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_rejoins_sessions_of_a_drained_node_on_the_other() {
    let mut a = start_node().await;
    let b = start_node().await;
    let run = tokio::spawn(loadtest(s(&[
        "failover",
        "--url",
        &a.url,
        "--url",
        &b.url,
        "-n",
        "100",
        "--hold-secs",
        "30",
        "--fail-if",
        "recovery>10s",
    ])));
    // Session i starts on node i mod 2: wait (bounded) until node A holds its 50.
    testkit::eventually(
        Duration::from_secs(30),
        "node A holding its sessions",
        || async { server_sessions(&a.url).await >= 50.0 },
    )
    .await;
    // Drain node A: its sessions are closed with 1012 and must re-join on node B.
    let _ = a.stop.take().unwrap().send(());
    let (code, r) = run.await.unwrap();
    assert_eq!(code, 0, "gates passed: {}", r["slo"]);
    let f = &r["failover"];
    assert_eq!(u(&f["sessions_before"]), 100);
    assert_eq!(u(&f["closed_by_server"]), 50);
    assert_eq!(u(&f["reconnects"]), 50);
    assert_eq!(u(&f["sessions_after"]), 100);
    assert_eq!(f["recovered"], Value::Bool(true));
    assert_eq!(
        server_sessions(&b.url).await,
        0.0,
        "loadtest closed its sessions at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_replays_every_missed_broadcast_once_in_order() {
    // The demo channel room:* keeps 100 broadcasts: 200 sessions over 4 topics miss 100 each.
    let node = start_node().await;
    let (code, r) = loadtest(s(&[
        "recovery",
        "--url",
        &node.url,
        "-n",
        "200",
        "--topics",
        "4",
        "--missed",
        "100",
        "--settle-ms",
        "300",
    ]))
    .await;
    assert_eq!(code, 0);
    let rc = &r["recovery"];
    assert_eq!(u(&r["sessions_joined"]), 200);
    assert_eq!(u(&rc["publishes_ok"]), 400);
    for k in [
        "positioned",
        "disconnected",
        "rejoined",
        "recovered_true",
        "complete",
    ] {
        assert_eq!(u(&rc[k]), 200, "{k}: {rc}");
    }
    for k in ["recovered_false", "inexact", "missing", "extra"] {
        assert_eq!(u(&rc[k]), 0, "{k}: {rc}");
    }
    assert_eq!(u(&rc["replayed"]), 20_000);
    assert_eq!(rc["metric_exact"].as_f64(), Some(200.0));
    assert_eq!(rc["metric_replayed"].as_f64(), Some(20_000.0));
    assert!(rc["storm_secs"].as_f64().unwrap() > 0.0);
}
