//! Admission: whether a new session may start on this node. Two limits, both decided before a
//! WebSocket upgrade or a long-poll session exists, so a refused client costs one HTTP answer:
//!
//! * the session cap (`max_sessions`): HTTP 503 with `Retry-After`, so a node never runs out of
//!   file descriptors or memory in a reconnect storm and balancers send the client elsewhere;
//! * the per-IP connect rate (`connect_rate_per_ip`, a token bucket per source address with a
//!   burst of one second's worth): HTTP 429 with `Retry-After`, so one address cannot monopolise
//!   the node's accept capacity.
//!
//! The per-IP table is sharded and pruned as it grows, so a scan from many addresses cannot grow
//! it without bound.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The TCP peer of a request, put into its extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Why a new session was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `max_sessions` already.
    Full,
    /// The source address exceeded its connect rate; retry after this many seconds.
    IpRate(u32),
    /// The backend's connect hook failed (timeout, unavailable, busy, bad answer).
    Backend,
}

impl Refusal {
    /// Metric label (`gateway_connect_refusals_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::IpRate(_) => "ip_rate",
            Refusal::Backend => "backend_failed",
        }
    }

    /// The HTTP answer: 503 or 429, with `Retry-After`.
    pub fn response(self) -> Response {
        let (status, after) = match self {
            Refusal::Full | Refusal::Backend => (StatusCode::SERVICE_UNAVAILABLE, 5),
            Refusal::IpRate(s) => (StatusCode::TOO_MANY_REQUESTS, s.max(1)),
        };
        let mut resp = (status, self.label()).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after));
        resp
    }
}

/// A source address's token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Connects it may still make now.
    tokens: f32,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

const SHARDS: usize = 16;
/// A shard this large is first pruned of addresses whose bucket has refilled (they lose
/// nothing); after a prune the next one waits until the shard doubles (amortised cost).
const PRUNE_AT: usize = 4096;
/// A shard still this large after pruning (a flood from very many addresses within a second)
/// is emptied: memory stays bounded, and the limit fails open for a moment.
const HARD_CAP: usize = 65536;

/// One shard of the per-address table.
#[derive(Debug, Default)]
struct Table {
    /// Buckets by source address (IPv6 by /64: one host usually holds a whole /64).
    map: HashMap<IpAddr, Bucket>,
    /// Size at which the next prune runs.
    prune_at: usize,
}

/// The node's admission limits.
#[derive(Debug)]
pub struct Admission {
    /// Most sessions the node holds (0: no cap).
    max_sessions: usize,
    /// Connects per second per source address (0: no limit).
    rate: f32,
    /// Buckets by source address, sharded by address hash.
    buckets: Box<[Mutex<Table>]>,
    /// Hasher that picks an address's shard.
    hasher: RandomState,
}

impl Admission {
    /// Limits: `max_sessions` (0: none) and `rate_per_ip` connects per second (0: none).
    pub fn new(max_sessions: usize, rate_per_ip: u32) -> Self {
        Admission {
            max_sessions,
            rate: rate_per_ip as f32,
            buckets: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Decide on a new session from `peer` while the node holds `live` sessions.
    pub fn admit(&self, live: usize, peer: Option<IpAddr>) -> Result<(), Refusal> {
        if self.max_sessions > 0 && live >= self.max_sessions {
            return Err(Refusal::Full);
        }
        match peer {
            Some(ip) if self.rate > 0.0 => self.take(ip, Instant::now()),
            _ => Ok(()),
        }
    }

    /// Take one token from `ip`'s bucket at time `now`.
    fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            },
            v4 => v4,
        };
        let shard = &self.buckets[self.hasher.hash_one(ip) as usize % SHARDS];
        let mut table = shard.lock().unwrap_or_else(|e| e.into_inner());
        let burst = self.rate.max(1.0);
        if table.map.len() >= table.prune_at.max(PRUNE_AT) {
            let full_after = burst / self.rate;
            table
                .map
                .retain(|_, b| now.duration_since(b.at).as_secs_f32() < full_after);
            if table.map.len() >= HARD_CAP {
                table.map.clear();
            }
            table.prune_at = table.map.len() * 2;
        }
        let b = table.map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f32() * self.rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::IpRate(((1.0 - b.tokens) / self.rate).ceil() as u32))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn session_cap() {
        let a = Admission::new(2, 0);
        assert_eq!(a.admit(1, None), Ok(()));
        assert_eq!(a.admit(2, None), Err(Refusal::Full));
        assert_eq!(Admission::new(0, 0).admit(1 << 30, None), Ok(()));
    }

    #[test]
    fn per_ip_bucket_refills_and_is_per_address() {
        let a = Admission::new(0, 2);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(a.take(x, t0), Ok(()));
        assert_eq!(a.take(x, t0), Ok(()));
        assert_eq!(a.take(x, t0), Err(Refusal::IpRate(1)));
        assert_eq!(a.take(y, t0), Ok(()), "another address has its own bucket");
        assert_eq!(a.take(x, t0 + Duration::from_millis(500)), Ok(()));
        assert!(a.take(x, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn the_table_stays_bounded() {
        let a = Admission::new(0, 1000);
        let t0 = Instant::now();
        // A flood from more addresses than the table holds, all within one instant.
        for i in 0..(SHARDS * HARD_CAP * 2) as u32 {
            let _ = a.take(IpAddr::from(i.to_be_bytes()), t0);
        }
        let size = |a: &Admission| -> usize {
            a.buckets.iter().map(|s| s.lock().unwrap().map.len()).sum()
        };
        assert!(size(&a) <= SHARDS * HARD_CAP, "{}", size(&a));
        // Once the buckets have refilled, new addresses prune the old ones.
        let later = t0 + Duration::from_secs(2);
        for i in 0..(SHARDS * PRUNE_AT * 4) as u32 {
            let _ = a.take(IpAddr::from((u32::MAX - i).to_be_bytes()), later);
        }
        assert!(size(&a) <= SHARDS * PRUNE_AT * 4, "{}", size(&a));
    }

    #[test]
    fn ipv6_hosts_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a = Admission::new(0, 1);
        let t0 = Instant::now();
        assert_eq!(a.take("2001:db8::1".parse().unwrap(), t0), Ok(()));
        assert!(a.take("2001:db8::2".parse().unwrap(), t0).is_err());
        assert_eq!(a.take("2001:db8:0:1::1".parse().unwrap(), t0), Ok(()));
        // A dual-stack listener sees IPv4 clients as mapped addresses: the same bucket.
        assert_eq!(a.take("10.0.0.9".parse().unwrap(), t0), Ok(()));
        assert!(a.take("::ffff:10.0.0.9".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn answers() {
        let r = Refusal::Full.response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = Refusal::IpRate(3).response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
