//! The WebSocket transport: the `/socket/websocket` handshake (serializer negotiation by `vsn`,
//! Origin check, the phoenix.js `authToken` subprotocol, token verification — every refusal is an
//! HTTP answer before the upgrade) and the glue from a connection to its Session.

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

use super::connect::{authorize, identify, HookRefusal};
use crate::edge::Edge;
use crate::outbox::OutItem;
use crate::protocol::{Close, Framing, Wire};
use crate::registry::TransportKind;
use crate::session::Session;

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

fn refuse(edge: &Edge, status: StatusCode, reason: &'static str) -> Response {
    edge.refused(reason);
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
pub async fn handshake(State(edge): State<Arc<Edge>>, mut req: Request) -> Response {
    if !is_upgrade(&req) {
        return refuse(&edge, StatusCode::BAD_REQUEST, "not_upgrade");
    }
    if edge.is_draining() {
        return refuse(&edge, StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    // Before the token check: refusing is cheap, verifying a signature is not.
    if let Err(refusal) = edge.admit(req.extensions().get()) {
        debug!(reason = refusal.label(), "websocket connect refused");
        return refusal.response();
    }
    let (sub_token, offered_phoenix) = auth_token(req.headers());
    let (serializer, claims) = match authorize(
        &edge,
        req.uri().query(),
        req.headers(),
        sub_token.as_deref(),
    ) {
        Ok(x) => x,
        Err(reason) => return refuse(&edge, StatusCode::FORBIDDEN, reason),
    };
    // The backend's connect hook, when on, decides last (the cheap checks refuse first).
    let identity = match identify(&edge, req.uri().query(), req.headers(), claims).await {
        Ok(identity) => identity,
        Err(r @ HookRefusal::Refused) => return refuse(&edge, StatusCode::FORBIDDEN, r.label()),
        Err(r @ HookRefusal::Failed) => {
            return refuse(&edge, StatusCode::SERVICE_UNAVAILABLE, r.label())
        }
    };
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(_) => return refuse(&edge, StatusCode::BAD_REQUEST, "handshake"),
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
    tokio::spawn(async move {
        if let Some((stream, leftover)) = finish_upgrade(fut).await {
            // The long-lived session gets a task of its own holding only what it needs (this
            // task's captures and upgrade state are freed when it ends).
            let _ = stream.set_nodelay(true);
            let handle = edge.core.registry.register(TransportKind::WebSocket);
            let session = Session::new(edge.core.clone(), handle.clone(), wire, identity);
            let limits = limits(&edge);
            let conn = Conn::new(stream, leftover, edge, handle, limits);
            tokio::spawn(run_session(conn, session));
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
fn limits(edge: &Edge) -> ConnLimits {
    ConnLimits {
        max_message: edge.config.max_message_size,
        outbox: edge.outbox_limits(),
    }
}

async fn run_session(mut conn: Conn, mut session: Session) {
    let ended = conn.run(&mut session).await;
    drop(conn);
    Box::pin(session.close(ended.label())).await;
}

impl Handler for Session {
    async fn on_message(&mut self, binary: bool, data: Bytes) -> Result<(), Close> {
        Session::on_message(self, binary, data).await
    }

    async fn render(&mut self, item: OutItem) -> Option<Bytes> {
        Session::render(self, item).await
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
