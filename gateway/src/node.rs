//! The Node: where a gateway process is assembled from its parts, and nothing else depends on
//! it. It builds the PubSub adapter, the Hub, Presence and the session `Core`, then the `Edge`
//! and the long-poll transport on top, routes what other nodes send (`deliver`), runs the
//! background tasks (idle sweep, long-poll sweep, presence tracker), serves until shutdown and
//! drains.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::auth::Auth;
use crate::backend::Backend;
use crate::channel::{BackendChannel, Channel, ConfigChannel, Router};
use crate::cluster::ClusterMessage;
use crate::config::{ChannelSpec, Config};
use crate::edge::Edge;
use crate::gapfill::GapFiller;
use crate::history::memory::MemoryHistory;
use crate::history::redis::RedisHistory;
use crate::history::{Position, SharedHistory};
use crate::hub::{Hub, Seed};
use crate::metrics::Metrics;
use crate::outbox::OutboxLimits;
use crate::presence::{Presence, PresenceSettings};
use crate::protocol::{Close, CloseCode};
use crate::pubsub::local::LocalBus;
use crate::pubsub::redis::RedisAdapter;
use crate::pubsub::{Inbox, SharedPubSub};
use crate::registry::Registry;
use crate::session::{Core, SessionLimits};
use crate::transport::longpoll::{self, LongPoll};
use crate::{server, shutdown, Error};

/// A node being assembled: config plus optional Rust channels and in-process bus.
#[derive(Debug)]
pub struct Gateway {
    /// Settings.
    config: Config,
    /// Rust channels added with `channel`.
    router: Router,
    /// An in-process bus shared with other nodes (tests), instead of Redis or a bus of its own.
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

    fn build_router(config: &Config, mut router: Router, backend: Option<&Arc<Backend>>) -> Router {
        let specs = if config.channels.is_empty() && router.is_empty() {
            vec![ChannelSpec::demo()]
        } else {
            config.channels.clone()
        };
        for spec in specs {
            let spec = Arc::new(spec);
            let pattern = spec.pattern.clone();
            // `validate` made sure a backend pattern has its backend.
            router = match backend.filter(|_| spec.uses_backend()) {
                Some(backend) => {
                    let backend = backend.clone();
                    router.channel(&pattern, move |_| {
                        BackendChannel::new(spec.clone(), backend.clone())
                    })
                }
                None => router.channel(&pattern, move |_| ConfigChannel::new(spec.clone())),
            };
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
        let auth = Auth::new(
            config.jwt_secret.as_deref(),
            config.jwt_public_key_pem.as_deref(),
        )?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("gw-{:016x}", rand::random::<u64>()));
        let mut metrics = Metrics::new();
        metrics.per_message = config.message_metrics;
        let metrics = Arc::new(metrics);
        let (inbox, deliveries) = Inbox::new(metrics.clone());
        // Histories live where positions can be cluster-wide: Redis, else this node's memory.
        // Redis readiness coming back ends a resubscription: the node then fills what it missed.
        let mut readiness = None;
        let (pubsub, history): (SharedPubSub, SharedHistory) = match config.redis(&node_id) {
            Some(redis) => {
                let adapter = RedisAdapter::start(redis, metrics.clone(), inbox).await?;
                info!(node_id = %node_id, "cluster member through Redis");
                let history = Arc::new(RedisHistory::new(adapter.redis().clone()));
                readiness = Some(adapter.redis().health());
                (Arc::new(adapter), history)
            }
            None => (
                Arc::new(bus.unwrap_or_default().attach(node_id.clone(), inbox)),
                Arc::new(MemoryHistory::new(
                    config.history_memory_max_bytes,
                    metrics.clone(),
                )),
            ),
        };
        if !auth.enabled() {
            warn!("auth is OFF: anyone may connect and join public channels; set --jwt-secret (GATEWAY_JWT_SECRET) to require signed tokens");
        }
        if config.api_key.is_none() {
            warn!("the HTTP API is open: set --api-key (GATEWAY_API_KEY) to require a Bearer key on /api/*");
        }
        let outbox = OutboxLimits {
            max_items: config.outbox_max_frames,
            max_bytes: config.outbox_max_bytes,
        };
        // Joins report the positions they told clients to the delivery task; only a
        // cluster-wide store has gaps to fill (see `deliver`).
        let (seeds, seeded) = match readiness {
            Some(_) => {
                let (tx, rx) = mpsc::channel(SEEDS_QUEUED);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let hub = Arc::new(Hub::new(pubsub, history, seeds, outbox, metrics.clone()));
        let presence = Arc::new(Presence::new(
            hub.clone(),
            PresenceSettings {
                batch: config.presence_batch,
                heartbeat: config.presence_heartbeat,
                down_after: config.presence_down_after,
            },
            metrics.clone(),
        ));
        let backend = config.backend.as_ref().map(|spec| {
            info!(url = %spec.url, connect = spec.connect, "backend hooks on");
            Arc::new(Backend::new(
                spec,
                config.backend_max_in_flight,
                config.backend_assigns_max_bytes,
                metrics.clone(),
            ))
        });
        let core = Arc::new(Core {
            hub,
            presence: presence.clone(),
            router: Self::build_router(&config, router, backend.as_ref()),
            registry: Registry::default(),
            metrics,
            limits: SessionLimits {
                max_message_size: config.max_message_size,
                max_channels: config.max_channels,
                max_messages_per_sec: config.max_messages_per_sec,
            },
        });
        let edge = Arc::new(Edge {
            core: core.clone(),
            admission: Admission::new(config.max_sessions, config.connect_rate_per_ip),
            draining: AtomicBool::new(false),
            backend,
            auth,
            config,
        });
        let longpoll = Arc::new(LongPoll::new(edge.clone()));
        // The node's background tasks end with this future, also when it is dropped midway.
        let _tasks = [
            AbortOnDrop(tokio::spawn(deliver(
                deliveries,
                seeded,
                readiness,
                core.clone(),
                longpoll.clone(),
            ))),
            AbortOnDrop(tokio::spawn(idle_sweep(edge.clone()))),
            AbortOnDrop(tokio::spawn(longpoll::sweep(longpoll.clone()))),
            AbortOnDrop(tokio::spawn(presence.run())),
        ];
        let addr = listener.local_addr()?;
        info!(node_id = %node_id, "listening on http://{addr}");
        let stop = CancellationToken::new();
        let mut accept = AbortOnDrop(tokio::spawn(server::accept_loop(
            listener,
            server::router(edge.clone(), longpoll),
            stop.clone(),
        )));
        shutdown.await;
        // Keep answering HTTP while draining: `/readyz` says 503 and new sessions are refused
        // with 503 + Retry-After, so load balancers and clients move elsewhere.
        shutdown::drain(&edge).await;
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

/// Join positions waiting for the delivery task; past this a join's report is dropped (it only
/// loses the head start of a topic's sequence, see `Hub::seed`).
const SEEDS_QUEUED: usize = 4096;

/// How often the delivery task forgets topics the node no longer receives.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Route what other nodes send until the adapter closes the queue: broadcasts to the Hub's
/// local fan-out (positioned ones in sequence, gaps filled first), presence to the tracker,
/// long-poll forwarding to the long-poll transport. `seeded` brings the positions joins told
/// their clients, where a topic's sequence starts. When `readiness` turns ready again (a
/// Redis subscriber resubscribed), the topics with history are filled up to date.
async fn deliver(
    mut deliveries: mpsc::Receiver<ClusterMessage>,
    mut seeded: Option<mpsc::Receiver<Seed>>,
    mut readiness: Option<watch::Receiver<pubsub_redis::Health>>,
    core: Arc<Core>,
    longpoll: Arc<LongPoll>,
) {
    // Positions are cluster-wide only in Redis: in-memory histories (one node; several in one
    // process for tests) have an epoch per node, and nothing to fill from each other.
    let mut filler = readiness.is_some().then(|| GapFiller::new(core.clone()));
    // The resubscriptions already filled after: a new one, once ready, fills again (counted,
    // not seen as a ready edge, so a reconnect faster than this task's next look still fills).
    let mut filled_after = readiness.as_ref().map_or(0, |r| r.borrow().resyncs);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        let ready_changed = async {
            match readiness.as_mut() {
                Some(r) => r.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let seed = async {
            match seeded.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = deliveries.recv() => {
                let Some(msg) = msg else { return };
                match msg {
                    ClusterMessage::Broadcast(b) => {
                        let positioned = filler.as_mut().zip(b.position.as_deref());
                        match positioned.and_then(|(f, p)| Some((f, Position::parse(p)?))) {
                            Some((filler, position)) => filler.broadcast(b, position).await,
                            // `except` is only ever set on the echo of this node's own history
                            // broadcast.
                            None => {
                                core.hub.fanout(&b, b.except);
                            }
                        }
                    }
                    ClusterMessage::Presence(p) => core.presence.handle(p),
                    ClusterMessage::LongPoll(l) => longpoll.handle(l),
                }
            }
            seed = seed => match (seed, filler.as_mut()) {
                (Some((topic, position)), Some(filler)) => filler.seed(topic, position),
                (Some(_), None) => {}
                (None, _) => seeded = None,
            },
            alive = ready_changed => {
                if !alive {
                    readiness = None;
                    continue;
                }
                let (ready, resyncs) = readiness.as_ref().map_or((false, 0), |r| {
                    let health = r.borrow();
                    (health.ready, health.resyncs)
                });
                if ready && resyncs != filled_after {
                    filled_after = resyncs;
                    if let Some(filler) = filler.as_mut() {
                        filler.resubscribed().await;
                    }
                }
            }
            _ = prune.tick() => {
                if let Some(filler) = filler.as_mut() {
                    filler.prune();
                }
            }
        }
    }
}

/// Close sessions that sent nothing for `idle_timeout` (one task for all sessions).
async fn idle_sweep(edge: Arc<Edge>) {
    let idle = edge.config.idle_timeout;
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let idle_secs = idle.as_secs().max(1) as u32;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        edge.core.registry.sweep_idle(
            idle_secs,
            Close::new(CloseCode::IDLE_TIMEOUT, "idle timeout"),
        );
    }
}
