//! The backend channel: a pattern with `join = "backend"` and/or `handle_in = "backend"`, whose
//! joins and client events are answered by the HTTP backend (`crate::backend`) the way a
//! Phoenix channel module answers them. Events listed in `broadcast` / `broadcast_from`,
//! presence, and joins under another policy follow the config channel's rules.
//!
//! Ordering without stalls: a joined instance gets, on its first backend event, a small queue
//! and one task that sends the events to the backend one after the other and applies each
//! answer (broadcasts, pushes, then the reply) before sending the next — a Phoenix channel
//! process's mailbox. The session's own task only queues, so a slow backend never holds up the
//! session's heartbeats, other topics, other sessions or fan-out. A join waits for its hook (as
//! a Phoenix socket waits for `join/3`), at most the hook timeout.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use super::{
    Channel, ChannelContext, ChannelError, ChannelHandle, ConfigChannel, DeferredReply, Join,
    Reply, Terminate,
};
use crate::backend::contract::{self, Handled, Joined};
use crate::backend::{Backend, BackendError, Hook};
use crate::config::{ChannelSpec, HandleIn, JoinPolicy};
use crate::protocol::Payload;

/// Client events one instance may have waiting for the backend; more are answered
/// `backend busy` at once (the session's message rate bounds how fast they arrive).
const QUEUE: usize = 1024;

/// A channel instance of a backend pattern.
pub struct BackendChannel {
    /// The pattern's rules.
    spec: Arc<ChannelSpec>,
    /// Broadcast lists, presence and non-backend joins, exactly as on config channels.
    inner: ConfigChannel,
    /// The node's backend client.
    backend: Arc<Backend>,
    /// Set by a successful join; boxed so an instance that never joins costs one pointer.
    joined: Option<Box<Instance>>,
}

impl std::fmt::Debug for BackendChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendChannel")
            .field("pattern", &self.spec.pattern)
            .finish_non_exhaustive()
    }
}

/// A joined backend channel.
struct Instance {
    /// The `session` object of this channel's hook bodies (the join may replace its assigns),
    /// kept as JSON text: one allocation per idle joined channel, copied into each body.
    session: Arc<RawValue>,
    /// The events' queue and task, made on the first backend event (none while idle).
    queue: Option<Queue>,
}

/// An instance's queue to its backend task.
struct Queue {
    /// Where `handle_in` puts events, in arrival order.
    tx: mpsc::Sender<Work>,
    /// Cancels the task when the instance is dropped without `terminate` (a crash); disarmed
    /// by `terminate`, so queued events and the leave hook still run after a leave.
    cancel: DropGuard,
}

/// What an instance's task does, one at a time.
enum Work {
    /// A client event for the `event` hook; `reply` answers the client's push.
    Event {
        /// Event name.
        event: String,
        /// Payload JSON text.
        payload: Bytes,
        /// Where the reply goes (no ref = no reply possible).
        reply: Option<DeferredReply>,
    },
    /// The channel ended: the `leave` hook with this reason, then the task ends.
    Leave(&'static str),
}

impl BackendChannel {
    /// An instance following `spec`, answered by `backend`.
    pub fn new(spec: Arc<ChannelSpec>, backend: Arc<Backend>) -> Self {
        BackendChannel {
            inner: ConfigChannel::new(spec.clone()),
            spec,
            backend,
            joined: None,
        }
    }

    /// The join hook: `Ok(assigns)` to accept (the response set in `response`), or the refusal.
    async fn join_hook(
        &self,
        topic: &str,
        payload: &Payload,
        info: &mut contract::SessionInfo,
    ) -> Result<Value, Join> {
        let refuse = |reason: &str| Join::Refuse(Payload::json(&json!({ "reason": reason })));
        if payload.is_binary() {
            return Err(refuse("binary join payloads are not sent to the backend"));
        }
        let p = serde_json::from_slice(payload.bytes()).unwrap_or(Value::Null);
        let answer = self
            .backend
            .call(Hook::Join, &contract::join_body(topic, p, info))
            .await
            .map_err(|e| refuse(e.reason()))?;
        match contract::parse_join(answer, self.backend.max_assigns) {
            Ok(Joined::Ok { response, assigns }) => {
                if assigns.is_some() {
                    info.assigns = assigns;
                }
                Ok(response)
            }
            Ok(Joined::Error(response)) => Err(Join::Refuse(Payload::json(&response))),
            Err(e) => {
                warn!(topic, error = %e, "backend join answer refused");
                let err = BackendError::Invalid(e.to_string());
                self.backend.count_error(Hook::Join, &err);
                Err(refuse(err.reason()))
            }
        }
    }
}

#[async_trait]
impl Channel for BackendChannel {
    async fn join(
        &mut self,
        topic: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError> {
        let mut info = ctx.session_info();
        let response = if self.spec.join == JoinPolicy::Backend {
            match self.join_hook(topic, payload, &mut info).await {
                Ok(response) => Some(Payload::json(&response)),
                Err(refused) => return Ok(refused),
            }
        } else {
            None
        };
        // Presence tracking and (for other policies) the join decision.
        match self.inner.join(topic, payload, ctx).await? {
            Join::Ok(inner) => {
                let session = serde_json::value::to_raw_value(&info.to_json())
                    .map_err(|e| ChannelError(Cow::Owned(e.to_string())))?;
                self.joined = Some(Box::new(Instance {
                    session: session.into(),
                    queue: None,
                }));
                Ok(Join::Ok(response.unwrap_or(inner)))
            }
            refused => Ok(refused),
        }
    }

    fn tracks_presence(&self) -> bool {
        self.inner.tracks_presence()
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        let mut listed = self.spec.broadcast.iter().chain(&self.spec.broadcast_from);
        if self.spec.handle_in != HandleIn::Backend
            || listed.any(|e| e == event)
            || (self.spec.presence && event == "presence_update")
        {
            return self.inner.handle_in(event, payload, ctx).await;
        }
        if payload.is_binary() {
            return Ok(Some(Reply::reason(
                "binary payloads are not sent to the backend",
            )));
        }
        let Some(instance) = self.joined.as_mut() else {
            return Err(ChannelError(Cow::Borrowed("event before join")));
        };
        let backend = &self.backend;
        let queue = instance
            .queue
            .get_or_insert_with(|| spawn(backend.clone(), ctx.handle(), instance.session.clone()));
        let work = Work::Event {
            event: event.to_owned(),
            payload: payload.bytes().clone(),
            reply: ctx.deferred_reply(),
        };
        match queue.tx.try_send(work) {
            Ok(()) => Ok(None),
            Err(_) => {
                backend.count_error(Hook::Event, &BackendError::Busy);
                Ok(Some(Reply::reason(BackendError::Busy.reason())))
            }
        }
    }

    async fn terminate(&mut self, why: Terminate, ctx: &mut ChannelContext<'_>) {
        let Some(instance) = self.joined.take() else {
            return;
        };
        let reason = match why {
            Terminate::Leave => "leave",
            Terminate::DuplicateJoin => "duplicate_join",
            Terminate::Stop => "stop",
            Terminate::SessionClosed => "closed",
        };
        match instance.queue {
            Some(Queue { tx, cancel }) => {
                // The task finishes what is queued, then the leave hook if it is on, then ends.
                let _ = cancel.disarm();
                if self.backend.leave {
                    tokio::spawn(async move {
                        let _ = tx.send(Work::Leave(reason)).await;
                    });
                }
            }
            None if self.backend.leave => {
                let (backend, session) = (self.backend.clone(), instance.session);
                let body = contract::leave_body(ctx.topic(), &session, reason);
                tokio::spawn(async move {
                    let _ = backend.call(Hook::Leave, &body).await;
                });
            }
            None => {}
        }
    }
}

/// Start an instance's task and return its queue.
fn spawn(backend: Arc<Backend>, channel: ChannelHandle, session: Arc<RawValue>) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    let token = CancellationToken::new();
    let cancelled = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = cancelled.cancelled() => {}
            _ = run(backend, channel, session, rx) => {}
        }
    });
    Queue {
        tx,
        cancel: token.drop_guard(),
    }
}

/// An instance's task: each queued item in turn, its answer applied before the next is sent.
async fn run(
    backend: Arc<Backend>,
    channel: ChannelHandle,
    session: Arc<RawValue>,
    mut rx: mpsc::Receiver<Work>,
) {
    while let Some(work) = rx.recv().await {
        match work {
            Work::Event {
                event,
                payload,
                reply,
            } => {
                let p = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                let body = contract::event_body(channel.topic(), &event, p, &session);
                let answer = backend.call(Hook::Event, &body).await;
                let handled = answer.and_then(|v| {
                    contract::parse_event(v).map_err(|e| {
                        warn!(topic = channel.topic(), event, error = %e, "backend event answer refused");
                        let err = BackendError::Invalid(e.to_string());
                        backend.count_error(Hook::Event, &err);
                        err
                    })
                });
                match handled {
                    Ok(h) => apply(&channel, h, reply),
                    Err(e) => {
                        if let Some(r) = reply {
                            r.send(Reply::reason(e.reason()));
                        }
                    }
                }
            }
            Work::Leave(reason) => {
                let body = contract::leave_body(channel.topic(), &session, reason);
                let _ = backend.call(Hook::Leave, &body).await;
                return;
            }
        }
    }
}

/// Apply an event answer: broadcasts, broadcasts from the sender, pushes, then the reply.
fn apply(channel: &ChannelHandle, h: Handled, reply: Option<DeferredReply>) {
    for b in h.broadcast {
        channel.broadcast(&b.event, Payload::json(&b.payload));
    }
    for b in h.broadcast_from {
        channel.broadcast_from(&b.event, Payload::json(&b.payload));
    }
    for p in h.push {
        channel.push(&p.event, &Payload::json(&p.payload));
    }
    if let (Some(r), Some((status, response))) = (reply, h.reply) {
        r.send(Reply {
            status: Cow::Owned(status),
            payload: Payload::json(&response),
        });
    }
}
