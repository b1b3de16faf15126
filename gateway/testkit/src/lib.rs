//! Test support shared by the integration tests of every workspace crate (`gateway/tests`,
//! `pubsub-redis/tests`, `loadtest/tests`): the real parts a test starts and talks to, each
//! written once. It owns no knowledge of the gateway's internals (it does not depend on the
//! `gateway` crate, which `pubsub-redis` could not use); what it knows is the wire: Phoenix
//! frames over WebSocket and LongPoll, the HTTP API, the Prometheus text format.
//!
//! * [`process`]: a child process whose every output line is kept, started when it logs
//!   `listening on http://IP:PORT`, stopped with SIGTERM or SIGKILL;
//! * [`redis`]: a private `redis-server` on a free port (SIGKILL, restart on the same port,
//!   `CLIENT PAUSE`), a three-master Redis Cluster, a server behind a cuttable network path;
//! * [`ws`]: a raw WebSocket client that can send anything, with Phoenix helpers;
//! * [`http`] and [`longpoll`]: one HTTP/1.1 request per connection, and a long-poll session;
//! * [`wait`], [`metrics`], [`jwt`], [`tools`]: awaiting a condition, reading a scrape,
//!   minting HS256 tokens, and running the external validators the deploy tests need.

pub mod http;
pub mod jwt;
pub mod longpoll;
pub mod metrics;
pub mod process;
pub mod redis;
pub mod tools;
pub mod wait;
pub mod ws;

use std::time::Duration;

pub use http::{http, http_full, try_broadcast};
pub use jwt::{jwt, now};
pub use longpoll::LongPoll;
pub use metrics::{metric, metric_sum, metric_value};
pub use process::{Process, Spawn};
pub use wait::eventually;
pub use ws::{frame, Client, Frame};

/// How long a client waits for one expected frame, handshake or reply before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);
