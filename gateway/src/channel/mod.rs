//! Channels: the `Channel` trait a topic's handler implements (join / handle_in / handle_out /
//! terminate, like a Phoenix channel module), the context it acts through, and the router of
//! topic patterns. The config-driven channel is one implementation of the trait.

mod config;
mod router;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

pub use config::{ChannelSpec, ConfigChannel, JoinPolicy};
pub use router::{Router, TopicPattern};

use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::{Outgoing, Payload};
use crate::pubsub::Broadcast;
use crate::session::SessionHandle;
use crate::transport::Wire;

/// A channel handler failed; the client gets `phx_error` and the channel ends.
#[derive(Debug, thiserror::Error)]
#[error("channel failed: {0}")]
pub struct ChannelError(pub Cow<'static, str>);

/// The outcome of `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// Joined; the payload is the `response` of the ok reply.
    Ok(Payload),
    /// Refused; the payload is the `response` of the error reply (e.g. `{"reason":"unauthorized"}`).
    Refuse(Payload),
}

/// A reply to a client message: `{"status": status, "response": payload}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Any status string; `ok` and `error` by convention.
    pub status: Cow<'static, str>,
    /// The response.
    pub payload: Payload,
}

impl Reply {
    /// An `ok` reply.
    pub fn ok(payload: Payload) -> Self {
        Reply {
            status: Cow::Borrowed("ok"),
            payload,
        }
    }

    /// An `error` reply.
    pub fn error(payload: Payload) -> Self {
        Reply {
            status: Cow::Borrowed("error"),
            payload,
        }
    }

    /// An error reply `{"reason": reason}`.
    pub fn reason(reason: &str) -> Self {
        Reply::error(Payload::json(&serde_json::json!({ "reason": reason })))
    }
}

/// Why a channel is terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminate {
    /// The client left.
    Leave,
    /// The client joined the same topic again (this instance is replaced).
    DuplicateJoin,
    /// The channel asked to stop.
    Stop,
    /// The session ended (disconnect, drain, error).
    SessionClosed,
}

/// A Phoenix channel: one instance per joined topic per session.
#[async_trait]
pub trait Channel: Send + 'static {
    /// Authorize and set up a join of `topic` with the client's join payload.
    async fn join(
        &mut self,
        topic: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError>;

    /// Handle a client event. `Ok(Some(reply))` replies at once; `Ok(None)` sends no reply now
    /// (see `ChannelContext::deferred_reply`); `Err` crashes the channel (`phx_error`).
    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError>;

    /// Events this channel intercepts: broadcasts of these skip the fastlane and go through
    /// `handle_out` for every subscriber (costly: declare only what you need).
    fn intercepts(&self) -> &[&'static str] {
        &[]
    }

    /// Handle an intercepted outgoing broadcast: return the payload to push to this client, or
    /// `None` to drop it for this client.
    async fn handle_out(
        &mut self,
        _event: &str,
        payload: Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Payload>, ChannelError> {
        Ok(Some(payload))
    }

    /// Whether this channel uses presence: the session then pushes `presence_state` (with the
    /// current join_ref) right after every successful join, and the topic's first local
    /// subscriber first fetches the topic's presences from the other nodes.
    fn tracks_presence(&self) -> bool {
        false
    }

    /// Called once when the channel ends.
    async fn terminate(&mut self, _reason: Terminate, _ctx: &mut ChannelContext<'_>) {}
}

/// Creates a channel instance for a joined topic.
pub type ChannelFactory = Arc<dyn Fn(&str) -> Box<dyn Channel> + Send + Sync>;

/// What a channel can do: push to its client, broadcast to its topic, reply later, stop.
pub struct ChannelContext<'a> {
    pub(crate) node: &'a Arc<Node>,
    pub(crate) session: &'a Arc<SessionHandle>,
    pub(crate) wire: Wire,
    pub(crate) topic: &'a str,
    pub(crate) join_ref: &'a str,
    pub(crate) msg_ref: Option<&'a str>,
    pub(crate) claims: Option<&'a Claims>,
    /// Pushes made during `join`: held back until the join reply is queued.
    pub(crate) held: Option<Vec<(String, Payload)>>,
    /// Set by `stop()`: end the channel after this callback.
    pub(crate) stop: bool,
}

impl std::fmt::Debug for ChannelContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelContext")
            .field("topic", &self.topic)
            .field("join_ref", &self.join_ref)
            .finish()
    }
}

impl ChannelContext<'_> {
    /// The channel's topic.
    pub fn topic(&self) -> &str {
        self.topic
    }

    /// Verified token claims of the session, if it authenticated.
    pub fn claims(&self) -> Option<&Claims> {
        self.claims
    }

    /// The session id (`user_socket:<sub>`), if the session authenticated with a `sub`.
    pub fn session_id(&self) -> Option<String> {
        self.claims.and_then(Claims::session_id)
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        self.node.pubsub.node_id()
    }

    /// Push an event to this client only (`[join_ref, null, topic, event, payload]`).
    pub fn push(&mut self, event: &str, payload: Payload) {
        if let Some(held) = &mut self.held {
            held.push((event.to_owned(), payload));
            return;
        }
        let out = Outgoing::Push {
            join_ref: Some(self.join_ref),
            topic: self.topic,
            event,
            payload: &payload,
        };
        self.node.send(self.session, self.wire, out);
    }

    /// Broadcast to every subscriber of the topic on every node, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.node.broadcast(
            Arc::new(Broadcast {
                topic: self.topic.to_owned(),
                event: event.to_owned(),
                payload,
            }),
            None,
        );
    }

    /// Broadcast to every subscriber of the topic except this client.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        let msg = Arc::new(Broadcast {
            topic: self.topic.to_owned(),
            event: event.to_owned(),
            payload,
        });
        self.node.broadcast(msg, Some(self.session.key));
    }

    /// A handle to answer the current client message later (from any task), for `handle_in`
    /// returning `Ok(None)`. `None` outside `handle_in` or when the message had no ref.
    pub fn deferred_reply(&self) -> Option<DeferredReply> {
        Some(DeferredReply {
            node: self.node.clone(),
            session: self.session.clone(),
            wire: self.wire,
            topic: self.topic.to_owned(),
            join_ref: self.join_ref.to_owned(),
            msg_ref: self.msg_ref?.to_owned(),
        })
    }

    /// Track this client's presence under `key` with meta `fields` (plus `online_at` and
    /// `phx_ref`); it leaves when the channel ends.
    pub fn track(&self, key: &str, fields: serde_json::Map<String, serde_json::Value>) {
        crate::presence::tracker::track(self.node, self.topic, key, fields, Some(self.session.key));
    }

    /// Replace this client's presence meta (a join of the new meta and a leave of the old).
    pub fn update_presence(&self, fields: serde_json::Map<String, serde_json::Value>) -> bool {
        crate::presence::tracker::update(self.node, self.topic, self.session.key, fields)
    }

    /// Untrack this client's presence.
    pub fn untrack(&self) {
        crate::presence::tracker::untrack_session(self.node, self.topic, self.session.key);
    }

    /// The topic's presence state (the `presence_state` payload).
    pub fn presence_state(&self) -> Payload {
        self.node.presence.state(self.topic)
    }

    /// The topic's presences: key → metas.
    pub fn presence_list(&self) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
        self.node.presence.list(self.topic)
    }

    /// End this channel after the current callback (`phx_close` after any reply).
    pub fn stop(&mut self) {
        self.stop = true;
    }
}

/// Answers one client message later, from any task.
#[derive(Debug)]
pub struct DeferredReply {
    node: Arc<Node>,
    session: Arc<SessionHandle>,
    wire: Wire,
    topic: String,
    join_ref: String,
    msg_ref: String,
}

impl DeferredReply {
    /// Send the reply.
    pub fn send(self, reply: Reply) {
        let out = Outgoing::Reply {
            join_ref: Some(&self.join_ref),
            msg_ref: Some(&self.msg_ref),
            topic: &self.topic,
            status: &reply.status,
            payload: &reply.payload,
        };
        self.node.send(&self.session, self.wire, out);
    }
}
