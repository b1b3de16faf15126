//! A horizontally clustered gateway that speaks the Phoenix Channels protocol, so the official
//! `phoenix` JS client works against it unchanged.
//!
//! Map of the crate, bottom layer first; a module only uses modules above it in this list
//! (checked by `.ci/check-layers`):
//! * [`protocol`] — `Message`, payloads, V1/V2 JSON and V2 binary serializers, `negotiate(vsn)`,
//!   the `Wire` frames are encoded for, the RFC 6455 codec, close codes, topics. Pure bytes.
//! * [`metrics`] — every exported metric. [`admission`] — session cap and per-IP connect rate.
//! * [`config`] — every setting and its default; channel rules. [`auth`] — JWT verification.
//!   [`cluster`] — the typed messages nodes send each other, and their Redis envelopes.
//! * [`pubsub`] — the cross-node trait, the in-process and Redis adapters, the node's inbox.
//!   [`outbox`] — a session's bounded queue of frames. [`backend`] — the backend hooks'
//!   contract and their pooled, signed, bounded HTTP client. [`history`] — topic histories
//!   (positions, the in-process ring and the Redis store) for recovery on join.
//! * [`registry`] — every live session, the `SessionHandle` other tasks touch, the clock.
//! * [`hub`] — topic → sessions index, fastlane fan-out, cluster broadcasts.
//! * [`presence`] — replicas, the tracker, phoenix.js `Presence` payloads.
//! * [`channel`] — the `Channel` trait, its context and handle, the Router, the config channel.
//! * [`session`] — the Session state machine (the one entry point of every transport) and the
//!   `Core` it acts through.
//! * [`edge`] — what transports, the HTTP API and the drain share.
//! * [`transport`] — `websocket`, `longpoll`, `echo`: move bytes, map closes to their medium.
//!   [`http_api`] — broadcast, disconnect, health, readiness, metrics. [`shutdown`] — the drain.
//!   [`demo`] — the demo page.
//! * [`server`] — router and accept loop (hyper HTTP/1, upgrades recoverable as raw TCP).
//! * [`node`] — assembles a node from the parts and runs it. [`cli`] — flags and env vars.
//!
//! Entry point: [`run`] (or [`Gateway`] to add Rust channels or share an in-process bus).

pub mod admission;
pub mod auth;
pub mod backend;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod edge;
pub mod gapfill;
pub mod history;
pub mod http_api;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod registry;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod transport;

use std::future::Future;

use tokio::net::TcpListener;

pub use channel::{
    Channel, ChannelContext, ChannelError, ChannelHandle, Join, Reply, Router, Terminate,
};
pub use config::Config;
pub use node::Gateway;
pub use protocol::Payload;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The JWT key is invalid.
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    /// The Redis adapter could not start.
    #[error("redis pubsub: {0}")]
    Redis(#[from] pubsub_redis::Error),
    /// The listener is unusable.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Run a node with `config` on `listener` until `shutdown` completes, then drain.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Gateway::new(config).run(listener, shutdown).await
}
