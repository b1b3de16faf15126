//! The one WebSocket client of the tests: it speaks raw frames, so it can send anything
//! (including what a browser never would: unmasked, fragmented or oversized frames, bad UTF-8),
//! and reads every frame the server sends, control frames included. On top, the Phoenix
//! Channels basics: refs, join, a heartbeat that proves nothing else is queued. Handshakes that
//! a test expects to work panic when they do not; the `try_` ones return the error, for clients
//! racing a dying node.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// How long [`Client::until`] looks for a matching message among others.
pub const UNTIL_WAIT: Duration = Duration::from_secs(10);

/// One frame as the client sees it.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

/// A WebSocket connection after a successful upgrade.
pub struct Client {
    stream: TcpStream,
    /// Bytes read and not yet parsed into frames.
    buf: BytesMut,
    /// The last ref handed out by [`Client::next_ref`].
    next_ref: u64,
}

/// Build a client frame (masked unless `masked` is false).
pub fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut v = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n <= 0xffff => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// Why a handshake did not give a WebSocket.
#[derive(Debug, PartialEq)]
pub enum UpgradeError {
    /// The server answered with this HTTP status instead of 101.
    Status(u16),
    /// Connecting, writing or reading failed, or the server closed during the handshake.
    Io(String),
    /// No complete answer within the limit.
    Timeout,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Status(s) => write!(f, "status {s}"),
            UpgradeError::Io(e) => f.write_str(e),
            UpgradeError::Timeout => f.write_str("connect timed out"),
        }
    }
}

/// The upgrade request from source address `src` (`None`: the kernel chooses; e.g. 127.0.0.2
/// looks like another client to per-IP limits), all within `limit`. On 101, the stream and
/// whatever the server sent after the head.
pub async fn try_upgrade(
    src: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Result<(TcpStream, BytesMut), UpgradeError> {
    let io = |what: &str, e: std::io::Error| UpgradeError::Io(format!("{what}: {e}"));
    let attempt = async {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| io("socket", e))?;
        if let Some(ip) = src {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| io("bind", e))?;
        }
        let mut stream = socket.connect(addr).await.map_err(|e| io("connect", e))?;
        let _ = stream.set_nodelay(true);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| io("write", e))?;
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err(UpgradeError::Io("closed during handshake".into())),
                Ok(_) => {}
                Err(e) => return Err(io("read", e)),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| UpgradeError::Io(format!("no status in {head:?}")))?;
        if status != 101 {
            return Err(UpgradeError::Status(status));
        }
        buf.advance(end);
        Ok((stream, buf))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| UpgradeError::Timeout)?
}

/// The upgrade from the kernel's choice of source address, within [`WAIT`]; `Err` is the
/// status of a refusal. A failure to connect or a handshake cut short fails the test.
pub async fn upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, BytesMut), u16> {
    upgrade_from(None, addr, path, headers).await
}

/// [`upgrade`] from source address `src`.
pub async fn upgrade_from(
    src: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, BytesMut), u16> {
    match try_upgrade(src, addr, path, headers, WAIT).await {
        Ok(conn) => Ok(conn),
        Err(UpgradeError::Status(status)) => Err(status),
        Err(e) => panic!("WebSocket handshake with {addr}{path}: {e}"),
    }
}

/// A WebSocket that returns an error instead of panicking: connect, handshake and status all
/// within `limit`.
pub async fn try_connect(addr: SocketAddr, path: &str, limit: Duration) -> Result<Client, String> {
    try_connect_from(None, addr, path, limit).await
}

/// [`try_connect`] from source address `src`.
pub async fn try_connect_from(
    src: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<Client, String> {
    try_upgrade(src, addr, path, &[], limit)
        .await
        .map(|(stream, buf)| Client::from_upgraded(stream, buf))
        .map_err(|e| e.to_string())
}

impl Client {
    /// A client on a stream that has just been upgraded; `buf` holds what followed the head.
    pub fn from_upgraded(stream: TcpStream, buf: BytesMut) -> Client {
        Client {
            stream,
            buf,
            next_ref: 100,
        }
    }

    /// Connect to `addr` + `path` (e.g. `/socket/websocket?vsn=2.0.0`); panics when refused.
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::connect_with(addr, path, &[])
            .await
            .unwrap_or_else(|status| panic!("upgrade refused: {status}"))
    }

    /// Connect with extra request headers; `Err` is the status of a refusal.
    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let (stream, buf) = upgrade(addr, path, headers).await?;
        Ok(Client::from_upgraded(stream, buf))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&frame(0x81, text.as_bytes(), true)).await;
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.send_raw(&frame(0x82, data, true)).await;
    }

    /// One complete frame from the front of the buffer.
    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
        if b.len() < at + len {
            return None;
        }
        let op = b[0] & 0x0f;
        let payload = b[at..at + len].to_vec();
        self.buf.advance(at + len);
        Some(match op {
            1 => Frame::Text(String::from_utf8(payload).expect("server text is UTF-8")),
            2 => Frame::Binary(payload),
            8 => Frame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            9 => Frame::Ping(payload),
            10 => Frame::Pong(payload),
            other => panic!("unexpected opcode {other}"),
        })
    }

    /// Next frame; `None` on EOF or reset. Panics when the server goes silent for [`WAIT`]
    /// (a large frame may take longer, as long as its bytes keep coming).
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.parse() {
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"));
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame within `limit`: `Err(())` when nothing came, `Ok(None)` on EOF or reset.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<Frame>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(f) = self.parse() {
                return Ok(Some(f));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Some(Frame::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Text messages until one satisfies `pred` (others, binary and ping frames are skipped),
    /// within [`UNTIL_WAIT`]; a close frame or EOF fails the test.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + UNTIL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(Some(Frame::Text(t))) => {
                    let m: Value = serde_json::from_str(&t).expect("JSON text frame");
                    if pred(&m) {
                        return m;
                    }
                }
                Ok(Some(Frame::Close(code))) => {
                    panic!("server closed the WebSocket ({code:?}) while waiting for {what}")
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed while waiting for {what}"),
                Err(()) => panic!("no {what} within {UNTIL_WAIT:?}"),
            }
        }
    }

    /// Expect the server to close: returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Some(Frame::Close(code)) => return code,
                Some(Frame::Text(_)) | Some(Frame::Binary(_)) => continue,
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("connection dropped without a close frame"),
            }
        }
    }

    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Join `topic`; returns (join_ref, reply frame).
    pub async fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let r = self.next_ref();
        self.send_json(json!([r, r, topic, "phx_join", payload]))
            .await;
        (r, self.recv_json().await)
    }

    /// Join `topic`: the very next frame must be the ok reply with an empty response.
    pub async fn join_ok(&mut self, topic: &str) -> String {
        let (jr, reply) = self.join(topic, json!({})).await;
        assert_eq!(
            reply,
            json!([jr, jr, topic, "phx_reply", {"status": "ok", "response": {}}])
        );
        jr
    }

    /// Prove nothing else is queued: a heartbeat's reply must be the very next frame.
    pub async fn assert_nothing_queued(&mut self) {
        let r = self.next_ref();
        self.send_json(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(
            self.recv_json().await,
            json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
        );
    }

    /// Join `topic` with an empty payload, waiting at most `limit` for an ok reply; the error
    /// says what came instead.
    pub async fn try_join(&mut self, topic: &str, limit: Duration) -> Result<(), String> {
        let r = self.next_ref();
        let msg = json!([r, r, topic, "phx_join", {}]).to_string();
        let frame = frame(0x81, msg.as_bytes(), true);
        tokio::time::timeout(limit, self.stream.write_all(&frame))
            .await
            .map_err(|_| "join write timed out".to_string())?
            .map_err(|e| format!("join write: {e}"))?;
        match self.recv_within(limit).await {
            Ok(Some(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v[3] == "phx_reply" && v[4]["status"] == "ok" && v[1] == r.as_str() {
                    Ok(())
                } else {
                    Err(format!("join answered {v}"))
                }
            }
            Ok(other) => Err(format!("join answered {other:?}")),
            Err(()) => Err("no join reply".into()),
        }
    }

    /// Send a JSON text frame; false if the connection is gone (a write to a peer that has
    /// closed fails).
    pub async fn try_send_json(&mut self, v: Value) -> bool {
        let f = frame(0x81, v.to_string().as_bytes(), true);
        self.stream.write_all(&f).await.is_ok()
    }

    /// Send a close frame and wait (at most `limit`) for the server's close or EOF.
    pub async fn close_politely(mut self, limit: Duration) {
        let _ = self
            .stream
            .write_all(&frame(0x88, &1000u16.to_be_bytes(), true))
            .await;
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Some(f)) = self
            .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if matches!(f, Frame::Close(_)) {
                break;
            }
        }
    }
}
