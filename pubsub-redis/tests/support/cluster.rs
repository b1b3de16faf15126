//! A three-master Redis Cluster made of `RedisServer`s (no replicas), created with
//! `redis-cli --cluster create`, each node with its own cluster bus port.

use std::process::Command;
use std::time::{Duration, Instant};

use super::server::{free_port, RedisServer};

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let bus = free_port().to_string();
            nodes.push(
                RedisServer::start_with(free_port(), |dir| {
                    let conf = dir.join("nodes.conf").to_string_lossy().into_owned();
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-port",
                        &bus,
                    ]
                    .map(String::from)
                    .to_vec()
                })
                .await,
            );
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
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info: String = node.query(redis::cmd("CLUSTER").arg("INFO")).await;
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok: {info}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Index of the node that owns `slot`, read from `CLUSTER SLOTS`.
    pub async fn owner_of(&self, slot: u16) -> usize {
        let reply: redis::Value = self.nodes[0]
            .query(redis::cmd("CLUSTER").arg("SLOTS"))
            .await;
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => *i,
            other => panic!("unexpected {other:?}"),
        };
        let redis::Value::Array(entries) = reply else {
            panic!("CLUSTER SLOTS")
        };
        let port = entries
            .iter()
            .find_map(|entry| {
                let redis::Value::Array(f) = entry else {
                    return None;
                };
                let redis::Value::Array(master) = &f[2] else {
                    return None;
                };
                let range = int(&f[0])..=int(&f[1]);
                range
                    .contains(&i64::from(slot))
                    .then(|| int(&master[1]) as u16)
            })
            .expect("slot is covered");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("known node")
    }
}
