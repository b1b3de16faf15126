//! `/ws-echo`: a plain WebSocket echo on the same connection driver as Phoenix sessions, so the
//! Autobahn conformance cases exercise the real frame codec. Off unless `--ws-echo`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::websocket::codec::{encode_frame, OpCode};
use super::websocket::{finish_upgrade, Conn, ConnLimits, Handler};
use crate::node::Node;
use crate::pubsub::Broadcast;
use crate::session::{Close, OutItem, OutboxLimits, SessionHandle, TransportKind};

/// Echo limits: large enough for the Autobahn 9.* cases (16 MiB messages).
const ECHO_LIMITS: ConnLimits = ConnLimits {
    max_message: 64 << 20,
    outbox: OutboxLimits {
        max_items: 1 << 16,
        max_bytes: 256 << 20,
    },
};

/// `GET /ws-echo`.
pub async fn handshake(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    if !node.config.ws_echo {
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
        let handle = node.registry.register(TransportKind::WebSocket);
        let mut echo = Echo {
            handle: handle.clone(),
        };
        Conn::new(stream, leftover, node.clone(), handle.clone(), ECHO_LIMITS)
            .run(&mut echo)
            .await;
        node.registry.remove(handle.key);
    });
    resp.map(Body::new)
}

struct Echo {
    handle: Arc<SessionHandle>,
}

impl Handler for Echo {
    async fn on_message(&mut self, text: bool, data: Bytes) -> Result<(), Close> {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.handle
            .outbox
            .push(OutItem::Frame(encode_frame(op, &data)), ECHO_LIMITS.outbox);
        Ok(())
    }

    async fn on_intercept(&mut self, _msg: Arc<Broadcast>) -> Option<Bytes> {
        None
    }
}
