//! The server: the HTTP router and the accept loop. Each connection is served by hyper's HTTP/1
//! builder directly (not `axum::serve`) so an upgraded WebSocket can be taken back as the raw
//! `TcpStream` — the basis of the low-memory connection design — and so slow clients get a
//! header-read timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::admission::PeerAddr;
use crate::edge::Edge;
use crate::transport::longpoll::{self, LongPoll};
use crate::transport::{echo, websocket};
use crate::{demo, http_api};

/// Longest a client may take to send request headers (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route of a node.
pub fn router(edge: Arc<Edge>, longpoll: Arc<LongPoll>) -> axum::Router {
    let longpoll = axum::Router::new()
        .route("/socket/longpoll", any(longpoll::endpoint))
        .with_state(longpoll);
    axum::Router::new()
        .route("/socket/websocket", get(websocket::handshake))
        .route("/ws-echo", get(echo::handshake))
        .route("/api/broadcast", post(http_api::broadcast))
        .route("/api/disconnect", post(http_api::disconnect))
        .route("/healthz", get(http_api::healthz))
        .route("/readyz", get(http_api::readyz))
        .route("/metrics", get(http_api::metrics))
        .route("/", get(demo::page))
        .route("/assets/phoenix.min.js", get(demo::phoenix_js))
        .with_state(edge)
        .merge(longpoll)
}

/// Accept connections until `stop` is cancelled.
pub async fn accept_loop(listener: TcpListener, router: axum::Router, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Admission needs the peer address (per-IP connect rate).
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            },
        ));
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}
