//! The one HTTP/1.1 client of the tests: one request per connection (`Connection: close`, so a
//! round-robin proxy picks a node for each), any method, headers and body; the answer's status,
//! head and body (chunked bodies decoded). Plus the fallible broadcast a publisher uses while
//! nodes die.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// Bound on one request and its whole answer: long enough for a request through a proxy to a
/// node holding a long poll for its window, short enough that a hang fails the test.
pub const HTTP_WAIT: Duration = Duration::from_secs(20);

/// One request to `addr` (anything that resolves: `127.0.0.1:4000` or a `SocketAddr`);
/// returns status and body. A body without a `Content-Type` header is sent as JSON.
pub async fn http(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// Like [`http`], also returning the response head (lower-cased) for header checks.
pub async fn http_full(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
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
    let what = format!("{method} {path} on {addr}");
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        stream
            .write_all(req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .await
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        out
    };
    let out = tokio::time::timeout(HTTP_WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HTTP_WAIT:?}"));
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status in {text:?}"));
    let head = head.to_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head, body)
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
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
