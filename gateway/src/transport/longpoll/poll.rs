//! A long-poll session on its owner node: polls take what its outbox holds (or wait for it up to
//! the poll window), POSTs hand each frame to the Session, and one sweep ends sessions nobody
//! polls any more or that were asked to close. A `Close` from the session becomes the HTTP
//! answer: 413 for a message over the size limit (WebSocket's 1009), 400 for one that does not
//! decode (4005), and the session ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;

use super::{LongPoll, LpReply};
use crate::outbox::OutItem;
use crate::protocol::{Close, CloseCode, Message, ProtocolError, Serializer};
use crate::registry::SessionHandle;
use crate::session::Session;

/// Most frames handled per POST (phoenix.js sends at most 100; extra lines are ignored).
const MAX_LINES: usize = 100;

/// A long-poll session on its owner node.
pub(super) struct LpSession {
    /// Outbox and liveness.
    pub(super) handle: Arc<SessionHandle>,
    /// Protocol state; `None` once ended. Locked by POSTs and by polls rendering interceptions.
    session: tokio::sync::Mutex<Option<Session>>,
    /// The token clients present.
    token: String,
    /// Random part of the token.
    pub(super) nonce: u64,
    /// Clock millisecond of the last poll start or end.
    last_poll: AtomicU64,
    /// Polls in progress (a session with a poll in progress never expires).
    polls: AtomicU32,
}

impl LpSession {
    pub(super) fn new(
        handle: Arc<SessionHandle>,
        session: Session,
        token: String,
        nonce: u64,
        now_ms: u64,
    ) -> Self {
        LpSession {
            handle,
            session: tokio::sync::Mutex::new(Some(session)),
            token,
            nonce,
            last_poll: AtomicU64::new(now_ms),
            polls: AtomicU32::new(0),
        }
    }
}

/// Answer a poll on this node's session: buffered frames at once, else wait up to the window.
pub(super) async fn poll(lp: &LongPoll, s: &Arc<LpSession>) -> LpReply {
    let _in_progress = PollGuard::start(lp, s);
    let deadline = tokio::time::Instant::now() + lp.edge.config.longpoll_window;
    let token = Some(s.token.clone());
    loop {
        let mut items = VecDeque::new();
        let close = s.handle.outbox.take(&mut items);
        if !items.is_empty() {
            let mut messages = Vec::with_capacity(items.len());
            let mut guard = None;
            for item in items {
                let frame = match item {
                    OutItem::Frame(frame) => Some(frame),
                    other => match guard.get_or_insert(s.session.lock().await).as_mut() {
                        Some(session) => session.render(other).await,
                        None => None,
                    },
                };
                messages.extend(frame);
            }
            return LpReply {
                status: 200,
                token,
                messages: Some(messages),
            };
        }
        if let Some(close) = close {
            end(lp, s, close.code.label()).await;
            return LpReply::status(410);
        }
        tokio::select! {
            () = s.handle.outbox.wait() => {}
            () = tokio::time::sleep_until(deadline) => return LpReply { status: 204, token, messages: Some(Vec::new()) },
        }
    }
}

/// Marks a poll in progress; ends it even when the request is dropped mid-wait (the client
/// aborted it), so an abandoned session still expires.
struct PollGuard<'a> {
    lp: &'a LongPoll,
    s: &'a LpSession,
}

impl<'a> PollGuard<'a> {
    fn start(lp: &'a LongPoll, s: &'a LpSession) -> Self {
        s.polls.fetch_add(1, Ordering::AcqRel);
        s.last_poll.store(now_ms(lp), Ordering::Relaxed);
        PollGuard { lp, s }
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.s.last_poll.store(now_ms(self.lp), Ordering::Relaxed);
        self.s.polls.fetch_sub(1, Ordering::AcqRel);
    }
}

fn now_ms(lp: &LongPoll) -> u64 {
    lp.edge.core.registry.clock.now_ms()
}

/// The long-poll answer to a session that closes: 413 for a message over the size limit, 400
/// for anything else it cannot take.
fn status_of(close: Close) -> u16 {
    if close.code == CloseCode::TOO_BIG {
        413
    } else {
        400
    }
}

/// Hand a POST body's frames to the session, in order. Returns the logical status.
pub(super) async fn deliver(lp: &LongPoll, s: &Arc<LpSession>, body: Bytes, ndjson: bool) -> u16 {
    let mut guard = s.session.lock().await;
    let Some(session) = guard.as_mut() else {
        return 410;
    };
    for line in body_lines(body, ndjson) {
        let result = match read_line(line) {
            Ok((binary, data)) => Box::pin(session.on_message(binary, data)).await,
            Err(_) => Err(Close::new(CloseCode::BAD_MESSAGE, "malformed message")),
        };
        if let Err(close) = result {
            drop(guard);
            s.handle.close(close);
            end(lp, s, close.code.label()).await;
            return status_of(close);
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

/// One long-poll line as the message it carries: JSON text, or a V2 binary frame in base64 (how
/// phoenix.js sends binary over long-poll). `(binary, data)`.
fn read_line(line: Bytes) -> Result<(bool, Bytes), ProtocolError> {
    if line.first() == Some(&b'[') || line.first() == Some(&b'{') {
        return Ok((false, line));
    }
    base64::engine::general_purpose::STANDARD
        .decode(&line)
        .map(|bin| (true, Bytes::from(bin)))
        .map_err(|_| ProtocolError::MalformedBinary("not base64"))
}

/// Decode one long-poll frame as the session would. Public (hidden) only so the fuzz targets
/// reach it.
#[doc(hidden)]
pub fn decode_line(serializer: Serializer, line: &Bytes) -> Result<Message, ProtocolError> {
    let (binary, data) = read_line(line.clone())?;
    serializer.decode(binary, data)
}

/// End a session: terminate its channels and forget it.
async fn end(lp: &LongPoll, s: &Arc<LpSession>, reason: &str) {
    lp.sessions().remove(&s.handle.key);
    let session = s.session.lock().await.take();
    if let Some(session) = session {
        session.close(reason).await;
    }
}

/// Expire sessions nobody polled for `longpoll_expiry`, and end sessions asked to close (drain,
/// forced disconnect) that no poll is waiting on. One task for all sessions, forever.
pub async fn sweep(lp: Arc<LongPoll>) {
    let config = &lp.edge.config;
    let period =
        (config.longpoll_expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let expiry = config.longpoll_expiry.as_millis() as u64;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = now_ms(&lp);
        let victims: Vec<(Arc<LpSession>, &'static str)> = lp
            .sessions()
            .values()
            .filter(|s| s.polls.load(Ordering::Acquire) == 0)
            .filter_map(|s| {
                if let Some(close) = s.handle.outbox.close_requested() {
                    Some((s.clone(), close.code.label()))
                } else if now.saturating_sub(s.last_poll.load(Ordering::Relaxed)) >= expiry {
                    Some((s.clone(), "longpoll_expired"))
                } else {
                    None
                }
            })
            .collect();
        for (s, reason) in victims {
            end(&lp, &s, reason).await;
        }
    }
}
