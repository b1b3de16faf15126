//! The hook contract, exactly as the README documents it: the JSON bodies the gateway POSTs
//! (`connect`, `join`, `event`, `leave`) and the answers it accepts. An answer is parsed
//! strictly: anything outside the contract is `Invalid` (the client then gets
//! `{"reason":"backend error"}`), never half-applied.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// What a session carries into every hook body as `session`: the socket id, the assigns the
/// backend set, and the verified token claims.
#[derive(Clone, Debug, Default)]
pub struct SessionInfo {
    /// The socket id (`connect` answer's `id`, or `user_socket:<sub>` of a token).
    pub id: Option<String>,
    /// The assigns (a JSON object), `None` = `{}`.
    pub assigns: Option<Assigns>,
    /// The verified token claims as JSON, `None` = `null`.
    pub claims: Option<Value>,
}

impl SessionInfo {
    /// The `session` object of a hook body.
    pub fn to_json(&self) -> Value {
        let assigns = self
            .assigns
            .as_ref()
            .and_then(|a| serde_json::from_str(a.0.get()).ok())
            .unwrap_or_else(|| json!({}));
        json!({ "id": self.id, "assigns": assigns, "claims": self.claims })
    }
}

/// A session's assigns: a JSON object the backend set, at most the configured size. Kept as
/// its text (one allocation) and only where a backend set it, so unused assigns cost nothing.
#[derive(Clone, Debug)]
pub struct Assigns(pub std::sync::Arc<RawValue>);

impl Assigns {
    /// Assigns from an answer's value: an object of at most `max` bytes of JSON.
    pub fn from_value(v: &Value, max: usize) -> Result<Self, Invalid> {
        if !v.is_object() {
            return Err(Invalid("assigns must be an object"));
        }
        let text = v.to_string();
        if text.len() > max {
            return Err(Invalid("assigns larger than --backend-assigns-max-bytes"));
        }
        RawValue::from_string(text)
            .map(|raw| Assigns(raw.into()))
            .map_err(|_| Invalid("assigns must be JSON"))
    }
}

/// An answer outside the contract; the text says which rule it broke (logged, not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("answer outside the hook contract: {0}")]
pub struct Invalid(pub &'static str);

/// The `connect` answer.
#[derive(Debug)]
pub enum Connected {
    /// Accepted: the socket id (if any) and the session's assigns (if any).
    Accept {
        /// Becomes the session id (its topic receives `disconnect` broadcasts).
        id: Option<String>,
        /// The session's assigns.
        assigns: Option<Assigns>,
    },
    /// Refused (HTTP 403); the backend's error value is only logged.
    Refuse(Value),
}

/// The `join` answer.
#[derive(Debug)]
pub enum Joined {
    /// Accepted with this reply response and, optionally, new assigns for this channel.
    Ok {
        /// The `response` of the ok reply.
        response: Value,
        /// Replace the session's assigns (for this channel).
        assigns: Option<Assigns>,
    },
    /// Refused with this reply response.
    Error(Value),
}

/// One `{"event", "payload"}` of an event answer's lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// The event name (not a reserved one).
    pub event: String,
    /// The payload.
    pub payload: Value,
}

/// The `event` answer: what to reply, broadcast and push. No `reply` = no reply.
#[derive(Debug, Default)]
pub struct Handled {
    /// `(status, response)` of the reply to the client's push.
    pub reply: Option<(String, Value)>,
    /// Broadcasts to the topic, sender included.
    pub broadcast: Vec<Out>,
    /// Broadcasts to the topic except the sender.
    pub broadcast_from: Vec<Out>,
    /// Pushes to the sender only.
    pub push: Vec<Out>,
}

/// The `connect` body.
pub fn connect_body(
    params: Map<String, Value>,
    origin: Option<&str>,
    agent: Option<&str>,
) -> Value {
    json!({ "params": params, "headers": { "origin": origin, "user-agent": agent } })
}

/// The `join` body.
pub fn join_body(topic: &str, payload: Value, session: &SessionInfo) -> Value {
    json!({ "topic": topic, "payload": payload, "session": session.to_json() })
}

/// The `event` body.
pub fn event_body(topic: &str, event: &str, payload: Value, session: &RawValue) -> Value {
    json!({ "topic": topic, "event": event, "payload": payload, "session": session })
}

/// The `leave` body.
pub fn leave_body(topic: &str, session: &RawValue, reason: &str) -> Value {
    json!({ "topic": topic, "session": session, "reason": reason })
}

fn object(v: Value) -> Result<Map<String, Value>, Invalid> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(Invalid("the answer must be a JSON object")),
    }
}

fn assigns(m: &Map<String, Value>, max: usize) -> Result<Option<Assigns>, Invalid> {
    match m.get("assigns") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Assigns::from_value(v, max).map(Some),
    }
}

/// Parse a `connect` answer.
pub fn parse_connect(v: Value, max_assigns: usize) -> Result<Connected, Invalid> {
    let mut m = object(v)?;
    if let Some(e) = m.remove("error") {
        return Ok(Connected::Refuse(e));
    }
    let id = match m.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => return Err(Invalid("id must be a non-empty string or null")),
    };
    if !m.contains_key("id") && !m.contains_key("assigns") {
        return Err(Invalid(
            "connect answers {\"id\", \"assigns\"} or {\"error\"}",
        ));
    }
    Ok(Connected::Accept {
        id,
        assigns: assigns(&m, max_assigns)?,
    })
}

/// Parse a `join` answer.
pub fn parse_join(v: Value, max_assigns: usize) -> Result<Joined, Invalid> {
    let mut m = object(v)?;
    match (m.remove("ok"), m.remove("error")) {
        (Some(response), None) => Ok(Joined::Ok {
            response,
            assigns: assigns(&m, max_assigns)?,
        }),
        (None, Some(response)) => Ok(Joined::Error(response)),
        _ => Err(Invalid("join answers exactly one of \"ok\" or \"error\"")),
    }
}

fn outs(m: &mut Map<String, Value>, key: &str) -> Result<Vec<Out>, Invalid> {
    let Some(v) = m.remove(key) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(Invalid("broadcast, broadcast_from and push are lists"));
    };
    items
        .into_iter()
        .map(|item| {
            let mut o = object(item)?;
            let event = match o.remove("event") {
                Some(Value::String(e)) if !e.is_empty() => e,
                _ => return Err(Invalid("each item needs an \"event\" string")),
            };
            if crate::protocol::is_reserved_event(&event) {
                return Err(Invalid(
                    "events starting with phx_ or presence_ are reserved",
                ));
            }
            let payload = o.remove("payload").unwrap_or_else(|| json!({}));
            Ok(Out { event, payload })
        })
        .collect()
}

/// Parse an `event` answer.
pub fn parse_event(v: Value) -> Result<Handled, Invalid> {
    let mut m = object(v)?;
    let reply = match m.remove("reply") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let mut r = object(r)?;
            let status = match r.remove("status") {
                Some(Value::String(s)) if s == "ok" || s == "error" => s,
                _ => return Err(Invalid("reply status must be \"ok\" or \"error\"")),
            };
            Some((status, r.remove("response").unwrap_or_else(|| json!({}))))
        }
    };
    Ok(Handled {
        reply,
        broadcast: outs(&mut m, "broadcast")?,
        broadcast_from: outs(&mut m, "broadcast_from")?,
        push: outs(&mut m, "push")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_inside_and_outside_the_contract() {
        assert!(matches!(
            parse_join(json!({"ok": {"a": 1}, "assigns": {"u": 1}}), 64),
            Ok(Joined::Ok {
                assigns: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse_join(json!({"error": {"reason": "no"}}), 64),
            Ok(Joined::Error(_))
        ));
        assert!(parse_join(json!({"ok": 1, "error": 2}), 64).is_err());
        assert!(parse_join(json!([1]), 64).is_err());
        assert!(parse_join(json!({"ok": {}, "assigns": {"big": "x".repeat(100)}}), 64).is_err());
        let h = parse_event(json!({
            "reply": {"status": "ok", "response": {"n": 1}},
            "broadcast": [{"event": "shout", "payload": {"x": 1}}],
            "push": [{"event": "secret"}]
        }))
        .unwrap();
        assert_eq!(h.reply, Some(("ok".into(), json!({"n": 1}))));
        assert_eq!(h.broadcast[0].event, "shout");
        assert_eq!(h.push[0].payload, json!({}));
        assert!(parse_event(json!({})).unwrap().reply.is_none());
        assert!(parse_event(json!({"reply": {"status": "maybe"}})).is_err());
        assert!(parse_event(json!({"broadcast": [{"event": "phx_reply"}]})).is_err());
        assert!(parse_event(json!({"push": {"event": "x"}})).is_err());
        assert!(matches!(
            parse_connect(json!({"id": null, "assigns": {}}), 64),
            Ok(Connected::Accept { id: None, .. })
        ));
        assert!(matches!(
            parse_connect(json!({"error": {}}), 64),
            Ok(Connected::Refuse(_))
        ));
        assert!(parse_connect(json!({"id": 5}), 64).is_err());
        assert!(parse_connect(json!({"hello": 1}), 64).is_err());
    }
}
