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

/// A `redis-server` inside a network namespace of its own, reached from the host over a veth
/// pair, so a test can cut the path and heal it. The cut is a black hole (the namespace's end
/// of the pair goes down; permanent neighbour entries keep the host from learning anything), so
/// established connections hang instead of being reset: what a partition looks like. Needs
/// root (`ip netns`, veth); the namespace, the pair and the server go away on drop.
pub struct NetnsRedis {
    ns: String,
    host_if: String,
    ns_if: String,
    /// The server's address on the namespace's end of the pair.
    pub ip: std::net::Ipv4Addr,
    /// The server's port (a fixed one is safe: the namespace is private to this value).
    pub port: u16,
    child: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` tool (iproute2) must be installed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsRedis {
    pub async fn start() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        // Unique per process and instance: names ≤ 15 bytes, one /30 in 10.240.0.0/14 each.
        let slot = ((pid % 16384) * 4 + k % 4) as usize;
        let net = [
            10u8,
            240 + (slot >> 14) as u8,
            (slot >> 6) as u8,
            ((slot & 63) << 2) as u8,
        ];
        let host_ip = std::net::Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1);
        let ns_ip = std::net::Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2);
        let ns = format!("gwf{pid}n{k}");
        let host_if = format!("gwf{pid}a{k}");
        let ns_if = format!("gwf{pid}b{k}");
        let s = NetnsRedis {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            ip: ns_ip,
            port: 6379,
            child: None,
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // The MAC from `ip -o link show`: "... link/ether aa:bb:cc:dd:ee:ff brd ...".
        let mac = |netns: &[&str], dev: &str| {
            let out = Command::new("ip")
                .args(netns)
                .args(["-o", "link", "show", "dev", dev])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut words = text.split_whitespace();
            words.find(|w| *w == "link/ether");
            let mac = words.next().unwrap_or_default().to_string();
            assert!(!mac.is_empty(), "no MAC for {dev}: {text}");
            mac
        };
        let (host_mac, ns_mac) = (mac(&[], &host_if), mac(&["-n", &ns], &ns_if));
        ip(&[
            "neigh",
            "replace",
            &ns_ip.to_string(),
            "lladdr",
            &ns_mac,
            "dev",
            &host_if,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            &ns,
            "neigh",
            "replace",
            &host_ip.to_string(),
            "lladdr",
            &host_mac,
            "dev",
            &ns_if,
            "nud",
            "permanent",
        ]);
        let mut s = s;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "redis-server"])
            .args(["--bind", &ns_ip.to_string(), "--port", &s.port.to_string()])
            .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (run .ci/setup)");
        s.child = Some(child);
        for _ in 0..500 {
            if s.cmd(&["PING"]).await.is_some_and(|r| r == "PONG") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start in namespace {ns}");
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.ip, self.port)
    }

    /// Black-hole the path: packets in both directions vanish.
    pub fn cut(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.ns_if, "down"]);
    }

    /// Restore the path.
    pub fn heal(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.ns_if, "up"]);
    }

    /// Run a command with redis-cli from the host (bounded to 2 s, so it also works during a
    /// cut); `None` if the server does not answer.
    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        let run = tokio::process::Command::new("redis-cli")
            .args(["-h", &self.ip.to_string(), "-p", &self.port.to_string()])
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }
}

impl Drop for NetnsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
