//! HTTP/1.1 for the two requests the harness makes: `POST /api/broadcast` (publisher, on a
//! keep-alive connection it owns) and `GET /metrics` (server memory and CPU), on hyper's client
//! connection API. No pool: each publisher keeps one connection to one node and reconnects
//! itself after an error, so a dropped connection is counted where it happens.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest response body accepted (metrics pages are a few KiB).
const MAX_RESPONSE: usize = 4 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Socket error while connecting.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The request could not be built (bad method, path or header).
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The connection failed or the response could not be parsed.
    #[error("http: {0}")]
    Hyper(#[from] hyper::Error),
    /// The body failed mid-read or was larger than `MAX_RESPONSE`.
    #[error("response body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
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
    /// Requests go out here; hyper's connection task (spawned) drives the socket and ends when
    /// this is dropped.
    sender: SendRequest<Full<Bytes>>,
    /// `IP:PORT` for the Host header.
    host: String,
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn, HttpError> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // its errors reach the caller through the next `send_request`
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: addr.to_string(),
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
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(HttpError::Body)?
            .to_bytes()
            .to_vec();
        Ok(Response { status, body })
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    #[tokio::test]
    async fn a_body_over_the_limit_is_an_error() {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_RESPONSE + 1
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&vec![b'x'; MAX_RESPONSE + 1]).await;
        });
        let err = get(addr, "/metrics").await.unwrap_err();
        assert!(matches!(err, HttpError::Body(_)), "{err}");
    }
}
