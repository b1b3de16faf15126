//! V2 binary frames (phoenix.js `ArrayBuffer` payloads): kind 0 push (client → server and
//! server → client, with asymmetric headers), kind 1 reply and kind 2 broadcast. Every length
//! field is one unsigned byte, so refs, topic and event are at most 255 bytes each.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Message, Outgoing, Payload, ProtocolError};

/// The kind byte of a binary frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// `0`: a push.
    Push = 0,
    /// `1`: a reply.
    Reply = 1,
    /// `2`: a broadcast.
    Broadcast = 2,
}

/// Decode a client binary frame. Only kind 0 (push) is valid from clients.
pub fn decode_binary_push(frame: Bytes) -> Result<Message, ProtocolError> {
    if frame.len() < 5 {
        return Err(ProtocolError::MalformedBinary(
            "frame shorter than its header",
        ));
    }
    if frame[0] != BinaryKind::Push as u8 {
        return Err(ProtocolError::MalformedBinary(
            "clients may only send push frames (kind 0)",
        ));
    }
    let lens = [
        frame[1] as usize,
        frame[2] as usize,
        frame[3] as usize,
        frame[4] as usize,
    ];
    let header_end = 5 + lens.iter().sum::<usize>();
    if frame.len() < header_end {
        return Err(ProtocolError::MalformedBinary(
            "frame shorter than its declared fields",
        ));
    }
    let mut at = 5;
    let mut field = |len: usize| -> Result<String, ProtocolError> {
        let s = std::str::from_utf8(&frame[at..at + len])
            .map_err(|_| ProtocolError::MalformedBinary("field is not UTF-8"))?;
        at += len;
        Ok(s.to_owned())
    };
    let (join_ref, msg_ref, topic, event) = (
        field(lens[0])?,
        field(lens[1])?,
        field(lens[2])?,
        field(lens[3])?,
    );
    // Phoenix writes a missing ref as the empty string.
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(Message {
        join_ref: opt(join_ref),
        msg_ref: opt(msg_ref),
        topic,
        event,
        payload: Payload::Binary(frame.slice(header_end..)),
    })
}

/// The binary kind an outgoing frame needs, or `None` when it is JSON.
pub(super) fn binary_kind(out: &Outgoing<'_>) -> Option<BinaryKind> {
    match out {
        Outgoing::Reply {
            payload: Payload::Binary(_),
            ..
        } => Some(BinaryKind::Reply),
        Outgoing::Push {
            payload: Payload::Binary(_),
            ..
        } => Some(BinaryKind::Push),
        Outgoing::Broadcast {
            payload: Payload::Binary(_),
            ..
        } => Some(BinaryKind::Broadcast),
        _ => None,
    }
}

fn len_u8(s: &str) -> Option<u8> {
    u8::try_from(s.len()).ok()
}

/// Encode a frame with a binary payload. `None` when a field is longer than 255 bytes.
pub fn encode_binary(out: Outgoing<'_>) -> Option<Bytes> {
    let mut buf;
    match out {
        // a binary push has no ref slot: an intercepted broadcast's position is not carried
        Outgoing::Push {
            join_ref,
            topic,
            event,
            payload,
            ..
        } => {
            let jr = join_ref.unwrap_or("");
            buf = BytesMut::with_capacity(
                4 + jr.len() + topic.len() + event.len() + payload.bytes().len(),
            );
            buf.put_slice(&[
                BinaryKind::Push as u8,
                len_u8(jr)?,
                len_u8(topic)?,
                len_u8(event)?,
            ]);
            for s in [jr, topic, event] {
                buf.put_slice(s.as_bytes());
            }
            buf.put_slice(payload.bytes());
        }
        Outgoing::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            payload,
        } => {
            let (jr, r) = (join_ref.unwrap_or(""), msg_ref.unwrap_or(""));
            buf = BytesMut::with_capacity(
                5 + jr.len() + r.len() + topic.len() + status.len() + payload.bytes().len(),
            );
            buf.put_slice(&[
                BinaryKind::Reply as u8,
                len_u8(jr)?,
                len_u8(r)?,
                len_u8(topic)?,
                len_u8(status)?,
            ]);
            for s in [jr, r, topic, status] {
                buf.put_slice(s.as_bytes());
            }
            buf.put_slice(payload.bytes());
        }
        Outgoing::Broadcast {
            topic,
            event,
            payload,
            ..
        } => {
            buf = BytesMut::with_capacity(3 + topic.len() + event.len() + payload.bytes().len());
            buf.put_slice(&[BinaryKind::Broadcast as u8, len_u8(topic)?, len_u8(event)?]);
            buf.put_slice(topic.as_bytes());
            buf.put_slice(event.as_bytes());
            buf.put_slice(payload.bytes());
        }
        Outgoing::Control { .. } => return None,
    }
    Some(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_captured_client_push() {
        let frame = Bytes::from_static(&[
            0x00, 0x01, 0x01, 0x06, 0x06, 0x31, 0x33, 0x72, 0x6f, 0x6f, 0x6d, 0x3a, 0x31, 0x75,
            0x70, 0x6c, 0x6f, 0x61, 0x64, 0x41, 0x42,
        ]);
        let m = decode_binary_push(frame).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.msg_ref.as_deref(), Some("3"));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("room:1", "upload"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(b"AB")));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &[][..],
            &[0, 1, 1],
            &[1, 0, 0, 0, 0],
            &[0, 9, 0, 0, 0, 1],
            &[0, 1, 0, 0, 0, 0xff],
        ] {
            assert!(
                decode_binary_push(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn encodes_server_kinds() {
        let p = Payload::Binary(Bytes::from_static(b"AB"));
        let b = encode_binary(Outgoing::Broadcast {
            position: None,
            topic: "t",
            event: "e",
            payload: &p,
        })
        .unwrap();
        assert_eq!(&b[..], &[2, 1, 1, b't', b'e', b'A', b'B']);
        let push = encode_binary(Outgoing::Push {
            join_ref: Some("1"),
            position: None,
            topic: "t",
            event: "e",
            payload: &p,
        })
        .unwrap();
        assert_eq!(&push[..], &[0, 1, 1, 1, b'1', b't', b'e', b'A', b'B']);
        let r = encode_binary(Outgoing::Reply {
            join_ref: Some("1"),
            msg_ref: Some("2"),
            topic: "t",
            status: "ok",
            payload: &p,
        })
        .unwrap();
        assert_eq!(
            &r[..],
            &[1, 1, 1, 1, 2, b'1', b'2', b't', b'o', b'k', b'A', b'B']
        );
        let long = "x".repeat(256);
        assert!(encode_binary(Outgoing::Broadcast {
            position: None,
            topic: &long,
            event: "e",
            payload: &p
        })
        .is_none());
    }
}
