//! A custom Rust channel on the gateway library, like a Phoenix channel module:
//! * `join` authorizes (a non-empty `user` in the join payload) and remembers the user;
//! * `handle_in("new_msg")` broadcasts `{user, body}` to the topic and replies with an id;
//! * `handle_out("new_msg")` is intercepted: each subscriber's copy gets `"mine": true|false`.
//!
//! Run: `cargo run -p gateway --example chat` and join `chat:lobby` with `{"user": "ann"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use gateway::{Channel, ChannelContext, ChannelError, Config, Gateway, Join, Payload, Reply};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct JoinParams {
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
struct NewMsg {
    body: String,
}

struct ChatChannel {
    /// Who joined through this instance.
    user: String,
    /// Message ids, shared by every instance.
    next_id: Arc<AtomicU64>,
}

#[async_trait]
impl Channel for ChatChannel {
    async fn join(
        &mut self,
        _topic: &str,
        payload: &Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Join, ChannelError> {
        let params: JoinParams = serde_json::from_slice(payload.bytes()).unwrap_or(JoinParams {
            user: String::new(),
        });
        if params.user.trim().is_empty() {
            return Ok(Join::Refuse(Payload::json(
                &json!({"reason": "nickname required"}),
            )));
        }
        self.user = params.user;
        Ok(Join::Ok(Payload::json(&json!({"welcome": self.user}))))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "new_msg" => {
                let Ok(msg) = serde_json::from_slice::<NewMsg>(payload.bytes()) else {
                    return Ok(Some(Reply::reason("body required")));
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                ctx.broadcast(
                    "new_msg",
                    Payload::json(&json!({"id": id, "user": self.user, "body": msg.body})),
                );
                Ok(Some(Reply::ok(Payload::json(&json!({"id": id})))))
            }
            _ => Ok(Some(Reply::reason("unknown event"))),
        }
    }

    fn intercepts(&self) -> &[&'static str] {
        &["new_msg"]
    }

    async fn handle_out(
        &mut self,
        _event: &str,
        payload: Payload,
        _ctx: &mut ChannelContext<'_>,
    ) -> Result<Option<Payload>, ChannelError> {
        let mut msg: Value = serde_json::from_slice(payload.bytes())
            .map_err(|_| ChannelError("bad broadcast".into()))?;
        msg["mine"] = json!(msg["user"] == json!(self.user));
        Ok(Some(Payload::json(&msg)))
    }
}

#[tokio::main]
async fn main() -> Result<(), gateway::Error> {
    tracing_subscriber::fmt().init();
    let next_id = Arc::new(AtomicU64::new(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
    Gateway::new(Config::default())
        .channel("chat:*", move |_topic| ChatChannel {
            user: String::new(),
            next_id: next_id.clone(),
        })
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
