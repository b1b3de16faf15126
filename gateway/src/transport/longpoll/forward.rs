//! Cross-node routing of long-poll requests over the PubSub direct channel. A node that gets a
//! GET or POST for a session another node owns sends the request to the owner
//! (`lp_req`); the owner acknowledges at once (`lp_ack`), runs it on the session, and sends the
//! answer body back (`lp_res`). No acknowledgement within `ACK_TIMEOUT` means the owner is gone:
//! the client gets 410 and reconnects.
//!
//! Why PubSub rather than node-to-node HTTP: nodes already share the direct channel (Redis), it
//! needs no peer discovery or advertised addresses, and it works behind any load balancer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use super::{deliver, poll, LpReply, Token};
use crate::node::Node;
use crate::protocol::Payload;
use crate::pubsub::Broadcast;

/// How long a non-owner waits for the owner to acknowledge a request.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack beyond the poll window for the owner's final answer.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// Event of a forwarded request.
pub const LP_REQUEST: &str = "lp_req";
const LP_ACK: &str = "lp_ack";
const LP_RESPONSE: &str = "lp_res";

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

#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    from: String,
    token: String,
    /// POST body (text; base64 lines stay base64). `None` for a GET.
    body: Option<String>,
    ndjson: bool,
}

#[derive(Serialize, Deserialize)]
struct Response {
    id: u64,
    body: Option<String>,
}

fn direct(node: &Node, to: &str, event: &str, payload: &impl Serialize) {
    let msg = Broadcast {
        topic: String::new(),
        event: event.to_owned(),
        payload: Payload::json(payload),
    };
    node.pubsub.direct(to, Arc::new(msg));
}

/// Forward a request for `token`'s session to its owner and wait for the answer body.
pub(super) async fn request(
    node: &Arc<Node>,
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
    let lp = &node.longpoll;
    let id = lp.next_request.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(2);
    lp.pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let owner = token.node.clone();
    let raw = Token::sign_raw(&token);
    direct(
        node,
        &owner,
        LP_REQUEST,
        &Request {
            id,
            from: node.pubsub.node_id().to_owned(),
            token: raw,
            body,
            ndjson,
        },
    );
    let answer = async {
        match tokio::time::timeout(ACK_TIMEOUT, rx.recv()).await {
            Ok(Some(Answer::Ack)) => {}
            Ok(Some(Answer::Body(b))) => return Some(b),
            _ => return None,
        }
        let wait = if is_get {
            node.config.longpoll_window + ANSWER_SLACK
        } else {
            ANSWER_SLACK * 2
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Answer::Body(b))) => Some(b),
            _ => None,
        }
    }
    .await;
    lp.pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    match answer {
        Some(body) => body,
        None => {
            debug!(owner = %owner, "long-poll owner did not answer");
            gone
        }
    }
}

/// Handle a direct message that belongs to long-poll routing; `false` if it is not one.
pub fn handle_direct(node: &Arc<Node>, msg: &Broadcast) -> bool {
    match msg.event.as_str() {
        LP_REQUEST => {
            let Ok(req) = serde_json::from_slice::<Request>(msg.payload.bytes()) else {
                return true;
            };
            let node = node.clone();
            tokio::spawn(async move { serve(&node, req).await });
        }
        LP_ACK | LP_RESPONSE => {
            let Ok(res) = serde_json::from_slice::<Response>(msg.payload.bytes()) else {
                return true;
            };
            let tx = node
                .longpoll
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&res.id)
                .cloned();
            if let Some(tx) = tx {
                let answer = match res.body {
                    Some(b) if msg.event == LP_RESPONSE => Answer::Body(Bytes::from(b)),
                    _ => Answer::Ack,
                };
                let _ = tx.try_send(answer);
            }
        }
        _ => return false,
    }
    true
}

/// Run a forwarded request on a session this node owns.
async fn serve(node: &Arc<Node>, req: Request) {
    let reply = match Token::parse(&req.token).and_then(|t| node.longpoll.find(&t)) {
        None => LpReply::status(410),
        Some(lp) => {
            direct(
                node,
                &req.from,
                LP_ACK,
                &Response {
                    id: req.id,
                    body: None,
                },
            );
            match req.body {
                None => poll(node, &lp).await,
                Some(body) => {
                    LpReply::status(deliver(node, &lp, Bytes::from(body), req.ndjson).await)
                }
            }
        }
    };
    let body = String::from_utf8(reply.body().to_vec()).unwrap_or_default();
    direct(
        node,
        &req.from,
        LP_RESPONSE,
        &Response {
            id: req.id,
            body: Some(body),
        },
    );
}
