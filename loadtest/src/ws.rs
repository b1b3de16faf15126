//! The lean WebSocket client: the HTTP/1.1 upgrade handshake and the RFC 6455 frame codec.
//!
//! Hand-written on purpose: the load generator must hold tens of thousands of idle sessions per
//! process, so nothing here keeps a buffer between calls. Client frames are masked (RFC 6455
//! §5.3) with a cheap per-frame key; server frames are parsed straight out of a caller-owned
//! byte slice, so an idle connection owns no read buffer at all.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The GUID every server appends to the key before hashing (RFC 6455 §1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Upper bound for the 101 response head; a longer one is treated as a broken server.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// WebSocket opcodes used by the client.
pub mod opcode {
    /// UTF-8 text message (Phoenix JSON serializers).
    pub const TEXT: u8 = 0x1;
    /// Close control frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping control frame.
    pub const PING: u8 = 0x9;
    /// Pong control frame.
    pub const PONG: u8 = 0xA;
}

/// Why a handshake or frame failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// Socket error while handshaking.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before finishing the response head.
    #[error("connection closed during handshake")]
    ClosedInHandshake,
    /// The response was not `101 Switching Protocols`.
    #[error("upgrade refused: {0}")]
    Refused(String),
    /// The `Sec-WebSocket-Accept` header was missing or wrong.
    #[error("bad Sec-WebSocket-Accept")]
    BadAccept,
    /// The response head was larger than [`MAX_RESPONSE_HEAD`].
    #[error("response head too large")]
    HeadTooLarge,
    /// A server frame violated RFC 6455 (e.g. masked, reserved bits, oversized control frame).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// Counter feeding [`next_mask`]; masks only need to be unpredictable to proxies, not secret.
static MASK_STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// A fresh 4-byte masking key (splitmix64 over a shared counter: cheap and lock-free).
fn next_mask() -> [u8; 4] {
    let mut z = MASK_STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let b = (z ^ (z >> 31)).to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// `base64(sha1(key + GUID))`, what the server must answer in `Sec-WebSocket-Accept`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Performs the client upgrade on a connected stream. Returns any bytes the server sent after
/// the response head (normally none: the server speaks only after the client's first frame).
pub async fn handshake(stream: &mut TcpStream, host: &str, path: &str) -> Result<Vec<u8>, WsError> {
    let mut key_bytes = [0u8; 16];
    key_bytes[..4].copy_from_slice(&next_mask());
    key_bytes[4..8].copy_from_slice(&next_mask());
    key_bytes[8..12].copy_from_slice(&next_mask());
    key_bytes[12..].copy_from_slice(&next_mask());
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

    let mut head = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WsError::ClosedInHandshake);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&head, b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(WsError::HeadTooLarge);
        }
    };
    check_response(&head[..end], &key)?;
    Ok(head.split_off(end))
}

/// Validates the status line and the accept header of a 101 response head.
fn check_response(head: &[u8], key: &str) -> Result<(), WsError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(WsError::Refused(status.to_string()));
    }
    let expected = accept_key(key);
    let ok = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        })
    });
    if ok {
        Ok(())
    } else {
        Err(WsError::BadAccept)
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Encodes one final, masked client frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 14);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = next_mask();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Writes `text` as one final, masked text frame.
pub async fn send_text(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    stream
        .write_all(&encode_frame(opcode::TEXT, text.as_bytes()))
        .await
}

/// What one [`read_some`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `n` bytes; more may be waiting (the buffer was filled).
    More(usize),
    /// `n` bytes (possibly 0) and the socket is drained: wait for readiness before reading again.
    Drained(usize),
    /// End of stream.
    Eof,
}

/// One non-blocking read into `buf`. A short read means the socket is drained, so readiness is
/// cleared right away (as tokio's own `poll_read` does) instead of by a second read that would
/// only fail with `WouldBlock`: that saves one system call per received burst.
pub fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<Read> {
    let mut got = 0;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        got = stream.try_read(buf)?;
        if got > 0 && got < buf.len() {
            // Makes try_io clear the readiness it observed (a newer event is kept).
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match r {
        Ok(()) if got == 0 => Ok(Read::Eof),
        Ok(()) => Ok(Read::More(got)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Read::Drained(got)),
        Err(e) => Err(e),
    }
}

/// A close frame carrying `code` (no reason text).
pub fn close_frame(code: u16) -> Vec<u8> {
    encode_frame(opcode::CLOSE, &code.to_be_bytes())
}

/// One server frame parsed out of a byte slice; `payload` indexes into that slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit: last fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: u8,
    /// Byte range of the (unmasked) payload inside the parsed slice.
    pub payload: std::ops::Range<usize>,
    /// Total bytes of the frame (header + payload): how far to advance.
    pub len: usize,
}

/// Parses one server frame from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Protocol("masked server frame"));
    }
    let opcode = b0 & 0x0F;
    let (len, header): (usize, usize) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = usize::try_from(u64::from_be_bytes(b))
                .map_err(|_| WsError::Protocol("frame length overflow"))?;
            (len, 10)
        }
        n => (n as usize, 2),
    };
    if opcode >= opcode::CLOSE && (len > 125 || b0 & 0x80 == 0) {
        return Err(WsError::Protocol("bad control frame"));
    }
    let total = header
        .checked_add(len)
        .ok_or(WsError::Protocol("frame length overflow"))?;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode,
        payload: header..total,
        len: total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn encoded_frames_are_masked_and_round_trip() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = encode_frame(opcode::TEXT, &payload);
            assert_eq!(f[0], 0x81);
            assert_ne!(f[1] & 0x80, 0, "client frames must be masked");
            // Unmask like a server would.
            let (plen, off) = match f[1] & 0x7F {
                126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!(plen, len);
            let mask = &f[off..off + 4];
            let body: Vec<u8> = f[off + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn parse_handles_partial_and_extended_lengths() {
        let mut buf = vec![0x81, 126, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(parse_frame(&buf[..3]).unwrap(), None);
        assert_eq!(parse_frame(&buf[..100]).unwrap(), None);
        let f = parse_frame(&buf).unwrap().unwrap();
        assert!(f.fin);
        assert_eq!(f.opcode, opcode::TEXT);
        assert_eq!(f.payload, 4..260);
        assert_eq!(f.len, 260);
        assert!(parse_frame(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "masked");
        assert!(parse_frame(&[0x09, 0]).is_err(), "fragmented ping");
    }

    #[test]
    fn response_check_rejects_wrong_status_and_accept() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_response(good, key).is_ok());
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(check_response(bad, key), Err(WsError::BadAccept)));
        let refused = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert!(matches!(
            check_response(refused, key),
            Err(WsError::Refused(_))
        ));
    }
}
