//! Command-line flags and environment variables of the `gateway` binary → `Config`. Every
//! default is read from `Config::default()`, so the library and the binary cannot disagree (a
//! test checks that no flag given means exactly the default config).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, ConfigError, ConfigFile, LogFormat};

/// The defaults every flag shows and falls back to.
static D: LazyLock<Config> = LazyLock::new(Config::default);

/// A duration default as the milliseconds its flag takes.
fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A horizontally clustered Phoenix Channels gateway node.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// TCP port to listen on (0 = any free port).
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 4000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "GATEWAY_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// TOML config file with `[[channels]]` rules (default: the demo channel `room:*`).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL; makes this node a cluster member (absent = single node).
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster mode: sharded pub/sub; --redis-url lists seed nodes (comma-separated).
    #[arg(long, env = "GATEWAY_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Redis subscriber connections that topics are hashed over.
    #[arg(long, env = "GATEWAY_REDIS_SUBSCRIBERS", default_value_t = D.redis_subscribers)]
    pub redis_subscribers: usize,
    /// Milliseconds Redis may take to accept a publish before it is dropped and counted.
    #[arg(long, env = "GATEWAY_REDIS_PUBLISH_TIMEOUT_MS", default_value_t = ms(D.redis_publish_timeout))]
    pub redis_publish_timeout_ms: u64,
    /// Milliseconds without hearing its own canary before the node reports not ready.
    #[arg(long, env = "GATEWAY_REDIS_NOT_READY_AFTER_MS", default_value_t = ms(D.redis_not_ready_after))]
    pub redis_not_ready_after_ms: u64,
    /// Node id (default: random per boot).
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// Bearer key required by /api/* (absent = API open).
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// HS256 secret; makes a valid JWT mandatory for every connect.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256 public key file (PEM) for JWTs.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Allowed Origin (repeatable; `https://*.example.com` wildcards). None given = any origin.
    #[arg(
        long = "check-origin",
        env = "GATEWAY_CHECK_ORIGIN",
        value_delimiter = ','
    )]
    pub check_origin: Vec<String>,
    /// Largest client message in bytes, also across fragments (close 1009 beyond).
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", default_value_t = D.max_message_size)]
    pub max_message_size: usize,
    /// Most channels per session.
    #[arg(long, env = "GATEWAY_MAX_CHANNELS", default_value_t = D.max_channels)]
    pub max_channels: usize,
    /// Most sessions on this node; more get HTTP 503 + Retry-After [default: the open-files
    /// limit minus 256; 0 = no cap].
    #[arg(long, env = "GATEWAY_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// New sessions per second per source address (IPv6: per /64); more get HTTP 429 +
    /// Retry-After. 0 = off.
    #[arg(long, env = "GATEWAY_CONNECT_RATE_PER_IP", default_value_t = D.connect_rate_per_ip)]
    pub connect_rate_per_ip: u32,
    /// Messages per second one session may send; more get an error reply, and a session that
    /// keeps on is closed with 4029. 0 = off.
    #[arg(long, env = "GATEWAY_MAX_MESSAGES_PER_SEC", default_value_t = D.max_messages_per_sec)]
    pub max_messages_per_sec: u32,
    /// Close a WebSocket after this many seconds without received data.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = D.idle_timeout.as_secs())]
    pub idle_timeout_secs: u64,
    /// Most frames queued per session before it is closed as a slow consumer (4002).
    #[arg(long, env = "GATEWAY_OUTBOX_MAX_FRAMES", default_value_t = D.outbox_max_frames)]
    pub outbox_max_frames: usize,
    /// Most bytes queued per session before it is closed as a slow consumer (4002).
    #[arg(long, env = "GATEWAY_OUTBOX_MAX_BYTES", default_value_t = D.outbox_max_bytes)]
    pub outbox_max_bytes: usize,
    /// Sessions closed per drain batch on shutdown.
    #[arg(long, env = "GATEWAY_DRAIN_BATCH_SIZE", default_value_t = D.drain_batch_size)]
    pub drain_batch_size: usize,
    /// Milliseconds between drain batches.
    #[arg(long, env = "GATEWAY_DRAIN_INTERVAL_MS", default_value_t = ms(D.drain_interval))]
    pub drain_interval_ms: u64,
    /// Longest drain in milliseconds before the node exits anyway.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT_MS", default_value_t = ms(D.shutdown_timeout))]
    pub shutdown_timeout_ms: u64,
    /// Milliseconds a long-poll GET is held open without messages.
    #[arg(long, env = "GATEWAY_LONGPOLL_WINDOW_MS", default_value_t = ms(D.longpoll_window))]
    pub longpoll_window_ms: u64,
    /// Milliseconds without a poll after which a long-poll session ends.
    #[arg(long, env = "GATEWAY_LONGPOLL_EXPIRY_MS", default_value_t = ms(D.longpoll_expiry))]
    pub longpoll_expiry_ms: u64,
    /// Cluster-wide key for long-poll tokens (default: random per node; only the owner verifies).
    #[arg(long, env = "GATEWAY_LONGPOLL_SECRET", hide_env_values = true)]
    pub longpoll_secret: Option<String>,
    /// phoenix.js browser build for the demo page (default: node_modules/phoenix nearby, else a CDN).
    #[arg(long, env = "GATEWAY_PHOENIX_JS")]
    pub phoenix_js: Option<PathBuf>,
    /// Milliseconds over which presence diffs to clients are batched per topic (0 = at once).
    #[arg(long, env = "GATEWAY_PRESENCE_BATCH_MS", default_value_t = ms(D.presence_batch))]
    pub presence_batch_ms: u64,
    /// Milliseconds between presence heartbeats of this node.
    #[arg(long, env = "GATEWAY_PRESENCE_HEARTBEAT_MS", default_value_t = ms(D.presence_heartbeat))]
    pub presence_heartbeat_ms: u64,
    /// Milliseconds within which a dead node's presences leave (declared down after this minus
    /// one heartbeat of silence).
    #[arg(long, env = "GATEWAY_PRESENCE_DOWN_AFTER_MS", default_value_t = ms(D.presence_down_after))]
    pub presence_down_after_ms: u64,
    /// Skip per-message metrics (bytes, frames, writes, deliveries, fan-out duration), to
    /// measure what they cost.
    #[arg(long, env = "GATEWAY_NO_MESSAGE_METRICS")]
    pub no_message_metrics: bool,
    /// Serve /ws-echo, a plain WebSocket echo for conformance tests.
    #[arg(long, env = "GATEWAY_WS_ECHO")]
    pub ws_echo: bool,
    /// Backend hook requests in flight on this node at most; more fail at once with
    /// `backend busy` (the backend itself is configured in the `[backend]` table).
    #[arg(long, env = "GATEWAY_BACKEND_MAX_IN_FLIGHT", default_value_t = D.backend_max_in_flight)]
    pub backend_max_in_flight: usize,
    /// Largest assigns a backend may set for one session, in bytes of JSON.
    #[arg(long, env = "GATEWAY_BACKEND_ASSIGNS_MAX_BYTES", default_value_t = D.backend_assigns_max_bytes)]
    pub backend_assigns_max_bytes: usize,
    /// Bytes of topic history kept in memory on a single node (without Redis); past it the
    /// appending topic gives up its oldest entries.
    #[arg(long, env = "GATEWAY_HISTORY_MEMORY_MAX_BYTES", default_value_t = D.history_memory_max_bytes)]
    pub history_memory_max_bytes: usize,
}

/// Why the flags do not make a config.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The public key file is unreadable.
    #[error("cannot read {path}: {source}")]
    Key {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Cli {
    /// Build the node config from the flags (reading the config and key files).
    pub fn into_config(self) -> Result<Config, CliError> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let jwt_public_key_pem = match &self.jwt_public_key {
            Some(path) => Some(std::fs::read(path).map_err(|source| CliError::Key {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Ok(Config {
            node_id: self.node_id,
            redis_url: self.redis_url,
            redis_cluster: self.redis_cluster,
            redis_subscribers: self.redis_subscribers,
            redis_publish_timeout: Duration::from_millis(self.redis_publish_timeout_ms),
            redis_not_ready_after: Duration::from_millis(self.redis_not_ready_after_ms),
            api_key: self.api_key,
            jwt_secret: self.jwt_secret,
            jwt_public_key_pem,
            check_origin: self.check_origin,
            max_message_size: self.max_message_size,
            max_channels: self.max_channels,
            max_sessions: self.max_sessions.unwrap_or(0),
            connect_rate_per_ip: self.connect_rate_per_ip,
            max_messages_per_sec: self.max_messages_per_sec,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            outbox_max_frames: self.outbox_max_frames,
            outbox_max_bytes: self.outbox_max_bytes,
            drain_batch_size: self.drain_batch_size,
            drain_interval: Duration::from_millis(self.drain_interval_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            longpoll_window: Duration::from_millis(self.longpoll_window_ms),
            longpoll_expiry: Duration::from_millis(self.longpoll_expiry_ms),
            longpoll_secret: self.longpoll_secret,
            phoenix_js: crate::demo::find_phoenix_js(self.phoenix_js),
            presence_batch: Duration::from_millis(self.presence_batch_ms),
            presence_heartbeat: Duration::from_millis(self.presence_heartbeat_ms),
            presence_down_after: Duration::from_millis(self.presence_down_after_ms),
            message_metrics: !self.no_message_metrics,
            history_memory_max_bytes: self.history_memory_max_bytes,
            ws_echo: self.ws_echo,
            channels: file.channels,
            backend: file.backend,
            backend_max_in_flight: self.backend_max_in_flight,
            backend_assigns_max_bytes: self.backend_assigns_max_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_redis_timing_flags_reach_the_config() {
        let cli = Cli::parse_from([
            "gateway",
            "--redis-url",
            "redis://h:6379/",
            "--redis-publish-timeout-ms",
            "2500",
            "--redis-not-ready-after-ms",
            "9000",
            "--max-sessions",
            "7",
            "--connect-rate-per-ip",
            "3",
            "--max-messages-per-sec",
            "0",
        ]);
        let config = cli.into_config().unwrap();
        let redis = config.redis("n1").unwrap();
        assert_eq!(redis.publish_timeout, Duration::from_millis(2500));
        assert_eq!(redis.not_ready_after, Duration::from_millis(9000));
        assert_eq!(
            (
                config.max_sessions,
                config.connect_rate_per_ip,
                config.max_messages_per_sec
            ),
            (7, 3, 0)
        );
        // Without the flag the library default (no cap) stands; the binary derives one.
        let config = Cli::parse_from(["gateway"]).into_config().unwrap();
        assert_eq!(config.max_sessions, 0);
        assert_eq!(config.max_messages_per_sec, 1000);
    }

    #[test]
    fn no_flag_means_the_library_defaults() {
        let mut config = Cli::parse_from(["gateway"]).into_config().unwrap();
        // The one setting the binary looks up on disk (a phoenix.js build nearby, if any).
        config.phoenix_js = None;
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
    }
}
