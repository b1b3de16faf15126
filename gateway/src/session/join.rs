//! Joining a channel: routing the topic, the channel's `join`, and the order of what the client
//! gets after an accepted join — the reply first, then the pushes the join made, then (for a
//! presence channel) `presence_state`, then every broadcast and diff the subscription brings.
//! A channel with history joins through `recover` instead, which adds the replay of what the
//! client missed between the pushes and the live broadcasts.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tracing::warn;

use super::{reason, Joined, Session};
use crate::channel::{Join, Reply, Terminate};
use crate::hub::SubKind;
use crate::protocol::{Message, Outgoing, MAX_TOPIC_LEN, PHX_CLOSE};

impl Session {
    pub(super) async fn join(&mut self, msg: Message) {
        let msg_ref = msg.msg_ref.as_deref();
        let join_ref = msg.join_ref.as_deref().or(msg_ref).unwrap_or("");
        if let Some(i) = self.find(&msg.topic) {
            let old = self.channels.swap_remove(i);
            self.end(old, Terminate::DuplicateJoin, Some(PHX_CLOSE))
                .await;
        }
        let join_error = |this: &Self, jr: Option<&str>, why: &'static str, label: &str| {
            this.core
                .metrics
                .join_errors
                .with_label_values(&[label])
                .inc();
            this.reply(jr, msg_ref, &msg.topic, &Reply::error(reason(why)));
        };
        if msg.topic.len() > MAX_TOPIC_LEN {
            return join_error(self, Some(join_ref), "topic too long", "invalid_topic");
        }
        let Some(factory) = self.core.router.route(&msg.topic) else {
            // Phoenix answers an unmatched topic without a join_ref.
            return join_error(self, None, "unmatched topic", "unmatched_topic");
        };
        if self.channels.len() >= self.core.limits.max_channels {
            return join_error(
                self,
                Some(join_ref),
                "too many channels joined",
                "too_many_channels",
            );
        }
        let mut handler = factory(&msg.topic);
        let mut cx = Self::ctx(
            &self.core,
            &self.handle,
            self.wire,
            self.identity.as_deref(),
            &msg.topic,
            join_ref,
            msg_ref,
        );
        cx.held = Some(Vec::new());
        let outcome = AssertUnwindSafe(handler.join(&msg.topic, &msg.payload, &mut cx))
            .catch_unwind()
            .await;
        let (held, stop) = (cx.held.take().unwrap_or_default(), cx.stop);
        let response = match outcome {
            Ok(Ok(Join::Ok(response))) => response,
            Ok(Ok(Join::Refuse(response))) => {
                self.core
                    .metrics
                    .join_errors
                    .with_label_values(&["refused"])
                    .inc();
                return self.reply(Some(join_ref), msg_ref, &msg.topic, &Reply::error(response));
            }
            Ok(Err(e)) => {
                warn!(topic = %msg.topic, error = %e, "channel join failed");
                return join_error(self, Some(join_ref), "join crashed", "crashed");
            }
            Err(_) => {
                warn!(topic = %msg.topic, "channel join panicked");
                return join_error(self, Some(join_ref), "join crashed", "crashed");
            }
        };
        let intercepts = handler.intercepts();
        let intercepts: Option<std::sync::Arc<[String]>> =
            (!intercepts.is_empty()).then(|| intercepts.iter().map(|e| e.to_string()).collect());
        if let Some(limits) = handler.history() {
            let joining = super::recover::Joining {
                topic: &msg.topic,
                join_ref,
                msg_ref,
                payload: &msg.payload,
                response,
                held,
                intercepts,
                limits,
                presence: handler.tracks_presence(),
            };
            let topic = self.join_recovering(joining).await;
            return self.joined(topic, join_ref, handler, stop).await;
        }
        // The reply is queued before subscribing, so no broadcast can overtake it, and pushes
        // made during join follow it.
        self.reply(Some(join_ref), msg_ref, &msg.topic, &Reply::ok(response));
        // A presence channel on a topic new to this node first fetches the other nodes' shares
        // (holding the topic's interest so their deltas arrive), so the state it answers with
        // is complete.
        let presence = handler.tracks_presence();
        let core = &self.core;
        let hold = presence.then(|| core.hub.hold(&msg.topic)).flatten();
        if hold.is_some() {
            core.presence.sync_first(&msg.topic).await;
        }
        // Pushes made during join, then the presence state, are queued under the topic's lock:
        // they precede every broadcast and diff the subscription brings.
        let (handle, wire) = (&self.handle, self.wire);
        let topic = core.hub.subscribe_with(
            &msg.topic,
            handle,
            SubKind::Channel { wire, intercepts },
            |topic| {
                for (event, payload) in held {
                    let out = Outgoing::Push {
                        join_ref: Some(join_ref),
                        position: None,
                        topic,
                        event: &event,
                        payload: &payload,
                    };
                    core.hub.send(handle, wire, out);
                }
                if presence {
                    let state = core.presence.state(topic);
                    let out = Outgoing::Push {
                        join_ref: Some(join_ref),
                        position: None,
                        topic,
                        event: "presence_state",
                        payload: &state,
                    };
                    core.hub.send(handle, wire, out);
                }
            },
        );
        drop(hold);
        self.joined(topic, join_ref, handler, stop).await;
    }

    /// Record a joined channel (and end it at once if its join asked to stop).
    async fn joined(
        &mut self,
        topic: std::sync::Arc<str>,
        join_ref: &str,
        handler: Box<dyn crate::channel::Channel>,
        stop: bool,
    ) {
        self.core.metrics.joins.inc();
        // Exact capacity: most sessions join one or two topics and stay idle.
        self.channels.reserve_exact(1);
        self.channels.push(Joined {
            topic,
            join_ref: join_ref.into(),
            handler,
        });
        if stop {
            let ch = self.channels.pop().expect("just pushed");
            self.end(ch, Terminate::Stop, Some(PHX_CLOSE)).await;
        }
    }
}
