//! The config-driven channel: what a standalone gateway serves from its TOML file. Per topic
//! pattern: who may join (`public`, or `token` with the topic allowed by the token's claims),
//! which client events are broadcast (sender included or excluded) and replied `ok`. Any other
//! client event gets an error reply `{"reason":"unknown event"}`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use serde_json::{Map, Value};

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
    /// Presence on: joiners get `presence_state`, and are tracked under their key.
    #[serde(default)]
    pub presence: bool,
    /// Join-payload field that keys a presence in open mode (JWT mode uses the token's `sub`).
    /// Default `user`. A join without a key is not tracked (it still sees the others).
    #[serde(default = "default_presence_key")]
    pub presence_key: String,
    /// Join-payload fields copied into the presence meta (besides `online_at`); the meta is
    /// limited to 1 KiB. The client event `presence_update` replaces them.
    #[serde(default)]
    pub presence_meta: Vec<String>,
}

fn default_presence_key() -> String {
    "user".into()
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
            presence: true,
            presence_key: default_presence_key(),
            presence_meta: vec!["name".into(), "status".into()],
        }
    }

    /// A public pattern broadcasting `events` (sender included), without presence.
    pub fn public(pattern: &str, events: &[&str]) -> Self {
        ChannelSpec {
            pattern: pattern.into(),
            join: JoinPolicy::Public,
            broadcast: events.iter().map(|e| e.to_string()).collect(),
            broadcast_from: vec![],
            presence: false,
            presence_key: default_presence_key(),
            presence_meta: vec![],
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

    /// The allow-listed meta fields of a payload.
    fn meta_fields(&self, payload: &Payload) -> Map<String, Value> {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(payload.bytes()) else {
            return Map::new();
        };
        obj.into_iter()
            .filter(|(k, _)| self.spec.presence_meta.iter().any(|m| m == k))
            .collect()
    }
}

/// A presence key from a join payload field (strings and numbers).
fn key_field(payload: &Payload, field: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(payload.bytes()).ok()?;
    match v.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
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
        if !allowed {
            return Ok(Join::Refuse(Payload::raw_json(
                r#"{"reason":"unauthorized"}"#,
            )));
        }
        if self.spec.presence {
            let key = match ctx.claims() {
                Some(c) => c.sub.clone(),
                None => key_field(_payload, &self.spec.presence_key),
            };
            if let Some(key) = key {
                ctx.track(&key, self.meta_fields(_payload));
            }
            // `presence_state` follows the join reply (the session sends it: see
            // `Channel::tracks_presence`).
        }
        Ok(Join::Ok(Payload::empty()))
    }

    fn tracks_presence(&self) -> bool {
        self.spec.presence
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        if self.spec.presence && event == "presence_update" {
            return Ok(Some(if ctx.update_presence(self.meta_fields(&payload)) {
                Reply::ok(Payload::empty())
            } else {
                Reply::reason("not tracked")
            }));
        }
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
