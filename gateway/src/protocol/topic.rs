//! Topics: the length bound every transport enforces, the event names reserved for the protocol
//! and the cluster, and topic patterns (`room:*` prefix patterns and exact topics), as Phoenix's
//! `channel "room:*", RoomChannel` declares them.

/// Longest topic accepted (V2 binary frames carry it in one length byte).
pub const MAX_TOPIC_LEN: usize = 255;

/// Whether an event name is reserved: `phx_*` (the protocol's own events: a broadcast named
/// `phx_close` would end phoenix.js channels) and `presence_*` (phoenix.js `Presence` reads
/// `presence_state` / `presence_diff`; only the node's presence may send them). Refused in
/// channel rules, in `POST /api/broadcast`, and dropped (counted) when a backend publishes one
/// into Redis.
pub fn is_reserved_event(event: &str) -> bool {
    event.starts_with("phx_") || event.starts_with("presence_")
}

/// `prefix*` or an exact topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches topics starting with the prefix (`room:*` → prefix `room:`).
    Prefix(String),
    /// Matches one topic.
    Exact(String),
}

impl TopicPattern {
    /// Parse `room:*` (prefix) or `room:lobby` (exact). A `*` anywhere but at the end is taken
    /// literally.
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => TopicPattern::Prefix(prefix.to_owned()),
            None => TopicPattern::Exact(s.to_owned()),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Prefix(p) => topic.starts_with(p.as_str()),
            TopicPattern::Exact(t) => t == topic,
        }
    }

    /// How specific the pattern is: an exact topic beats any prefix, a longer prefix a shorter.
    pub fn specificity(&self) -> usize {
        match self {
            TopicPattern::Exact(_) => usize::MAX,
            TopicPattern::Prefix(p) => p.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(TopicPattern::parse("room:*").matches("room:1"));
        assert!(TopicPattern::parse("room:*").matches("room:"));
        assert!(!TopicPattern::parse("room:*").matches("rooms"));
        assert!(TopicPattern::parse("lobby").matches("lobby"));
        assert!(!TopicPattern::parse("lobby").matches("lobby:1"));
        assert!(TopicPattern::parse("a").specificity() > TopicPattern::parse("abc*").specificity());
    }

    #[test]
    fn reserved_events() {
        for e in [
            "phx_close",
            "phx_presence_delta",
            "presence_diff",
            "presence_state",
        ] {
            assert!(is_reserved_event(e), "{e}");
        }
        for e in ["new_msg", "phx", "presence", "xphx_"] {
            assert!(!is_reserved_event(e), "{e}");
        }
    }
}
