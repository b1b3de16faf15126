//! Which masters serve which slots (from `CLUSTER SLOTS`), and the canary channels that put
//! one canary of a subscriber connection on every master.
//!
//! A sharded subscription lives on the master that owns its slot, so a connection can be deaf
//! on one master and fine on the others. One canary per master per connection makes the
//! readiness signal cover every master: for each master we pick the smallest `n` whose hash
//! tag `{n}` falls in one of its slot ranges (deterministic, so an unchanged topology yields
//! unchanged canary names and no churn).

use std::collections::BTreeMap;

use redis::Value;

use crate::channels::{slot, ChannelNames};

/// Slot ranges (inclusive) per master address `host:port`, ordered by address.
pub(crate) type Masters = BTreeMap<String, Vec<(u16, u16)>>;

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...], ...]`.
pub(crate) fn parse_slots(reply: &Value) -> Option<Masters> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut masters = Masters::new();
    for entry in entries {
        let Value::Array(fields) = entry else {
            return None;
        };
        let start = int(fields.first()?)?;
        let end = int(fields.get(1)?)?;
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let host = text(master.first()?)?;
        let port = int(master.get(1)?)?;
        masters
            .entry(format!("{host}:{port}"))
            .or_default()
            .push((u16::try_from(start).ok()?, u16::try_from(end).ok()?));
    }
    Some(masters)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The canary channels of connection `conn`: one per master, in master address order.
pub(crate) fn canary_channels(masters: &Masters, names: &ChannelNames, conn: usize) -> Vec<String> {
    masters
        .values()
        .filter_map(|ranges| {
            (0u32..100_000)
                .find(|n| {
                    let s = slot(&n.to_string());
                    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&s))
                })
                .map(|n| names.cluster_canary(conn, n))
        })
        .collect()
}

/// Fetches the current topology through `conn` (any node answers).
pub(crate) async fn fetch(
    conn: &mut redis::cluster_async::ClusterConnection,
) -> redis::RedisResult<Option<Masters>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(parse_slots(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_and_picks_one_canary_per_master() {
        let entry = |lo, hi, port| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
            ])
        };
        let reply = Value::Array(vec![
            entry(0, 5460, 7000),
            entry(5461, 10922, 7001),
            entry(10923, 16383, 7002),
        ]);
        let masters = parse_slots(&reply).unwrap();
        assert_eq!(masters.len(), 3);
        let names = ChannelNames::new("gw", "me", true);
        let canaries = canary_channels(&masters, &names, 1);
        assert_eq!(canaries.len(), 3);
        for (canary, ranges) in canaries.iter().zip(masters.values()) {
            let s = slot(canary);
            assert!(ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&s)));
            assert!(canary.starts_with("gw:c:me:1:{"));
        }
        assert!(parse_slots(&Value::Int(3)).is_none());
    }
}
