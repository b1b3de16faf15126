//! A `redis-server` inside a network namespace of its own, reached from the host over a veth
//! pair, so a test can cut the path and heal it. The cut is a black hole (the namespace's end
//! of the pair goes down; permanent neighbour entries keep the host from learning anything), so
//! established connections hang instead of being reset: what a partition looks like. Needs
//! root (`ip netns`, veth); the namespace, the pair and the server go away on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use super::{RedisOptions, RedisServer};

pub struct NetnsRedis {
    /// The server, on the namespace's end of the pair (a fixed port is safe: the namespace is
    /// private to this value). Declared first: it is dropped (killed) before its namespace.
    pub server: RedisServer,
    net: Netns,
}

/// The namespace and the veth pair, deleted on drop (also when setting them up fails halfway).
struct Netns {
    ns: String,
    host_if: String,
    ns_if: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Run `ip ARGS`, which must succeed.
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

/// The MAC of `dev` from `ip -o link show`: "... link/ether aa:bb:cc:dd:ee:ff brd ...".
fn mac(netns: &[&str], dev: &str) -> String {
    let out = Command::new("ip")
        .args(netns)
        .args(["-o", "link", "show", "dev", dev])
        .output()
        .expect("the `ip` tool (iproute2) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether");
    let mac = words.next().unwrap_or_default().to_string();
    assert!(!mac.is_empty(), "no MAC for {dev}: {text}");
    mac
}

impl NetnsRedis {
    pub async fn start() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        // Unique per process and instance: names ≤ 15 bytes, one /30 in 10.240.0.0/14 each.
        let slot = ((pid % 16384) * 4 + k % 4) as usize;
        let prefix = [
            10u8,
            240 + (slot >> 14) as u8,
            (slot >> 6) as u8,
            ((slot & 63) << 2) as u8,
        ];
        let host_ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], prefix[3] + 1);
        let ns_ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], prefix[3] + 2);
        let net = Netns {
            ns: format!("gwf{pid}n{k}"),
            host_if: format!("gwf{pid}a{k}"),
            ns_if: format!("gwf{pid}b{k}"),
        };
        let (ns, host_if, ns_if) = (&net.ns, &net.host_if, &net.ns_if);
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ]);
        ip(&["link", "set", ns_if, "netns", ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", host_if]);
        ip(&["link", "set", host_if, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            ns_if,
        ]);
        ip(&["-n", ns, "link", "set", ns_if, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let (host_mac, ns_mac) = (mac(&[], host_if), mac(&["-n", ns], ns_if));
        ip(&[
            "neigh",
            "replace",
            &ns_ip.to_string(),
            "lladdr",
            &ns_mac,
            "dev",
            host_if,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &host_ip.to_string(),
            "lladdr",
            &host_mac,
            "dev",
            ns_if,
            "nud",
            "permanent",
        ]);
        let server = RedisOptions::default()
            .wrapper(&["ip", "netns", "exec", ns])
            .bind(IpAddr::V4(ns_ip))
            .port(6379)
            .args(&["--protected-mode", "no"])
            .start()
            .await;
        NetnsRedis { server, net }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Black-hole the path: packets in both directions vanish.
    pub fn cut(&self) {
        ip(&["-n", &self.net.ns, "link", "set", &self.net.ns_if, "down"]);
    }

    /// Restore the path.
    pub fn heal(&self) {
        ip(&["-n", &self.net.ns, "link", "set", &self.net.ns_if, "up"]);
    }
}
