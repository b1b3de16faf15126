//! Channel rules: one `[[channels]]` entry of the config file per topic pattern — who may join,
//! which client events are broadcast, presence — and the demo channel served without a file.

use serde::Deserialize;

/// Who may join a pattern's topics.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinPolicy {
    /// Anyone.
    #[default]
    Public,
    /// Sessions with a verified token whose `topics` claim allows the topic.
    Token,
    /// Whoever the backend's `join` hook accepts.
    Backend,
}

/// Who handles client events not listed in `broadcast` / `broadcast_from`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HandleIn {
    /// Nobody: they are answered `{"reason":"unknown event"}`.
    #[default]
    None,
    /// The backend's `event` hook, in order per session and topic.
    Backend,
}

/// One `[[channels]]` entry of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// `room:*` (prefix) or an exact topic.
    pub pattern: String,
    /// Join policy; default `public`.
    #[serde(default)]
    pub join: JoinPolicy,
    /// Client events broadcast to the topic, sender included, and replied `ok`.
    #[serde(default)]
    pub broadcast: Vec<String>,
    /// Client events broadcast to the topic except the sender, and replied `ok`.
    #[serde(default)]
    pub broadcast_from: Vec<String>,
    /// Where the other client events go; default none (`unknown event`).
    #[serde(default)]
    pub handle_in: HandleIn,
    /// Presence on: joiners get `presence_state`, and are tracked under their key.
    #[serde(default)]
    pub presence: bool,
    /// Join-payload field that keys a presence in open mode (JWT mode uses the token's `sub`).
    /// Default `user`. A join without a key is not tracked (it still sees the others).
    #[serde(default = "default_presence_key")]
    pub presence_key: String,
    /// Join-payload fields copied into the presence meta (besides `online_at`); the meta is
    /// limited to 1 KiB. The client event `presence_update` replaces them.
    #[serde(default)]
    pub presence_meta: Vec<String>,
    /// Broadcasts kept per topic for recovery on join (`since`); 0 (the default) = no
    /// history, and broadcasts cost nothing extra.
    #[serde(default)]
    pub history_size: u32,
    /// How long a topic's history lives after its last broadcast (also how long an
    /// idempotency key of `/api/broadcast` is remembered). Default 300.
    #[serde(default = "default_history_ttl")]
    pub history_ttl_secs: u64,
}

fn default_history_ttl() -> u64 {
    300
}

fn default_presence_key() -> String {
    "user".into()
}

impl ChannelSpec {
    /// The demo channel served when no config file is given: `room:*`, public, `new_msg` and
    /// `shout` broadcast to everyone including the sender, the last 100 kept for 300 s.
    pub fn demo() -> Self {
        ChannelSpec {
            pattern: "room:*".into(),
            join: JoinPolicy::Public,
            broadcast: vec!["new_msg".into(), "shout".into()],
            broadcast_from: vec![],
            handle_in: HandleIn::None,
            presence: true,
            presence_key: default_presence_key(),
            presence_meta: vec!["name".into(), "status".into()],
            history_size: 100,
            history_ttl_secs: 300,
        }
    }

    /// A public pattern broadcasting `events` (sender included), without presence.
    pub fn public(pattern: &str, events: &[&str]) -> Self {
        ChannelSpec {
            pattern: pattern.into(),
            join: JoinPolicy::Public,
            broadcast: events.iter().map(|e| e.to_string()).collect(),
            broadcast_from: vec![],
            handle_in: HandleIn::None,
            presence: false,
            presence_key: default_presence_key(),
            presence_meta: vec![],
            history_size: 0,
            history_ttl_secs: default_history_ttl(),
        }
    }

    /// A pattern whose joins and client events go to the backend, without presence.
    pub fn backend(pattern: &str) -> Self {
        ChannelSpec {
            join: JoinPolicy::Backend,
            handle_in: HandleIn::Backend,
            ..ChannelSpec::public(pattern, &[])
        }
    }

    /// Whether any hook of this pattern goes to the backend.
    pub fn uses_backend(&self) -> bool {
        self.join == JoinPolicy::Backend || self.handle_in == HandleIn::Backend
    }
}
