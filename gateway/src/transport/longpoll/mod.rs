//! The LongPoll transport (`/socket/longpoll`), exactly as phoenix.js 1.8 expects it: GET opens a
//! session (`410` + token) or polls it (`200` with messages, `204` after the poll window), POST
//! sends ndjson frames, OPTIONS answers CORS preflight; every answer is HTTP 200 with the status in
//! the JSON body. The Session and Channel code is the same as for WebSocket: this module only
//! moves frames between HTTP requests and the session's outbox (`poll`).
//!
//! No sticky sessions: the token names the owner node, and a request that lands elsewhere is
//! forwarded to the owner over the PubSub direct route (`forward`).

mod forward;
mod poll;
mod token;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tracing::debug;

pub use poll::{body_lines, decode_line, sweep};
pub use token::Token;

use super::connect::{authorize, identify, origin_allowed, HookRefusal};
use crate::admission::{PeerAddr, Refusal};
use crate::edge::Edge;
use crate::protocol::{json_string, longpoll_messages, Framing, Wire};
use crate::registry::TransportKind;
use crate::session::Session;
use poll::LpSession;

/// Longest a client may take to send a POST body (headers have their own timeout).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's long-poll transport: its sessions and forwarded requests.
pub struct LongPoll {
    /// The node's edge.
    edge: Arc<Edge>,
    /// Sessions owned by this node, by session key.
    sessions: Mutex<HashMap<u64, Arc<LpSession>>>,
    /// Token signing key.
    secret: Vec<u8>,
    /// Whether `secret` is shared by the cluster (then tokens of other nodes are verified too).
    shared_secret: bool,
    /// Forwarded requests waiting for their owner's answer.
    pending: forward::Pending,
    /// Next forwarded request id.
    next_request: AtomicU64,
}

impl std::fmt::Debug for LongPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPoll").finish_non_exhaustive()
    }
}

impl LongPoll {
    /// The long-poll transport of `edge`, signing tokens with the configured cluster-wide
    /// secret or a random per-boot key.
    pub fn new(edge: Arc<Edge>) -> Self {
        let secret = edge.config.longpoll_secret.clone();
        LongPoll {
            edge,
            shared_secret: secret.is_some(),
            secret: secret
                .map(String::into_bytes)
                .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
            sessions: Mutex::default(),
            pending: forward::Pending::default(),
            next_request: AtomicU64::new(1),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LpSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, token: &Token) -> Option<Arc<LpSession>> {
        if !token.verify(&self.secret) {
            return None;
        }
        let lp = self.sessions().get(&token.key).cloned()?;
        (lp.nonce == token.nonce).then_some(lp)
    }
}

/// A long-poll answer: `{"status":S,"token":T,"messages":[...]}` in an HTTP 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpReply {
    /// Logical status.
    pub status: u16,
    /// Session token (GET answers).
    pub token: Option<String>,
    /// Frames as long-poll entries (`Framing::LongPoll`: JSON string literals), GET answers.
    pub messages: Option<Vec<Bytes>>,
}

impl LpReply {
    fn status(status: u16) -> Self {
        LpReply {
            status,
            token: None,
            messages: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let entries = self.messages.as_deref().unwrap_or_default();
        let mut b =
            BytesMut::with_capacity(64 + entries.iter().map(|x| x.len() + 1).sum::<usize>());
        b.put_slice(format!("{{\"status\":{}", self.status).as_bytes());
        if let Some(t) = &self.token {
            b.put_slice(b",\"token\":");
            json_string(&mut b, t);
        }
        if self.messages.is_some() {
            b.put_slice(b",\"messages\":");
            longpoll_messages(&mut b, entries);
        }
        b.put_u8(b'}');
        b.freeze()
    }
}

/// The HTTP response for a long-poll answer body.
fn respond(body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The session token of a request: `X-Phoenix-Longpoll-Token`, else the last `token` param.
fn session_token(headers: &HeaderMap, query: Option<&str>) -> Option<Token> {
    if let Some(t) = headers
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
    {
        return Token::parse(t);
    }
    let last = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "token")
        .last()?;
    Token::parse(&last.1)
}

/// `/socket/longpoll`, every method.
pub async fn endpoint(State(lp): State<Arc<LongPoll>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let edge = &lp.edge;
    // Every request, not only the open: like Phoenix, a page from a foreign origin gets nothing
    // even if it holds a session token.
    if parts.method != Method::OPTIONS {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        if !origin_allowed(&edge.config.check_origin, origin) {
            edge.refused("origin");
            return respond(LpReply::status(403).body());
        }
    }
    match parts.method {
        Method::OPTIONS => preflight(&parts.headers),
        Method::GET => {
            let peer = parts.extensions.get();
            match get(&lp, &parts.headers, parts.uri.query(), peer).await {
                Ok(body) => respond(body),
                Err(refusal) => {
                    // A real HTTP status (phoenix.js retries it with backoff; a 503/429 in the
                    // JSON body would make it throw), readable cross-origin.
                    let mut r = refusal.response();
                    r.headers_mut().insert(
                        header::ACCESS_CONTROL_ALLOW_ORIGIN,
                        HeaderValue::from_static("*"),
                    );
                    r
                }
            }
        }
        Method::POST => {
            let limit = edge.config.max_message_size.saturating_mul(4).max(1 << 20);
            // A body trickled in byte by byte must not hold the request open (slow-loris).
            let body =
                match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit))
                    .await
                {
                    Ok(Ok(body)) => body,
                    Ok(Err(_)) => return respond(LpReply::status(413).body()),
                    Err(_) => return StatusCode::REQUEST_TIMEOUT.into_response(),
                };
            let ndjson = parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
            let token = session_token(&parts.headers, parts.uri.query());
            respond(post(&lp, token, body, ndjson).await)
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

fn preflight(headers: &HeaderMap) -> Response {
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    if let Some(req_headers) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
    }
    r
}

/// A GET: the answer body, or a refused new session.
async fn get(
    lp: &Arc<LongPoll>,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<&PeerAddr>,
) -> Result<Bytes, Refusal> {
    Ok(match session_token(headers, query) {
        Some(token) if token.node == lp.edge.node_id() => match lp.find(&token) {
            Some(s) => poll::poll(lp, &s).await.body(),
            None => LpReply::status(410).body(),
        },
        Some(token) if !lp.shared_secret || token.verify(&lp.secret) => {
            forward::request(lp, token, None, false).await
        }
        // No token, or a token that is not ours (e.g. the app's own `token` param): connect.
        _ => connect(lp, headers, query, peer).await?.body(),
    })
}

async fn connect(
    lp: &LongPoll,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<&PeerAddr>,
) -> Result<LpReply, Refusal> {
    let edge = &lp.edge;
    if edge.is_draining() {
        edge.refused("draining");
        return Ok(LpReply::status(403));
    }
    edge.admit(peer)?;
    let carried = headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok());
    let (serializer, claims) = match authorize(edge, query, headers, carried) {
        Ok(x) => x,
        Err(reason) => {
            edge.refused(reason);
            debug!(reason, "long-poll connect refused");
            return Ok(LpReply::status(403));
        }
    };
    // The backend's connect hook: a refusal is a 403 like a bad token; a failure is a real
    // HTTP 503 + Retry-After, which phoenix.js retries with backoff.
    let identity = match identify(edge, query, headers, claims).await {
        Ok(identity) => identity,
        Err(r @ HookRefusal::Refused) => {
            edge.refused(r.label());
            return Ok(LpReply::status(403));
        }
        Err(r @ HookRefusal::Failed) => {
            edge.refused(r.label());
            return Err(Refusal::Backend);
        }
    };
    let core = &edge.core;
    let handle = core.registry.register(TransportKind::LongPoll);
    let wire = Wire {
        serializer,
        framing: Framing::LongPoll,
    };
    let nonce = rand::random::<u64>();
    let token = Token::sign(&lp.secret, handle.key, nonce, edge.node_id());
    let session = Session::new(core.clone(), handle.clone(), wire, identity);
    let now = core.registry.clock.now_ms();
    let s = Arc::new(LpSession::new(handle, session, token.clone(), nonce, now));
    lp.sessions().insert(s.handle.key, s);
    Ok(LpReply {
        status: 410,
        token: Some(token),
        messages: Some(Vec::new()),
    })
}

/// A POST: the answer body.
async fn post(lp: &Arc<LongPoll>, token: Option<Token>, body: Bytes, ndjson: bool) -> Bytes {
    let gone = LpReply::status(410).body();
    let Some(token) = token else { return gone };
    if token.node != lp.edge.node_id() {
        if lp.shared_secret && !token.verify(&lp.secret) {
            return gone;
        }
        return forward::request(lp, token, Some(body), ndjson).await;
    }
    match lp.find(&token) {
        Some(s) => LpReply::status(poll::deliver(lp, &s, body, ndjson).await).body(),
        None => gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_bodies() {
        let entry = Bytes::from_static(br#""[\"1\",null,\"t\",\"e\",{}]""#);
        let r = LpReply {
            status: 200,
            token: Some("T".into()),
            messages: Some(vec![entry]),
        };
        assert_eq!(
            &r.body()[..],
            br#"{"status":200,"token":"T","messages":["[\"1\",null,\"t\",\"e\",{}]"]}"#
        );
        assert_eq!(&LpReply::status(410).body()[..], br#"{"status":410}"#);
    }

    #[test]
    fn the_last_token_param_wins_and_the_header_first() {
        let t = Token::sign(b"k", 1, 2, "n");
        let q = format!("token=userjwt&vsn=2.0.0&token={t}");
        assert_eq!(session_token(&HeaderMap::new(), Some(&q)), Token::parse(&t));
        assert_eq!(
            session_token(&HeaderMap::new(), Some("token=userjwt&vsn=2.0.0")),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-phoenix-longpoll-token",
            HeaderValue::from_str(&t).unwrap(),
        );
        assert_eq!(session_token(&h, Some("token=x")), Token::parse(&t));
    }
}
