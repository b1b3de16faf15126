//! The Phoenix wire protocol, as pure bytes (no I/O): the `Message` every transport decodes
//! into, the payload kinds, the serializers chosen by `vsn` (V1 JSON, V2 JSON, V2 binary
//! frames), the `Wire` a session's frames are encoded for, the RFC 6455 frame codec, close
//! codes, and topics (length bound, reserved events, patterns).
//!
//! Payloads travel as already-encoded bytes: JSON payloads are validated once on the way in and
//! then copied verbatim into outgoing frames, so a broadcast is never parsed again by the node
//! (or by other nodes) — the fastlane writes the same bytes to every subscriber.

mod binary;
mod close;
mod json;
pub mod topic;
pub mod websocket;
mod wire;

use bytes::Bytes;

pub use binary::{decode_binary_push, encode_binary, BinaryKind};
pub use close::{Close, CloseCode};
pub use json::{decode_v1, decode_v2, encode_v1, encode_v2, json_string};
pub use topic::{is_reserved_event, TopicPattern, MAX_TOPIC_LEN};
pub use wire::{longpoll_messages, Framing, Wire};

/// Reserved topic of heartbeats.
pub const PHOENIX_TOPIC: &str = "phoenix";
/// Client → server: join a topic.
pub const PHX_JOIN: &str = "phx_join";
/// Client → server: leave a topic.
pub const PHX_LEAVE: &str = "phx_leave";
/// Server → client: reply to the message whose ref it carries.
pub const PHX_REPLY: &str = "phx_reply";
/// Server → client: the channel ended normally.
pub const PHX_CLOSE: &str = "phx_close";
/// Server → client: the channel crashed.
pub const PHX_ERROR: &str = "phx_error";
/// Client → server keep-alive on the `phoenix` topic.
pub const HEARTBEAT: &str = "heartbeat";

/// A payload: JSON text (already validated) or raw bytes from/for a V2 binary frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The exact JSON text of the payload value.
    Json(Bytes),
    /// Opaque bytes (phoenix.js `ArrayBuffer` payloads).
    Binary(Bytes),
}

impl Payload {
    /// The empty JSON object `{}`.
    pub fn empty() -> Self {
        Payload::Json(Bytes::from_static(b"{}"))
    }

    /// A JSON payload from a serializable value.
    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        // Serializing plain data structures to a Vec cannot fail.
        Payload::Json(Bytes::from(
            serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()),
        ))
    }

    /// A JSON payload from text that the caller guarantees is valid JSON.
    pub fn raw_json(text: impl Into<Bytes>) -> Self {
        Payload::Json(text.into())
    }

    /// Whether this is a binary payload.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }

    /// The payload's bytes (JSON text or binary).
    pub fn bytes(&self) -> &Bytes {
        match self {
            Payload::Json(b) | Payload::Binary(b) => b,
        }
    }
}

/// One protocol message, as every serializer decodes it (client → server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The join ref of the channel instance the client believes it talks to.
    pub join_ref: Option<String>,
    /// The client's message reference, echoed in the reply.
    pub msg_ref: Option<String>,
    /// Topic, e.g. `room:lobby`.
    pub topic: String,
    /// Event name.
    pub event: String,
    /// Payload.
    pub payload: Payload,
}

/// Which wire format a session speaks, fixed at connect time by `vsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn` missing or `1.0.x`: JSON objects, no join_ref on the way out, no binary.
    V1,
    /// `vsn` `2.0.x`: JSON arrays in text frames plus V2 binary frames.
    V2,
}

/// Errors for `vsn` negotiation and message decoding. Each maps to a documented answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// `vsn` is not `1.0.x` / `2.0.x`: HTTP 403 before the upgrade.
    #[error("unsupported vsn {0:?}")]
    UnsupportedVsn(String),
    /// Not valid JSON, or not the array/object shape of the serializer.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A binary frame whose header does not fit, or of a kind a client may not send.
    #[error("malformed binary frame: {0}")]
    MalformedBinary(&'static str),
}

/// Pick the serializer for a `vsn` query value, as Phoenix does: missing → V1, `~> 1.0.0` → V1,
/// `~> 2.0.0` → V2, anything else refused.
pub fn negotiate(vsn: Option<&str>) -> Result<Serializer, ProtocolError> {
    let Some(vsn) = vsn else {
        return Ok(Serializer::V1);
    };
    let mut parts = vsn.split('.');
    let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
    let numeric =
        |p: Option<&str>| p.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    // Semver: MAJOR.MINOR.PATCH with an optional pre-release/build suffix on the patch.
    let patch_ok = patch.is_some_and(|p| {
        let core = p.split(['-', '+']).next().unwrap_or("");
        !core.is_empty() && core.bytes().all(|b| b.is_ascii_digit())
    });
    if parts.next().is_some() || !numeric(major) || !numeric(minor) || !patch_ok {
        return Err(ProtocolError::UnsupportedVsn(vsn.to_owned()));
    }
    match (major, minor) {
        (Some("1"), Some("0")) => Ok(Serializer::V1),
        (Some("2"), Some("0")) => Ok(Serializer::V2),
        _ => Err(ProtocolError::UnsupportedVsn(vsn.to_owned())),
    }
}

/// What a server frame is, for encoding: the four shapes Phoenix sends.
#[derive(Clone, Copy, Debug)]
pub enum Outgoing<'a> {
    /// `[join_ref, ref, topic, "phx_reply", {"status": status, "response": payload}]`.
    Reply {
        /// Join ref of the channel (null for heartbeats and unmatched topics).
        join_ref: Option<&'a str>,
        /// Ref of the request.
        msg_ref: Option<&'a str>,
        /// Topic.
        topic: &'a str,
        /// Status string (`ok`, `error`, …).
        status: &'a str,
        /// Response payload.
        payload: &'a Payload,
    },
    /// `[join_ref, position, topic, event, payload]`: a push to one client. `position` is set
    /// only when the push is a broadcast on a topic with history that the channel intercepted
    /// (`handle_out`), so the client still learns how far it got; otherwise the ref slot is null.
    Push {
        /// Current join ref of the channel.
        join_ref: Option<&'a str>,
        /// Position of the intercepted broadcast in its topic's history.
        position: Option<&'a str>,
        /// Topic.
        topic: &'a str,
        /// Event.
        event: &'a str,
        /// Payload.
        payload: &'a Payload,
    },
    /// `[null, position, topic, event, payload]`: a broadcast, identical for every subscriber.
    /// On a topic with history its position travels in the `ref` slot (V1 and V2 JSON), so
    /// phoenix.js hands it to `channel.on(event, (payload, ref) => …)`; V2 binary broadcast
    /// frames have no ref slot and carry none.
    Broadcast {
        /// Position in the topic's history (`None`: the ref slot is null).
        position: Option<&'a str>,
        /// Topic.
        topic: &'a str,
        /// Event.
        event: &'a str,
        /// Payload.
        payload: &'a Payload,
    },
    /// `[jr, jr, topic, event, {}]` for `phx_close` / `phx_error`-style control pushes that
    /// carry the join ref in both ref slots.
    Control {
        /// Join ref of the channel instance.
        join_ref: &'a str,
        /// Topic.
        topic: &'a str,
        /// `phx_close` or `phx_error`.
        event: &'a str,
        /// Payload.
        payload: &'a Payload,
    },
}

/// An encoded server frame: the bytes plus whether they go in a text or a binary frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// `true` for a WebSocket text frame (JSON), `false` for a binary frame.
    pub text: bool,
    /// The frame's payload bytes.
    pub bytes: Bytes,
}

impl Serializer {
    /// Decode a client message as Phoenix does. V1 reads a JSON object whatever the frame's
    /// opcode (Phoenix's V1 serializer ignores it: third-party clients send JSON in binary
    /// frames); V2 reads a JSON array from a text frame and a V2 binary push from a binary one.
    pub fn decode(self, binary: bool, data: Bytes) -> Result<Message, ProtocolError> {
        match (self, binary) {
            (Serializer::V1, _) => decode_v1(&data),
            (Serializer::V2, false) => decode_v2(&data),
            (Serializer::V2, true) => decode_binary_push(data),
        }
    }

    /// Encode a server frame. `None` when this serializer cannot carry it (binary on V1).
    pub fn encode(self, out: Outgoing<'_>) -> Option<Encoded> {
        match self {
            Serializer::V1 => encode_v1(out).map(|bytes| Encoded { text: true, bytes }),
            Serializer::V2 => Some(match binary::binary_kind(&out) {
                Some(_) => Encoded {
                    text: false,
                    bytes: encode_binary(out)?,
                },
                None => Encoded {
                    text: true,
                    bytes: encode_v2(out),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_phoenix() {
        assert_eq!(negotiate(None), Ok(Serializer::V1));
        assert_eq!(negotiate(Some("1.0.0")), Ok(Serializer::V1));
        assert_eq!(negotiate(Some("2.0.0")), Ok(Serializer::V2));
        assert_eq!(negotiate(Some("2.0.7")), Ok(Serializer::V2));
        for bad in [
            "2.1.0", "3.0.0", "2", "2.0", "abc", "", "2.0.0.0", "1.1.0", "2.x.0",
        ] {
            assert!(negotiate(Some(bad)).is_err(), "{bad}");
        }
    }
}
