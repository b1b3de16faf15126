//! Target nodes: parsing `ws://IP:PORT/path?query` URLs, refusing anything outside 127.0.0.0/8,
//! and choosing the loopback source address for each session.
//!
//! The harness only ever generates load on this machine: a non-loopback target is an error, not
//! a warning, so a typo cannot turn it into a traffic generator against someone else's host.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// One gateway node to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Node address (always in 127.0.0.0/8).
    pub addr: SocketAddrV4,
    /// WebSocket request path with query, e.g. `/socket/websocket?vsn=2.0.0`.
    pub path: String,
}

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not `ws://` or `http://`.
    #[error("unsupported scheme in {0:?} (use ws://IP:PORT/path)")]
    Scheme(String),
    /// Host is not an IPv4 literal with a port.
    #[error("host must be IPV4:PORT in {0:?}")]
    Host(String),
    /// Host outside 127.0.0.0/8.
    #[error("refusing non-loopback target {0}: only 127.0.0.0/8 may be load-tested")]
    NotLoopback(Ipv4Addr),
}

impl Target {
    /// Parses `ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0`; a missing path defaults to
    /// `/socket/websocket?vsn=2.0.0`, a path without `vsn` gets `vsn=2.0.0` appended.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| TargetError::Scheme(url.to_string()))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let addr: SocketAddrV4 = host
            .parse()
            .map_err(|_| TargetError::Host(url.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(TargetError::NotLoopback(*addr.ip()));
        }
        let mut path = if path.is_empty() || path == "/" {
            "/socket/websocket".to_string()
        } else {
            path.to_string()
        };
        if !path.contains("vsn=") {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("vsn=2.0.0");
        }
        Ok(Target { addr, path })
    }

    /// `IP:PORT` for the Host header.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The node address as a generic socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.addr)
    }
}

/// Source address for the session with global index `idx`: 127.0.0.2 + (idx mod `sources`).
///
/// Spreading sessions over source addresses multiplies the ~28k ephemeral ports available per
/// (source IP, destination) pair.
pub fn source_ip(idx: u64, sources: u32) -> Ipv4Addr {
    let n = u64::from(sources.clamp(1, 250));
    Ipv4Addr::new(127, 0, 0, 2 + (idx % n) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_refuses_remote() {
        let t = Target::parse("ws://127.0.0.1:4000").unwrap();
        assert_eq!(t.path, "/socket/websocket?vsn=2.0.0");
        let t = Target::parse("ws://127.0.0.3:9/socket/websocket?token=x").unwrap();
        assert_eq!(t.path, "/socket/websocket?token=x&vsn=2.0.0");
        assert_eq!(t.host(), "127.0.0.3:9");
        assert_eq!(
            Target::parse("ws://10.0.0.1:4000"),
            Err(TargetError::NotLoopback(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert!(matches!(
            Target::parse("wss://127.0.0.1:1"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("ws://localhost:1"),
            Err(TargetError::Host(_))
        ));
    }

    #[test]
    fn source_ips_cycle() {
        assert_eq!(source_ip(0, 4), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(5, 4), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_ip(5, 0), Ipv4Addr::new(127, 0, 0, 2));
    }
}
