//! The crate's error type: what `start`, `publish` and `direct` can fail with.

use std::time::Duration;

use crate::config::ConfigError;
use crate::envelope::EncodeError;

/// Why a call into the adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Redis URL could not be parsed or a client could not be built.
    #[error("cannot build Redis client: {0}")]
    Client(#[source] redis::RedisError),
    /// Another live node already listens on this node id's direct channel.
    #[error("node id {0:?} is already in use by another live node")]
    DuplicateNodeId(String),
    /// Redis is known to be unreachable right now; the call failed at once without trying.
    #[error("redis unavailable (reconnecting)")]
    Unavailable,
    /// Redis did not answer within the configured publish timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection broke during the call.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The envelope could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An envelope the history script cannot add a position to (not a small MessagePack map).
    #[error("envelope cannot take a history position")]
    Unpositionable,
    /// `publish(topic, envelope)` was given an envelope for a different topic.
    #[error("envelope topic {envelope:?} differs from publish topic {topic:?}")]
    TopicMismatch {
        /// The topic argument.
        topic: String,
        /// The envelope's `topic` field.
        envelope: String,
    },
}
