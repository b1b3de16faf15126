//! Transports move frames between a client and its Session; they hold no protocol logic.
//! `Wire` names the exact bytes a session expects (serializer × framing), which is what the Hub
//! encodes once per broadcast.

pub mod connect;
pub mod echo;
pub mod longpoll;
pub mod websocket;

use bytes::Bytes;

use crate::protocol::{Outgoing, Serializer};
use websocket::codec::{encode_frame, OpCode};

/// How frames are wrapped for a transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// A complete WebSocket frame (header included), written as is.
    WebSocket,
    /// The bare text of the frame (a long-poll `messages` entry); binary cannot be carried.
    Text,
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
            Framing::Text => 2,
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
            Framing::Text => enc.text.then_some(enc.bytes),
        }
    }
}
