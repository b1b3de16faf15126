//! A horizontally clustered gateway that speaks the Phoenix Channels protocol, so the official
//! `phoenix` JS client works against it unchanged.
//!
//! Map of the crate (one line per module, data flows top to bottom):
//! * [`config`] / [`cli`] — every setting and its default; flags and env vars.
//! * [`server`] — router and accept loop (hyper HTTP/1, upgrades recoverable as raw TCP).
//! * [`transport`] — `websocket` (handshake, frame codec, connection driver), `echo`.
//! * [`protocol`] — `Message`, payloads, V1/V2 JSON and V2 binary serializers, `negotiate(vsn)`.
//! * [`session`] — the Session state machine, its Outbox, close codes, the Registry.
//! * [`channel`] — the `Channel` trait, the topic Router, the config-driven channel.
//! * [`hub`] — topic → sessions index and fastlane fan-out.
//! * [`pubsub`] — the cross-node trait and the in-process adapter.
//! * [`auth`] — JWT verification.
//! * [`http_api`] — broadcast, disconnect, health, readiness, metrics.
//! * [`shutdown`] — the paced drain.
//! * [`metrics`] — every exported metric.
//!
//! Entry point: [`run`] (or [`Gateway`] to add Rust channels or share an in-process bus).

pub mod admission;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http_api;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod transport;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use channel::{Channel, ChannelContext, ChannelError, Join, Reply, Router, Terminate};
pub use config::Config;
pub use protocol::Payload;

use channel::{ChannelSpec, ConfigChannel};
use pubsub::local::LocalBus;
use pubsub::{Delivery, SharedPubSub};
use session::{Close, CloseCode, OutboxLimits};

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

/// Capacity of the queue from the PubSub adapter to the node.
const DELIVERY_QUEUE: usize = 65_536;

/// A node being assembled: config plus optional Rust channels and in-process bus.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    router: Router,
    bus: Option<LocalBus>,
}

impl Gateway {
    /// A node with this config (channels from `config.channels`, or the demo channel).
    pub fn new(config: Config) -> Self {
        Gateway {
            config,
            router: Router::new(),
            bus: None,
        }
    }

    /// Route `pattern` to a Rust channel (in addition to / instead of config channels).
    pub fn channel<F, C>(mut self, pattern: &str, factory: F) -> Self
    where
        F: Fn(&str) -> C + Send + Sync + 'static,
        C: Channel,
    {
        self.router = self.router.channel(pattern, factory);
        self
    }

    /// Attach to an in-process bus shared with other nodes (a cluster without Redis, for tests).
    pub fn local_bus(mut self, bus: &LocalBus) -> Self {
        self.bus = Some(bus.clone());
        self
    }

    fn build_router(config: &Config, mut router: Router) -> Router {
        let specs = if config.channels.is_empty() && router.is_empty() {
            vec![ChannelSpec::demo()]
        } else {
            config.channels.clone()
        };
        for spec in specs {
            let spec = Arc::new(spec);
            let pattern = spec.pattern.clone();
            router = router.channel(&pattern, move |_| ConfigChannel::new(spec.clone()));
        }
        router
    }

    /// Serve on `listener` until `shutdown` completes, then drain and return.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Gateway {
            config,
            router,
            bus,
        } = self;
        config.validate()?;
        let auth = auth::Auth::new(
            config.jwt_secret.as_deref(),
            config.jwt_public_key_pem.as_deref(),
        )?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("gw-{:016x}", rand::random::<u64>()));
        let (tx, rx) = mpsc::channel::<Delivery>(DELIVERY_QUEUE);
        let mut metrics = metrics::Metrics::new();
        metrics.per_message = config.message_metrics;
        let metrics = Arc::new(metrics);
        let pubsub: SharedPubSub = match config.redis(&node_id) {
            Some(redis) => {
                let adapter =
                    pubsub::redis::RedisAdapter::start(redis, metrics.clone(), tx).await?;
                info!(node_id = %node_id, "cluster member through Redis");
                Arc::new(adapter)
            }
            None => Arc::new(bus.unwrap_or_default().attach(node_id.clone(), tx)),
        };
        let limits = OutboxLimits {
            max_items: config.outbox_max_frames,
            max_bytes: config.outbox_max_bytes,
        };
        if !auth.enabled() {
            warn!("auth is OFF: anyone may connect and join public channels; set --jwt-secret (GATEWAY_JWT_SECRET) to require signed tokens");
        }
        if config.api_key.is_none() {
            warn!("the HTTP API is open: set --api-key (GATEWAY_API_KEY) to require a Bearer key on /api/*");
        }
        let node = Arc::new(node::Node {
            hub: hub::Hub::new(pubsub.clone(), limits, metrics.clone()),
            router: Self::build_router(&config, router),
            registry: session::Registry::default(),
            draining: AtomicBool::new(false),
            admission: admission::Admission::new(config.max_sessions, config.connect_rate_per_ip),
            pubsub,
            auth,
            metrics,
            limits,
            longpoll: transport::longpoll::LongPoll::new(config.longpoll_secret.as_deref()),
            presence: presence::Presence::new(&node_id),
            config,
        });
        // The node's background tasks end with this future, also when it is dropped midway.
        let _tasks = [
            AbortOnDrop(tokio::spawn(node.clone().deliver(rx))),
            AbortOnDrop(tokio::spawn(idle_sweep(node.clone()))),
            AbortOnDrop(tokio::spawn(transport::longpoll::sweep(node.clone()))),
            AbortOnDrop(tokio::spawn(presence::tracker::run(node.clone()))),
        ];
        let addr = listener.local_addr()?;
        info!(node_id = %node_id, "listening on http://{addr}");
        let stop = CancellationToken::new();
        let mut accept = AbortOnDrop(tokio::spawn(server::accept_loop(
            listener,
            server::router(node.clone()),
            stop.clone(),
        )));
        shutdown.await;
        // Keep answering HTTP while draining: `/readyz` says 503 and new sessions are refused
        // with 503 + Retry-After, so load balancers and clients move elsewhere.
        shutdown::drain(&node).await;
        stop.cancel();
        let _ = (&mut accept.0).await; // the listener is closed when run returns
        Ok(())
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run a node with `config` on `listener` until `shutdown` completes, then drain.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Gateway::new(config).run(listener, shutdown).await
}

/// Close sessions that sent nothing for `idle_timeout` (one task for all sessions).
async fn idle_sweep(node: Arc<node::Node>) {
    let idle = node.config.idle_timeout;
    let period = (idle / 4).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(5),
    );
    let idle_secs = idle.as_secs().max(1) as u32;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        node.registry.sweep_idle(
            idle_secs,
            Close::new(CloseCode::IDLE_TIMEOUT, "idle timeout"),
        );
    }
}
