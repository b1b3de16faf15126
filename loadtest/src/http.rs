//! A minimal keep-alive HTTP/1.1 client for the two requests the harness makes: `POST
//! /api/broadcast` (publisher) and `GET /metrics` (server memory and CPU).
//!
//! Hand-written like the WebSocket client so the crate needs no HTTP client stack; it supports
//! exactly what those endpoints answer with: `Content-Length`, chunked, or read-to-EOF bodies.

use crate::ws::find;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response accepted (metrics pages are a few KiB).
const MAX_RESPONSE: usize = 4 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The response could not be parsed.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The connection closed before a complete response.
    #[error("connection closed mid-response")]
    Closed,
}

/// A response status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

/// One keep-alive connection to a node.
#[derive(Debug)]
pub struct HttpConn {
    /// The socket.
    stream: TcpStream,
    /// `IP:PORT` for the Host header.
    host: String,
    /// Bytes read past the previous response (pipelining leftovers; normally empty).
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn, HttpError> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(HttpConn {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
        })
    }

    /// Sends one request and reads its response. `headers` are extra `Name: value` pairs.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        self.stream.write_all(&wire).await?;
        self.read_response().await
    }

    /// Reads more bytes into `buf`; false on EOF.
    async fn fill(&mut self) -> Result<bool, HttpError> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if self.buf.len() + n > MAX_RESPONSE {
            return Err(HttpError::Malformed("response too large"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Parses one response from the stream.
    async fn read_response(&mut self) -> Result<Response, HttpError> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill().await? {
                return Err(HttpError::Closed);
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or(HttpError::Malformed("status line"))?;
        let (mut length, mut chunked) = (None, false);
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    length = Some(v.parse().map_err(|_| HttpError::Malformed("length"))?);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let body = if chunked {
            self.read_chunked().await?
        } else if let Some(n) = length {
            while self.buf.len() < n {
                if !self.fill().await? {
                    return Err(HttpError::Closed);
                }
            }
            self.buf.drain(..n).collect()
        } else {
            while self.fill().await? {}
            std::mem::take(&mut self.buf)
        };
        Ok(Response { status, body })
    }

    /// Reads a chunked body.
    async fn read_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                if !self.fill().await? {
                    return Err(HttpError::Closed);
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]);
            let size_hex = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| HttpError::Malformed("chunk size"))?;
            while self.buf.len() < line_end + 2 + size + 2 {
                if !self.fill().await? {
                    return Err(HttpError::Closed);
                }
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// One-shot `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, HttpError> {
    let mut c = HttpConn::connect(addr).await?;
    c.request("GET", path, &[("Connection", "close")], b"")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves the given raw responses, one per request, on a loopback listener.
    async fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for r in responses {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(r).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ])
        .await;
        let mut c = HttpConn::connect(addr).await.unwrap();
        let r = c.request("POST", "/x", &[], b"{}").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"ok"[..]));
        let r = c.request("GET", "/y", &[], b"").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    }
}
