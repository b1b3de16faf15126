//! JSON serializers: V2 (`[join_ref, ref, topic, event, payload]` arrays) and V1 (objects).
//!
//! Decoding validates the shape strictly (refs are strings or null, topic and event are
//! strings) but keeps the payload as the exact bytes of the incoming frame. Encoding writes the
//! frame by hand around payload bytes that are already JSON, so nothing is re-serialized.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Message, Outgoing, Payload, ProtocolError, PHX_REPLY};

/// Append `s` as a JSON string literal.
pub fn json_string(buf: &mut BytesMut, s: &str) {
    let mut w = buf.writer();
    // Writing a &str into a BytesMut cannot fail.
    let _ = serde_json::to_writer(&mut w, s);
}

fn json_opt(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => json_string(buf, s),
        None => buf.put_slice(b"null"),
    }
}

/// The payload bytes of `raw`, sliced out of `frame` without copying.
fn slice_of(frame: &Bytes, raw: &RawValue) -> Bytes {
    let start = raw.get().as_ptr() as usize - frame.as_ptr() as usize;
    frame.slice(start..start + raw.get().len())
}

type V2Fields<'de> = (
    Option<String>,
    Option<String>,
    String,
    String,
    &'de RawValue,
);

struct V2Visitor;

impl<'de> Visitor<'de> for V2Visitor {
    type Value = V2Fields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array [join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let join_ref = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let msg_ref = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let topic = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        let event = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(3, &self))?;
        let payload = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(4, &self))?;
        // Phoenix tolerates extra trailing elements.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((join_ref, msg_ref, topic, event, payload))
    }
}

/// Decode a V2 JSON text frame.
pub fn decode_v2(frame: &Bytes) -> Result<Message, ProtocolError> {
    let mut de = serde_json::Deserializer::from_slice(frame);
    let (join_ref, msg_ref, topic, event, payload) =
        de::Deserializer::deserialize_seq(&mut de, V2Visitor)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(slice_of(frame, payload)),
    })
}

#[derive(Deserialize)]
struct V1In<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(rename = "ref")]
    msg_ref: Option<String>,
    #[serde(default)]
    join_ref: Option<String>,
}

/// Decode a V1 JSON text frame (`{"topic","event","payload","ref","join_ref"?}`).
pub fn decode_v1(frame: &Bytes) -> Result<Message, ProtocolError> {
    let m: V1In<'_> =
        serde_json::from_slice(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(Message {
        join_ref: m.join_ref,
        msg_ref: m.msg_ref,
        topic: m.topic,
        event: m.event,
        payload: Payload::Json(slice_of(frame, m.payload)),
    })
}

fn reply_body(buf: &mut BytesMut, status: &str, response: &[u8]) {
    buf.put_slice(b"{\"status\":");
    json_string(buf, status);
    buf.put_slice(b",\"response\":");
    buf.put_slice(response);
    buf.put_u8(b'}');
}

fn capacity(out: &Outgoing<'_>) -> usize {
    let (topic, payload) = match out {
        Outgoing::Reply { topic, payload, .. }
        | Outgoing::Push { topic, payload, .. }
        | Outgoing::Broadcast { topic, payload, .. }
        | Outgoing::Control { topic, payload, .. } => (topic, payload),
    };
    64 + topic.len() * 2 + payload.bytes().len()
}

/// Encode a server frame as a V2 JSON array. Binary payloads never reach here
/// (`Serializer::encode` routes them to the binary encoder).
pub fn encode_v2(out: Outgoing<'_>) -> Bytes {
    let mut buf = BytesMut::with_capacity(capacity(&out));
    buf.put_u8(b'[');
    match out {
        Outgoing::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            payload,
        } => {
            json_opt(&mut buf, join_ref);
            buf.put_u8(b',');
            json_opt(&mut buf, msg_ref);
            buf.put_u8(b',');
            json_string(&mut buf, topic);
            buf.put_slice(b",\"phx_reply\",");
            reply_body(&mut buf, status, payload.bytes());
        }
        Outgoing::Push {
            join_ref,
            position,
            topic,
            event,
            payload,
        } => {
            json_opt(&mut buf, join_ref);
            buf.put_u8(b',');
            json_opt(&mut buf, position);
            buf.put_u8(b',');
            json_string(&mut buf, topic);
            buf.put_u8(b',');
            json_string(&mut buf, event);
            buf.put_u8(b',');
            buf.put_slice(payload.bytes());
        }
        Outgoing::Broadcast {
            position,
            topic,
            event,
            payload,
        } => {
            buf.put_slice(b"null,");
            json_opt(&mut buf, position);
            buf.put_u8(b',');
            json_string(&mut buf, topic);
            buf.put_u8(b',');
            json_string(&mut buf, event);
            buf.put_u8(b',');
            buf.put_slice(payload.bytes());
        }
        Outgoing::Control {
            join_ref,
            topic,
            event,
            payload,
        } => {
            json_string(&mut buf, join_ref);
            buf.put_u8(b',');
            json_string(&mut buf, join_ref);
            buf.put_u8(b',');
            json_string(&mut buf, topic);
            buf.put_u8(b',');
            json_string(&mut buf, event);
            buf.put_u8(b',');
            buf.put_slice(payload.bytes());
        }
    }
    buf.put_u8(b']');
    buf.freeze()
}

/// Encode a server frame as a V1 JSON object (no join_ref, as Phoenix's V1 encoder).
/// `None` for binary payloads, which V1 cannot carry.
pub fn encode_v1(out: Outgoing<'_>) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(capacity(&out) + 32);
    let (topic, event, msg_ref) = match out {
        Outgoing::Reply { topic, msg_ref, .. } => (topic, PHX_REPLY, msg_ref),
        Outgoing::Push {
            topic,
            event,
            position,
            ..
        }
        | Outgoing::Broadcast {
            topic,
            event,
            position,
            ..
        } => (topic, event, position),
        Outgoing::Control {
            topic,
            event,
            join_ref,
            ..
        } => (topic, event, Some(join_ref)),
    };
    buf.put_slice(b"{\"topic\":");
    json_string(&mut buf, topic);
    buf.put_slice(b",\"event\":");
    json_string(&mut buf, event);
    buf.put_slice(b",\"payload\":");
    match out {
        Outgoing::Reply {
            status, payload, ..
        } => {
            if payload.is_binary() {
                return None;
            }
            reply_body(&mut buf, status, payload.bytes());
        }
        Outgoing::Push { payload, .. }
        | Outgoing::Broadcast { payload, .. }
        | Outgoing::Control { payload, .. } => {
            if payload.is_binary() {
                return None;
            }
            buf.put_slice(payload.bytes());
        }
    }
    buf.put_slice(b",\"ref\":");
    json_opt(&mut buf, msg_ref);
    buf.put_u8(b'}');
    Some(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(s: &str) -> Result<Message, ProtocolError> {
        decode_v2(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn decodes_v2_and_keeps_payload_bytes() {
        let m = v2(r#"["3","4","room:lobby","new_msg",{"body": "hi"}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.msg_ref.as_deref(), Some("4"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "new_msg");
        assert_eq!(m.payload, Payload::raw_json(r#"{"body": "hi"}"#));
        let m = v2(r#"[null,"5","phoenix","heartbeat",{},"extra",1]"#).unwrap();
        assert_eq!(m.join_ref, None);
    }

    #[test]
    fn rejects_bad_v2_shapes() {
        for bad in [
            "not json",
            "{}",
            r#"["1","2","t","e"]"#,
            r#"[1,"2","t","e",{}]"#,
            r#"["1",2,"t","e",{}]"#,
            r#"["1","2",3,"e",{}]"#,
            r#"["1","2","t",null,{}]"#,
            r#"["1","2","t","e",{}] trailing"#,
        ] {
            assert!(v2(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encodes_v2_frames() {
        let p = Payload::raw_json(r#"{"a":1}"#);
        let reply = Outgoing::Reply {
            join_ref: None,
            msg_ref: Some("7"),
            topic: "nope:1",
            status: "error",
            payload: &p,
        };
        assert_eq!(
            &encode_v2(reply)[..],
            br#"[null,"7","nope:1","phx_reply",{"status":"error","response":{"a":1}}]"#
        );
        let b = Outgoing::Broadcast {
            position: None,
            topic: "r\"1",
            event: "e",
            payload: &p,
        };
        assert_eq!(&encode_v2(b)[..], br#"[null,null,"r\"1","e",{"a":1}]"#);
        let e = Payload::empty();
        let c = Outgoing::Control {
            join_ref: "3",
            topic: "t",
            event: "phx_close",
            payload: &e,
        };
        assert_eq!(&encode_v2(c)[..], br#"["3","3","t","phx_close",{}]"#);
    }

    #[test]
    fn v1_round_trip() {
        let m = decode_v1(&Bytes::from_static(
            br#"{"topic":"t","event":"e","payload":[1],"ref":"9","join_ref":"1"}"#,
        ))
        .unwrap();
        assert_eq!(
            (
                m.topic.as_str(),
                m.msg_ref.as_deref(),
                m.join_ref.as_deref()
            ),
            ("t", Some("9"), Some("1"))
        );
        let p = Payload::empty();
        let out = encode_v1(Outgoing::Reply {
            join_ref: Some("1"),
            msg_ref: Some("9"),
            topic: "t",
            status: "ok",
            payload: &p,
        })
        .unwrap();
        assert_eq!(&out[..], br#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"9"}"#);
        assert!(decode_v1(&Bytes::from_static(br#"{"topic":"t","event":"e"}"#)).is_err());
    }
}
