//! Sessions on both transports driven the same way: where a client carries its token
//! (`Carrier`), opening a session or getting the refusal (`connect`), the witness sessions that
//! must keep working whatever happens to others, and the all-refused / all-accepted checks.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use gateway::Config;
use serde_json::{json, Value};
use testkit::longpoll::urlencode;
use testkit::{http, metric_value, Client, LongPoll};

use crate::keys::HS_SECRET;

/// Where a connecting client puts its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `/socket/websocket?token=...`
    WsQuery,
    /// `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<base64>` (phoenix.js `authToken`).
    WsAuthToken,
    /// `/socket/longpoll?token=...`
    LpQuery,
    /// `X-Phoenix-AuthToken` (phoenix.js `authToken` on LongPoll).
    LpHeader,
}

pub const CARRIERS: [Carrier; 4] = [
    Carrier::WsQuery,
    Carrier::WsAuthToken,
    Carrier::LpQuery,
    Carrier::LpHeader,
];

/// A session on either transport, driven the same way.
pub enum Conn {
    Ws(Client, u64),
    Lp(LongPoll, u64),
}

impl Conn {
    pub fn next_ref(&mut self) -> String {
        let (Conn::Ws(_, r) | Conn::Lp(_, r)) = self;
        *r += 1;
        r.to_string()
    }

    pub async fn send(&mut self, msg: Value) {
        match self {
            Conn::Ws(c, _) => c.send_json(msg).await,
            Conn::Lp(lp, _) => assert_eq!(lp.post(&[msg]).await, json!({"status": 200})),
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self {
            Conn::Ws(c, _) => c.recv_json().await,
            Conn::Lp(lp, _) => lp.recv().await,
        }
    }

    /// Join `topic` with `payload`; the join reply's `[status, response]`.
    pub async fn join(&mut self, topic: &str, payload: Value) -> (Value, Value) {
        let r = self.next_ref();
        self.send(json!([r, r, topic, "phx_join", payload])).await;
        let reply = self.recv().await;
        assert_eq!(
            (&reply[0], &reply[1], &reply[2], &reply[3]),
            (&json!(r), &json!(r), &json!(topic), &json!("phx_reply")),
            "{reply}"
        );
        (reply[4]["status"].clone(), reply[4]["response"].clone())
    }

    /// Join `topic`: ok, with an empty response apart from the history fields of a channel
    /// that keeps history (the demo channel: `recovered` false, a `position`).
    pub async fn join_ok(&mut self, topic: &str) {
        let (status, mut response) = self.join(topic, json!({})).await;
        assert_eq!(status, json!("ok"), "join {topic}: {response}");
        if let Some(obj) = response.as_object_mut() {
            if obj.contains_key("position") {
                assert!(obj["position"].is_string(), "join {topic}: {response}");
                assert_eq!(obj.remove("recovered"), Some(json!(false)), "join {topic}");
                obj.remove("position");
            }
        }
        assert_eq!(response, json!({}), "join {topic}");
    }

    /// Prove nothing else is queued: a heartbeat's reply must be the very next frame.
    pub async fn assert_quiet(&mut self) {
        let r = self.next_ref();
        self.send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(
            self.recv().await,
            json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
        );
    }
}

/// Open a session carrying `token` the way `carrier` does, with `Origin: origin` when given.
/// `Err` is the refusal: the HTTP status before the WebSocket upgrade, or the status in the
/// long-poll answer body (always in an HTTP 200).
pub async fn connect(
    addr: SocketAddr,
    carrier: Carrier,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<Conn, u16> {
    let mut headers: Vec<(&str, String)> = Vec::new();
    if let Some(o) = origin {
        headers.push(("Origin", o.to_owned()));
    }
    let query = match (carrier, token) {
        (Carrier::WsQuery | Carrier::LpQuery, Some(t)) => format!("&token={}", urlencode(t)),
        _ => String::new(),
    };
    match (carrier, token) {
        (Carrier::WsAuthToken, Some(t)) => headers.push((
            "Sec-WebSocket-Protocol",
            format!(
                "phoenix, base64url.bearer.phx.{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(t)
            ),
        )),
        (Carrier::LpHeader, Some(t)) => headers.push(("X-Phoenix-AuthToken", t.to_owned())),
        _ => {}
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match carrier {
        Carrier::WsQuery | Carrier::WsAuthToken => {
            let path = format!("/socket/websocket?vsn=2.0.0{query}");
            Client::connect_with(addr, &path, &headers)
                .await
                .map(|c| Conn::Ws(c, 0))
        }
        Carrier::LpQuery | Carrier::LpHeader => LongPoll::open(addr, &query, &headers)
            .await
            .map(|lp| Conn::Lp(lp, 0)),
    }
}

/// One session per transport, joined to `room:witness`, that must keep working whatever
/// happens to the other clients of the node.
pub struct Witnesses {
    addr: SocketAddr,
    api_key: Option<String>,
    sessions: Vec<Conn>,
}

impl Witnesses {
    pub async fn start(addr: SocketAddr, token: Option<&str>, api_key: Option<&str>) -> Self {
        let mut sessions = Vec::new();
        for carrier in [Carrier::WsQuery, Carrier::LpHeader] {
            let mut s = connect(addr, carrier, token, None)
                .await
                .unwrap_or_else(|status| panic!("witness on {carrier:?} refused: {status}"));
            s.join_ok("room:witness").await;
            sessions.push(s);
        }
        Witnesses {
            addr,
            api_key: api_key.map(str::to_owned),
            sessions,
        }
    }

    /// A broadcast through the API reaches every witness, and nothing else was queued for them.
    pub async fn still_served(&mut self, what: &str) {
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let body = json!({"topic": "room:witness", "event": "alive", "payload": {"after": what}});
        let (status, text) = http(
            self.addr,
            "POST",
            "/api/broadcast",
            &headers,
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 202, "{text}");
        for s in &mut self.sessions {
            assert_eq!(
                s.recv().await,
                json!([null, null, "room:witness", "alive", {"after": what}]),
                "witness after {what}"
            );
            s.assert_quiet().await;
        }
    }
}

/// `gateway_connect_refusals_total{reason=...}` of a node.
pub async fn refusals(addr: SocketAddr, reason: &str) -> u64 {
    let (_, text) = http(addr, "GET", "/metrics", &[], "").await;
    let series = format!("gateway_connect_refusals_total{{reason=\"{reason}\"}}");
    metric_value(&text, &series) as u64
}

/// Every token in `tokens` is refused on every carrier (403 before a session exists), counted
/// once per attempt under `reason="auth"`, and the witnesses are still served.
pub async fn assert_all_refused(
    addr: SocketAddr,
    w: &mut Witnesses,
    tokens: &[(&str, Option<String>)],
) {
    let before = refusals(addr, "auth").await;
    let mut attempts = 0;
    for (what, token) in tokens {
        for carrier in CARRIERS {
            let r = connect(addr, carrier, token.as_deref(), None).await;
            assert_eq!(r.err(), Some(403), "{what} on {carrier:?}");
            attempts += 1;
        }
    }
    assert_eq!(refusals(addr, "auth").await - before, attempts);
    w.still_served("refused tokens").await;
}

/// Each token in `tokens` opens a session on every carrier, and the session works.
pub async fn assert_all_accepted(addr: SocketAddr, tokens: &[(&str, String)]) {
    for (what, token) in tokens {
        for carrier in CARRIERS {
            let mut s = connect(addr, carrier, Some(token), None)
                .await
                .unwrap_or_else(|status| panic!("{what} on {carrier:?} refused: {status}"));
            s.join_ok("room:accepted").await;
        }
    }
}

pub fn hs_node_config() -> Config {
    Config {
        jwt_secret: Some(HS_SECRET.into()),
        api_key: Some("security-suite-api-key".into()),
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    }
}
