//! Joining a channel with history: the join payload's `since`, the `recovered` and `position`
//! fields of the ok reply, and the replay of what the client missed, each broadcast exactly
//! once and in order between the join's own pushes and the live broadcasts.
//!
//! The session subscribes first (as `Recovering`: live broadcasts are set aside for it, and
//! the presence state is snapshotted under the same lock), waits until the subscription is in
//! effect in the cluster, then reads the history with no lock held, then settles under the
//! topic's lock: reply, pushes made during join, `presence_state`, the replay, then the
//! set-aside broadcasts whose position is after the latest one the read saw (older ones were
//! replayed, or precede the position the client is told). A broadcast stored after the read
//! reaches the set-aside list or, once settled, the session directly: nothing falls between.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::warn;

use super::Session;
use crate::channel::Reply;
use crate::cluster::Broadcast;
use crate::history::{Limits, Position, Recovered, Recovery};
use crate::hub::SubKind;
use crate::protocol::{Outgoing, Payload};

/// An accepted join of a channel with history, waiting for its reply.
pub(super) struct Joining<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The channel instance's join ref.
    pub join_ref: &'a str,
    /// Ref of the join message.
    pub msg_ref: Option<&'a str>,
    /// The join payload (where `since` is).
    pub payload: &'a Payload,
    /// The channel's ok response, which gains `recovered` and `position`.
    pub response: Payload,
    /// Pushes the channel made during join.
    pub held: Vec<(String, Payload)>,
    /// Events the channel intercepts.
    pub intercepts: Option<Arc<[String]>>,
    /// The topic's history limits.
    pub limits: Limits,
    /// Whether `presence_state` follows the pushes.
    pub presence: bool,
}

/// The join payload's `since`: `None` when absent or null, `Some(None)` when it is not a
/// position (malformed: never recoverable).
fn since_field(payload: &Payload) -> Option<Option<Position>> {
    let value: Value = serde_json::from_slice(payload.bytes()).ok()?;
    match value.get("since")? {
        Value::Null => None,
        Value::String(s) => Some(Position::parse(s)),
        _ => Some(None),
    }
}

/// The channel's response with `recovered` and `position` added (when it is an object).
fn with_recovery(response: Payload, recovered: bool, latest: Option<&Position>) -> Payload {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(response.bytes()) else {
        return response;
    };
    obj.insert("recovered".into(), Value::Bool(recovered));
    obj.insert(
        "position".into(),
        latest.map_or(Value::Null, |p| Value::String(p.to_string())),
    );
    Payload::json(&Value::Object(obj))
}

/// Whether a set-aside broadcast is at or before `latest` (replayed, or before what the
/// client was told).
fn covered(msg: &Broadcast, latest: Option<&Position>) -> bool {
    let (Some(latest), Some(pos)) = (latest, msg.position.as_deref()) else {
        return false;
    };
    Position::parse(pos).is_some_and(|p| p.epoch == latest.epoch && p.offset <= latest.offset)
}

impl Session {
    /// Subscribe, read the history, and queue reply, pushes, presence state and replay ahead
    /// of the live broadcasts. Returns the shared topic string.
    pub(super) async fn join_recovering(&mut self, j: Joining<'_>) -> Arc<str> {
        let core = self.core.clone();
        let (handle, wire) = (&self.handle, self.wire);
        // A presence channel on a topic new to this node first fetches the other nodes' shares.
        let hold = j.presence.then(|| core.hub.hold(j.topic)).flatten();
        if hold.is_some() {
            core.presence.sync_first(j.topic).await;
        }
        let aside = Arc::new(Mutex::new(Vec::new()));
        let kind = SubKind::Recovering {
            wire,
            intercepts: j.intercepts.clone(),
            aside,
        };
        // The presence snapshot is taken under the topic's lock as the session subscribes:
        // every diff fanned out after it is set aside and follows it, none before it does
        // (phoenix.js fires onJoin again for a diff it already has in its state).
        let mut presence_state = None;
        let subscribed = core.hub.subscribe_with(j.topic, handle, kind, |topic| {
            if j.presence {
                presence_state = Some(core.presence.state(topic));
            }
        });
        drop(hold);
        // The read must not precede the subscription taking effect in the cluster, or a
        // broadcast stored in between would be neither read nor received.
        core.hub.pubsub().subscribed(j.topic).await;
        let since = since_field(j.payload);
        let asked = since.as_ref().and_then(|s| s.as_ref());
        let read = core.hub.history().since(j.topic, asked, j.limits).await;
        let (latest, replay) = match read {
            Ok(Recovered { latest, recovery }) => match recovery {
                Recovery::Exact(msgs) if asked.is_some() => (Some(latest), Some(msgs)),
                _ => (Some(latest), None),
            },
            Err(e) => {
                warn!(topic = %j.topic, error = %e, "history unavailable for a join");
                core.metrics.history_errors.inc();
                (None, None)
            }
        };
        if let Some(latest) = &latest {
            core.hub.seed(&subscribed, latest);
        }
        let outcome = match (&since, &replay) {
            (None, _) => "none",
            (Some(_), Some(_)) => "exact",
            (Some(_), None) => "not_exact",
        };
        let metrics = &core.metrics;
        metrics
            .history_recoveries
            .with_label_values(&[outcome])
            .inc();
        let response = with_recovery(j.response, replay.is_some(), latest.as_ref());
        let intercepts = j.intercepts.as_deref();
        let settled = core
            .hub
            .settle(j.topic, handle.key, latest.clone(), |topic, aside| {
                let reply = Reply::ok(response);
                self.reply(Some(j.join_ref), j.msg_ref, topic, &reply);
                for (event, payload) in &j.held {
                    let out = Outgoing::Push {
                        join_ref: Some(j.join_ref),
                        position: None,
                        topic,
                        event,
                        payload,
                    };
                    core.hub.send(handle, wire, out);
                }
                if let Some(state) = &presence_state {
                    let out = Outgoing::Push {
                        join_ref: Some(j.join_ref),
                        position: None,
                        topic,
                        event: "presence_state",
                        payload: state,
                    };
                    core.hub.send(handle, wire, out);
                }
                let replay = replay.unwrap_or_default();
                metrics.history_replayed.inc_by(replay.len() as u64);
                for msg in &replay {
                    core.hub.deliver_to(handle, wire, intercepts, msg);
                }
                for msg in aside.iter().filter(|m| !covered(m, latest.as_ref())) {
                    core.hub.deliver_to(handle, wire, intercepts, msg);
                }
            });
        settled.unwrap_or(subscribed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_read_from_the_join_payload() {
        let p = |s: &str| Payload::raw_json(s.to_owned());
        assert_eq!(since_field(&p("{}")), None);
        assert_eq!(since_field(&p(r#"{"since":null}"#)), None);
        assert_eq!(
            since_field(&p(r#"{"since":"abc-3"}"#)),
            Some(Position::parse("abc-3"))
        );
        for bad in [r#"{"since":3}"#, r#"{"since":"3"}"#, r#"{"since":"x"}"#] {
            assert_eq!(since_field(&p(bad)), Some(None), "{bad}");
        }
    }

    #[test]
    fn the_ok_response_gains_recovered_and_position() {
        let latest = Position::parse("abc-7");
        let out = with_recovery(Payload::empty(), true, latest.as_ref());
        let v: Value = serde_json::from_slice(out.bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"recovered": true, "position": "abc-7"})
        );
    }
}
