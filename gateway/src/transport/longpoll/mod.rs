//! The LongPoll transport (`/socket/longpoll`), exactly as phoenix.js 1.8 expects it: GET opens a
//! session (`410` + token) or polls it (`200` with messages, `204` after the poll window), POST
//! sends ndjson frames, OPTIONS answers CORS preflight; every answer is HTTP 200 with the status in
//! the JSON body. The Session and Channel code is the same as for WebSocket: this module only
//! moves frames between HTTP requests and the session's outbox.
//!
//! No sticky sessions: the token names the owner node, and a request that lands elsewhere is
//! forwarded to the owner over the PubSub direct channel (`forward`).

mod forward;
mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use tracing::debug;

pub use forward::handle_direct;
pub use token::Token;

use super::connect::{authorize, origin_allowed};
use super::{Framing, Wire};
use crate::admission::{PeerAddr, Refusal};
use crate::node::Node;
use crate::protocol::json_string;
use crate::session::{Close, CloseCode, OutItem, Session, SessionHandle, TransportKind};

/// Most frames handled per POST (phoenix.js sends at most 100; extra lines are ignored).
const MAX_LINES: usize = 100;
/// Longest a client may take to send a POST body (headers have their own timeout).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A long-poll session on its owner node.
pub struct LpSession {
    /// Outbox and liveness.
    handle: Arc<SessionHandle>,
    /// Protocol state; `None` once ended. Locked by POSTs and by polls resolving interceptions.
    session: tokio::sync::Mutex<Option<Session>>,
    /// The token clients present.
    token: String,
    /// Random part of the token.
    nonce: u64,
    /// Clock millisecond of the last poll start or end.
    last_poll: AtomicU64,
    /// Polls in progress (a session with a poll in progress never expires).
    polls: AtomicU32,
}

/// The node's long-poll state.
pub struct LongPoll {
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
    /// Long-poll state signing with `secret` (shared by the cluster) or a random per-boot key.
    pub fn new(secret: Option<&str>) -> Self {
        LongPoll {
            sessions: Mutex::default(),
            secret: secret
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
            shared_secret: secret.is_some(),
            pending: forward::Pending::default(),
            next_request: AtomicU64::new(1),
        }
    }

    fn find(&self, token: &Token) -> Option<Arc<LpSession>> {
        if !token.verify(&self.secret) {
            return None;
        }
        let lp = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&token.key)
            .cloned()?;
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
    /// Frames as text (GET answers).
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
        let mut b = BytesMut::with_capacity(
            64 + self
                .messages
                .as_ref()
                .map_or(0, |m| m.iter().map(|x| x.len() + 8).sum()),
        );
        b.put_slice(format!("{{\"status\":{}", self.status).as_bytes());
        if let Some(t) = &self.token {
            b.put_slice(b",\"token\":");
            json_string(&mut b, t);
        }
        if let Some(msgs) = &self.messages {
            b.put_slice(b",\"messages\":[");
            for (i, m) in msgs.iter().enumerate() {
                if i > 0 {
                    b.put_u8(b',');
                }
                // Frames are JSON text, hence UTF-8.
                json_string(&mut b, std::str::from_utf8(m).unwrap_or(""));
            }
            b.put_u8(b']');
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
pub async fn endpoint(State(node): State<Arc<Node>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Every request, not only the open: like Phoenix, a page from a foreign origin gets nothing
    // even if it holds a session token.
    if parts.method != Method::OPTIONS {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        if !origin_allowed(&node.config.check_origin, origin) {
            node.metrics
                .connect_refusals
                .with_label_values(&["origin"])
                .inc();
            return respond(LpReply::status(403).body());
        }
    }
    match parts.method {
        Method::OPTIONS => preflight(&parts.headers),
        Method::GET => {
            let peer = parts.extensions.get();
            match get(&node, &parts.headers, parts.uri.query(), peer).await {
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
            let limit = node.config.max_message_size.saturating_mul(4).max(1 << 20);
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
            respond(post(&node, token, body, ndjson).await)
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
    node: &Arc<Node>,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<&PeerAddr>,
) -> Result<Bytes, Refusal> {
    Ok(match session_token(headers, query) {
        Some(token) if token.node == node.pubsub.node_id() => match node.longpoll.find(&token) {
            Some(lp) => poll(node, &lp).await.body(),
            None => LpReply::status(410).body(),
        },
        Some(token) if !node.longpoll.shared_secret || token.verify(&node.longpoll.secret) => {
            forward::request(node, token, None, false).await
        }
        // No token, or a token that is not ours (e.g. the app's own `token` param): connect.
        _ => connect(node, headers, query, peer)?.body(),
    })
}

fn connect(
    node: &Arc<Node>,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<&PeerAddr>,
) -> Result<LpReply, Refusal> {
    if node.is_draining() {
        node.metrics
            .connect_refusals
            .with_label_values(&["draining"])
            .inc();
        return Ok(LpReply::status(403));
    }
    node.admit(peer)?;
    let carried = headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok());
    let (serializer, claims) = match authorize(node, query, headers, carried) {
        Ok(x) => x,
        Err(reason) => {
            node.metrics
                .connect_refusals
                .with_label_values(&[reason])
                .inc();
            debug!(reason, "long-poll connect refused");
            return Ok(LpReply::status(403));
        }
    };
    let handle = node.registry.register(TransportKind::LongPoll);
    let wire = Wire {
        serializer,
        framing: Framing::Text,
    };
    let nonce = rand::random::<u64>();
    let token = Token::sign(
        &node.longpoll.secret,
        handle.key,
        nonce,
        node.pubsub.node_id(),
    );
    let session = Session::new(node.clone(), handle.clone(), wire, claims.map(Box::new));
    let lp = Arc::new(LpSession {
        handle,
        session: tokio::sync::Mutex::new(Some(session)),
        token: token.clone(),
        nonce,
        last_poll: AtomicU64::new(node.registry.clock.now_ms()),
        polls: AtomicU32::new(0),
    });
    node.longpoll
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(lp.handle.key, lp);
    Ok(LpReply {
        status: 410,
        token: Some(token),
        messages: Some(Vec::new()),
    })
}

/// Answer a poll on this node's session: buffered frames at once, else wait up to the window.
pub(crate) async fn poll(node: &Arc<Node>, lp: &Arc<LpSession>) -> LpReply {
    let _in_progress = PollGuard::start(node, lp);
    poll_inner(node, lp).await
}

/// Marks a poll in progress; ends it even when the request is dropped mid-wait (the client
/// aborted it), so an abandoned session still expires.
struct PollGuard<'a> {
    node: &'a Node,
    lp: &'a LpSession,
}

impl<'a> PollGuard<'a> {
    fn start(node: &'a Node, lp: &'a LpSession) -> Self {
        lp.polls.fetch_add(1, Ordering::AcqRel);
        lp.last_poll
            .store(node.registry.clock.now_ms(), Ordering::Relaxed);
        PollGuard { node, lp }
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.lp
            .last_poll
            .store(self.node.registry.clock.now_ms(), Ordering::Relaxed);
        self.lp.polls.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn poll_inner(node: &Arc<Node>, lp: &Arc<LpSession>) -> LpReply {
    let deadline = tokio::time::Instant::now() + node.config.longpoll_window;
    let token = Some(lp.token.clone());
    loop {
        let mut items = std::collections::VecDeque::new();
        let close = lp.handle.outbox.take(&mut items);
        if !items.is_empty() {
            let mut messages = Vec::with_capacity(items.len());
            let mut guard = None;
            for item in items {
                match item {
                    OutItem::Frame(b) => messages.push(b),
                    OutItem::Intercept(msg) => {
                        let session = guard.get_or_insert(lp.session.lock().await);
                        if let Some(s) = session.as_mut() {
                            if let Some(frame) = s.intercept(msg).await {
                                messages.push(frame);
                            }
                        }
                    }
                }
            }
            return LpReply {
                status: 200,
                token,
                messages: Some(messages),
            };
        }
        if let Some(close) = close {
            end(node, lp, close.code.label()).await;
            return LpReply::status(410);
        }
        tokio::select! {
            () = lp.handle.outbox.wait() => {}
            () = tokio::time::sleep_until(deadline) => return LpReply { status: 204, token, messages: Some(Vec::new()) },
        }
    }
}

/// A POST: the answer body.
async fn post(node: &Arc<Node>, token: Option<Token>, body: Bytes, ndjson: bool) -> Bytes {
    let gone = LpReply::status(410).body();
    let Some(token) = token else { return gone };
    if token.node != node.pubsub.node_id() {
        if node.longpoll.shared_secret && !token.verify(&node.longpoll.secret) {
            return gone;
        }
        return forward::request(node, token, Some(body), ndjson).await;
    }
    match node.longpoll.find(&token) {
        Some(lp) => LpReply::status(deliver(node, &lp, body, ndjson).await).body(),
        None => gone,
    }
}

/// Hand a POST body's frames to the session, in order. Returns the logical status.
pub(crate) async fn deliver(
    node: &Arc<Node>,
    lp: &Arc<LpSession>,
    body: Bytes,
    ndjson: bool,
) -> u16 {
    let mut guard = lp.session.lock().await;
    let Some(session) = guard.as_mut() else {
        return 410;
    };
    let serializer = session.serializer();
    for line in body_lines(body, ndjson) {
        if line.len() > node.config.max_message_size {
            // As a WebSocket message over the limit (1009): the session ends.
            drop(guard);
            lp.handle
                .close(Close::new(CloseCode::TOO_BIG, "message too big"));
            end(node, lp, "too_big").await;
            return 413;
        }
        match decode_line(serializer, &line) {
            Ok(msg) => {
                node.metrics
                    .messages_in
                    .with_label_values(&[if msg.payload.is_binary() {
                        "binary"
                    } else {
                        "text"
                    }])
                    .inc();
                node.metrics.bytes_in.inc_by(line.len() as u64);
                Box::pin(session.handle(msg)).await;
            }
            Err(e) => {
                debug!(error = %e, "undecodable long-poll frame");
                drop(guard);
                lp.handle
                    .close(Close::new(CloseCode::BAD_MESSAGE, "malformed message"));
                end(node, lp, "bad_message").await;
                return 400;
            }
        }
    }
    200
}

/// The frames of a POST body: one per non-empty ndjson line (at most `MAX_LINES`, a trailing
/// `\r` dropped), or the whole body. Public (hidden) only so the fuzz targets reach it.
#[doc(hidden)]
pub fn body_lines(body: Bytes, ndjson: bool) -> Vec<Bytes> {
    if !ndjson {
        return vec![body];
    }
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() && out.len() < MAX_LINES {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let mut line = rest.split_to(end);
        if !rest.is_empty() {
            let _ = rest.split_to(1);
        }
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if !line.is_empty() {
            out.push(line);
        }
    }
    out
}

/// Decode one long-poll frame: JSON text, or a base64 V2 binary frame. Public (hidden) only so
/// the fuzz targets reach it.
#[doc(hidden)]
pub fn decode_line(
    serializer: crate::protocol::Serializer,
    line: &Bytes,
) -> Result<crate::protocol::Message, crate::protocol::ProtocolError> {
    if line.first() == Some(&b'[') || line.first() == Some(&b'{') {
        serializer.decode_text(line)
    } else {
        match base64::engine::general_purpose::STANDARD.decode(line) {
            Ok(bin) => serializer.decode_binary(Bytes::from(bin)),
            Err(_) => Err(crate::protocol::ProtocolError::MalformedBinary(
                "not base64",
            )),
        }
    }
}

/// End a session: terminate its channels and forget it.
async fn end(node: &Arc<Node>, lp: &Arc<LpSession>, reason: &str) {
    node.longpoll
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&lp.handle.key);
    let session = lp.session.lock().await.take();
    if let Some(s) = session {
        s.close(reason).await;
    }
}

/// Expire sessions nobody polled for `longpoll_expiry`, and end sessions asked to close (drain,
/// forced disconnect) that no poll is waiting on. One task for all sessions.
pub async fn sweep(node: Arc<Node>) {
    let period =
        (node.config.longpoll_expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let expiry = node.config.longpoll_expiry.as_millis() as u64;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = node.registry.clock.now_ms();
        let victims: Vec<(Arc<LpSession>, &'static str)> = node
            .longpoll
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|lp| lp.polls.load(Ordering::Acquire) == 0)
            .filter_map(|lp| {
                if let Some(close) = lp.handle.outbox.close_requested() {
                    Some((lp.clone(), close.code.label()))
                } else if now.saturating_sub(lp.last_poll.load(Ordering::Relaxed)) >= expiry {
                    Some((lp.clone(), "longpoll_expired"))
                } else {
                    None
                }
            })
            .collect();
        for (lp, reason) in victims {
            end(&node, &lp, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_bodies() {
        let r = LpReply {
            status: 200,
            token: Some("T".into()),
            messages: Some(vec![Bytes::from_static(br#"["1",null,"t","e",{}]"#)]),
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
