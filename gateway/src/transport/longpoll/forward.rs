//! Cross-node routing of long-poll requests over the PubSub direct route. A node that gets a
//! GET or POST for a session another node owns sends the request to the owner
//! (`LongPollMessage::Request`); the owner acknowledges at once (`Ack`), runs it on the session,
//! and sends the answer body back (`Response`). No acknowledgement within `ACK_TIMEOUT` means
//! the owner is gone: the client gets 410 and reconnects.
//!
//! Why PubSub rather than node-to-node HTTP: nodes already share the direct route (Redis), it
//! needs no peer discovery or advertised addresses, and it works behind any load balancer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

use super::poll::{deliver, poll};
use super::{LongPoll, LpReply, Token};
use crate::cluster::{ClusterMessage, LongPollMessage};

/// How long a non-owner waits for the owner to acknowledge a request.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack beyond the poll window for the owner's final answer.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// Requests this node forwarded, waiting for answers, by request id.
pub(super) type Pending = Mutex<HashMap<u64, mpsc::Sender<Answer>>>;

/// What comes back for a forwarded request.
#[derive(Debug)]
pub(super) enum Answer {
    /// The owner has the request.
    Ack,
    /// The owner's answer body.
    Body(Bytes),
}

fn send(lp: &LongPoll, to: &str, msg: LongPollMessage) {
    lp.edge
        .core
        .hub
        .pubsub()
        .direct(to, ClusterMessage::LongPoll(msg));
}

fn pending(lp: &LongPoll) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Answer>>> {
    lp.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forward a request for `token`'s session to its owner and wait for the answer body.
pub(super) async fn request(
    lp: &LongPoll,
    token: Token,
    body: Option<Bytes>,
    ndjson: bool,
) -> Bytes {
    let gone = LpReply::status(410).body();
    let body = match body.map(|b| String::from_utf8(b.to_vec())) {
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return LpReply::status(400).body(),
        None => None,
    };
    let is_get = body.is_none();
    let id = lp.next_request.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(2);
    pending(lp).insert(id, tx);
    let owner = token.node.clone();
    let request = LongPollMessage::Request {
        id,
        from: lp.edge.node_id().to_owned(),
        token: Token::sign_raw(&token),
        body,
        ndjson,
    };
    send(lp, &owner, request);
    let answer = async {
        match tokio::time::timeout(ACK_TIMEOUT, rx.recv()).await {
            Ok(Some(Answer::Ack)) => {}
            Ok(Some(Answer::Body(b))) => return Some(b),
            _ => return None,
        }
        let wait = if is_get {
            lp.edge.config.longpoll_window + ANSWER_SLACK
        } else {
            ANSWER_SLACK * 2
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Answer::Body(b))) => Some(b),
            _ => None,
        }
    }
    .await;
    pending(lp).remove(&id);
    match answer {
        Some(body) => body,
        None => {
            debug!(owner = %owner, "long-poll owner did not answer");
            gone
        }
    }
}

impl LongPoll {
    /// Handle a long-poll message from another node.
    pub fn handle(self: &Arc<Self>, msg: LongPollMessage) {
        let (id, answer) = match msg {
            LongPollMessage::Request {
                id,
                from,
                token,
                body,
                ndjson,
            } => {
                let lp = self.clone();
                tokio::spawn(async move { serve(&lp, id, from, token, body, ndjson).await });
                return;
            }
            LongPollMessage::Ack { id } => (id, Answer::Ack),
            LongPollMessage::Response { id, body } => (id, Answer::Body(Bytes::from(body))),
        };
        let tx = pending(self).get(&id).cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(answer);
        }
    }
}

/// Run a forwarded request on a session this node owns.
async fn serve(
    lp: &LongPoll,
    id: u64,
    from: String,
    token: String,
    body: Option<String>,
    ndjson: bool,
) {
    let reply = match Token::parse(&token).and_then(|t| lp.find(&t)) {
        None => LpReply::status(410),
        Some(s) => {
            send(lp, &from, LongPollMessage::Ack { id });
            match body {
                None => poll(lp, &s).await,
                Some(body) => LpReply::status(deliver(lp, &s, Bytes::from(body), ndjson).await),
            }
        }
    };
    let body = String::from_utf8(reply.body().to_vec()).unwrap_or_default();
    send(lp, &from, LongPollMessage::Response { id, body });
}
