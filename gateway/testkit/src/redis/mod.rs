//! Private `redis-server` processes for tests: each on a free port (or a given one) with its
//! own temporary directory, answering PING before the test goes on, SIGKILLed (no shutdown, no
//! goodbye to clients) and restarted on the same port and arguments on demand, paused with
//! `CLIENT PAUSE`, killed on drop so a failing test still cleans up. The system Redis on 6379 is
//! never used. [`cluster`] makes three of them a Redis Cluster; [`netns`] puts one behind a
//! network path a test can cut.

pub mod cluster;
pub mod netns;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cluster::RedisCluster;
pub use netns::NetnsRedis;

/// A port nobody listens on right now (the OS picks it; it is released for the server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// How to start a [`RedisServer`]; `RedisOptions::default()` is a standalone server on
/// 127.0.0.1 and a free port.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    port: Option<u16>,
    bind: Option<IpAddr>,
    password: Option<String>,
    cluster: bool,
    args: Vec<String>,
    /// A command the server runs under (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
}

impl RedisOptions {
    /// Listen on `port` instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Listen on `ip` instead of 127.0.0.1.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Require `password` (`--requirepass`); [`RedisServer::url`] carries it.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Cluster mode, the cluster state in the server's directory, a bus port of its own.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// More `redis-server` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Run the server under `command` (its arguments, then `redis-server ...`).
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Start the server and wait until it answers PING.
    pub async fn start(self) -> RedisServer {
        let port = self.port.unwrap_or_else(free_port);
        let dir = tempfile::Builder::new()
            .prefix(&format!("redis-test-{port}-"))
            .tempdir()
            .expect("create a temp dir for redis-server");
        let host = self.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            &host.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        if let Some(p) = &self.password {
            args.extend(["--requirepass".to_string(), p.clone()]);
        }
        if self.cluster {
            let conf = dir.path().join("nodes.conf");
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.to_string_lossy().into_owned(),
                "--cluster-port".into(),
                free_port().to_string(),
            ]);
        }
        args.extend(self.args);
        let mut server = RedisServer {
            host,
            port,
            password: self.password,
            args,
            wrapper: self.wrapper,
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }
}

/// One `redis-server` child process.
pub struct RedisServer {
    /// The address it listens on.
    pub host: IpAddr,
    pub port: u16,
    /// `--requirepass`, if any (part of the URL).
    password: Option<String>,
    /// Every argument, so a restart is the same server again.
    args: Vec<String>,
    wrapper: Vec<String>,
    /// Its working directory (cluster state, log); removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server on 127.0.0.1 and a free port.
    pub async fn start() -> Self {
        RedisOptions::default().start().await
    }

    /// How to start one with other settings.
    pub fn options() -> RedisOptions {
        RedisOptions::default()
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{}:{}/", self.host, self.port),
            None => format!("redis://{}:{}/", self.host, self.port),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid redis URL")
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg("redis-server");
                c
            }
            None => Command::new("redis-server"),
        };
        let child = cmd
            .args(&self.args)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (run .ci/setup)");
        self.child = Some(child);
        self.wait_ping().await;
    }

    /// Waits until the server answers PING (a fresh process gives no event to await).
    async fn wait_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = self
                .try_query::<String>(&redis::cmd("PING"), Duration::from_millis(500))
                .await;
            if pong.as_deref() == Ok("PONG") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {}:{} never answered PING ({pong:?}); its log:\n{}",
                self.host,
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (no shutdown, no goodbye to clients) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port, directory and arguments (killing it first if
    /// it still runs), and wait until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Run one command on a fresh connection, within `limit` (so it also returns while the
    /// server is paused or cut off); `Err` says what failed.
    pub async fn try_query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, String> {
        let attempt = async {
            let mut c = self
                .client()
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            cmd.query_async(&mut c).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| format!("no answer within {limit:?}"))?
    }

    /// Run one command; panics when the server does not answer it.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.try_query(cmd, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{cmd:?} on {}: {e}", self.url()))
    }

    /// `CLIENT PAUSE <ms> <mode>` (`ALL` or `WRITE`): the server holds its clients' commands.
    pub async fn pause(&self, ms: u64, mode: &str) {
        let ok: String = self
            .query(redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg(mode))
            .await;
        assert_eq!(ok, "OK");
    }

    /// `PUBLISH channel payload` (any bytes, e.g. a MessagePack envelope): how many
    /// subscribers got it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> u64 {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
    }

    /// `CLIENT KILL TYPE <kind>` (e.g. `pubsub`): how many connections the server dropped.
    pub async fn client_kill(&self, kind: &str) -> u64 {
        self.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind))
            .await
    }

    /// `RPUSH key value`: the list's new length.
    pub async fn rpush(&self, key: &str, value: &[u8]) -> u64 {
        self.query(redis::cmd("RPUSH").arg(key).arg(value)).await
    }

    /// `HINCRBY key field by`: the field's new value.
    pub async fn hincrby(&self, key: &str, field: &str, by: i64) -> i64 {
        self.query(redis::cmd("HINCRBY").arg(key).arg(field).arg(by))
            .await
    }

    /// `PUBSUB NUMSUB channel`: the number of subscriber connections.
    pub async fn numsub(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = self
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .await;
        n
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
