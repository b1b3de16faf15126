//! `/ws-echo`: a plain WebSocket echo on the same connection driver as Phoenix sessions, so the
//! Autobahn conformance cases exercise the real frame codec. Off unless `--ws-echo`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::websocket::{finish_upgrade, Conn, ConnLimits, Handler};
use crate::edge::Edge;
use crate::outbox::{OutItem, OutboxLimits};
use crate::protocol::websocket::{encode_frame, OpCode};
use crate::protocol::Close;
use crate::registry::{SessionHandle, TransportKind};

/// Echo limits: large enough for the Autobahn 9.* cases (16 MiB messages).
const ECHO_LIMITS: ConnLimits = ConnLimits {
    max_message: 64 << 20,
    outbox: OutboxLimits {
        max_items: 1 << 16,
        max_bytes: 256 << 20,
    },
};

/// `GET /ws-echo`.
pub async fn handshake(State(edge): State<Arc<Edge>>, mut req: Request) -> Response {
    if !edge.config.ws_echo {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    tokio::spawn(async move {
        let Some((stream, leftover)) = finish_upgrade(fut).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let handle = edge.core.registry.register(TransportKind::WebSocket);
        let mut echo = Echo {
            handle: handle.clone(),
        };
        Conn::new(stream, leftover, edge.clone(), handle.clone(), ECHO_LIMITS)
            .run(&mut echo)
            .await;
        edge.core.registry.remove(handle.key);
    });
    resp.map(Body::new)
}

struct Echo {
    handle: Arc<SessionHandle>,
}

impl Handler for Echo {
    async fn on_message(&mut self, binary: bool, data: Bytes) -> Result<(), Close> {
        let op = if binary { OpCode::Binary } else { OpCode::Text };
        self.handle
            .outbox
            .push(OutItem::Frame(encode_frame(op, &data)), ECHO_LIMITS.outbox);
        Ok(())
    }

    async fn render(&mut self, item: OutItem) -> Option<Bytes> {
        match item {
            OutItem::Frame(frame) => Some(frame),
            OutItem::Intercept(_) => None,
        }
    }
}
