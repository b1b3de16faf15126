//! `Wire`: the exact bytes a session expects for a server frame — its serializer (V1/V2, chosen
//! by `vsn`) times its transport's framing (a whole WebSocket frame, or a long-poll `messages`
//! entry). The Hub encodes a broadcast once per `Wire` present among a topic's subscribers and
//! shares the bytes, so this is the one place a server frame is built.

use bytes::{BufMut, Bytes, BytesMut};

use super::websocket::{encode_frame, OpCode};
use super::{json_string, Outgoing, Serializer};

/// How frames are wrapped for a transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// A complete WebSocket frame (header included), written as is.
    WebSocket,
    /// A long-poll `messages` entry: the frame's JSON text as a JSON string literal, quotes
    /// included, so a poll answer is the entries joined by commas. Binary cannot be carried.
    LongPoll,
}

/// The wire format of a session: serializer and framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wire {
    /// Serializer negotiated by `vsn`.
    pub serializer: Serializer,
    /// Framing of the transport.
    pub framing: Framing,
}

impl Wire {
    /// Number of distinct wire formats (size of per-broadcast encode caches).
    pub const COUNT: usize = 4;

    /// Dense index in `0..COUNT`.
    pub fn index(self) -> usize {
        let s = match self.serializer {
            Serializer::V1 => 0,
            Serializer::V2 => 1,
        };
        let f = match self.framing {
            Framing::WebSocket => 0,
            Framing::LongPoll => 2,
        };
        s + f
    }

    /// Encode a server frame for this wire; `None` when it cannot carry it.
    pub fn frame(self, out: Outgoing<'_>) -> Option<Bytes> {
        let enc = self.serializer.encode(out)?;
        match self.framing {
            Framing::WebSocket => {
                let op = if enc.text {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                Some(encode_frame(op, &enc.bytes))
            }
            Framing::LongPoll => {
                if !enc.text {
                    return None;
                }
                // Frames are JSON text, hence UTF-8.
                let text = std::str::from_utf8(&enc.bytes).ok()?;
                let mut b = BytesMut::with_capacity(enc.bytes.len() + enc.bytes.len() / 8 + 2);
                json_string(&mut b, text);
                Some(b.freeze())
            }
        }
    }
}

/// Join long-poll entries (`Framing::LongPoll` frames) into the `messages` array of a poll answer.
pub fn longpoll_messages(buf: &mut BytesMut, entries: &[Bytes]) {
    buf.put_u8(b'[');
    for (i, m) in entries.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(m);
    }
    buf.put_u8(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    #[test]
    fn longpoll_entries_are_json_string_literals() {
        let wire = Wire {
            serializer: Serializer::V2,
            framing: Framing::LongPoll,
        };
        let payload = Payload::raw_json(r#"{"a":"\"x\""}"#);
        let entry = wire
            .frame(Outgoing::Broadcast {
                position: None,
                topic: "t",
                event: "e",
                payload: &payload,
            })
            .unwrap();
        let text: String = serde_json::from_slice(&entry).unwrap();
        assert_eq!(text, r#"[null,null,"t","e",{"a":"\"x\""}]"#);
        let mut body = BytesMut::new();
        longpoll_messages(&mut body, &[entry.clone(), entry]);
        let list: Vec<String> = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.len(), 2);
        let binary = Payload::Binary(Bytes::from_static(b"\x00\x01"));
        let out = Outgoing::Broadcast {
            position: None,
            topic: "t",
            event: "e",
            payload: &binary,
        };
        assert_eq!(wire.frame(out), None);
    }
}
