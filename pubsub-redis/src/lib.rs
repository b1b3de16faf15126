//! Redis pub/sub adapter for the gateway: moves broadcasts between nodes through Redis.
//!
//! A leaf crate: it knows Redis and bytes, not gateway types. The gateway glue implements its
//! `PubSub` trait on top of [`RedisPubSub`]:
//!
//! * **Interest-based**: one Redis channel per topic (`{prefix}:t:{topic}`), subscribed only
//!   while this node owns the topic, so nodes never read traffic they would discard; one
//!   direct channel per node (`{prefix}:n:{node_id}`). Names live in [`channels`].
//! * **Envelope**: versioned MessagePack map ([`Envelope`]); the payload is raw bytes (already
//!   encoded JSON, or binary) so receivers frame it without parsing. Backends in any language
//!   can publish straight into Redis (see README.md).
//! * **Sharded subscriptions**: topics hashed over K subscriber connections; publishes over
//!   one multiplexed connection. Redis Cluster mode uses SSUBSCRIBE / SPUBLISH.
//! * **Never deaf**: after any reconnect every owned channel is resubscribed before the node
//!   reports ready; a canary on every subscriber connection (and every master, in cluster
//!   mode) must be heard back, else [`Health::ready`] is false; a connection that stays deaf
//!   is rebuilt.
//! * **Bounded everywhere**: publishes are bounded by a timeout and fail fast while Redis is
//!   down; what is read is handed to the gateway's [`Sink`] without waiting (a full sink drops,
//!   counted) so nothing ever blocks the Redis reader; subscribe/unsubscribe edit a set instead
//!   of queueing commands.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pubsub_redis::Error> {
//! use pubsub_redis::{Config, Incoming, RedisPubSub};
//! let (pubsub, mut incoming) = RedisPubSub::start(Config::default()).await?;
//! pubsub.subscribe("room:1");
//! let env = pubsub.envelope("room:1", "new_msg", &br#"{"body":"hi"}"#[..], false);
//! pubsub.publish("room:1", &env).await?;
//! while let Some(Incoming::Topic(env)) = incoming.recv().await {
//!     println!("{} {}", env.topic, env.event);
//! }
//! # Ok(()) }
//! ```

mod backoff;
pub mod channels;
mod cluster;
mod config;
mod dispatch;
pub mod envelope;
mod error;
mod handle;
mod health;
pub mod history;
mod interest;
mod publisher;
mod standalone;
mod stats;
mod subscriber;

pub use config::{Config, ConfigError};
pub use dispatch::{Accepted, Incoming, Sink};
pub use envelope::{DecodeError, EncodeError, Envelope};
pub use error::Error;
pub use handle::RedisPubSub;
pub use health::Health;
pub use history::{Appended, HistoryRead, Retention};
pub use stats::Stats;
