//! Test support: start nodes in-process on `127.0.0.1:0`, a raw WebSocket client that can send
//! anything (including frames a browser never would), and a minimal HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use gateway::{Config, Gateway};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod process;
pub mod redis;

// Not every test crate uses them.
#[allow(unused_imports)]
pub use process::{GatewayProcess, LoggedGateway};

pub const WAIT: Duration = Duration::from_secs(5);

/// A node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gateway::Error>>>,
}

impl TestNode {
    /// A node; with no channel rules it serves `room:*` like the demo channel but without
    /// presence, so tests see exactly the frames they assert (presence has its own tests).
    pub async fn start(mut config: Config) -> Self {
        if config.channels.is_empty() {
            config.channels = vec![gateway::config::ChannelSpec::public(
                "room:*",
                &["new_msg", "shout"],
            )];
        }
        Self::start_gateway(Gateway::new(config)).await
    }

    pub async fn start_gateway(gw: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(listener, async move {
            let _ = rx.await;
        }));
        TestNode {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Start the drain (as SIGTERM does) and wait for the node to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Start the drain without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), gateway::Error>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }

    pub async fn ws(&self) -> Client {
        Client::connect(self.addr, "/socket/websocket?vsn=2.0.0").await
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http(self.addr, method, path, headers, body).await
    }

    pub async fn broadcast(&self, topic: &str, event: &str, payload: Value) {
        let body = json!({"topic": topic, "event": event, "payload": payload}).to_string();
        let (status, text) = self.http("POST", "/api/broadcast", &[], &body).await;
        assert_eq!(status, 202, "{text}");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One frame as the client sees it.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
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

/// Send an HTTP upgrade request; returns the stream on 101, or the status code.
pub async fn upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, BytesMut), u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .expect("handshake timed out")
            .unwrap();
        assert!(n > 0, "connection closed during handshake");
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 101 {
        return Err(status);
    }
    buf.advance(end);
    Ok((stream, buf))
}

impl Client {
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::connect_with(addr, path, &[])
            .await
            .expect("upgrade refused")
    }

    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let (stream, buf) = upgrade(addr, path, headers).await?;
        Ok(Client {
            stream,
            buf,
            next_ref: 100,
        })
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

    /// Next frame; `None` on EOF.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.parse() {
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no frame within 5 s");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Some(Frame::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
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
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// Like `http`, also returning the response head (lower-cased) for header checks.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let has_type = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !has_type {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_lowercase(), b.to_string()))
        .unwrap_or_default();
    (status, head, body)
}

/// An HS256 JWT for tests.
pub fn jwt(secret: &str, claims: Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(claims.to_string());
    let input = format!("{head}.{body}");
    let sig = hmac_sha256(secret.as_bytes(), input.as_bytes());
    format!("{input}.{}", b64.encode(sig))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- fault-suite helpers
// Used by `faults.rs`: the `gateway` binary as a child process, fallible client operations
// (a client racing a dying node must see an error, not panic), and metric parsing.

/// Polls `f` every 20 ms until it holds; panics naming `what` after `limit`. Returns how long
/// it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The value of the series written exactly `series` (metric name plus labels as rendered,
/// e.g. `gateway_disconnects_total{reason="drain"}`) in a Prometheus text exposition; 0 when
/// the series is absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.starts_with(' ')
                .then(|| rest.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

impl Client {
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

/// A WebSocket upgrade that returns an error instead of panicking: connect, handshake and
/// status all within `limit`.
pub async fn try_connect(addr: SocketAddr, path: &str, limit: Duration) -> Result<Client, String> {
    try_connect_from(None, addr, path, limit).await
}

/// [`try_connect`] from source address `src` (e.g. 127.0.0.2, to look like another client
/// address to per-IP limits); `None` lets the kernel choose.
pub async fn try_connect_from(
    src: Option<std::net::IpAddr>,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<Client, String> {
    let attempt = async {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = src {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind: {e}"))?;
        }
        let mut stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("closed during handshake".to_string()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "101" {
            return Err(format!("status {status}"));
        }
        buf.advance(end);
        Ok(Client {
            stream,
            buf,
            next_ref: 100,
        })
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// POST /api/broadcast to `addr`; true when the node answered 202, false on any failure
/// (refused, reset, timeout, other status), so a publisher can keep going while a node dies.
pub async fn try_broadcast(addr: SocketAddr, topic: &str, event: &str, payload: Value) -> bool {
    let body = json!({"topic": topic, "event": event, "payload": payload}).to_string();
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.ok()?;
        Some(out.starts_with(b"HTTP/1.1 202"))
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
