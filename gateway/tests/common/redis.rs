//! A private `redis-server` on a free port that a test can SIGKILL and restart on the same port.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    /// Extra arguments (cluster mode).
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut s = RedisServer {
            port: free_port(),
            extra: Vec::new(),
            child: None,
        };
        s.restart().await;
        s
    }

    /// A cluster-enabled server keeping its cluster state in a private directory.
    pub async fn start_cluster_node() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("gw-test-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nodes.conf").to_string_lossy().into_owned();
        let bus = free_port().to_string();
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--cluster-port",
            &bus,
        ];
        let mut s = RedisServer {
            port,
            extra: extra.map(String::from).to_vec(),
            child: None,
        };
        s.restart().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)start on the same port and wait until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (run .ci/setup)");
        self.child = Some(child);
        for _ in 0..500 {
            if self.cmd(&["PING"]).await.is_some_and(|r| r == "PONG") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on {}", self.port);
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run a command with redis-cli; `None` if the server does not answer.
    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// `PUBSUB NUMSUB channel` → number of subscriber connections.
    pub async fn numsub(&self, channel: &str) -> u64 {
        let out = self
            .cmd(&["PUBSUB", "NUMSUB", channel])
            .await
            .unwrap_or_default();
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters (no replicas) made into a Redis Cluster with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok().await;
        c
    }

    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub async fn wait_ok(&self) {
        for n in &self.nodes {
            for i in 0.. {
                if n.cmd(&["CLUSTER", "INFO"])
                    .await
                    .is_some_and(|i| i.contains("cluster_state:ok"))
                {
                    break;
                }
                assert!(i < 1000, "cluster never became ok");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Index of the master owning the slot of `key`.
    pub async fn owner_of(&self, key: &str) -> usize {
        let slot: u64 = self.nodes[0]
            .cmd(&["CLUSTER", "KEYSLOT", key])
            .await
            .unwrap()
            .parse()
            .unwrap();
        let nodes = self.nodes[0].cmd(&["CLUSTER", "NODES"]).await.unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = f[1]
                .split('@')
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let owns = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().unwrap()..=b.parse().unwrap()).contains(&slot),
                None => r.parse::<u64>().ok() == Some(slot),
            });
            if owns {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no owner for slot {slot}");
    }
}
