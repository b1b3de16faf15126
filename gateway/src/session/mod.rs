//! The Session: one client connection's protocol state machine, shared by every transport.
//! It applies the Phoenix rules of reference §3 / checklist §10: heartbeats, joins (ok, refused,
//! unmatched topic, too many channels, duplicate), leaves, events, join_ref filtering, replies
//! before pushes, and a channel failure (error or panic) ending only that channel with
//! `phx_error`. Transports feed it decoded messages and write what it queues on the outbox.

mod close;
mod outbox;
mod rate;
mod registry;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::warn;

pub use close::{Close, CloseCode};
pub use outbox::{OutItem, Outbox, OutboxLimits, Pushed};
pub use registry::{Clock, Registry, SessionHandle, TransportKind};

use crate::auth::Claims;
use crate::channel::{Channel, ChannelContext, Join, Reply, Terminate};
use crate::hub::SubKind;
use crate::node::Node;
use crate::protocol::{
    Message, Outgoing, Payload, HEARTBEAT, PHOENIX_TOPIC, PHX_CLOSE, PHX_ERROR, PHX_JOIN, PHX_LEAVE,
};
use crate::pubsub::Broadcast;
use crate::transport::Wire;

/// Longest topic accepted (binary frames carry it in one length byte).
pub const MAX_TOPIC_LEN: usize = 255;

/// A joined channel of the session.
struct Joined {
    /// Topic (shared with the Hub's index).
    topic: Arc<str>,
    /// Ref of the join that created this instance.
    join_ref: Box<str>,
    /// The channel's handler.
    handler: Box<dyn Channel>,
}

/// One client's protocol state.
pub struct Session {
    /// The node.
    node: Arc<Node>,
    /// The part other tasks reach (outbox, liveness).
    handle: Arc<SessionHandle>,
    /// Wire format.
    wire: Wire,
    /// Verified token claims (JWT mode).
    claims: Option<Box<Claims>>,
    /// The session id topic this session is subscribed to (`user_socket:<sub>`).
    id_topic: Option<Arc<str>>,
    /// Joined channels (a few per session; a Vec is smaller and faster than a map here).
    channels: Vec<Joined>,
    /// Message rate limit (`max_messages_per_sec`).
    rate: rate::Rate,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.handle.key)
            .field("channels", &self.channels.len())
            .finish()
    }
}

fn reason(text: &str) -> Payload {
    Payload::json(&serde_json::json!({ "reason": text }))
}

fn ctx<'a>(
    node: &'a Arc<Node>,
    session: &'a Arc<SessionHandle>,
    wire: Wire,
    claims: Option<&'a Claims>,
    topic: &'a str,
    join_ref: &'a str,
    msg_ref: Option<&'a str>,
) -> ChannelContext<'a> {
    ChannelContext {
        node,
        session,
        wire,
        topic,
        join_ref,
        msg_ref,
        claims,
        held: None,
        stop: false,
    }
}

impl Session {
    /// Start a session: registers metrics and subscribes its id topic for forced disconnects.
    pub fn new(
        node: Arc<Node>,
        handle: Arc<SessionHandle>,
        wire: Wire,
        claims: Option<Box<Claims>>,
    ) -> Self {
        node.metrics
            .sessions
            .with_label_values(&[handle.transport.as_str()])
            .inc();
        node.metrics
            .connects
            .with_label_values(&[handle.transport.as_str()])
            .inc();
        let id_topic = claims
            .as_ref()
            .and_then(|c| c.session_id())
            .map(|id| node.hub.subscribe(&id, &handle, SubKind::SessionId));
        let rate = rate::Rate::new(
            node.config.max_messages_per_sec,
            node.registry.clock.now_ms(),
        );
        Session {
            node,
            handle,
            wire,
            claims,
            id_topic,
            channels: Vec::new(),
            rate,
        }
    }

    /// The serializer this session speaks.
    pub fn serializer(&self) -> crate::protocol::Serializer {
        self.wire.serializer
    }

    fn reply(&self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, reply: &Reply) {
        let out = Outgoing::Reply {
            join_ref,
            msg_ref,
            topic,
            status: &reply.status,
            payload: &reply.payload,
        };
        self.node.send(&self.handle, self.wire, out);
    }

    fn control(&self, join_ref: &str, topic: &str, event: &str, payload: &Payload) {
        self.node.send(
            &self.handle,
            self.wire,
            Outgoing::Control {
                join_ref,
                topic,
                event,
                payload,
            },
        );
    }

    fn find(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|c| &*c.topic == topic)
    }

    /// Handle one client message.
    pub async fn handle(&mut self, msg: Message) {
        let per_sec = self.node.config.max_messages_per_sec;
        match self.rate.check(per_sec, self.node.registry.clock.now_ms()) {
            rate::Verdict::Allow => {}
            rate::Verdict::Refuse => {
                self.node.metrics.rate_limited.inc();
                let reply = Reply::error(reason("rate limited"));
                let join_ref = msg.join_ref.as_deref();
                return self.reply(join_ref, msg.msg_ref.as_deref(), &msg.topic, &reply);
            }
            rate::Verdict::Close => {
                self.node.metrics.rate_limited.inc();
                return self
                    .handle
                    .close(Close::new(CloseCode::RATE_LIMITED, "rate limited"));
            }
        }
        if msg.topic == PHOENIX_TOPIC && msg.event == HEARTBEAT {
            self.reply(
                None,
                msg.msg_ref.as_deref(),
                PHOENIX_TOPIC,
                &Reply::ok(Payload::empty()),
            );
            return;
        }
        match msg.event.as_str() {
            PHX_JOIN => self.join(msg).await,
            PHX_LEAVE => self.leave(msg).await,
            _ => self.event(msg).await,
        }
    }

    async fn join(&mut self, msg: Message) {
        let msg_ref = msg.msg_ref.as_deref();
        let join_ref = msg.join_ref.as_deref().or(msg_ref).unwrap_or("");
        if let Some(i) = self.find(&msg.topic) {
            let old = self.channels.swap_remove(i);
            self.end(old, Terminate::DuplicateJoin, Some(PHX_CLOSE))
                .await;
        }
        let join_error = |this: &Self, jr: Option<&str>, why: &'static str, label: &str| {
            this.node
                .metrics
                .join_errors
                .with_label_values(&[label])
                .inc();
            this.reply(jr, msg_ref, &msg.topic, &Reply::error(reason(why)));
        };
        if msg.topic.len() > MAX_TOPIC_LEN {
            return join_error(self, Some(join_ref), "topic too long", "invalid_topic");
        }
        let Some(factory) = self.node.router.route(&msg.topic) else {
            // Phoenix answers an unmatched topic without a join_ref.
            return join_error(self, None, "unmatched topic", "unmatched_topic");
        };
        if self.channels.len() >= self.node.config.max_channels {
            return join_error(
                self,
                Some(join_ref),
                "too many channels joined",
                "too_many_channels",
            );
        }
        let mut handler = factory(&msg.topic);
        let mut cx = ctx(
            &self.node,
            &self.handle,
            self.wire,
            self.claims.as_deref(),
            &msg.topic,
            join_ref,
            msg_ref,
        );
        cx.held = Some(Vec::new());
        let outcome = AssertUnwindSafe(handler.join(&msg.topic, &msg.payload, &mut cx))
            .catch_unwind()
            .await;
        let (held, stop) = (cx.held.take().unwrap_or_default(), cx.stop);
        match outcome {
            Ok(Ok(Join::Ok(response))) => {
                // The reply is queued before subscribing, so no broadcast can overtake it, and
                // pushes made during join follow it.
                self.reply(Some(join_ref), msg_ref, &msg.topic, &Reply::ok(response));
                let intercepts = handler.intercepts();
                let intercepts = (!intercepts.is_empty())
                    .then(|| intercepts.iter().map(|e| e.to_string()).collect());
                // A presence channel on a topic new to this node first fetches the other
                // nodes' shares (holding the topic's interest so their deltas arrive), so the
                // state it answers with is complete.
                let presence = handler.tracks_presence();
                let hold = presence.then(|| self.node.hub.hold(&msg.topic)).flatten();
                if hold.is_some() {
                    crate::presence::tracker::sync_first(&self.node, &msg.topic).await;
                }
                // Pushes made during join, then the presence state, are queued under the
                // topic's lock: they precede every broadcast and diff the subscription brings.
                let (node, handle, wire) = (&self.node, &self.handle, self.wire);
                let topic = node.hub.subscribe_with(
                    &msg.topic,
                    handle,
                    SubKind::Channel { wire, intercepts },
                    |topic| {
                        for (event, payload) in held {
                            let out = Outgoing::Push {
                                join_ref: Some(join_ref),
                                topic,
                                event: &event,
                                payload: &payload,
                            };
                            node.send(handle, wire, out);
                        }
                        if presence {
                            let state = node.presence.state(topic);
                            let out = Outgoing::Push {
                                join_ref: Some(join_ref),
                                topic,
                                event: "presence_state",
                                payload: &state,
                            };
                            node.send(handle, wire, out);
                        }
                    },
                );
                drop(hold);
                self.node.metrics.joins.inc();
                // Exact capacity: most sessions join one or two topics and stay idle.
                self.channels.reserve_exact(1);
                self.channels.push(Joined {
                    topic,
                    join_ref: join_ref.into(),
                    handler,
                });
                if stop {
                    let ch = self.channels.pop().expect("just pushed");
                    self.end(ch, Terminate::Stop, Some(PHX_CLOSE)).await;
                }
            }
            Ok(Ok(Join::Refuse(response))) => {
                self.node
                    .metrics
                    .join_errors
                    .with_label_values(&["refused"])
                    .inc();
                self.reply(Some(join_ref), msg_ref, &msg.topic, &Reply::error(response));
            }
            Ok(Err(e)) => {
                warn!(topic = %msg.topic, error = %e, "channel join failed");
                join_error(self, Some(join_ref), "join crashed", "crashed");
            }
            Err(_) => {
                warn!(topic = %msg.topic, "channel join panicked");
                join_error(self, Some(join_ref), "join crashed", "crashed");
            }
        }
    }

    async fn leave(&mut self, msg: Message) {
        let ok = Reply::ok(Payload::empty());
        let Some(i) = self.find(&msg.topic) else {
            self.reply(
                msg.join_ref.as_deref(),
                msg.msg_ref.as_deref(),
                &msg.topic,
                &ok,
            );
            return;
        };
        if msg
            .join_ref
            .as_deref()
            .is_some_and(|jr| jr != &*self.channels[i].join_ref)
        {
            return; // a leave for an instance that no longer exists
        }
        let ch = self.channels.swap_remove(i);
        self.reply(Some(&ch.join_ref), msg.msg_ref.as_deref(), &msg.topic, &ok);
        self.end(ch, Terminate::Leave, Some(PHX_CLOSE)).await;
    }

    async fn event(&mut self, msg: Message) {
        let Some(i) = self.find(&msg.topic) else {
            self.reply(
                None,
                msg.msg_ref.as_deref(),
                &msg.topic,
                &Reply::error(reason("unmatched topic")),
            );
            return;
        };
        if msg
            .join_ref
            .as_deref()
            .is_some_and(|jr| jr != &*self.channels[i].join_ref)
        {
            return; // stale join_ref: the client talks to an instance that is gone
        }
        let Session {
            node,
            handle,
            wire,
            claims,
            channels,
            ..
        } = self;
        let ch = &mut channels[i];
        let mut cx = ctx(
            node,
            handle,
            *wire,
            claims.as_deref(),
            &ch.topic,
            &ch.join_ref,
            msg.msg_ref.as_deref(),
        );
        let outcome = AssertUnwindSafe(ch.handler.handle_in(&msg.event, msg.payload, &mut cx))
            .catch_unwind()
            .await;
        let stop = cx.stop;
        match outcome {
            Ok(Ok(Some(reply))) => self.reply(
                Some(&self.channels[i].join_ref),
                msg.msg_ref.as_deref(),
                &msg.topic,
                &reply,
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!(topic = %msg.topic, event = %msg.event, error = %e, "channel handle_in failed");
                return self.crash(i);
            }
            Err(_) => {
                warn!(topic = %msg.topic, event = %msg.event, "channel handle_in panicked");
                return self.crash(i);
            }
        }
        if stop {
            let ch = self.channels.swap_remove(i);
            self.end(ch, Terminate::Stop, Some(PHX_CLOSE)).await;
        }
    }

    /// The channel at `i` failed: drop it without `terminate` and tell the client `phx_error`.
    fn crash(&mut self, i: usize) {
        let ch = self.channels.swap_remove(i);
        self.leave_topic(&ch.topic);
        self.node.metrics.channel_crashes.inc();
        self.node.metrics.leaves.inc();
        self.control(
            &ch.join_ref,
            &ch.topic,
            PHX_ERROR,
            &Payload::raw_json(r#"{"reason":"channel_crash"}"#),
        );
    }

    /// End a channel: unsubscribe, run `terminate`, and optionally tell the client.
    async fn end(&mut self, mut ch: Joined, why: Terminate, notify: Option<&str>) {
        self.leave_topic(&ch.topic);
        self.node.metrics.leaves.inc();
        let mut cx = ctx(
            &self.node,
            &self.handle,
            self.wire,
            self.claims.as_deref(),
            &ch.topic,
            &ch.join_ref,
            None,
        );
        if AssertUnwindSafe(ch.handler.terminate(why, &mut cx))
            .catch_unwind()
            .await
            .is_err()
        {
            warn!(topic = %ch.topic, "channel terminate panicked");
        }
        if let Some(event) = notify {
            self.control(&ch.join_ref, &ch.topic, event, &Payload::empty());
        }
    }

    /// Stop receiving a channel's topic and drop this session's presences there.
    fn leave_topic(&self, topic: &str) {
        self.node.hub.unsubscribe(topic, self.handle.key);
        crate::presence::tracker::untrack_session(&self.node, topic, self.handle.key);
        let watched = self.node.hub.subscribers(topic) > 0;
        self.node.presence.forget_if_unwatched(topic, watched);
    }

    /// Run `handle_out` for an intercepted broadcast; returns the frame to write, if any.
    pub async fn intercept(&mut self, msg: Arc<Broadcast>) -> Option<bytes::Bytes> {
        let i = self.find(&msg.topic)?;
        let Session {
            node,
            handle,
            wire,
            claims,
            channels,
            ..
        } = self;
        let ch = &mut channels[i];
        let mut cx = ctx(
            node,
            handle,
            *wire,
            claims.as_deref(),
            &ch.topic,
            &ch.join_ref,
            None,
        );
        let outcome = AssertUnwindSafe(ch.handler.handle_out(
            &msg.event,
            msg.payload.clone(),
            &mut cx,
        ))
        .catch_unwind()
        .await;
        match outcome {
            Ok(Ok(Some(payload))) => {
                let out = Outgoing::Push {
                    join_ref: Some(&ch.join_ref),
                    topic: &ch.topic,
                    event: &msg.event,
                    payload: &payload,
                };
                self.wire.frame(out)
            }
            Ok(Ok(None)) => None,
            Ok(Err(_)) | Err(_) => {
                warn!(topic = %msg.topic, event = %msg.event, "channel handle_out failed");
                self.crash(i);
                None
            }
        }
    }

    /// The connection ended: terminate every channel and leave the node's indexes.
    pub async fn close(mut self, reason: &str) {
        for ch in std::mem::take(&mut self.channels) {
            self.end(ch, Terminate::SessionClosed, None).await;
        }
        if let Some(topic) = self.id_topic.take() {
            self.node.hub.unsubscribe(&topic, self.handle.key);
        }
        self.node.registry.remove(self.handle.key);
        let m = &self.node.metrics;
        m.sessions
            .with_label_values(&[self.handle.transport.as_str()])
            .dec();
        m.disconnects.with_label_values(&[reason]).inc();
    }
}
