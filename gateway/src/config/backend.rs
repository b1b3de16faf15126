//! The `[backend]` table of the config file: where the backend hooks are POSTed, how long an
//! answer may take, the signing secret, and which optional hooks (`connect`, `leave`) are on.
//! Channel patterns opt in with `join = "backend"` and `handle_in = "backend"`.

use std::time::Duration;

use serde::Deserialize;

/// `[backend]`: the HTTP backend that plays the channel module.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Base URL (`http://host:port/path`); each hook is POSTed to `{url}/{hook}`.
    pub url: String,
    /// Longest a hook may take before it fails with `backend timeout` (default 2000 ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// HMAC-SHA256 key: each request carries `X-Gateway-Signature`, the hex HMAC of its body.
    #[serde(default)]
    pub secret: Option<String>,
    /// Call `{url}/connect` on every new session (its answer accepts or refuses it).
    #[serde(default)]
    pub connect: bool,
    /// Call `{url}/leave` when a backend channel ends (the answer is ignored).
    #[serde(default)]
    pub leave: bool,
}

fn default_timeout_ms() -> u64 {
    2000
}

impl BackendSpec {
    /// A backend at `url` with the default timeout, no secret, no connect or leave hook.
    pub fn new(url: impl Into<String>) -> Self {
        BackendSpec {
            url: url.into(),
            timeout_ms: default_timeout_ms(),
            secret: None,
            connect: false,
            leave: false,
        }
    }

    /// The hook timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
