//! The config-driven channel: what a standalone gateway serves from its TOML file. Per topic
//! pattern: who may join (`public`, or `token` with the topic allowed by the token's claims),
//! which client events are broadcast (sender included or excluded) and replied `ok`. Any other
//! client event gets an error reply `{"reason":"unknown event"}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Channel, ChannelContext, ChannelError, Join, Reply};
use crate::config::{ChannelSpec, JoinPolicy};
use crate::history::Limits;
use crate::protocol::Payload;

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
            // The backend accepted it already (`BackendChannel` asks it before delegating here).
            JoinPolicy::Backend => true,
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

    fn history(&self) -> Option<Limits> {
        (self.spec.history_size > 0).then(|| Limits {
            size: self.spec.history_size,
            ttl: Duration::from_secs(self.spec.history_ttl_secs),
        })
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
        let from = self.spec.broadcast_from.iter().any(|e| e == event);
        if let Some(limits) = self.history() {
            if !from && !self.spec.broadcast.iter().any(|e| e == event) {
                return Ok(Some(Reply::reason("unknown event")));
            }
            // The ok reply follows storage and carries the position; the client may retry
            // an `unavailable`.
            return Ok(Some(
                match ctx.broadcast_stored(event, payload, limits, from).await {
                    Ok(stored) => Reply::ok(Payload::json(
                        &serde_json::json!({ "position": stored.position.to_string() }),
                    )),
                    Err(_) => Reply::reason("unavailable"),
                },
            ));
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
