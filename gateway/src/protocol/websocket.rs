//! The RFC 6455 frame codec for the server side (bytes only; the connection driver in
//! `transport::websocket` does the I/O): parsing client frames out of a byte buffer (with
//! every check the RFC asks of a server) and building server frames as single `Bytes` so one
//! encoded broadcast can be written to many sessions unchanged.
//!
//! fastwebsockets' reader is not used here: it allocates an 8 KiB buffer per connection up
//! front, is not cancel-safe, does not bound fragmented messages, and does not reject unmasked
//! client frames. This codec parses from a buffer the connection allocates only while bytes are
//! in flight; fastwebsockets still does the handshake and the (SIMD-friendly) unmasking.

use bytes::{BufMut, Bytes, BytesMut};

use super::CloseCode;

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One parsed, unmasked client frame.
#[derive(Debug)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Unmasked payload.
    pub payload: Bytes,
}

/// Why a frame could not be accepted, with the close code the connection must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Violates RFC 6455 (reserved bits/opcodes, unmasked, bad control frame): close 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Larger than the configured maximum message size: close 1009.
    #[error("message too big")]
    TooBig,
    /// Text that is not UTF-8, or a close reason that is not: close 1007.
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::Protocol(_) => CloseCode::PROTOCOL_ERROR,
            FrameError::TooBig => CloseCode::TOO_BIG,
            FrameError::InvalidUtf8 => CloseCode::INVALID_DATA,
        }
    }
}

/// Parse one frame from the front of `buf`, consuming it. `Ok(None)` when more bytes are needed;
/// in that case `buf` is reserved to hold the whole frame (bounded by `max_payload`).
pub fn parse_frame(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(FrameError::Protocol("reserved opcode"))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "fragmented or oversized control frame",
        ));
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    let total = at + 4 + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let mut frame = buf.split_to(total);
    let mut payload = frame.split_off(at);
    fastwebsockets::unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// Build a complete server frame (FIN set, unmasked).
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    buf.put_u8(0x80 | opcode.as_u8());
    match payload.len() {
        n if n < 126 => buf.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            buf.put_u8(126);
            buf.put_u16(n as u16);
        }
        n => {
            buf.put_u8(127);
            buf.put_u64(n as u64);
        }
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// Build a close frame with a code and a short reason.
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.0.to_be_bytes());
    // Control frames carry at most 125 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Close, &p)
}

/// Validate a client close payload. `Ok(Some(code))` to echo, `Ok(None)` for an empty close.
pub fn parse_close(payload: &[u8]) -> Result<Option<CloseCode>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(CloseCode(code)))
        }
    }
}

/// Reassembles fragmented data messages, bounding their total size.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Opcode (text/binary) of the message in progress; `None` when no message is open.
    opcode: Option<OpCode>,
    /// Payload collected so far.
    data: BytesMut,
}

impl Assembler {
    /// Feed a data frame (text, binary or continuation). Returns the complete message when `fin`.
    pub fn push(
        &mut self,
        frame: Frame,
        max: usize,
    ) -> Result<Option<(OpCode, Bytes)>, FrameError> {
        match (frame.opcode, self.opcode) {
            (OpCode::Continuation, None) => {
                Err(FrameError::Protocol("continuation without a message"))
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                Err(FrameError::Protocol("new message inside a fragmented one"))
            }
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.fin => {
                Ok(Some((op, frame.payload)))
            }
            (op @ (OpCode::Text | OpCode::Binary), None) => {
                self.opcode = Some(op);
                self.data = BytesMut::from(&frame.payload[..]);
                Ok(None)
            }
            (OpCode::Continuation, Some(op)) => {
                if self.data.len() + frame.payload.len() > max {
                    return Err(FrameError::TooBig);
                }
                self.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                self.opcode = None;
                Ok(Some((op, std::mem::take(&mut self.data).freeze())))
            }
            // The connection handles control frames itself; they never reach the assembler.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => {
                Err(FrameError::Protocol("control frame"))
            }
        }
    }

    /// Whether a fragmented message is in progress.
    pub fn in_progress(&self) -> bool {
        self.opcode.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(b0: u8, payload: &[u8]) -> BytesMut {
        let mask = [1, 2, 3, 4];
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        BytesMut::from(&v[..])
    }

    #[test]
    fn parses_masked_frames_incrementally() {
        let whole = client_frame(0x81, b"hello");
        let mut buf = BytesMut::from(&whole[..3]);
        assert!(parse_frame(&mut buf, 100).unwrap().is_none());
        buf.extend_from_slice(&whole[3..]);
        let f = parse_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (true, OpCode::Text, &b"hello"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_what_the_rfc_forbids() {
        let mut unmasked = BytesMut::from(&[0x81, 0x01, b'a'][..]);
        assert_eq!(
            parse_frame(&mut unmasked, 10).unwrap_err(),
            FrameError::Protocol("unmasked client frame")
        );
        assert!(matches!(
            parse_frame(&mut client_frame(0xC1, b"a"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_frame(&mut client_frame(0x83, b"a"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_frame(&mut client_frame(0x09, b"a"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert_eq!(
            parse_frame(&mut client_frame(0x82, &[0; 200]), 100).unwrap_err(),
            FrameError::TooBig
        );
    }

    #[test]
    fn bounds_fragmented_messages() {
        let mut a = Assembler::default();
        let frag = |op, fin, n| Frame {
            fin,
            opcode: op,
            payload: Bytes::from(vec![b'x'; n]),
        };
        assert!(a
            .push(frag(OpCode::Text, false, 60), 100)
            .unwrap()
            .is_none());
        assert_eq!(
            a.push(frag(OpCode::Continuation, false, 60), 100)
                .unwrap_err(),
            FrameError::TooBig
        );
        let mut a = Assembler::default();
        assert!(a
            .push(frag(OpCode::Binary, false, 10), 100)
            .unwrap()
            .is_none());
        let (op, data) = a
            .push(frag(OpCode::Continuation, true, 10), 100)
            .unwrap()
            .unwrap();
        assert_eq!((op, data.len()), (OpCode::Binary, 20));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert!(parse_close(&[3]).is_err());
        assert!(parse_close(&[0x03, 0xe8 + 6]).is_err()); // 1006 may not be sent
        assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some(CloseCode(1000))));
        assert_eq!(
            parse_close(&[0x03, 0xe8, 0xff]),
            Err(FrameError::InvalidUtf8)
        );
        let f = encode_close(CloseCode(1001), "bye");
        assert_eq!(&f[..], &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
    }
}
