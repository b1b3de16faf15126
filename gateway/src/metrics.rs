//! Metrics: every metric the node exports, registered in one place, and the `/metrics` text.
//! Names follow Prometheus conventions (`gateway_` prefix, `_total` counters, base units); no
//! per-topic labels (unbounded cardinality).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics of a node. Cheap to update (atomics); shared through `Arc`.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Live sessions by transport.
    pub sessions: IntGaugeVec,
    /// Accepted connections by transport.
    pub connects: IntCounterVec,
    /// Refused connection attempts by reason (`vsn`, `origin`, `auth`, `draining`, …).
    pub connect_refusals: IntCounterVec,
    /// Ended sessions by reason.
    pub disconnects: IntCounterVec,
    /// Successful joins.
    pub joins: IntCounter,
    /// Refused or failed joins by reason.
    pub join_errors: IntCounterVec,
    /// Channels left (leave, close, crash, session end).
    pub leaves: IntCounter,
    /// Channel handler failures (error or panic) that produced `phx_error`.
    pub channel_crashes: IntCounter,
    /// Messages received from clients, by kind (`text`, `binary`).
    pub messages_in: IntCounterVec,
    /// `messages_in{kind="text"}`, resolved once: it counts every client message, and a
    /// label lookup hashes and locks.
    pub text_in: IntCounter,
    /// `messages_in{kind="binary"}`, resolved once.
    pub binary_in: IntCounter,
    /// Bytes received from clients (WebSocket payloads).
    pub bytes_in: IntCounter,
    /// Bytes written to clients.
    pub bytes_out: IntCounter,
    /// Write system calls (vectored writes carry several frames).
    pub writes: IntCounter,
    /// Frames written to clients.
    pub frames_out: IntCounter,
    /// Topics with at least one local subscriber.
    pub topics: IntGauge,
    /// Sessions a broadcast was queued for.
    pub deliveries: IntCounter,
    /// Time to fan one broadcast out to this node's subscribers.
    pub fanout_seconds: Histogram,
    /// Sessions closed because their outbox overflowed.
    pub slow_consumers: IntCounter,
    /// Client messages refused for exceeding the session's message rate.
    pub rate_limited: IntCounter,
    /// Sessions closed by a `disconnect` broadcast on their id topic.
    pub forced_disconnects: IntCounter,
    /// Broadcasts a subscriber's wire format could not carry (binary to V1 or long-poll).
    pub unencodable: IntCounter,
    /// Broadcasts published by this node (channels and HTTP API).
    pub broadcasts: IntCounter,
    /// 1 while the node drains.
    pub draining: IntGauge,
    /// Messages this node published to other nodes.
    pub pubsub_published: IntCounter,
    /// Publishes that failed (Redis down or slow): those messages are lost (at-most-once).
    pub pubsub_publish_errors: IntCounter,
    /// Messages received from other nodes.
    pub pubsub_received: IntCounter,
    /// Messages dropped by reason (`publish_queue_full`, `receive_queue_full`, `own_echo`, `undecodable`).
    pub pubsub_dropped: IntCounterVec,
    /// Topics this node is subscribed to in the cluster.
    pub pubsub_topics: IntGauge,
    /// Subscriber-connection resubscriptions after reconnects.
    pub pubsub_resubscribes: IntCounter,
    /// Reconnects of adapter connections.
    pub pubsub_reconnects: IntCounter,
    /// Round trip of the self-addressed canary through the broker.
    pub pubsub_canary_rtt: Histogram,
    /// 1 when the node hears itself through the broker on every connection.
    pub pubsub_healthy: IntGauge,
    /// Presence metas held in this node's replicas.
    pub presence_entries: IntGauge,
    /// Broadcasts stored in a topic's history by this node, by result (`stored`, or
    /// `duplicate`: an idempotency key already used, nothing stored).
    pub history_appends: IntCounterVec,
    /// History appends and reads that failed (store unreachable): the broadcast was refused
    /// (503 / `unavailable`), or the join could not recover.
    pub history_errors: IntCounter,
    /// Joins of history topics by recovery outcome (`exact`, `not_exact`, `none`: no `since`).
    pub history_recoveries: IntCounterVec,
    /// Messages pushed to joining clients from history.
    pub history_replayed: IntCounter,
    /// Bytes held by the in-process history store (single node).
    pub history_memory_bytes: IntGauge,
    /// Entries the in-process store dropped early to stay under its memory cap.
    pub history_evicted: IntCounter,
    /// Broadcasts this node missed live (out of sequence, or lost while its Redis subscriber
    /// resubscribed) and delivered late, in order, from the history store.
    pub history_gaps_filled: IntCounter,
    /// Gaps this node could not fill (trimmed or expired, epoch changed, store error): its
    /// subscribers miss broadcasts until they rejoin with `since`.
    pub history_gaps_unfillable: IntCounter,
    /// Positioned broadcasts dropped because this node had already delivered their position.
    pub history_duplicates: IntCounter,
    /// User-space bytes per live session: (RSS − RSS at startup) / sessions, set at each scrape.
    pub bytes_per_session: IntGauge,
    /// Backend hook requests by hook (`connect`, `join`, `event`, `leave`), answered or not.
    pub backend_requests: IntCounterVec,
    /// Failed backend hooks by hook and reason (`timeout`, `unavailable`, `error`, `busy`).
    pub backend_errors: IntCounterVec,
    /// Time from sending a backend hook to its complete answer, by hook (failures included).
    pub backend_seconds: HistogramVec,
    /// RSS right after startup, the baseline of `bytes_per_session`.
    baseline_rss: u64,
    /// Whether per-message metrics (bytes, frames, writes, deliveries, fan-out duration) are
    /// updated; off only to measure what they cost (`--no-message-metrics`).
    pub per_message: bool,
}

/// Resident set size of this process in bytes: `/proc/self/statm` pages times the system's
/// page size; 0 where there is no `/proc`.
#[cfg(target_os = "linux")]
pub fn rss_bytes() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map_or(0, |m| m.resident * procfs::page_size())
}

/// No `/proc` to read here.
#[cfg(not(target_os = "linux"))]
pub fn rss_bytes() -> u64 {
    0
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric in a fresh registry (one per node, so in-process test nodes do not
    /// share counters).
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let sessions = IntGaugeVec::new(
            Opts::new("gateway_sessions", "Live sessions by transport."),
            &["transport"],
        )
        .expect("valid metric");
        r.register(Box::new(sessions.clone()))
            .expect("unique metric");
        let fanout_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_fanout_duration_seconds",
                "Time to queue one broadcast for every local subscriber.",
            )
            .buckets(exponential_buckets(0.00001, 4.0, 10).expect("valid buckets")),
        )
        .expect("valid metric");
        r.register(Box::new(fanout_seconds.clone()))
            .expect("unique metric");
        let pubsub_canary_rtt = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_pubsub_canary_rtt_seconds",
                "Round trip of the self-addressed canary through the broker.",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        r.register(Box::new(pubsub_canary_rtt.clone()))
            .expect("unique metric");
        let pubsub_healthy = gauge(
            &r,
            "gateway_pubsub_healthy",
            "1 when the node hears itself through the broker.",
        );
        pubsub_healthy.set(1);
        let backend_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_backend_request_duration_seconds",
                "Time from sending a backend hook to its complete answer, by hook.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            &["hook"],
        )
        .expect("valid metric");
        r.register(Box::new(backend_seconds.clone()))
            .expect("unique metric");
        let messages_in = counter_vec(
            &r,
            "gateway_messages_received_total",
            "Messages received from clients by kind.",
            &["kind"],
        );
        let m = Metrics {
            backend_requests: counter_vec(
                &r,
                "gateway_backend_requests_total",
                "Backend hook requests, by hook.",
                &["hook"],
            ),
            backend_errors: counter_vec(
                &r,
                "gateway_backend_errors_total",
                "Failed backend hooks, by hook and reason (timeout, unavailable, error, busy).",
                &["hook", "reason"],
            ),
            backend_seconds,
            bytes_per_session: gauge(&r, "gateway_memory_bytes_per_session", "User-space bytes per live session: RSS above the startup baseline divided by sessions."),
            baseline_rss: rss_bytes(),
            per_message: true,
            presence_entries: gauge(&r, "gateway_presence_entries", "Presence metas held in this node's replicas."),
            pubsub_published: counter(
                &r,
                "gateway_pubsub_published_total",
                "Messages published to other nodes.",
            ),
            pubsub_publish_errors: counter(
                &r,
                "gateway_pubsub_publish_errors_total",
                "Publishes that failed; those messages are lost.",
            ),
            pubsub_received: counter(
                &r,
                "gateway_pubsub_received_total",
                "Messages received from other nodes.",
            ),
            pubsub_dropped: counter_vec(
                &r,
                "gateway_pubsub_dropped_total",
                "Cross-node messages dropped, by reason.",
                &["reason"],
            ),
            pubsub_topics: gauge(
                &r,
                "gateway_pubsub_subscribed_topics",
                "Topics this node is subscribed to in the cluster.",
            ),
            pubsub_resubscribes: counter(
                &r,
                "gateway_pubsub_resubscribes_total",
                "Resubscriptions after reconnects.",
            ),
            pubsub_reconnects: counter(
                &r,
                "gateway_pubsub_reconnects_total",
                "Reconnects of broker connections.",
            ),
            pubsub_canary_rtt,
            pubsub_healthy,
            history_appends: counter_vec(
                &r,
                "gateway_history_appends_total",
                "Broadcasts stored in topic history, by result (stored, duplicate).",
                &["result"],
            ),
            history_errors: counter(
                &r,
                "gateway_history_errors_total",
                "History appends and reads that failed (store unreachable).",
            ),
            history_recoveries: counter_vec(
                &r,
                "gateway_history_recoveries_total",
                "Joins of history topics by recovery outcome (exact, not_exact, none).",
                &["outcome"],
            ),
            history_replayed: counter(
                &r,
                "gateway_history_replayed_total",
                "Messages pushed to joining clients from history.",
            ),
            history_memory_bytes: gauge(
                &r,
                "gateway_history_memory_bytes",
                "Bytes held by the in-process history store.",
            ),
            history_evicted: counter(
                &r,
                "gateway_history_evicted_total",
                "History entries dropped early to stay under the memory cap.",
            ),
            history_gaps_filled: counter(
                &r,
                "gateway_history_gaps_filled_total",
                "Broadcasts missed live and delivered late, in order, from history.",
            ),
            history_gaps_unfillable: counter(
                &r,
                "gateway_history_gaps_unfillable_total",
                "Gaps in a topic's broadcasts this node could not fill from history.",
            ),
            history_duplicates: counter(
                &r,
                "gateway_history_duplicates_total",
                "Positioned broadcasts dropped as already delivered by this node.",
            ),
            sessions,
            connects: counter_vec(
                &r,
                "gateway_connects_total",
                "Accepted connections by transport.",
                &["transport"],
            ),
            connect_refusals: counter_vec(
                &r,
                "gateway_connect_refusals_total",
                "Refused connection attempts by reason.",
                &["reason"],
            ),
            disconnects: counter_vec(
                &r,
                "gateway_disconnects_total",
                "Ended sessions by reason.",
                &["reason"],
            ),
            joins: counter(&r, "gateway_joins_total", "Successful channel joins."),
            join_errors: counter_vec(
                &r,
                "gateway_join_errors_total",
                "Refused or failed joins by reason.",
                &["reason"],
            ),
            leaves: counter(
                &r,
                "gateway_leaves_total",
                "Channels ended (leave, close, crash, session end).",
            ),
            channel_crashes: counter(
                &r,
                "gateway_channel_crashes_total",
                "Channel handler failures answered with phx_error.",
            ),
            text_in: messages_in.with_label_values(&["text"]),
            binary_in: messages_in.with_label_values(&["binary"]),
            messages_in,
            bytes_in: counter(
                &r,
                "gateway_received_bytes_total",
                "Message bytes received from clients.",
            ),
            bytes_out: counter(&r, "gateway_sent_bytes_total", "Bytes written to clients."),
            writes: counter(
                &r,
                "gateway_socket_writes_total",
                "Write system calls to client sockets.",
            ),
            frames_out: counter(
                &r,
                "gateway_frames_sent_total",
                "Frames written to clients.",
            ),
            topics: gauge(
                &r,
                "gateway_topics",
                "Topics with at least one local subscriber.",
            ),
            deliveries: counter(
                &r,
                "gateway_broadcast_deliveries_total",
                "Sessions a broadcast was queued for.",
            ),
            fanout_seconds,
            slow_consumers: counter(
                &r,
                "gateway_slow_consumer_disconnects_total",
                "Sessions closed because their outbox overflowed.",
            ),
            rate_limited: counter(
                &r,
                "gateway_rate_limited_messages_total",
                "Client messages refused for exceeding the per-session message rate.",
            ),
            forced_disconnects: counter(
                &r,
                "gateway_forced_disconnects_total",
                "Sessions closed by a disconnect broadcast.",
            ),
            unencodable: counter(
                &r,
                "gateway_unencodable_broadcasts_total",
                "Broadcast deliveries skipped because the session's wire format cannot carry them.",
            ),
            broadcasts: counter(
                &r,
                "gateway_broadcasts_total",
                "Broadcasts published by this node.",
            ),
            draining: gauge(&r, "gateway_draining", "1 while the node is draining."),
            registry: r,
        };
        m.init_labels();
        m
    }

    /// Create every known label combination at zero, so dashboards and alerts see each series
    /// from the first scrape rather than only after its first event.
    fn init_labels(&self) {
        for t in ["websocket", "longpoll"] {
            self.sessions.with_label_values(&[t]);
            self.connects.with_label_values(&[t]);
        }
        for r in [
            "vsn",
            "origin",
            "auth",
            "draining",
            "not_upgrade",
            "handshake",
            "full",
            "ip_rate",
        ] {
            self.connect_refusals.with_label_values(&[r]);
        }
        for r in [
            "client",
            "io_error",
            "forced",
            "drain",
            "protocol_error",
            "invalid_utf8",
            "too_big",
            "idle_timeout",
            "slow_consumer",
            "bad_message",
            "rate_limited",
            "server",
        ] {
            self.disconnects.with_label_values(&[r]);
        }
        for r in [
            "unmatched_topic",
            "too_many_channels",
            "refused",
            "crashed",
            "invalid_topic",
        ] {
            self.join_errors.with_label_values(&[r]);
        }
        for r in ["stored", "duplicate"] {
            self.history_appends.with_label_values(&[r]);
        }
        for o in ["exact", "not_exact", "none"] {
            self.history_recoveries.with_label_values(&[o]);
        }
        for r in [
            "publish_queue_full",
            "receive_queue_full",
            "own_echo",
            "undecodable",
            "reserved_event",
            "unknown_kind",
            "misrouted",
            "malformed",
        ] {
            self.pubsub_dropped.with_label_values(&[r]);
        }
    }

    /// Count a cross-node message dropped for `reason`.
    pub fn dropped(&self, reason: &str) {
        self.pubsub_dropped.with_label_values(&[reason]).inc();
    }

    /// Render the Prometheus text exposition.
    pub fn render(&self) -> String {
        let sessions: i64 = ["websocket", "longpoll"]
            .iter()
            .map(|t| self.sessions.with_label_values(&[*t]).get())
            .sum();
        let per = if sessions > 0 {
            rss_bytes().saturating_sub(self.baseline_rss) as i64 / sessions
        } else {
            0
        };
        self.bytes_per_session.set(per);
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
