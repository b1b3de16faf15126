//! Channels: the `Channel` trait a topic's handler implements (join / handle_in / handle_out /
//! terminate, like a Phoenix channel module), the context it acts through (`context`), and the
//! router of topic patterns. The config-driven channel is one implementation of the trait; the
//! backend channel (joins and events answered by an HTTP backend) is another.

mod backend;
mod config;
mod context;
mod router;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

pub use backend::BackendChannel;
pub use config::ConfigChannel;
pub use context::{ChannelContext, ChannelHandle, DeferredReply, Identity};
pub use router::Router;

use crate::history::Limits;
use crate::protocol::Payload;

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

    /// The topic's history limits, when broadcasts on it are kept for recovery: joins then
    /// read the `since` field of their payload and their ok reply gains `recovered` and
    /// `position`, and broadcasts should go through `ChannelContext::broadcast_stored`.
    fn history(&self) -> Option<Limits> {
        None
    }

    /// Called once when the channel ends.
    async fn terminate(&mut self, _reason: Terminate, _ctx: &mut ChannelContext<'_>) {}
}

/// Creates a channel instance for a joined topic.
pub type ChannelFactory = Arc<dyn Fn(&str) -> Box<dyn Channel> + Send + Sync>;
