//! A three-master Redis Cluster (no replicas) of private [`RedisServer`]s, each with its own
//! cluster bus port, created with `redis-cli --cluster create`; which master owns a slot or key,
//! so a test can SIGKILL exactly the one a topic lives on.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisOptions, RedisServer};

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisOptions::default().cluster().start().await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli (run .ci/setup)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// Every node's URL (the seeds a client is given).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
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
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Index of the node that owns `slot`, read from `CLUSTER SLOTS`.
    pub async fn owner_of_slot(&self, slot: u16) -> usize {
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

    /// Index of the node that owns the slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn owner_of_key(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await;
        self.owner_of_slot(slot).await
    }
}
