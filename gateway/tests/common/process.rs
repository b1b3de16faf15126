//! This package's `gateway` binary (`CARGO_BIN_EXE_gateway`, known only to its own tests) as a
//! child process through `testkit::process`: the launcher with a developer's `GATEWAY_*` and
//! `RUST_LOG` settings removed, and `GatewayProcess`, the fault suite's node with its
//! operator-side views (`/readyz`, `/metrics`, sessions, RSS).

use std::ops::{Deref, DerefMut};

use serde_json::Value;
use testkit::{http, metric_value, try_broadcast, Client, Process, Spawn};

/// The `gateway` binary, its environment cleaned of every `GATEWAY_*` variable and `RUST_LOG`
/// (a developer's own settings must not change what is tested).
pub fn gateway() -> Spawn {
    Spawn::new(env!("CARGO_BIN_EXE_gateway"))
        .without_env("GATEWAY_*")
        .without_env("RUST_LOG")
}

/// `gateway --bind 127.0.0.1 --port 0 ARGS` with `env` added.
pub fn gateway_on_free_port(args: &[&str], env: &[(&str, &str)]) -> Spawn {
    gateway()
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
}

/// A `gateway` process on `127.0.0.1:0` at `RUST_LOG=info`, with the fault suite's views of
/// it. Its output is kept, so a test can assert it never panicked; SIGKILLed on drop.
pub struct GatewayProcess {
    process: Process,
}

impl Deref for GatewayProcess {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for GatewayProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl GatewayProcess {
    pub async fn start(args: &[&str]) -> Self {
        let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        GatewayProcess {
            process: gateway_on_free_port(args, &env).start().await,
        }
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        self.process.output()
    }

    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.addr, method, path, &[], body).await
    }

    pub async fn ready(&self) -> bool {
        self.http("GET", "/readyz", "").await.0 == 200
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http("GET", "/metrics", "").await.1
    }

    /// One series of `/metrics` (see [`metric_value`]).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Live WebSocket sessions.
    pub async fn sessions(&self) -> f64 {
        self.metric("gateway_sessions{transport=\"websocket\"}")
            .await
    }

    pub async fn ws(&self) -> Client {
        Client::connect(self.addr, "/socket/websocket?vsn=2.0.0").await
    }

    /// POST /api/broadcast; true when the node accepted it (202).
    pub async fn try_broadcast(&self, topic: &str, event: &str, payload: Value) -> bool {
        try_broadcast(self.addr, topic, event, payload).await
    }
}
