//! Close codes: every reason the gateway ends a session, with the code a WebSocket client sees
//! (a long-poll client gets the HTTP status its transport maps the code to).
//! The 4xxx range is the gateway's own; all of them make phoenix.js reconnect (never 1000 for a
//! close the client should recover from: phoenix.js 1.7–1.8.15 would not reconnect).

/// A WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure: only as an echo of a client's own close.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// Forced disconnect (`disconnect` broadcast on the session id topic, `/api/disconnect`).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// RFC 6455 violation by the client (unmasked frame, reserved bits, bad control frame).
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// Text frame (or close reason) that is not UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// Message larger than `max_message_size` (also across fragments).
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// Internal error in the node.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// Drain on shutdown or restart: reconnect (to another node).
    pub const RESTART: CloseCode = CloseCode(1012);
    /// No data received for `idle_timeout` (the client missed two heartbeats).
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(4001);
    /// The session's outbox overflowed: the client reads slower than it is sent to.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4002);
    /// A message that does not decode with the session's serializer (bad JSON, wrong arity,
    /// non-string refs, garbage binary frame; on V1, any frame that is not a JSON message).
    pub const BAD_MESSAGE: CloseCode = CloseCode(4005);
    /// The session kept sending faster than `max_messages_per_sec` after being told so.
    pub const RATE_LIMITED: CloseCode = CloseCode(4029);

    /// Label for `gateway_disconnects_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::GOING_AWAY => "forced",
            CloseCode::RESTART => "drain",
            CloseCode::PROTOCOL_ERROR => "protocol_error",
            CloseCode::INVALID_DATA => "invalid_utf8",
            CloseCode::TOO_BIG => "too_big",
            CloseCode::IDLE_TIMEOUT => "idle_timeout",
            CloseCode::SLOW_CONSUMER => "slow_consumer",
            CloseCode::BAD_MESSAGE => "bad_message",
            CloseCode::RATE_LIMITED => "rate_limited",
            _ => "server",
        }
    }
}

/// A close the node has decided on: the code and a short human-readable reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// Code sent in the close frame.
    pub code: CloseCode,
    /// Reason sent in the close frame (≤ 123 bytes).
    pub reason: &'static str,
}

impl Close {
    /// A close with the given code and reason.
    pub const fn new(code: CloseCode, reason: &'static str) -> Self {
        Close { code, reason }
    }
}
