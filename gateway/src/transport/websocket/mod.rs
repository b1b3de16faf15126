//! The WebSocket transport: the `/socket/websocket` handshake (serializer negotiation by `vsn`,
//! Origin check, the phoenix.js `authToken` subprotocol, token verification — every refusal is an
//! HTTP answer before the upgrade) and the glue from a connection to its Session.

pub mod codec;
mod conn;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

pub use conn::{Conn, ConnLimits, Ended, Handler};

use super::connect::authorize;
use super::{Framing, Wire};
use crate::node::Node;
use crate::protocol::ProtocolError;
use crate::pubsub::Broadcast;
use crate::session::{Close, CloseCode, Session, TransportKind};

/// Prefix of the subprotocol that carries phoenix.js's `authToken`.
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// The `authToken` from `Sec-WebSocket-Protocol`, and whether the client offered `phoenix`.
fn auth_token(headers: &HeaderMap) -> (Option<String>, bool) {
    let mut token = None;
    let mut phoenix = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for proto in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if proto == "phoenix" {
                phoenix = true;
            } else if let Some(b64) = proto.strip_prefix(AUTH_TOKEN_PREFIX) {
                let b64 = b64.trim_end_matches('=');
                let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b64)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64));
                token = bytes.ok().and_then(|b| String::from_utf8(b).ok());
            }
        }
    }
    (token, phoenix)
}

fn refuse(node: &Node, status: StatusCode, reason: &'static str) -> Response {
    node.metrics
        .connect_refusals
        .with_label_values(&[reason])
        .inc();
    debug!(reason, "websocket connect refused");
    let mut resp = status.into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// Whether a request asks for a WebSocket upgrade.
fn is_upgrade(req: &Request) -> bool {
    fastwebsockets::upgrade::is_upgrade_request(req)
}

/// `GET /socket/websocket`.
pub async fn handshake(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    if !is_upgrade(&req) {
        return refuse(&node, StatusCode::BAD_REQUEST, "not_upgrade");
    }
    if node.is_draining() {
        return refuse(&node, StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    // Before the token check: refusing is cheap, verifying a signature is not.
    if let Err(refusal) = node.admit(req.extensions().get()) {
        debug!(reason = refusal.label(), "websocket connect refused");
        return refusal.response();
    }
    let (sub_token, offered_phoenix) = auth_token(req.headers());
    let (serializer, claims) = match authorize(
        &node,
        req.uri().query(),
        req.headers(),
        sub_token.as_deref(),
    ) {
        Ok(x) => x,
        Err(reason) => return refuse(&node, StatusCode::FORBIDDEN, reason),
    };
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(_) => return refuse(&node, StatusCode::BAD_REQUEST, "handshake"),
    };
    let mut resp = resp.map(Body::new);
    if offered_phoenix {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix"),
        );
    }
    let wire = Wire {
        serializer,
        framing: Framing::WebSocket,
    };
    let claims = claims.map(Box::new);
    tokio::spawn(async move {
        if let Some((stream, leftover)) = finish_upgrade(fut).await {
            // The long-lived session gets a task of its own holding only what it needs (this
            // task's captures and upgrade state are freed when it ends).
            let _ = stream.set_nodelay(true);
            let handle = node.registry.register(TransportKind::WebSocket);
            let session = Session::new(node.clone(), handle.clone(), wire, claims);
            let conn = Conn::new(stream, leftover, node.clone(), handle, limits(&node));
            tokio::spawn(run_session(conn, PhoenixHandler { session }));
        }
    });
    resp
}

/// Recover the raw `TcpStream` from hyper's upgrade (the node serves HTTP/1 itself so this
/// works), keeping any bytes that arrived with the handshake and dropping hyper's buffer.
pub(crate) async fn finish_upgrade(
    fut: fastwebsockets::upgrade::UpgradeFut,
) -> Option<(TcpStream, Bytes)> {
    let upgraded = fut.await.ok()?.into_inner().into_inner();
    let hyper::upgrade::Parts { io, read_buf, .. } =
        upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    let leftover = Bytes::copy_from_slice(&read_buf);
    drop(read_buf);
    Some((io.into_inner(), leftover))
}

/// Connection limits of Phoenix sessions.
fn limits(node: &Node) -> ConnLimits {
    ConnLimits {
        max_message: node.config.max_message_size,
        outbox: node.limits,
    }
}

async fn run_session(mut conn: Conn, mut handler: PhoenixHandler) {
    let ended = conn.run(&mut handler).await;
    drop(conn);
    Box::pin(handler.session.close(ended.label())).await;
}

/// Decodes WebSocket messages for a Session.
struct PhoenixHandler {
    session: Session,
}

impl Handler for PhoenixHandler {
    async fn on_message(&mut self, text: bool, data: Bytes) -> Result<(), Close> {
        let serializer = self.session.serializer();
        let msg = if text {
            serializer.decode_text(&data)
        } else {
            serializer.decode_binary(data)
        };
        match msg {
            // Boxed so the idle connection's future does not carry the handler's state.
            Ok(m) => Box::pin(self.session.handle(m)).await,
            Err(ProtocolError::BinaryUnsupported) => {
                return Err(Close::new(
                    CloseCode::UNSUPPORTED_DATA,
                    "binary frames need vsn 2.0.0",
                ))
            }
            Err(e) => {
                debug!(error = %e, "undecodable message");
                return Err(Close::new(CloseCode::BAD_MESSAGE, "malformed message"));
            }
        }
        Ok(())
    }

    async fn on_intercept(&mut self, msg: Arc<Broadcast>) -> Option<Bytes> {
        Box::pin(self.session.intercept(msg)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_auth_token_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix, base64url.bearer.phx.c2VjcmV0"),
        );
        assert_eq!(auth_token(&h), (Some("secret".into()), true));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64url.bearer.phx.c2VjcmV0PT0="),
        );
        assert_eq!(auth_token(&h).0.as_deref(), Some("secret=="));
    }
}
