//! The real `gateway` binary as a child process: `LoggedGateway` (chosen environment, every
//! output line kept, fallible start) and `GatewayProcess` (the fault suite's controls on top).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::{http, metric_value, try_broadcast, Client, WAIT};

/// The `gateway` binary (`CARGO_BIN_EXE_gateway`) as a child process on `127.0.0.1:0` at
/// `RUST_LOG=info` (a `LoggedGateway`, so its output is kept and a test can assert it never
/// panicked), with the fault suite's controls. SIGKILLed on drop.
pub struct GatewayProcess {
    /// The process and its captured output.
    process: LoggedGateway,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl GatewayProcess {
    pub async fn start(args: &[&str]) -> Self {
        let process = LoggedGateway::start(args, &[("RUST_LOG", "info"), ("NO_COLOR", "1")]).await;
        let pid = process.child.id().expect("gateway pid");
        GatewayProcess {
            addr: process.addr,
            pid,
            process,
        }
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        self.process.output()
    }

    /// Panics (with the log) if the process wrote a Rust panic message.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(
            !log.contains("panicked at"),
            "node {} panicked:\n{log}",
            self.addr
        );
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        let _ = self.process.child.kill().await;
    }

    /// SIGTERM (starts the drain).
    pub async fn term(&self) {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Wait at most `limit` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.process.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
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

    /// Resident set size in bytes, from `/proc/<pid>/status`.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub async fn ws(&self) -> Client {
        Client::connect(self.addr, "/socket/websocket?vsn=2.0.0").await
    }

    /// POST /api/broadcast; true when the node accepted it (202).
    pub async fn try_broadcast(&self, topic: &str, event: &str, payload: Value) -> bool {
        try_broadcast(self.addr, topic, event, payload).await
    }
}

/// The real `gateway` binary (`CARGO_BIN_EXE_gateway`) as a child process, for what only the
/// binary has: flags, environment variables and its log output. Unlike `GatewayProcess` the test
/// chooses the environment (e.g. `RUST_LOG=trace`) and a start may fail (`try_start`). Every
/// line it writes to stdout and stderr is kept; it is killed when dropped.
pub struct LoggedGateway {
    /// The address from its `listening on http://IP:PORT` line.
    pub addr: SocketAddr,
    child: tokio::process::Child,
    /// Every output line so far, stdout and stderr interleaved as they arrived.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr; they end at EOF, i.e. when the process exits.
    readers: Vec<JoinHandle<()>>,
}

impl LoggedGateway {
    /// Start `gateway --bind 127.0.0.1 --port 0 ARGS` with `env` added to a copy of this
    /// process's environment from which every `GATEWAY_*` and `RUST_LOG` variable was removed
    /// (a developer's own settings must not change what is tested). Waits for the `listening on`
    /// line; panics with the output so far if it does not come.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        match Self::try_start(args, env).await {
            Ok(process) => process,
            Err(output) => panic!("gateway {args:?} did not start:\n{output}"),
        }
    }

    /// Like `start`; `Err` holds the exit status and output when the process exits (or stays
    /// silent for 20 s) without logging `listening on`.
    pub async fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        use std::process::Stdio;
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["--bind", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("GATEWAY_") || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("cannot start the gateway binary");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let streams: [Box<dyn tokio::io::AsyncRead + Send + Unpin>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        let readers = streams
            .into_iter()
            .map(|stream| {
                let (log, tx) = (log.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        log.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                })
            })
            .collect();
        drop(tx);
        let addr = tokio::time::timeout(WAIT * 4, async {
            while let Some(line) = rx.recv().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    return addr.parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await;
        let mut process = LoggedGateway {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
            readers,
        };
        match addr {
            Ok(Some(addr)) => {
                process.addr = addr;
                Ok(process)
            }
            _ => {
                let status = tokio::time::timeout(WAIT, process.child.wait()).await;
                for reader in process.readers.drain(..) {
                    let _ = tokio::time::timeout(WAIT, reader).await;
                }
                Err(format!(
                    "no `listening on http://IP:PORT` line (exit: {status:?}):\n{}",
                    process.output()
                ))
            }
        }
    }

    /// Everything it wrote so far, one line per output line.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM (the drain), wait for the exit and for the last output line. Returns the exit
    /// status, `None` if it did not exit within 30 s (then it is killed).
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        status
    }
}
