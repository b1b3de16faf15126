//! The example backend as a child process, and the config of a node that uses it.

use std::path::Path;

use gateway::config::{BackendSpec, ChannelSpec};
use gateway::Config;
use serde_json::Value;
use testkit::{Client, Process, Spawn};

/// The secret the backend checks signatures with.
pub const SECRET: &str = "hook-secret";

/// `gateway/examples/backend.py` on a free port.
pub struct ExampleBackend {
    pub process: Process,
}

impl ExampleBackend {
    /// Started with `--secret secret` (or none), once it accepts connections.
    pub async fn start(secret: Option<&str>) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/backend.py");
        let mut spawn = Spawn::new("python3").arg(script).args(["--port", "0"]);
        if let Some(s) = secret {
            spawn = spawn.args(["--secret", s]);
        }
        ExampleBackend {
            process: spawn.start().await,
        }
    }

    /// The hooks' base URL.
    pub fn url(&self) -> String {
        format!("http://{}/phx", self.process.addr)
    }

    /// `GET /phx/{what}` (`stats`, `leaves`) as JSON.
    pub async fn get(&self, what: &str) -> Value {
        let (status, body) =
            testkit::http(self.process.addr, "GET", &format!("/phx/{what}"), &[], "").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("the backend answers JSON")
    }
}

/// The `[backend]` table for `url`, signed with [`SECRET`].
pub fn spec(url: String) -> BackendSpec {
    BackendSpec {
        secret: Some(SECRET.into()),
        ..BackendSpec::new(url)
    }
}

/// A node whose `game:*` joins and events go to the backend `spec`; `chat` is a listed
/// broadcast that never reaches the backend.
pub fn config(spec: BackendSpec) -> Config {
    Config {
        channels: vec![ChannelSpec {
            broadcast: vec!["chat".into()],
            ..ChannelSpec::backend("game:*")
        }],
        backend: Some(spec),
        ..Config::default()
    }
}

/// A WebSocket session of `user` (V2 JSON; the connect hook, when on, checks `user`).
pub async fn ws(addr: std::net::SocketAddr, user: &str) -> Client {
    Client::connect(addr, &format!("/socket/websocket?vsn=2.0.0&user={user}")).await
}

/// Push `event` on `topic` (joined under `join_ref`); returns the push's ref.
pub async fn push(
    c: &mut Client,
    join_ref: &str,
    topic: &str,
    event: &str,
    payload: Value,
) -> String {
    let r = c.next_ref();
    c.send_json(serde_json::json!([join_ref, r, topic, event, payload]))
        .await;
    r
}

/// Push and wait for the reply to it (other frames are skipped); returns the reply frame.
pub async fn call(
    c: &mut Client,
    join_ref: &str,
    topic: &str,
    event: &str,
    payload: Value,
) -> Value {
    let r = push(c, join_ref, topic, event, payload).await;
    c.until("the reply", |f| f[3] == "phx_reply" && f[1] == r.as_str())
        .await
}
