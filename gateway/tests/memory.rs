//! `gateway_memory_bytes_per_session` against the kernel's own count: the real binary at default
//! settings holds a few thousand idle joined WebSocket sessions, and the metric is compared with
//! the resident set size `/proc/<pid>/status` shows for the same process.

mod common;

use common::GatewayProcess;
use testkit::Client;

/// Idle sessions held: enough that the per-session figure dwarfs page-granular noise, few
/// enough for the test's own file-descriptor limit (one socket per session on each side).
const SESSIONS: usize = 4000;
const METRIC: &str = "gateway_memory_bytes_per_session";
/// The node reads its RSS while rendering a scrape, the test reads `/proc` right after the
/// response: in between the node only writes that response, under 128 KiB of new pages (4 to
/// 32 KiB measured).
const READ_SLACK: f64 = 128.0 * 1024.0;
/// What the node's RSS grows by between the metric's baseline (read when the metrics registry
/// is built, before the runtime's worker threads, the listener and the first scrape exist) and
/// the ready node with no session: 0.6 to 1.4 MB measured on the 2-core test machine.
const STARTUP_GROWTH_MAX: f64 = 3.0 * 1024.0 * 1024.0;

/// A session joined to the one idle topic.
async fn idle_session(node: &GatewayProcess) -> Client {
    let mut c = node.ws().await;
    let (_, reply) = c.join("room:idle", serde_json::json!({})).await;
    // the demo channel keeps history: the ok reply carries `recovered` and `position`
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    c
}

/// Two checks, both against `/proc`:
///
/// 1. The metric is (RSS − one fixed baseline) / sessions with RSS as the kernel counts it: the
///    baseline it implies with one session and with `SESSIONS` sessions agree within
///    `READ_SLACK` (plus its truncation to whole bytes), i.e. the per-session figure is within
///    33 B of (VmRSS − baseline) / sessions.
/// 2. Against the growth `/proc` shows per session from the ready, session-less node to
///    `SESSIONS` idle sessions (about 2 KiB): the metric is never below it, and above it only by
///    the node's fixed startup growth spread over the sessions, at most `STARTUP_GROWTH_MAX /
///    SESSIONS` (786 B; measured 300 B). A metric reading 0, off by a page-size factor, or
///    dividing by the wrong count fails one check or the other.
#[tokio::test]
async fn bytes_per_session_matches_proc_rss_over_idle_sessions() {
    let node = GatewayProcess::start(&[]).await;
    assert_eq!(node.metric(METRIC).await, 0.0, "no session, no figure");
    let rss_ready = node.rss() as f64;

    let mut clients = vec![idle_session(&node).await];
    let one = node.metric(METRIC).await;
    let baseline_one = node.rss() as f64 - one;
    while clients.len() < SESSIONS {
        clients.push(idle_session(&node).await);
    }
    assert_eq!(node.sessions().await, SESSIONS as f64);
    let per_session = node.metric(METRIC).await;
    let rss = node.rss() as f64;
    let n = SESSIONS as f64;

    let baseline_n = rss - per_session * n;
    assert!(
        (baseline_n - baseline_one).abs() <= READ_SLACK + n,
        "the metric implies a baseline of {baseline_n} B at {SESSIONS} sessions but \
         {baseline_one} B at one ({per_session} B/session, VmRSS {rss} B)"
    );

    let proc_per_session = (rss - rss_ready) / n;
    let over = per_session - proc_per_session;
    assert!(
        (-READ_SLACK / n..=STARTUP_GROWTH_MAX / n).contains(&over),
        "{METRIC} = {per_session} B, but /proc shows {proc_per_session:.0} B per session \
         (VmRSS {rss_ready} B ready, {rss} B with {SESSIONS} sessions): {over:.0} B over, \
         allowed {:.0}..={:.0}",
        -READ_SLACK / n,
        STARTUP_GROWTH_MAX / n
    );
    eprintln!(
        "{METRIC} = {per_session} B; /proc: {proc_per_session:.0} B per session ({over:.0} B \
         over); implied baselines {baseline_one} / {baseline_n} B"
    );
    drop(clients);
}
