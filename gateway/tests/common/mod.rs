//! Gateway-specific test support, on top of the shared `testkit` crate (clients, Redis,
//! processes): a node started in-process on `127.0.0.1:0` through the library (`TestNode`),
//! the `gateway` binary of this package as a child process ([`process`]), and where the
//! deploy suites find the workspace and their validators.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use gateway::config::{ChannelSpec, HandleIn, JoinPolicy};
use gateway::{Config, Gateway};
use serde_json::{json, Value};
use testkit::Client;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod process;

// Not every test crate uses them.
#[allow(unused_imports)]
pub use process::{gateway, gateway_on_free_port, GatewayProcess};

/// A node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gateway::Error>>>,
}

impl TestNode {
    /// A node; with no channel rules it serves `room:*` like the demo channel but without
    /// presence, so tests see exactly the frames they assert (presence has its own tests).
    pub async fn start(mut config: Config) -> Self {
        if config.channels.is_empty() {
            config.channels = vec![gateway::config::ChannelSpec::public(
                "room:*",
                &["new_msg", "shout"],
            )];
        }
        Self::start_gateway(Gateway::new(config)).await
    }

    pub async fn start_gateway(gw: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(listener, async move {
            let _ = rx.await;
        }));
        TestNode {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Start the drain (as SIGTERM does) and wait for the node to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Start the drain without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), gateway::Error>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }

    pub async fn ws(&self) -> Client {
        Client::connect(self.addr, "/socket/websocket?vsn=2.0.0").await
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        testkit::http(self.addr, method, path, headers, body).await
    }

    pub async fn broadcast(&self, topic: &str, event: &str, payload: Value) {
        let body = json!({"topic": topic, "event": event, "payload": payload}).to_string();
        let (status, text) = self.http("POST", "/api/broadcast", &[], &body).await;
        assert_eq!(status, 202, "{text}");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// `room:*`, public: `new_msg` goes to every member, `typing` to every member but the sender;
/// no presence, so tests see exactly the frames they assert.
pub fn room_with_typing() -> ChannelSpec {
    ChannelSpec {
        pattern: "room:*".into(),
        join: JoinPolicy::Public,
        broadcast: vec!["new_msg".into()],
        broadcast_from: vec!["typing".into()],
        handle_in: HandleIn::None,
        presence: false,
        presence_key: "user".into(),
        presence_meta: vec![],
        history_size: 0,
        history_ttl_secs: 300,
    }
}

/// The workspace root (the deploy files, the Dockerfile and the lockfile live there).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A validator installed by `.ci/setup-deploy` (see `testkit::tools::find_tool`).
pub fn deploy_tool(name: &str) -> std::path::PathBuf {
    testkit::tools::tool(
        name,
        "run `bash .ci/setup-deploy` to install the deploy validators",
    )
}
