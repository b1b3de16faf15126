//! What a channel acts through. `ChannelContext` is lent to each callback: push to this client,
//! broadcast to the topic, presence, stop. `ChannelHandle` is its owned, cloneable counterpart
//! for work that outlives a callback (a reply computed by another task, pushes from a backend
//! call): it holds only the Hub and the session's handle, never the session itself.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::Reply;
use crate::auth::Claims;
use crate::backend::{Assigns, SessionInfo};
use crate::cluster::Broadcast;
use crate::history::{HistoryError, Limits, Stored};
use crate::hub::Hub;
use crate::presence::Presence;
use crate::protocol::{Outgoing, Payload, Wire};
use crate::registry::SessionHandle;

/// Who a session is, as its connect established it: the verified token claims, and the socket
/// id and assigns a backend's `connect` hook answered. Boxed in the session only when one of
/// them exists, so an anonymous session pays one null pointer for all three.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Verified token claims (JWT mode).
    pub claims: Option<Claims>,
    /// The socket id the backend chose (`connect` answer `id`); else the token's.
    pub id: Option<String>,
    /// The assigns the backend's `connect` answer set.
    pub assigns: Option<Assigns>,
}

impl Identity {
    /// The session id: the backend's, else `user_socket:<sub>` of the token.
    pub fn session_id(&self) -> Option<String> {
        self.id
            .clone()
            .or_else(|| self.claims.as_ref().and_then(Claims::session_id))
    }
}

/// What a channel can do during a callback: push to its client, broadcast to its topic, reply
/// later, use presence, stop.
pub struct ChannelContext<'a> {
    /// Fan-out, cluster broadcasts, and the session's outbox limits.
    pub(crate) hub: &'a Arc<Hub>,
    /// Presence of the node.
    pub(crate) presence: &'a Arc<Presence>,
    /// The session's outbox.
    pub(crate) session: &'a Arc<SessionHandle>,
    /// The session's wire format.
    pub(crate) wire: Wire,
    /// The channel's topic.
    pub(crate) topic: &'a str,
    /// The channel instance's join ref.
    pub(crate) join_ref: &'a str,
    /// Ref of the client message being handled (`handle_in` only).
    pub(crate) msg_ref: Option<&'a str>,
    /// Who the session is (claims, backend id and assigns), if anyone.
    pub(crate) identity: Option<&'a Identity>,
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
        self.identity.and_then(|i| i.claims.as_ref())
    }

    /// The session id: the backend `connect` hook's `id`, else `user_socket:<sub>` of a token.
    pub fn session_id(&self) -> Option<String> {
        self.identity.and_then(Identity::session_id)
    }

    /// The assigns the backend's `connect` hook set for this session.
    pub fn assigns(&self) -> Option<&Assigns> {
        self.identity.and_then(|i| i.assigns.as_ref())
    }

    /// The `session` object of backend hook bodies.
    pub fn session_info(&self) -> SessionInfo {
        SessionInfo {
            id: self.session_id(),
            assigns: self.assigns().cloned(),
            claims: self.claims().and_then(|c| serde_json::to_value(c).ok()),
        }
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        self.hub.node_id()
    }

    /// Push an event to this client only (`[join_ref, null, topic, event, payload]`).
    pub fn push(&mut self, event: &str, payload: Payload) {
        if let Some(held) = &mut self.held {
            held.push((event.to_owned(), payload));
            return;
        }
        let out = Outgoing::Push {
            join_ref: Some(self.join_ref),
            position: None,
            topic: self.topic,
            event,
            payload: &payload,
        };
        self.hub.send(self.session, self.wire, out);
    }

    /// Broadcast to every subscriber of the topic on every node, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.hub
            .broadcast(Broadcast::new(self.topic, event, payload), None);
    }

    /// Broadcast to every subscriber of the topic except this client.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        self.hub.broadcast(
            Broadcast::new(self.topic, event, payload),
            Some(self.session.key),
        );
    }

    /// Broadcast on a topic with history (see `Channel::history`): resolves once the broadcast
    /// is stored, with its position; every subscriber (this client too unless
    /// `exclude_self`) gets it with that position in position order. An error means it was
    /// neither stored nor sent: reply `unavailable` so the client may retry.
    pub async fn broadcast_stored(
        &self,
        event: &str,
        payload: Payload,
        limits: Limits,
        exclude_self: bool,
    ) -> Result<Stored, HistoryError> {
        let exclude = exclude_self.then_some(self.session.key);
        self.hub
            .broadcast_stored(
                Broadcast::plain(self.topic, event, payload),
                exclude,
                limits,
                None,
            )
            .await
    }

    /// An owned handle to this channel for work outside the callback (another task).
    pub fn handle(&self) -> ChannelHandle {
        ChannelHandle {
            hub: self.hub.clone(),
            session: self.session.clone(),
            wire: self.wire,
            topic: Arc::from(self.topic),
            join_ref: Arc::from(self.join_ref),
        }
    }

    /// A handle to answer the current client message later (from any task), for `handle_in`
    /// returning `Ok(None)`. `None` outside `handle_in` or when the message had no ref.
    pub fn deferred_reply(&self) -> Option<DeferredReply> {
        Some(DeferredReply {
            msg_ref: self.msg_ref?.to_owned(),
            channel: self.handle(),
        })
    }

    /// Track this client's presence under `key` with meta `fields` (plus `online_at` and
    /// `phx_ref`); it leaves when the channel ends.
    pub fn track(&self, key: &str, fields: Map<String, Value>) {
        self.presence
            .track(self.topic, key, fields, Some(self.session.key));
    }

    /// Replace this client's presence meta (a join of the new meta and a leave of the old).
    pub fn update_presence(&self, fields: Map<String, Value>) -> bool {
        self.presence.update(self.topic, self.session.key, fields)
    }

    /// Untrack this client's presence.
    pub fn untrack(&self) {
        self.presence.untrack_session(self.topic, self.session.key);
    }

    /// The topic's presence state (the `presence_state` payload).
    pub fn presence_state(&self) -> Payload {
        self.presence.state(self.topic)
    }

    /// The topic's presences: key → metas.
    pub fn presence_list(&self) -> std::collections::BTreeMap<String, Vec<Value>> {
        self.presence.list(self.topic)
    }

    /// End this channel after the current callback (`phx_close` after any reply).
    pub fn stop(&mut self) {
        self.stop = true;
    }
}

/// A joined channel, owned: push to its client, broadcast on its topic, reply to one of its
/// client's messages, from any task. Pushes go straight to the outbox (during `join`, use the
/// context's `push` so they follow the join reply). Once the session ends they are dropped.
#[derive(Clone, Debug)]
pub struct ChannelHandle {
    /// Fan-out and cluster broadcasts.
    hub: Arc<Hub>,
    /// The session's outbox.
    session: Arc<SessionHandle>,
    /// The session's wire format.
    wire: Wire,
    /// The channel's topic.
    topic: Arc<str>,
    /// The channel instance's join ref.
    join_ref: Arc<str>,
}

impl ChannelHandle {
    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Push an event to this client only.
    pub fn push(&self, event: &str, payload: &Payload) {
        let out = Outgoing::Push {
            join_ref: Some(&self.join_ref),
            position: None,
            topic: &self.topic,
            event,
            payload,
        };
        self.hub.send(&self.session, self.wire, out);
    }

    /// Broadcast to every subscriber of the topic on every node, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.hub
            .broadcast(Broadcast::new(&*self.topic, event, payload), None);
    }

    /// Broadcast to every subscriber of the topic except this client.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        self.hub.broadcast(
            Broadcast::new(&*self.topic, event, payload),
            Some(self.session.key),
        );
    }

    /// Reply to the client message whose ref is `msg_ref`.
    pub fn reply(&self, msg_ref: &str, reply: &Reply) {
        let out = Outgoing::Reply {
            join_ref: Some(&self.join_ref),
            msg_ref: Some(msg_ref),
            topic: &self.topic,
            status: &reply.status,
            payload: &reply.payload,
        };
        self.hub.send(&self.session, self.wire, out);
    }

    /// Whether the session has ended or is closing (its pushes would be dropped).
    pub fn is_closed(&self) -> bool {
        self.session.outbox.close_requested().is_some()
    }
}

/// Answers one client message later, from any task.
#[derive(Debug)]
pub struct DeferredReply {
    /// The channel.
    channel: ChannelHandle,
    /// Ref of the message to answer.
    msg_ref: String,
}

impl DeferredReply {
    /// Send the reply.
    pub fn send(self, reply: Reply) {
        self.channel.reply(&self.msg_ref, &reply);
    }
}
