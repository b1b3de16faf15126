//! Config: every setting of a node, with its documented default, and the TOML config file
//! (channel rules). Flags and environment variables are parsed by `cli` into this struct;
//! tests build it directly.

mod backend;
mod channels;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use backend::BackendSpec;
pub use channels::{ChannelSpec, HandleIn, JoinPolicy};

use crate::protocol::is_reserved_event;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Every setting of a node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id; default: random per boot (`gw-<16 hex>`).
    pub node_id: Option<String>,
    /// Redis URL(s), comma-separated; `None` = single node with the in-process adapter.
    pub redis_url: Option<String>,
    /// Redis Cluster mode (sharded pub/sub); the URLs are seed nodes. Default off.
    pub redis_cluster: bool,
    /// Redis subscriber connections topics are hashed over (default 2).
    pub redis_subscribers: usize,
    /// A publish Redis has not accepted within this is dropped and counted (fail fast).
    pub redis_publish_timeout: Duration,
    /// A subscriber connection whose canary is unheard this long makes the node not-ready.
    pub redis_not_ready_after: Duration,
    /// Bearer key for `/api/*`; `None` = the API is open (a startup warning says so).
    pub api_key: Option<String>,
    /// HS256 secret; with it every connect needs a valid JWT. `None` = open mode.
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM), accepted in addition to / instead of the HS256 secret.
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// Allowed `Origin` values (`scheme://host[:port]`, `*.` wildcard hosts allowed). Empty =
    /// any origin. A request without `Origin` is always allowed (non-browser clients).
    pub check_origin: Vec<String>,
    /// Largest client message, also across fragments (WebSocket close 1009). Default 1 MiB.
    pub max_message_size: usize,
    /// Most channels one session may join (default 100, like Phoenix).
    pub max_channels: usize,
    /// Most sessions this node holds; more get HTTP 503 + `Retry-After` (0: no cap; the binary
    /// defaults to its open-files limit minus a reserve).
    pub max_sessions: usize,
    /// New sessions per second per source address; more get HTTP 429 + `Retry-After` (0: off).
    pub connect_rate_per_ip: u32,
    /// Messages per second a session may send (burst: one second's worth); more get an error
    /// reply, and a session that keeps on is closed with 4029 (0: off).
    pub max_messages_per_sec: u32,
    /// Close a WebSocket session after this long without received data (default 60 s).
    pub idle_timeout: Duration,
    /// Most frames queued for one session before it is closed as a slow consumer (default 4096).
    pub outbox_max_frames: usize,
    /// Most bytes queued for one session before it is closed as a slow consumer (default 8 MiB).
    pub outbox_max_bytes: usize,
    /// Sessions closed per drain batch (default 10,000, like Phoenix).
    pub drain_batch_size: usize,
    /// Pause between drain batches (default 2 s).
    pub drain_interval: Duration,
    /// Longest the drain may take before the node exits anyway (default 30 s).
    pub shutdown_timeout: Duration,
    /// Longest a long-poll GET is held open without messages (default 10 s, like Phoenix).
    pub longpoll_window: Duration,
    /// A long-poll session nobody polled for this long ends (default 15 s; checked at least every second).
    pub longpoll_expiry: Duration,
    /// Cluster-wide long-poll token key; `None` = random per node (only the owner verifies).
    pub longpoll_secret: Option<String>,
    /// The phoenix.js browser build served at `/assets/phoenix.min.js` for the demo page.
    pub phoenix_js: Option<std::path::PathBuf>,
    /// Presence diffs to clients are batched per topic over this interval (default 20 ms; 0 =
    /// one diff per change, sent at once).
    pub presence_batch: Duration,
    /// Period of each node's presence heartbeat (default 1 s).
    pub presence_heartbeat: Duration,
    /// A dead node's presences leave within this of its death (default 5 s): it is declared
    /// down once not heard for this minus one heartbeat.
    pub presence_down_after: Duration,
    /// Update per-message metrics (default on; off only to measure their cost).
    pub message_metrics: bool,
    /// Most bytes of topic history a single node keeps in memory (default 64 MiB); past it the
    /// appending topic gives up its oldest entries. With Redis, history lives there instead.
    pub history_memory_max_bytes: usize,
    /// Serve `/ws-echo`, a plain WebSocket echo for conformance tests (default off).
    pub ws_echo: bool,
    /// Channel rules; empty = the demo channel (`room:*`).
    pub channels: Vec<ChannelSpec>,
    /// The HTTP backend of `join = "backend"` / `handle_in = "backend"` channels and of the
    /// connect hook; `None` = no backend hooks.
    pub backend: Option<BackendSpec>,
    /// Backend requests in flight on this node at most; beyond it a hook fails at once with
    /// `backend busy` (default 1024), so a stuck backend cannot pile up sockets and tasks.
    pub backend_max_in_flight: usize,
    /// Largest `assigns` a backend may set for a session, in bytes of JSON (default 1 KiB).
    pub backend_assigns_max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            redis_url: None,
            redis_cluster: false,
            redis_subscribers: 2,
            redis_publish_timeout: Duration::from_secs(1),
            redis_not_ready_after: Duration::from_secs(3),
            api_key: None,
            jwt_secret: None,
            jwt_public_key_pem: None,
            check_origin: Vec::new(),
            max_message_size: 1 << 20,
            max_channels: 100,
            max_sessions: 0,
            connect_rate_per_ip: 0,
            max_messages_per_sec: 1000,
            idle_timeout: Duration::from_secs(60),
            outbox_max_frames: 4096,
            outbox_max_bytes: 8 << 20,
            drain_batch_size: 10_000,
            drain_interval: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(30),
            longpoll_window: Duration::from_secs(10),
            longpoll_expiry: Duration::from_secs(15),
            longpoll_secret: None,
            phoenix_js: None,
            message_metrics: true,
            history_memory_max_bytes: 64 << 20,
            presence_batch: Duration::from_millis(20),
            presence_heartbeat: Duration::from_secs(1),
            presence_down_after: Duration::from_secs(5),
            ws_echo: false,
            channels: Vec::new(),
            backend: None,
            backend_max_in_flight: 1024,
            backend_assigns_max_bytes: 1024,
        }
    }
}

/// The config file (TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[[channels]]` entries.
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
    /// `[backend]`.
    #[serde(default)]
    pub backend: Option<BackendSpec>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for the format.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
}

impl ConfigFile {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parse config file text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

impl Config {
    /// The Redis adapter's settings, when clustering is configured.
    pub fn redis(&self, node_id: &str) -> Option<pubsub_redis::Config> {
        let urls = self
            .redis_url
            .as_ref()?
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        Some(pubsub_redis::Config {
            urls,
            cluster: self.redis_cluster,
            node_id: Some(node_id.to_owned()),
            subscriber_connections: self.redis_subscribers,
            publish_timeout: self.redis_publish_timeout,
            not_ready_after: self.redis_not_ready_after,
            ..pubsub_redis::Config::default()
        })
    }

    /// Check value ranges; called by `run` before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_size < 1024 {
            return Err(ConfigError::Invalid(
                "max_message_size must be at least 1024 bytes",
            ));
        }
        if self.max_channels == 0 {
            return Err(ConfigError::Invalid("max_channels must be at least 1"));
        }
        if self.drain_batch_size == 0 {
            return Err(ConfigError::Invalid("drain_batch_size must be at least 1"));
        }
        if self.outbox_max_frames == 0 || self.outbox_max_bytes < self.max_message_size {
            return Err(ConfigError::Invalid(
                "outbox limits must hold at least one largest message",
            ));
        }
        for spec in &self.channels {
            if spec
                .broadcast
                .iter()
                .chain(&spec.broadcast_from)
                .any(|e| is_reserved_event(e))
            {
                return Err(ConfigError::Invalid(
                    "broadcast events may not start with phx_ or presence_ (reserved)",
                ));
            }
            if spec.history_size > 0 && spec.history_ttl_secs == 0 {
                return Err(ConfigError::Invalid(
                    "history_ttl_secs must be positive on a channel with history_size",
                ));
            }
        }
        let uses_backend = self.channels.iter().any(ChannelSpec::uses_backend);
        match &self.backend {
            None if uses_backend => {
                return Err(ConfigError::Invalid(
                    "join = \"backend\" or handle_in = \"backend\" needs a [backend] table",
                ))
            }
            Some(b) if !b.url.starts_with("http://") => {
                return Err(ConfigError::Invalid(
                    "backend url must be http://host[:port][/path] (TLS: put a proxy beside the backend)",
                ))
            }
            Some(b) if b.url.parse::<hyper::Uri>().is_err() => {
                return Err(ConfigError::Invalid("backend url is not a valid URL"))
            }
            Some(b) if b.timeout_ms == 0 => {
                return Err(ConfigError::Invalid("backend timeout_ms must be positive"))
            }
            Some(b) if b.secret.as_deref() == Some("") => {
                return Err(ConfigError::Invalid(
                    "backend secret must not be empty when given",
                ))
            }
            _ => {}
        }
        if self.backend_max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "backend_max_in_flight must be at least 1",
            ));
        }
        if self.redis_publish_timeout.is_zero() || self.redis_not_ready_after.is_zero() {
            return Err(ConfigError::Invalid(
                "redis_publish_timeout and redis_not_ready_after must be positive",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::Invalid("idle_timeout must be positive"));
        }
        // An empty secret is almost always an unset variable (`${JWT_SECRET}` in a compose
        // file); an empty HMAC key would let anyone sign tokens.
        let empty = |v: &Option<String>| v.as_deref().is_some_and(str::is_empty);
        if empty(&self.jwt_secret) || empty(&self.api_key) || empty(&self.longpoll_secret) {
            return Err(ConfigError::Invalid(
                "jwt_secret, api_key and longpoll_secret must not be empty when given",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channel_rules() {
        let f = ConfigFile::parse(
            r#"
            [[channels]]
            pattern = "room:*"
            broadcast = ["new_msg"]
            broadcast_from = ["typing"]
            [[channels]]
            pattern = "private:*"
            join = "token"
            "#,
        )
        .unwrap();
        assert_eq!(f.channels.len(), 2);
        assert_eq!(f.channels[1].join, JoinPolicy::Token);
        assert!(ConfigFile::parse("[[channels]]\npattern = 1").is_err());
        assert!(ConfigFile::parse("[[channels]]\npattern = \"a\"\nbogus = 1").is_err());
        assert!(ConfigFile::parse("[[channels]]\npattern = \"a\"\njoin = \"maybe\"").is_err());
    }

    #[test]
    fn parses_the_backend_contract() {
        let f = ConfigFile::parse(
            r#"
            [backend]
            url = "http://127.0.0.1:8000/phx"
            secret = "s3"
            connect = true

            [[channels]]
            pattern = "game:*"
            join = "backend"
            handle_in = "backend"
            "#,
        )
        .unwrap();
        let b = f.backend.clone().unwrap();
        assert_eq!((b.timeout_ms, b.connect, b.leave), (2000, true, false));
        assert_eq!(b.secret.as_deref(), Some("s3"));
        assert_eq!(f.channels[0].join, JoinPolicy::Backend);
        assert_eq!(f.channels[0].handle_in, HandleIn::Backend);
        let mut config = Config {
            channels: f.channels,
            backend: f.backend,
            ..Config::default()
        };
        assert!(config.validate().is_ok());
        config.backend = None;
        assert!(
            config.validate().is_err(),
            "backend channels need [backend]"
        );
        config.backend = Some(BackendSpec::new("https://x"));
        assert!(config.validate().is_err(), "only http://");
        assert!(ConfigFile::parse("[backend]\nurl = \"http://x\"\nbogus = 1").is_err());
    }
}
