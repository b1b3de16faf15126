//! Command-line interface: the scenarios (`capacity`, `fanout`, `churn`, `failover`,
//! `recovery`), the `merge` tool, the kernel `floor`, and the hidden `worker` and
//! `floor-reader` subcommands the coordinator spawns. Every flag has a bounded default.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Load-test harness for the Phoenix Channels gateway (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Scenarios and tools.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Ramp to N joined sessions, hold, report server bytes and CPU per session and the
    /// connect+join rate.
    Capacity(CapacityArgs),
    /// S subscribers over T topics, publish at R/s through POST /api/broadcast; end-to-end
    /// latency, deliveries/s, loss and duplicates.
    Fanout(FanoutArgs),
    /// Connect / join / leave / disconnect storms.
    Churn(ChurnArgs),
    /// Sessions spread over several nodes; when a node closes them (drain, crash, or
    /// `--kill-pid`), they re-join on the next node: closures, reconnects, recovery time.
    Failover(FailoverArgs),
    /// S sessions joined to topics with history disconnect, miss M broadcasts per topic, then
    /// all rejoin with `since`: replay time, replayed/s, exactly-once-in-order check, CPU of
    /// the gateways and of the history store.
    Recovery(RecoveryArgs),
    /// Merge the JSON reports of `--shard` runs into one report.
    Merge(MergeArgs),
    /// The kernel floor: one writer writes a small message to each of N loopback connections
    /// in turn (one write each), one reader drains them; writes/s and CPU µs per write. No
    /// gateway involved: the bound any one-frame broadcast on this machine is measured against.
    /// `--echo`: the same for a heartbeat and its reply.
    Floor(FloorArgs),
    /// Internal: one worker process (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// Internal: the reading side of `floor`.
    #[command(hide = true)]
    FloorReader(FloorReaderArgs),
}

/// `floor` flags.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Loopback connections written to in turn.
    #[arg(long, short = 'n', default_value_t = 15_000)]
    pub sockets: usize,
    /// Seconds of writing.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Bytes per write (a small broadcast frame).
    #[arg(long, default_value_t = 100)]
    pub bytes: usize,
    /// Loopback source addresses the reader's connections are spread over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    pub sources: u32,
    /// The floor of a heartbeat instead: a request of a heartbeat frame's size on each
    /// connection in turn, answered by one write of a reply's size (`--bytes` is not used);
    /// echoes/s and CPU µs per echo of the answering side and of the asking side.
    #[arg(long)]
    pub echo: bool,
    /// The floor of one broadcast instead: this many rounds of one write to each connection,
    /// each after `--gap-ms` in which the reader sleeps, timed from the first write to the
    /// reader's last byte (`--secs` is not used). At least 1.
    #[arg(long, conflicts_with = "echo", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Idle time before each `--rounds` round, milliseconds.
    #[arg(long, default_value_t = 200)]
    pub gap_ms: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `floor-reader` flags (set by `floor`).
#[derive(Debug, Clone, Args)]
pub struct FloorReaderArgs {
    /// The writer's listening address.
    #[arg(long)]
    pub connect: std::net::SocketAddr,
    /// Connections to open.
    #[arg(long, short = 'n')]
    pub sockets: usize,
    /// Source addresses to spread them over.
    #[arg(long)]
    pub sources: u32,
    /// Answer requests (`floor --echo`) instead of draining.
    #[arg(long)]
    pub echo: bool,
    /// Drain, and print a line each time this many more bytes have arrived (`floor --rounds`).
    #[arg(long, conflicts_with = "echo")]
    pub round_bytes: Option<u64>,
}

/// Flags shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Gateway WebSocket URL (repeat for several nodes; sessions go round-robin). Only
    /// 127.0.0.0/8 targets are accepted.
    #[arg(long = "url", default_value = "ws://127.0.0.1:4000/socket/websocket")]
    pub urls: Vec<String>,
    /// Sessions to open (churn: concurrent lanes).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub sessions: u64,
    /// Session starts per second over all workers (the ramp).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Connects + joins in flight at once, over all workers.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Loopback source addresses to spread sessions over (127.0.0.2 ..).
    #[arg(long, default_value_t = 8)]
    pub sources: u32,
    /// Worker processes (default: sessions / --per-worker, rounded up).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Sessions per worker when --workers is not given (a process holds < 20,000 fds).
    #[arg(long, default_value_t = 8000)]
    pub per_worker: u64,
    /// Topic name prefix; session i joins PREFIX{i mod topics}.
    #[arg(long, default_value = "room:lt")]
    pub topic_prefix: String,
    /// Join (and leave) reply timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub join_timeout_ms: u64,
    /// Heartbeat interval in seconds.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
    /// Run only shard I of N (I in 1..=N) of the sessions, for runs spread over several
    /// coordinators; combine the --json reports with `loadtest merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG latency percentile plot here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// SLO gate, e.g. 'p99>50ms', 'loss>0', 'errors>0', 'bytes_per_session>2048' (repeatable):
    /// exit code 1 when one holds.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `capacity` flags.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Topics to spread the sessions over.
    #[arg(long, default_value_t = 100)]
    pub topics: u64,
    /// Seconds to hold the joined sessions before reading server memory.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Gateway pid(s) whose /proc/<pid>/status VmRSS to read as well (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

/// `fanout` flags.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Topics (subscribers are spread evenly).
    #[arg(long, default_value_t = 1)]
    pub topics: u64,
    /// Publishes per second (over all topics).
    #[arg(long, default_value_t = 10.0)]
    pub publish_rate: f64,
    /// Publishing time in seconds (publishes = rate × duration).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Concurrent publisher HTTP connections.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Padding bytes added to each probe payload.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// API key for POST /api/broadcast (Authorization: Bearer).
    #[arg(long, env = "GATEWAY_API_KEY")]
    pub api_key: Option<String>,
    /// Node(s) to publish to instead of the `--url` nodes (repeatable), e.g. a node holding no
    /// subscribers, so every delivery crosses the cluster PubSub.
    #[arg(long = "publish-url", value_name = "URL")]
    pub publish_urls: Vec<String>,
    /// Seconds to hold the joined subscribers before the first publish; the memory reading
    /// (`--server-pid` VmRSS and the load generator's own VmRSS) is taken at its end.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Gateway pid(s) whose /proc/<pid>/status VmRSS to read before the ramp and before the
    /// first publish, and whose CPU (/proc/<pid>/stat) is counted from the first publish to the
    /// end of the drain (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// The kernel floor of this run (`loadtest floor`, writes/s): the report then gives the
    /// full-delivery time as a ratio to expected deliveries ÷ this.
    #[arg(long, value_name = "WRITES_PER_SEC")]
    pub floor_writes_per_sec: Option<f64>,
}

/// `churn` flags.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Shared flags (--sessions = concurrent lanes).
    #[command(flatten)]
    pub common: Common,
    /// Total connect/join/leave/close cycles (default 5 × sessions).
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Topics to spread joins over.
    #[arg(long, default_value_t = 10)]
    pub topics: u64,
    /// Milliseconds each session stays joined before leaving.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
}

/// `failover` flags.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Shared flags (repeat --url: session i starts on node i mod nodes, re-joins on the next).
    #[command(flatten)]
    pub common: Common,
    /// Topics to spread the sessions over.
    #[arg(long, default_value_t = 10)]
    pub topics: u64,
    /// Observation window after the ramp, seconds (ends early once every closed session is back).
    #[arg(long, default_value_t = 30)]
    pub hold_secs: u64,
    /// Send SIGTERM to this gateway pid (one you started) `--kill-after-secs` after the ramp.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Delay between the end of the ramp and the kill, seconds.
    #[arg(long, default_value_t = 2)]
    pub kill_after_secs: u64,
}

/// `recovery` flags.
#[derive(Debug, Clone, Args)]
pub struct RecoveryArgs {
    /// Shared flags (--topic-prefix must name a channel with history, e.g. the demo `room:`).
    #[command(flatten)]
    pub common: Common,
    /// Topics to spread the sessions over.
    #[arg(long, default_value_t = 10)]
    pub topics: u64,
    /// Broadcasts published per topic while the sessions are away (each must be kept: at most
    /// the channel's `history_size`).
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// Publishes per second while the sessions are away (over all topics).
    #[arg(long, default_value_t = 2000.0)]
    pub publish_rate: f64,
    /// Concurrent publisher HTTP connections.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Padding bytes added to each probe payload.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// API key for POST /api/broadcast (Authorization: Bearer).
    #[arg(long, env = "GATEWAY_API_KEY")]
    pub api_key: Option<String>,
    /// Seconds without progress after which a phase (positions, disconnects, replay) ends.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Milliseconds to keep listening after the last session completed (extras, duplicates).
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Gateway pid(s) whose CPU (/proc/<pid>/stat) is counted over the storm (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// History store pid(s), e.g. redis-server, whose CPU is counted over the storm.
    #[arg(long = "store-pid")]
    pub store_pids: Vec<u32>,
}

/// `merge` flags.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// JSON reports written by `--shard` runs of the same scenario.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Write the merged JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG latency percentile plot of the merged report here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// SLO gates evaluated on the merged report.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
    /// Accepted for symmetry with the scenarios (merge prints no progress).
    #[arg(long, short)]
    pub quiet: bool,
}
