//! Cluster messages as Redis envelopes (`pubsub_redis::Envelope`). A broadcast is a version 1
//! envelope (the format backends publish too); every other message is a version 2 envelope
//! whose `kind` names it and whose payload is its JSON body. Decoding checks the kind against
//! the route it arrived on, and refuses a broadcast whose event is reserved.

use std::sync::Arc;

use bytes::Bytes;
use pubsub_redis::Envelope;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Broadcast, ClusterMessage, Delta, LongPollMessage, NodeRef, PresenceMessage, Route, Share,
};
use crate::protocol::{is_reserved_event, Payload};

const PRESENCE_DELTA: &str = "presence_delta";
const PRESENCE_SYNC: &str = "presence_sync";
const PRESENCE_STATE: &str = "presence_state";
const PRESENCE_HEARTBEAT: &str = "presence_hb";
const LONGPOLL: &str = "longpoll";

/// Why a message from Redis was dropped (a `gateway_pubsub_dropped_total` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// A broadcast whose event is reserved (`phx_*`, `presence_*`).
    #[error("reserved event")]
    Reserved,
    /// A kind this node does not know (a newer node, or garbage).
    #[error("unknown kind")]
    UnknownKind,
    /// A known kind on the wrong route (a broadcast sent directly, a long-poll message on a
    /// topic...).
    #[error("kind on the wrong route")]
    Misrouted,
    /// A known kind whose body does not decode.
    #[error("malformed body")]
    Malformed,
}

impl Dropped {
    /// Label for `gateway_pubsub_dropped_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::Reserved => "reserved_event",
            Dropped::UnknownKind => "unknown_kind",
            Dropped::Misrouted => "misrouted",
            Dropped::Malformed => "malformed",
        }
    }
}

/// The body of a `presence_sync` message.
#[derive(Serialize, Deserialize)]
struct SyncBody {
    #[serde(flatten)]
    from: NodeRef,
}

fn json(body: &impl Serialize) -> Bytes {
    // Serializing plain data structures cannot fail.
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// The envelope of `msg` from node `origin`. `topic` is the topic it is published on (empty for
/// a direct message).
pub fn encode(origin: &str, topic: &str, msg: &ClusterMessage) -> Envelope {
    let (kind, body) = match msg {
        ClusterMessage::Broadcast(b) => {
            let mut env = Envelope::new(
                origin,
                b.topic.as_str(),
                b.event.as_str(),
                Bytes::clone(b.payload.bytes()),
                b.payload.is_binary(),
            );
            env.position = b.position.as_deref().map(str::to_owned);
            env.except = b.except;
            return env;
        }
        ClusterMessage::Presence(p) => match p {
            PresenceMessage::Delta { delta, .. } => (PRESENCE_DELTA, json(delta)),
            PresenceMessage::Sync { from, .. } => {
                (PRESENCE_SYNC, json(&SyncBody { from: from.clone() }))
            }
            PresenceMessage::State(share) => (PRESENCE_STATE, json(share)),
            PresenceMessage::Heartbeat(from) => (PRESENCE_HEARTBEAT, json(from)),
        },
        ClusterMessage::LongPoll(l) => (LONGPOLL, json(l)),
    };
    Envelope::of_kind(origin, kind, topic, body)
}

fn body<T: DeserializeOwned>(env: &Envelope) -> Result<T, Dropped> {
    serde_json::from_slice(&env.payload).map_err(|_| Dropped::Malformed)
}

/// The message an envelope carries, arriving by `route`.
pub fn decode(route: Route, env: Envelope) -> Result<ClusterMessage, Dropped> {
    let msg = match env.kind.as_str() {
        "" => {
            if is_reserved_event(&env.event) {
                return Err(Dropped::Reserved);
            }
            let payload = if env.binary {
                Payload::Binary(env.payload)
            } else {
                Payload::Json(env.payload)
            };
            ClusterMessage::Broadcast(Arc::new(Broadcast {
                topic: env.topic,
                event: env.event,
                payload,
                position: env.position.map(Arc::from),
                except: env.except,
            }))
        }
        PRESENCE_DELTA => ClusterMessage::Presence(PresenceMessage::Delta {
            delta: body::<Delta>(&env)?,
            topic: env.topic,
        }),
        PRESENCE_SYNC => ClusterMessage::Presence(PresenceMessage::Sync {
            from: body::<SyncBody>(&env)?.from,
            topic: env.topic,
        }),
        PRESENCE_STATE => ClusterMessage::Presence(PresenceMessage::State(body::<Share>(&env)?)),
        PRESENCE_HEARTBEAT => ClusterMessage::Presence(PresenceMessage::Heartbeat(body(&env)?)),
        LONGPOLL => ClusterMessage::LongPoll(body::<LongPollMessage>(&env)?),
        _ => return Err(Dropped::UnknownKind),
    };
    if msg.travels_by(route) {
        Ok(msg)
    } else {
        Err(Dropped::Misrouted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeRef {
        NodeRef {
            node: "n1".into(),
            inc: 7,
        }
    }

    fn round_trip(route: Route, topic: &str, msg: ClusterMessage) {
        let env = encode("n1", topic, &msg);
        let bytes = env.encode().unwrap();
        let back = decode(route, Envelope::decode(&bytes).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn every_kind_round_trips_on_its_route() {
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Broadcast(Broadcast::new("room:1", "new_msg", Payload::raw_json("{}"))),
        );
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Broadcast(Broadcast::new(
                "room:1",
                "blob",
                Payload::Binary(Bytes::from_static(b"\x00\xff")),
            )),
        );
        let mut positioned = Broadcast::plain("room:1", "new_msg", Payload::raw_json("{}"));
        positioned.position = Some(Arc::from("abc-7"));
        positioned.except = Some(3);
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Broadcast(Arc::new(positioned)),
        );
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Presence(PresenceMessage::Delta {
                topic: "room:1".into(),
                delta: Delta {
                    from: node(),
                    joins: vec![("ann".into(), json!({"phx_ref": "r1"}))],
                    leaves: vec![("bob".into(), "r0".into())],
                },
            }),
        );
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Presence(PresenceMessage::Sync {
                topic: "room:1".into(),
                from: node(),
            }),
        );
        let share = Share {
            topic: "room:1".into(),
            from: node(),
            metas: vec![("ann".into(), json!({"phx_ref": "r1"}))],
        };
        round_trip(
            Route::Direct,
            "",
            ClusterMessage::Presence(PresenceMessage::State(share.clone())),
        );
        round_trip(
            Route::Topic,
            "room:1",
            ClusterMessage::Presence(PresenceMessage::State(share)),
        );
        round_trip(
            Route::Topic,
            "hb",
            ClusterMessage::Presence(PresenceMessage::Heartbeat(node())),
        );
        for l in [
            LongPollMessage::Request {
                id: 1,
                from: "n2".into(),
                token: "t".into(),
                body: Some("[]".into()),
                ndjson: true,
            },
            LongPollMessage::Ack { id: 1 },
            LongPollMessage::Response {
                id: 1,
                body: "{}".into(),
            },
        ] {
            round_trip(Route::Direct, "", ClusterMessage::LongPoll(l));
        }
    }

    #[test]
    fn nothing_a_backend_publishes_poses_as_cluster_traffic() {
        // The documented (version 1) format: whatever the event, it is a broadcast or nothing.
        for event in ["phx_presence_delta", "presence_diff", "phx_close", "lp_req"] {
            let env = Envelope::new("", "room:1", event, &br#"{"node":"x","inc":1}"#[..], false);
            let env = Envelope::decode(&env.encode().unwrap()).unwrap();
            let got = decode(Route::Topic, env);
            assert!(
                matches!(got, Err(Dropped::Reserved)) || event == "lp_req",
                "{event}: {got:?}"
            );
        }
        let plain = Envelope::new("", "room:1", "lp_req", &b"{}"[..], false);
        assert!(matches!(
            decode(Route::Topic, plain.clone()),
            Ok(ClusterMessage::Broadcast(_))
        ));
        // Sent to a node's direct channel it is nothing at all.
        assert_eq!(decode(Route::Direct, plain), Err(Dropped::Misrouted));
        // Kinds only count on their own route, with a body that decodes.
        let lp = encode(
            "n1",
            "",
            &ClusterMessage::LongPoll(LongPollMessage::Ack { id: 3 }),
        );
        assert_eq!(decode(Route::Topic, lp), Err(Dropped::Misrouted));
        let bad = Envelope::of_kind("n1", PRESENCE_HEARTBEAT, "hb", &b"nope"[..]);
        assert_eq!(decode(Route::Topic, bad), Err(Dropped::Malformed));
        let unknown = Envelope::of_kind("n1", "teleport", "hb", &b"{}"[..]);
        assert_eq!(decode(Route::Topic, unknown), Err(Dropped::UnknownKind));
    }
}
