//! The config-driven channel: what a standalone gateway serves from its TOML file. Per topic
//! pattern: who may join (`public`, or `token` with the topic allowed by the token's claims),
//! which client events are broadcast (sender included or excluded) and replied `ok`. Any other
//! client event gets an error reply `{"reason":"unknown event"}`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Channel, ChannelContext, ChannelError, Join, Reply};
use crate::protocol::Payload;

/// Who may join a pattern's topics.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinPolicy {
    /// Anyone.
    #[default]
    Public,
    /// Sessions with a verified token whose `topics` claim allows the topic.
    Token,
}

/// One `[[channels]]` entry of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// `room:*` (prefix) or an exact topic.
    pub pattern: String,
    /// Join policy; default `public`.
    #[serde(default)]
    pub join: JoinPolicy,
    /// Client events broadcast to the topic, sender included, and replied `ok`.
    #[serde(default)]
    pub broadcast: Vec<String>,
    /// Client events broadcast to the topic except the sender, and replied `ok`.
    #[serde(default)]
    pub broadcast_from: Vec<String>,
}

impl ChannelSpec {
    /// The demo channel served when no config file is given: `room:*`, public, `new_msg` and
    /// `shout` broadcast to everyone including the sender.
    pub fn demo() -> Self {
        ChannelSpec {
            pattern: "room:*".into(),
            join: JoinPolicy::Public,
            broadcast: vec!["new_msg".into(), "shout".into()],
            broadcast_from: vec![],
        }
    }
}

/// A channel instance driven by a `ChannelSpec`.
#[derive(Debug, Clone)]
pub struct ConfigChannel {
    /// The pattern's rules, shared by every instance.
    spec: Arc<ChannelSpec>,
}

impl ConfigChannel {
    /// An instance following `spec`.
    pub fn new(spec: Arc<ChannelSpec>) -> Self {
        ConfigChannel { spec }
    }
}

#[async_trait]
impl Channel for ConfigChannel {
    async fn join(
        &mut self,
        topic: &str,
        _payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError> {
        let allowed = match self.spec.join {
            JoinPolicy::Public => true,
            JoinPolicy::Token => ctx.claims().is_some_and(|c| c.allows_topic(topic)),
        };
        Ok(if allowed {
            Join::Ok(Payload::empty())
        } else {
            Join::Refuse(Payload::raw_json(r#"{"reason":"unauthorized"}"#))
        })
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        if self.spec.broadcast.iter().any(|e| e == event) {
            ctx.broadcast(event, payload);
        } else if self.spec.broadcast_from.iter().any(|e| e == event) {
            ctx.broadcast_from(event, payload);
        } else {
            return Ok(Some(Reply::error(Payload::raw_json(
                r#"{"reason":"unknown event"}"#,
            ))));
        }
        Ok(Some(Reply::ok(Payload::empty())))
    }
}
