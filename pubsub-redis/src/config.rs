//! Every setting of the Redis adapter, each with its documented default, and their validation.

use std::time::Duration;

/// Settings for [`crate::RedisPubSub::start`]. `Config::default()` talks to a standalone Redis
/// on `redis://127.0.0.1:6379/` with a random node id.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URLs. Standalone mode uses the first one (plain `redis://host:port/db`, RESP2 is
    /// fine); cluster mode uses all of them as seed nodes. Default: `["redis://127.0.0.1:6379/"]`.
    pub urls: Vec<String>,
    /// Redis Cluster mode: sharded pub/sub (SSUBSCRIBE / SPUBLISH, RESP3). Default: `false`.
    pub cluster: bool,
    /// First segment of every channel name (`{prefix}:t:{topic}` ...), so several deployments
    /// can share one Redis. No `{`, `}`, whitespace. Default: `"gw"`.
    pub prefix: String,
    /// This node's id: origin of its envelopes and name of its direct channel. Must be unique
    /// among live nodes (start fails if another live node holds it). `None` picks a random
    /// per-boot id (`n` + 16 hex digits). No `{`, `}`, `:`, whitespace. Default: `None`.
    pub node_id: Option<String>,
    /// Subscriber connections (K) that topics are hashed over. Default: `2`.
    pub subscriber_connections: usize,
    /// Upper bound on one publish / direct send, and on each subscribe round trip.
    /// Default: 1 s.
    pub publish_timeout: Duration,
    /// Bound on establishing one connection. Default: 1 s.
    pub connect_timeout: Duration,
    /// Longest wait between reconnect attempts (backoff starts at 50 ms and doubles, with
    /// jitter, up to this). Default: 500 ms.
    pub reconnect_max_backoff: Duration,
    /// How often each subscriber connection's canary is published. Default: 1 s.
    pub canary_interval: Duration,
    /// A connection whose canary has not been heard for this long makes the node not-ready;
    /// after twice this long the connection is torn down and rebuilt. Default: 3 s.
    pub not_ready_after: Duration,
    /// Capacity of the queue of [`crate::Incoming`] messages to the gateway; when it is full,
    /// new messages are dropped and counted (the Redis reader never waits). Default: 16384.
    pub incoming_capacity: usize,
    /// Channels per SUBSCRIBE / UNSUBSCRIBE command when (re)subscribing in bulk. Default: 500.
    pub subscribe_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            urls: vec!["redis://127.0.0.1:6379/".to_owned()],
            cluster: false,
            prefix: "gw".to_owned(),
            node_id: None,
            subscriber_connections: 2,
            publish_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reconnect_max_backoff: Duration::from_millis(500),
            canary_interval: Duration::from_secs(1),
            not_ready_after: Duration::from_secs(3),
            incoming_capacity: 16384,
            subscribe_batch: 500,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pubsub-redis setting `{field}`: {problem}")]
pub struct ConfigError {
    /// The offending field of [`Config`].
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

fn bad(field: &'static str, problem: &'static str) -> ConfigError {
    ConfigError { field, problem }
}

fn plain_name(s: &str, extra_forbidden: &[char]) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || extra_forbidden.contains(&c))
}

impl Config {
    /// Checks every field; `start` calls this first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(bad("urls", "at least one Redis URL is required"));
        }
        if !plain_name(&self.prefix, &[]) {
            return Err(bad("prefix", "must be non-empty without braces or spaces"));
        }
        if let Some(id) = &self.node_id {
            if !plain_name(id, &[':']) {
                return Err(bad(
                    "node_id",
                    "must be non-empty without braces, ':' or spaces",
                ));
            }
        }
        if self.subscriber_connections == 0 || self.subscriber_connections > 64 {
            return Err(bad("subscriber_connections", "must be 1..=64"));
        }
        if self.incoming_capacity == 0 {
            return Err(bad("incoming_capacity", "must be at least 1"));
        }
        if self.subscribe_batch == 0 {
            return Err(bad("subscribe_batch", "must be at least 1"));
        }
        let zero = Duration::ZERO;
        if self.publish_timeout == zero || self.connect_timeout == zero {
            return Err(bad("publish_timeout", "timeouts must be positive"));
        }
        if self.canary_interval == zero || self.reconnect_max_backoff == zero {
            return Err(bad("canary_interval", "intervals must be positive"));
        }
        if self.not_ready_after <= self.canary_interval {
            return Err(bad(
                "not_ready_after",
                "must be longer than canary_interval",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_names_and_numbers() {
        let with = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().map_err(|e| e.field)
        };
        assert_eq!(with(|c| c.prefix = "a{b".into()), Err("prefix"));
        assert_eq!(with(|c| c.node_id = Some("a:b".into())), Err("node_id"));
        assert_eq!(with(|c| c.node_id = Some(String::new())), Err("node_id"));
        assert_eq!(
            with(|c| c.subscriber_connections = 0),
            Err("subscriber_connections")
        );
        assert_eq!(with(|c| c.urls.clear()), Err("urls"));
        assert_eq!(
            with(|c| c.not_ready_after = Duration::from_millis(500)),
            Err("not_ready_after")
        );
        assert_eq!(with(|c| c.node_id = Some("node-1.a_b".into())), Ok(()));
    }
}
