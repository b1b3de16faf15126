//! Security suite (issue 9, item 3): every way of presenting bad credentials gets the documented
//! answer on both transports, and nothing secret leaks. Owns:
//!
//! * JWT refusals on all four token carriers (WebSocket `token` param and `authToken`
//!   subprotocol, LongPoll `token` param and `X-Phoenix-AuthToken` header): expired, not yet
//!   valid, wrongly signed, tampered, `alg: none`, other HMAC algorithms, HS/RS key confusion
//!   (the RS256 public key PEM used as an HMAC secret), missing or mistyped claims, malformed and
//!   oversized tokens. WebSocket refusals are HTTP 403 before the upgrade, LongPoll refusals
//!   `{"status":403}`; each case ends by proving a witness session on both transports is still
//!   served, and the refusal metric counts exactly the refused attempts;
//! * the `topics` claim on `token` channels (`{"reason":"unauthorized"}`, other joins unaffected);
//! * the Origin allow-list on both transports; forged long-poll session tokens;
//! * the HTTP API key (missing / wrong / prefix / longer / other schemes: 401). The comparison is
//!   constant-time by construction — `http_api::constant_time_eq` (called by
//!   `http_api::authorized`) folds XOR over every byte, its only early exit being a length
//!   mismatch — so only the behaviour is asserted here, never timing;
//! * CORS headers only on `/socket/longpoll`;
//! * the real binary at `RUST_LOG=trace` writing no secret, JWT, API key or session token.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::{http, http_full, now, Client, LoggedGateway, TestNode, WAIT};
use gateway::config::ConfigFile;
use gateway::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------------ keys and tokens

/// Test-only RSA key pair, generated for this suite (`openssl genrsa -traditional 2048`); it
/// protects nothing.
const RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpQIBAAKCAQEA2R8nm/8n+869Kax4h9HCtbqF4YvNBD7aIPCP7iwYI4b7mwsl
jE0qzUs/f/24cJDSmvqe0Sxg9l+fPr+aA9OfntQML1s27lupYTkbp5j1IGugJKae
SeVc8+PM3UBmthNxnGYR5UnjXvIEsEku1kETDSayePPRgkpy2Akf5ZZMhJGru5gx
PMc6riEcstwx6BZ85qbQlRWPq+ZtqmGYq+P0GwFOvaAVGmB0DG0IVWWA1ZRBe552
JmVg+waVcnaR6bwNKcVK6Xd955Zo957kySwneLah9oAD6LCNp5NiQPsm1ECZlAOT
pom+b88E47CQecDih5KAsY+D6mPvffrHDfnMyQIDAQABAoIBAACmKmcVNJS14JCq
zIl4N9tKsE9JD9IJ2fHQTPXyoiTRF/iGgMX0Htehf//2CDL5ndxr7S53DvIHtH8y
12cbazFFrYxit+GdBxK0KU5OldUQNkHhB83uzzF3Y8j5kU6QPgskJWFGsGi4yNh1
YStLDfNCEq9ilb0MeFhc7qr5HiSxbaRvqoCPXoC+O64k7grScIGREQUBrFxeEE/r
GzNcM1W2fm3N+5XUE5fnyyObU8JK7kYA/cpkUHm+bWNvjMA8P7GzR93f2MlQ8TCK
Ps+BO+W4QREfPGBoxxjxQObc8ZL4RRKKTje9B8A4RDDgkoJWs51lGLLE7HY2zXr5
obBg1CECgYEA+Nw1xWCxCbxZgGSHt/ViqqYeYERCk36+iIjGkeKzb/linLrn+nXo
dpto2JtxBvpcvO9YIxJ5TywdTpaelt2G69+TYVS7mjGUE3hChtVpUpbgb0l37EY/
obV8fRWFOIKoWMTuZMDrbUjKR0aZBEgy1+eNgzUsWMvuo2x/TWJHAmECgYEA31nW
L51Rga1Y5TXNph1Y+lJzd24ei/hV6e4bkytBG5DOkWPkLwSDUrMoO14ZTLDOevND
EeAKY4l9pAbdVDAGFwEaTC9ejt6s17vI05iYkEwnMVonjffHEMHaXwZYe0DR9lhq
eESX6h1UFH8Pl4J4TTcceTFwQHmluR7ob2Yws2kCgYEAoXxMDDONTjMBpRYXF6FN
EE1Rgshop0tkmjafHAWOyMd8XRXP+K/QVD7Oj1h2xL9rtFJf0App251Vuyxz5pQD
vEXNXihcwFcRrnyoNtR/Ts+G/dAf2JtRKT8adBSl6SCn20qXI5woaTcFw7ClFKlB
DOc95fl4OHrE9RkvlmiCiaECgYEA2eUKz+jqW1iCIRscRbLb21oUy67inirnphBl
Vm4cVogu/ig1tKjydPvThBeJFwhmaAxqokWv3OuFZ0BLLJatWkP5I9oSpc8XUGAi
zEtSi3O/yKXrcNUJn49/OrU2HQhfzbT0KeDBU+TI4jYTP/xI4Qui+5j/qecDhlZg
7E0FtgECgYEA17LeM2I1UUvEbJlt55MxFFl/dJuGO1MPz0xa8H9i24ZBYw0X2bIB
roKx++QCajfggZniBaUVZr4FiikpA+qcddRxve8ps6CMhti5tw26VwuiDodEMQMN
TPO1z2Soy7EBSAuUnJFWjRI7BJxBSDpwQVZ8/OHQSveB/Xu3tk4CkWY=
-----END RSA PRIVATE KEY-----
";

/// The public half of `RSA_PRIVATE`: what a node gets as `--jwt-public-key`.
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2R8nm/8n+869Kax4h9HC
tbqF4YvNBD7aIPCP7iwYI4b7mwsljE0qzUs/f/24cJDSmvqe0Sxg9l+fPr+aA9Of
ntQML1s27lupYTkbp5j1IGugJKaeSeVc8+PM3UBmthNxnGYR5UnjXvIEsEku1kET
DSayePPRgkpy2Akf5ZZMhJGru5gxPMc6riEcstwx6BZ85qbQlRWPq+ZtqmGYq+P0
GwFOvaAVGmB0DG0IVWWA1ZRBe552JmVg+waVcnaR6bwNKcVK6Xd955Zo957kySwn
eLah9oAD6LCNp5NiQPsm1ECZlAOTpom+b88E47CQecDih5KAsY+D6mPvffrHDfnM
yQIDAQAB
-----END PUBLIC KEY-----
";

/// Another test-only RSA key: an attacker's, unknown to the node.
const OTHER_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEA1YSqFWP6u1nSQK1fgPt/lfgj48tV2facmUBKRyfdLGabv57N
or+zUyjUg2UpKae51pAFXu2MgL8Cnm6xG9oH5kd6rL3UMyO5v9z0gcDPkMZNxRVv
XwWTcalPxGiEn9azhEygzy9Gv5p8fF5vLyLFel8F79f2Orbn12bwyoSEdjJ5hWjd
tia+s8ru7ewR2kpaQec4qoUNw8Fy78G6TqYg8aUQK7230L2eBoxc01Vu+HZkOu38
+ChYyOlyL3GLG30Ig4jbXh1UtxkYydUUZ8ZCh2YcyLbu7mqWoQBB8CYJClKpFBoL
WzCcC8wTh3agqENlL8+b+pxDyASMs+f8flpfxwIDAQABAoIBAA4IOPFM78ZuQb4U
ZslgPeNKOnmW/F5lsab0raz9drCbUbMHKbZ/aLaXYVf9RvZA2pq6PlAdxnUTmIV2
+ta8vnYozmwZ0Z9GwsdUKxF37WwzTBserIIPKMB4gxCCWezzPDr+mjbjgX/IFFRM
FHyBiX7gTdCUXc9AA/6I+lwk11u5GLqtWDcaLSVqOOhcWRiUKbaJ3Rfw8MVmL9Nb
PJVFRb5hI+njQnOsBJYAIT2YS8B1Z6KeisXkSaYyeavf1CDsXzrR3rWnnaSFvkIE
rsk1Rcxx5Cx6fj94z/FimIFF0meeoI6rwkmiHkc+KRtKj7ekzWt4kTkpqaLuLd1H
Zgz2eGkCgYEA8Tk1jIgBh/NiIVpNhAp7igOWtE+TQR+b220CMAe0DJerzNKWPh2F
cdNzc0+5BYlkQ7XsjgC+3fdf0vNArE3sbpwIK11ocCG9Ifm3lWUuF71ErZ+wX6y8
HS87YfDXBV4AtvsBqARSJaV+bUXFERw2u/XMsa6wfS5CscCsQPDbtl0CgYEA4pj9
ePosVOk4sst52n3Ekp+zByF3QUxMv4osnNnin+7QSvRlcvzV2L9UKFtHsSF+p8ye
NTnrcFQdoXkV02fWIntRwmW7adXi159Ct031XaA+woerwSCSKD19rLXDpq+HId5a
Apw1i2tUWF2mNSEmGMaVVFmocb9GDs/4jEcmBHMCgYBF535NK1zGORHG+JReH2uN
o1yZBDZ4OODBxeVMZe8XdxyiTqSbe5KgWdarI/9KS3Zy6NWUkUK+sGFkkHm9dRd/
NlhnuLn7RMu6fNNmx9uDpaWxawWBtF0PWBCtYU3ukD9Ex5jDR/1GS59Hq2BghPyX
m7OmCim7HRzWxi8k4qfJQQKBgDwrF5MaCs95Jh8DvJVxs9KjKSyJjFsAYZiyneoA
SRbimNhuUMnZrQbitvwIUN8N3826nX/Qo12uWDfaKRt7hPae/DS8Qql1q8hJd7Oo
tbBoroGE+OxNM8IPoeFMWmlWTnGF0yzCQc2FcF4Ob+XHqZAGmvxM2ldpzLZ+LqdA
9S1VAoGAJL4OdA+5j/qwPG8F87KhaYGvdDiIBcsn82wZv0S+ImyxpfxaGg2hFi+R
i9bopmzxRdmP+xlsA0StIFrO7PzMNnLSKaeyj0b3evzZpdx80R5DclMYxMqw2lFh
msH3sSAvfPYJLFlsfvAHAoQXNyU4TarnxwMKohpdh+RjxTVC5GI=
-----END RSA PRIVATE KEY-----
";

const HS_SECRET: &str = "hs256-secret-for-the-security-suite";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims a node accepts: a subject and an expiry ten minutes ahead.
fn valid_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

/// A token signed by the jsonwebtoken library (the header names `alg`).
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

fn rs256(private_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

/// `header.payload.HMAC-SHA256(secret)` over arbitrary header and payload text, for tokens the
/// library refuses to make (a non-JSON payload, a header that is not JSON).
fn hs256_raw(secret: &[u8], header: &str, payload: &str) -> String {
    use hmac::{Hmac, Mac};
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// An unsigned token with the given header (`alg: none` and friends) and `signature` appended.
fn unsigned(header: &str, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn segments(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Tokens every node with `HS_SECRET` and/or `RSA_PUBLIC` must refuse, named for failure messages.
fn refused_everywhere() -> Vec<(&'static str, String)> {
    let secret = HS_SECRET.as_bytes();
    let good = hs256(secret, &valid_claims("1"));
    let good_parts = segments(&good);
    let admin = b64(valid_claims("admin").to_string().as_bytes());
    let none_claims = valid_claims("1");
    vec![
        (
            "expired a minute ago",
            hs256(secret, &json!({"sub": "1", "exp": now() - 60})),
        ),
        (
            "signed with another secret",
            hs256(b"not-the-secret", &valid_claims("1")),
        ),
        (
            "payload swapped after signing",
            format!("{}.{admin}.{}", good_parts[0], good_parts[2]),
        ),
        (
            "signature cut off",
            format!("{}.{}.", good_parts[0], good_parts[1]),
        ),
        (
            "signature of another token",
            format!(
                "{}.{}.{}",
                good_parts[0],
                good_parts[1],
                segments(&hs256(secret, &valid_claims("2")))[2]
            ),
        ),
        (
            "alg none",
            unsigned(r#"{"alg":"none","typ":"JWT"}"#, &none_claims, ""),
        ),
        (
            "alg None",
            unsigned(r#"{"alg":"None","typ":"JWT"}"#, &none_claims, ""),
        ),
        (
            "alg NONE",
            unsigned(r#"{"alg":"NONE","typ":"JWT"}"#, &none_claims, ""),
        ),
        (
            "alg none keeping a valid signature",
            unsigned(r#"{"alg":"none","typ":"JWT"}"#, &none_claims, good_parts[2]),
        ),
        (
            "HS384 with the right secret",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(secret),
                &valid_claims("1"),
            ),
        ),
        (
            "HS512 with the right secret",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(secret),
                &valid_claims("1"),
            ),
        ),
        (
            "RS256 signed with an unknown RSA key",
            rs256(OTHER_RSA_PRIVATE, &valid_claims("1")),
        ),
        (
            "no exp claim",
            hs256(secret, &json!({"sub": "1", "topics": ["private:*"]})),
        ),
        (
            "exp as a string",
            hs256(
                secret,
                &json!({"sub": "1", "exp": (now() + 600).to_string()}),
            ),
        ),
        ("exp null", hs256(secret, &json!({"sub": "1", "exp": null}))),
        (
            "sub not a string",
            hs256(secret, &json!({"sub": {"id": 1}, "exp": now() + 600})),
        ),
        (
            "payload not JSON",
            hs256_raw(secret, r#"{"alg":"HS256","typ":"JWT"}"#, "sub=1"),
        ),
        (
            "payload a JSON array",
            hs256_raw(secret, r#"{"alg":"HS256","typ":"JWT"}"#, "[]"),
        ),
        (
            "header not JSON",
            hs256_raw(secret, "HS256", &valid_claims("1").to_string()),
        ),
        ("empty", String::new()),
        ("one part", "eyJhbGciOiJIUzI1NiJ9".into()),
        ("two parts", format!("{}.{}", good_parts[0], good_parts[1])),
        ("four parts", format!("{good}.{}", good_parts[2])),
        ("not base64", "!!!.@@@.###".into()),
        ("padded base64", format!("{good}==")),
        (
            "16 KiB of garbage",
            format!("{}.e30.x", "A".repeat(16 * 1024)),
        ),
    ]
}

// ------------------------------------------------------------------ sessions on both transports

/// Where a connecting client puts its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    /// `/socket/websocket?token=...`
    WsQuery,
    /// `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<base64>` (phoenix.js `authToken`).
    WsAuthToken,
    /// `/socket/longpoll?token=...`
    LpQuery,
    /// `X-Phoenix-AuthToken` (phoenix.js `authToken` on LongPoll).
    LpHeader,
}

const CARRIERS: [Carrier; 4] = [
    Carrier::WsQuery,
    Carrier::WsAuthToken,
    Carrier::LpQuery,
    Carrier::LpHeader,
];

/// A long-poll session seen from the client.
struct Lp {
    addr: SocketAddr,
    token: String,
    /// Frames received by a poll and not yet consumed.
    inbox: VecDeque<Value>,
}

impl Lp {
    fn path(&self) -> String {
        format!(
            "/socket/longpoll?vsn=2.0.0&token={}",
            urlencode(&self.token)
        )
    }

    /// POST ndjson frames; the logical status of the answer.
    async fn post(&self, frames: &[Value], headers: &[(&str, &str)]) -> Value {
        let body: Vec<String> = frames.iter().map(Value::to_string).collect();
        let mut h = vec![("Content-Type", "application/x-ndjson")];
        h.extend_from_slice(headers);
        let (status, _, text) =
            http_full(self.addr, "POST", &self.path(), &h, &body.join("\n")).await;
        assert_eq!(status, 200, "long-poll answers are HTTP 200: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// One poll; the answer body.
    async fn poll(&self, headers: &[(&str, &str)]) -> Value {
        let (status, _, text) = http_full(self.addr, "GET", &self.path(), headers, "").await;
        assert_eq!(status, 200, "long-poll answers are HTTP 200: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The next frame, polling as long as needed (at most `WAIT`).
    async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.inbox.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no long-poll frame within {WAIT:?}"
            );
            let answer = self.poll(&[]).await;
            assert!(
                answer["status"] == 200 || answer["status"] == 204,
                "poll answered {answer}"
            );
            for m in answer["messages"].as_array().unwrap() {
                self.inbox
                    .push_back(serde_json::from_str(m.as_str().unwrap()).unwrap());
            }
        }
        self.inbox.pop_front().unwrap()
    }
}

/// A session on either transport, driven the same way.
enum Conn {
    Ws(Client, u64),
    Lp(Lp, u64),
}

impl Conn {
    fn next_ref(&mut self) -> String {
        let (Conn::Ws(_, r) | Conn::Lp(_, r)) = self;
        *r += 1;
        r.to_string()
    }

    async fn send(&mut self, msg: Value) {
        match self {
            Conn::Ws(c, _) => c.send_json(msg).await,
            Conn::Lp(lp, _) => assert_eq!(lp.post(&[msg], &[]).await, json!({"status": 200})),
        }
    }

    async fn recv(&mut self) -> Value {
        match self {
            Conn::Ws(c, _) => c.recv_json().await,
            Conn::Lp(lp, _) => lp.recv().await,
        }
    }

    /// Join `topic` with `payload`; the join reply's `[status, response]`.
    async fn join(&mut self, topic: &str, payload: Value) -> (Value, Value) {
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

    async fn join_ok(&mut self, topic: &str) {
        assert_eq!(
            self.join(topic, json!({})).await,
            (json!("ok"), json!({})),
            "join {topic}"
        );
    }

    /// Prove nothing else is queued: a heartbeat's reply must be the very next frame.
    async fn assert_quiet(&mut self) {
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
async fn connect(
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
        Carrier::LpQuery | Carrier::LpHeader => {
            let path = format!("/socket/longpoll?vsn=2.0.0{query}");
            let (status, _, body) = http_full(addr, "GET", &path, &headers, "").await;
            assert_eq!(status, 200, "long-poll answers are HTTP 200: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            match (v["status"].as_u64(), v["token"].as_str()) {
                (Some(410), Some(t)) => Ok(Conn::Lp(
                    Lp {
                        addr,
                        token: t.to_owned(),
                        inbox: VecDeque::new(),
                    },
                    0,
                )),
                (Some(s), None) => {
                    assert_eq!(v, json!({"status": s}), "a refusal carries only the status");
                    Err(s as u16)
                }
                _ => panic!("unexpected long-poll connect answer {body}"),
            }
        }
    }
}

/// One session per transport, joined to `room:witness`, that must keep working whatever
/// happens to the other clients of the node.
struct Witnesses {
    addr: SocketAddr,
    api_key: Option<String>,
    sessions: Vec<Conn>,
}

impl Witnesses {
    async fn start(addr: SocketAddr, token: Option<&str>, api_key: Option<&str>) -> Self {
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
    async fn still_served(&mut self, what: &str) {
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
async fn refusals(addr: SocketAddr, reason: &str) -> u64 {
    let (_, text) = http(addr, "GET", "/metrics", &[], "").await;
    let prefix = format!("gateway_connect_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Every token in `tokens` is refused on every carrier (403 before a session exists), counted
/// once per attempt under `reason="auth"`, and the witnesses are still served.
async fn assert_all_refused(
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
async fn assert_all_accepted(addr: SocketAddr, tokens: &[(&str, String)]) {
    for (what, token) in tokens {
        for carrier in CARRIERS {
            let mut s = connect(addr, carrier, Some(token), None)
                .await
                .unwrap_or_else(|status| panic!("{what} on {carrier:?} refused: {status}"));
            s.join_ok("room:accepted").await;
        }
    }
}

fn hs_node_config() -> Config {
    Config {
        jwt_secret: Some(HS_SECRET.into()),
        api_key: Some("security-suite-api-key".into()),
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    }
}

// ------------------------------------------------------------------ JWT

#[tokio::test]
async fn hs256_node_refuses_every_bad_token_on_every_carrier() {
    let node = TestNode::start(hs_node_config()).await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("witness"));
    let mut w = Witnesses::start(node.addr, Some(&good), Some("security-suite-api-key")).await;
    // Only `exp` is required (README "Auth"): a token without `sub` is a session without an id.
    let secret = HS_SECRET.as_bytes();
    assert_all_accepted(
        node.addr,
        &[
            ("valid", good.clone()),
            ("no sub", hs256(secret, &json!({"exp": now() + 600}))),
        ],
    )
    .await;
    let mut tokens: Vec<(&str, Option<String>)> = vec![("missing", None)];
    tokens.extend(
        refused_everywhere()
            .into_iter()
            .map(|(what, t)| (what, Some(t))),
    );
    tokens.push((
        "RS256 signed with the RSA key the node does not have",
        Some(rs256(RSA_PRIVATE, &valid_claims("1"))),
    ));
    assert_all_refused(node.addr, &mut w, &tokens).await;
}

#[tokio::test]
async fn a_bad_token_in_one_carrier_is_not_rescued_by_a_good_one_in_another() {
    let node = TestNode::start(hs_node_config()).await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("1"));
    let bad = hs256(b"not-the-secret", &valid_claims("1"));
    let proto = format!(
        "phoenix, base64url.bearer.phx.{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bad)
    );
    let r = Client::connect_with(
        node.addr,
        &format!("/socket/websocket?vsn=2.0.0&token={good}"),
        &[("Sec-WebSocket-Protocol", &proto)],
    )
    .await;
    assert_eq!(r.err(), Some(403), "authToken is read first, and it is bad");
    let (_, _, body) = http_full(
        node.addr,
        "GET",
        &format!("/socket/longpoll?vsn=2.0.0&token={good}"),
        &[("X-Phoenix-AuthToken", &bad)],
        "",
    )
    .await;
    assert_eq!(
        body, r#"{"status":403}"#,
        "X-Phoenix-AuthToken is read first"
    );
    // An authToken subprotocol that is not base64 carries no token: the connect needs another.
    let r = Client::connect_with(
        node.addr,
        "/socket/websocket?vsn=2.0.0",
        &[(
            "Sec-WebSocket-Protocol",
            "phoenix, base64url.bearer.phx.!!!",
        )],
    )
    .await;
    assert_eq!(r.err(), Some(403));
}

#[tokio::test]
async fn rs256_node_refuses_hs256_tokens_made_from_its_public_key() {
    let node = TestNode::start(Config {
        jwt_public_key_pem: Some(RSA_PUBLIC.as_bytes().to_vec()),
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let good = rs256(RSA_PRIVATE, &valid_claims("witness"));
    let mut w = Witnesses::start(node.addr, Some(&good), None).await;
    assert_all_accepted(node.addr, &[("valid RS256", good.clone())]).await;
    let pem = RSA_PUBLIC.as_bytes();
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            RSA_PUBLIC
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let good_parts = segments(&good);
    let mut tokens: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        (
            "HS256 keyed with the public key PEM",
            Some(hs256(pem, &valid_claims("1"))),
        ),
        (
            "HS256 keyed with the PEM without its last newline",
            Some(hs256(RSA_PUBLIC.trim_end().as_bytes(), &valid_claims("1"))),
        ),
        (
            "HS256 keyed with the public key DER",
            Some(hs256(&der, &valid_claims("1"))),
        ),
        (
            "HS512 keyed with the public key PEM",
            Some(sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(pem),
                &valid_claims("1"),
            )),
        ),
        (
            "HS256 header on the RS256 token's payload and signature",
            Some(format!(
                "{}.{}.{}",
                b64(br#"{"alg":"HS256","typ":"JWT"}"#),
                good_parts[1],
                good_parts[2]
            )),
        ),
        (
            "PS256 with the right RSA key",
            Some(sign(
                Algorithm::PS256,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
                &valid_claims("1"),
            )),
        ),
        (
            "RS256 expired",
            Some(rs256(RSA_PRIVATE, &json!({"sub": "1", "exp": now() - 60}))),
        ),
        (
            "RS256 without exp",
            Some(rs256(RSA_PRIVATE, &json!({"sub": "1"}))),
        ),
        (
            "HS256 with the suite's HMAC secret (the node has none)",
            Some(hs256(HS_SECRET.as_bytes(), &valid_claims("1"))),
        ),
    ];
    tokens.extend(
        refused_everywhere()
            .into_iter()
            .map(|(what, t)| (what, Some(t))),
    );
    assert_all_refused(node.addr, &mut w, &tokens).await;
}

#[tokio::test]
async fn node_with_both_keys_takes_each_algorithm_only_with_its_own_key() {
    let node = TestNode::start(Config {
        jwt_public_key_pem: Some(RSA_PUBLIC.as_bytes().to_vec()),
        ..hs_node_config()
    })
    .await;
    let hs = hs256(HS_SECRET.as_bytes(), &valid_claims("witness"));
    let mut w = Witnesses::start(node.addr, Some(&hs), Some("security-suite-api-key")).await;
    assert_all_accepted(
        node.addr,
        &[
            ("HS256", hs.clone()),
            ("RS256", rs256(RSA_PRIVATE, &valid_claims("2"))),
        ],
    )
    .await;
    assert_all_refused(
        node.addr,
        &mut w,
        &[
            (
                "HS256 keyed with the public key PEM",
                Some(hs256(RSA_PUBLIC.as_bytes(), &valid_claims("1"))),
            ),
            (
                "RS256 signed with an unknown RSA key",
                Some(rs256(OTHER_RSA_PRIVATE, &valid_claims("1"))),
            ),
            (
                "RS256 header on the HS256 token's payload and signature",
                Some(format!(
                    "{}.{}.{}",
                    b64(br#"{"alg":"RS256","typ":"JWT"}"#),
                    segments(&hs)[1],
                    segments(&hs)[2]
                )),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let node = TestNode::start(hs_node_config()).await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("witness"));
    let mut w = Witnesses::start(node.addr, Some(&good), Some("security-suite-api-key")).await;
    let early = hs256(
        HS_SECRET.as_bytes(),
        &json!({"sub": "1", "nbf": now() + 300, "exp": now() + 600}),
    );
    assert_all_refused(
        node.addr,
        &mut w,
        &[("nbf five minutes ahead", Some(early))],
    )
    .await;
}

/// Writes one request (ignoring a server that closes early) and returns the status line's code,
/// `None` when the server closed without answering.
async fn raw_request(addr: SocketAddr, head: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(head.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("no answer and no close within 5 s");
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn a_one_mebibyte_token_is_refused_on_every_carrier_and_the_node_stays_up() {
    let node = TestNode::start(hs_node_config()).await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("witness"));
    let mut w = Witnesses::start(node.addr, Some(&good), Some("security-suite-api-key")).await;
    let huge = format!("{}.e30.x", "A".repeat(1 << 20));
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let b64_huge = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&huge);
    let requests = [
        (
            Carrier::WsQuery,
            format!("GET /socket/websocket?vsn=2.0.0&token={huge} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"),
        ),
        (
            Carrier::WsAuthToken,
            format!("GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.{b64_huge}\r\n\r\n"),
        ),
        (
            Carrier::LpQuery,
            format!("GET /socket/longpoll?vsn=2.0.0&token={huge} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ),
        (
            Carrier::LpHeader,
            format!("GET /socket/longpoll?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Phoenix-AuthToken: {huge}\r\n\r\n"),
        ),
    ];
    for (carrier, request) in requests {
        let status = raw_request(node.addr, &request).await;
        // hyper refuses a request head this large (431, or 414 for a URI) before any handler
        // runs, or closes; a smaller token reaches the handler and gets 403 (tests above).
        assert!(
            matches!(status, None | Some(414) | Some(431)),
            "{carrier:?}: {status:?}"
        );
    }
    w.still_served("1 MiB tokens").await;
}

// ------------------------------------------------------------------ topics claim

const TOKEN_CHANNELS: &str = r#"
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]

[[channels]]
pattern = "private:*"
join = "token"
broadcast = ["new_msg"]
"#;

#[tokio::test]
async fn the_topics_claim_decides_token_joins_on_both_transports() {
    let node = TestNode::start(Config {
        channels: ConfigFile::parse(TOKEN_CHANNELS).unwrap().channels,
        ..hs_node_config()
    })
    .await;
    let secret = HS_SECRET.as_bytes();
    let alice = hs256(
        secret,
        &json!({"sub": "alice", "exp": now() + 600, "topics": ["private:alice", "private:team:*"]}),
    );
    let no_topics = hs256(secret, &valid_claims("bob"));
    let unauthorized = (json!("error"), json!({"reason": "unauthorized"}));
    for carrier in [Carrier::WsQuery, Carrier::LpHeader] {
        let mut a = connect(node.addr, carrier, Some(&alice), None)
            .await
            .unwrap();
        for topic in [
            "private:bob",
            "private:alice2",
            "private:alic",
            "private:*",
            "private:",
            "private:team",
        ] {
            assert_eq!(
                a.join(topic, json!({})).await,
                unauthorized,
                "{topic} on {carrier:?}"
            );
        }
        // Refused joins leave the session usable: the allowed ones still succeed.
        a.join_ok("private:alice").await;
        a.join_ok("private:team:red").await;
        a.join_ok("room:lobby").await;
        // A join payload cannot grant what the connect token does not.
        assert_eq!(
            a.join(
                "private:bob",
                json!({"token": hs256(secret, &json!({"sub": "bob", "exp": now() + 600, "topics": ["private:*"]})), "topics": ["private:*"]})
            )
            .await,
            unauthorized
        );
        let mut b = connect(node.addr, carrier, Some(&no_topics), None)
            .await
            .unwrap();
        assert_eq!(b.join("private:alice", json!({})).await, unauthorized);
        b.join_ok("room:lobby").await;
        // Broadcasts reach only the topics that were joined.
        for topic in ["private:bob", "private:alice"] {
            let body = json!({"topic": topic, "event": "new_msg", "payload": {"to": topic}});
            let (status, _) = http(
                node.addr,
                "POST",
                "/api/broadcast",
                &[("Authorization", "Bearer security-suite-api-key")],
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 202);
        }
        assert_eq!(
            a.recv().await,
            json!([null, null, "private:alice", "new_msg", {"to": "private:alice"}])
        );
        a.assert_quiet().await;
        b.assert_quiet().await;
    }
    // Open mode: `token` channels refuse everyone (README "Auth").
    let open = TestNode::start(Config {
        channels: ConfigFile::parse(TOKEN_CHANNELS).unwrap().channels,
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
        let mut s = connect(open.addr, carrier, Some(&alice), None)
            .await
            .unwrap();
        assert_eq!(s.join("private:alice", json!({})).await, unauthorized);
        s.join_ok("room:lobby").await;
    }
}

// ------------------------------------------------------------------ Origin

#[tokio::test]
async fn the_origin_allow_list_holds_on_both_transports() {
    let node = TestNode::start(Config {
        check_origin: vec![
            "https://app.example.com".into(),
            "https://*.corp.example:8443".into(),
        ],
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut w = Witnesses::start(node.addr, None, None).await;
    let allowed = [
        None,
        Some("https://app.example.com"),
        Some("https://app.example.com/"),
        Some("HTTPS://APP.EXAMPLE.COM"),
        Some("https://a.corp.example:8443"),
        Some("https://a.b.corp.example:8443"),
    ];
    for origin in allowed {
        for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
            let mut s = connect(node.addr, carrier, None, origin)
                .await
                .unwrap_or_else(|s| panic!("{origin:?} on {carrier:?} refused: {s}"));
            s.join_ok("room:origin").await;
        }
    }
    let refused = [
        "https://evil.example.net",
        "http://app.example.com",
        "wss://app.example.com",
        "https://app.example.com.evil.net",
        "https://evilapp.example.com",
        "https://sub.app.example.com",
        "https://app.example.com@evil.net",
        "https://evilcorp.example:8443",
        "https://a.corp.example",
        "https://a.corp.example:9443",
        "null",
        "",
    ];
    let before = refusals(node.addr, "origin").await;
    for origin in refused {
        for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
            let r = connect(node.addr, carrier, None, Some(origin)).await;
            assert_eq!(r.err(), Some(403), "{origin:?} on {carrier:?}");
        }
    }
    assert_eq!(
        refusals(node.addr, "origin").await - before,
        2 * refused.len() as u64
    );
    w.still_served("refused origins").await;
    // With JWT auth on, a valid token does not excuse a foreign Origin.
    let jwt_node = TestNode::start(Config {
        check_origin: vec!["https://app.example.com".into()],
        ..hs_node_config()
    })
    .await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("1"));
    for carrier in CARRIERS {
        let r = connect(
            jwt_node.addr,
            carrier,
            Some(&good),
            Some("https://evil.example.net"),
        )
        .await;
        assert_eq!(r.err(), Some(403), "{carrier:?}");
        assert!(
            connect(
                jwt_node.addr,
                carrier,
                Some(&good),
                Some("https://app.example.com")
            )
            .await
            .is_ok(),
            "{carrier:?}"
        );
    }
}

#[tokio::test]
async fn long_poll_requests_from_a_foreign_origin_are_refused_after_the_open_too() {
    let node = TestNode::start(Config {
        check_origin: vec!["https://app.example.com".into()],
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let Ok(Conn::Lp(lp, _)) = connect(
        node.addr,
        Carrier::LpQuery,
        None,
        Some("https://app.example.com"),
    )
    .await
    else {
        panic!("long-poll open from the allowed origin refused")
    };
    let evil = [("Origin", "https://evil.example.net")];
    let join = json!(["1", "1", "room:x", "phx_join", {}]);
    assert_eq!(lp.post(&[join], &evil).await["status"], 403, "POST");
    assert_eq!(lp.poll(&evil).await["status"], 403, "GET");
}

// ------------------------------------------------------------------ long-poll session tokens

#[tokio::test]
async fn forged_long_poll_session_tokens_reach_no_session() {
    let node = TestNode::start(Config {
        longpoll_secret: Some("cluster-wide-longpoll-secret".into()),
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let (Ok(Conn::Lp(mut a, _)), Ok(Conn::Lp(b, _))) = (
        connect(node.addr, Carrier::LpQuery, None, None).await,
        connect(node.addr, Carrier::LpQuery, None, None).await,
    ) else {
        panic!("long-poll open refused")
    };
    assert_eq!(
        a.post(&[json!(["1", "1", "room:lp", "phx_join", {}])], &[])
            .await,
        json!({"status": 200})
    );
    assert_eq!(a.recv().await[4]["status"], "ok");
    // Something queued for A, which a forged poll must not take.
    node.broadcast("room:lp", "secret", json!({"for": "a"}))
        .await;
    // v1:<key>:<nonce>:<node>:<sig>
    let parts: Vec<&str> = a.token.split(':').collect();
    let b_parts: Vec<&str> = b.token.split(':').collect();
    assert_eq!(parts.len(), 5, "{}", a.token);
    let mut flipped_sig = parts[4].to_owned();
    let last = flipped_sig.pop().unwrap();
    flipped_sig.push(if last == 'A' { 'B' } else { 'A' });
    let forged = [
        format!("v1:{}:{}:{}:{flipped_sig}", parts[1], parts[2], parts[3]),
        // B's signature on A's session key.
        format!("v1:{}:{}:{}:{}", parts[1], b_parts[2], parts[3], b_parts[4]),
        // A's signature with B's key.
        format!("v1:{}:{}:{}:{}", b_parts[1], parts[2], parts[3], parts[4]),
        // Another owner node, signed with a guessed key: refused before any forwarding.
        format!("v1:{}:{}:gw-other:{}", parts[1], parts[2], parts[4]),
    ];
    for token in &forged {
        let fake = Lp {
            addr: node.addr,
            token: token.clone(),
            inbox: VecDeque::new(),
        };
        let answer = fake.poll(&[]).await;
        assert_eq!(answer["status"], 410, "GET {token}: {answer}");
        // A token naming another node that does not verify is taken for an app's own `token`
        // param: the GET opens a fresh session (as any open would), never an existing one.
        if let Some(fresh) = answer["token"].as_str() {
            assert!(token.contains("gw-other"), "{token}: {answer}");
            assert!(fresh != a.token && fresh != b.token, "{answer}");
        }
        let push = json!(["1", "2", "room:lp", "new_msg", {"forged": true}]);
        assert_eq!(
            fake.post(&[push], &[]).await,
            json!({"status": 410}),
            "POST {token}"
        );
    }
    assert_eq!(
        a.recv().await,
        json!([null, null, "room:lp", "secret", {"for": "a"}])
    );
    Conn::Lp(a, 10).assert_quiet().await;
}

// ------------------------------------------------------------------ HTTP API key

#[tokio::test]
async fn the_api_key_must_be_presented_whole() {
    let key = "k3y-2f6c1d9e8b7a";
    let node = TestNode::start(Config {
        api_key: Some(key.into()),
        ..Config::default()
    })
    .await;
    let mut ws = node.ws().await;
    ws.join_ok("room:api").await;
    let broadcast = json!({"topic": "room:api", "event": "e", "payload": {}}).to_string();
    let disconnect = json!({"id": "user_socket:nobody"}).to_string();
    let wrong: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("empty", Some(String::new())),
        ("Bearer and nothing", Some("Bearer".into())),
        ("wrong key", Some("Bearer nope".into())),
        ("prefix", Some(format!("Bearer {}", &key[..key.len() - 1]))),
        ("first byte only", Some(format!("Bearer {}", &key[..1]))),
        ("longer", Some(format!("Bearer {key}x"))),
        ("key twice", Some(format!("Bearer {key}{key}"))),
        (
            "last byte changed",
            Some(format!("Bearer {}X", &key[..key.len() - 1])),
        ),
        ("upper case", Some(format!("Bearer {}", key.to_uppercase()))),
        ("no scheme", Some(key.into())),
        ("Basic scheme", Some(format!("Basic {key}"))),
        ("Token scheme", Some(format!("Token {key}"))),
        (
            "Basic with the key as user",
            Some(format!("Basic {}", b64(format!("{key}:").as_bytes()))),
        ),
    ];
    for (path, body) in [
        ("/api/broadcast", &broadcast),
        ("/api/disconnect", &disconnect),
    ] {
        for (what, auth) in &wrong {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let (status, text) = http(node.addr, "POST", path, &headers, body).await;
            assert_eq!(status, 401, "{path} {what}");
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                json!({"error": "missing or wrong API key"}),
                "{path} {what}"
            );
        }
        // Other places a key might be looked for are not.
        for (p, headers) in [
            (format!("{path}?api_key={key}"), vec![]),
            (path.to_owned(), vec![("X-Api-Key", key)]),
        ] {
            assert_eq!(
                http(node.addr, "POST", &p, &headers, body).await.0,
                401,
                "{p}"
            );
        }
        // The key is checked before the body is read: no parse errors for strangers.
        let bearer_wrong = [("Authorization", "Bearer nope")];
        assert_eq!(
            http(node.addr, "POST", path, &bearer_wrong, "{").await.0,
            401
        );
    }
    // Nothing refused reached the session; the right key does.
    let auth = format!("Bearer {key}");
    let (status, _) = http(
        node.addr,
        "POST",
        "/api/broadcast",
        &[("Authorization", &auth)],
        &broadcast,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        ws.recv_json().await,
        json!([null, null, "room:api", "e", {}])
    );
    ws.assert_nothing_queued().await;
    let (status, _) = http(
        node.addr,
        "POST",
        "/api/disconnect",
        &[("Authorization", &auth)],
        &disconnect,
    )
    .await;
    assert_eq!(status, 202);
}

// ------------------------------------------------------------------ CORS

#[tokio::test]
async fn cors_headers_only_on_the_long_poll_endpoint() {
    let node = TestNode::start(Config {
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let origin = ("Origin", "https://elsewhere.example");
    // Long-poll: preflight and every answer allow any origin, never with credentials.
    let (status, head, _) = http_full(
        node.addr,
        "OPTIONS",
        "/socket/longpoll",
        &[
            origin,
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-phoenix-authtoken,x-phoenix-longpoll-token",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    for h in [
        "access-control-allow-origin: *",
        "access-control-allow-methods: get, post, options",
        "access-control-allow-headers: content-type,x-phoenix-authtoken,x-phoenix-longpoll-token",
    ] {
        assert!(head.contains(h), "{h} missing:\n{head}");
    }
    let (_, get_head, body) = http_full(
        node.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[origin],
        "",
    )
    .await;
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, post_head, _) = http_full(
        node.addr,
        "POST",
        &format!("/socket/longpoll?vsn=2.0.0&token={}", urlencode(&token)),
        &[origin, ("Content-Type", "application/x-ndjson")],
        &json!([null, "1", "phoenix", "heartbeat", {}]).to_string(),
    )
    .await;
    for head in [&head, &get_head, &post_head] {
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(!head.contains("access-control-allow-credentials"), "{head}");
    }
    // Everything else: no CORS headers at all, preflight or not.
    for (method, path, body) in [
        ("OPTIONS", "/api/broadcast", ""),
        (
            "POST",
            "/api/broadcast",
            r#"{"topic":"room:1","event":"e"}"#,
        ),
        ("OPTIONS", "/api/disconnect", ""),
        ("POST", "/api/disconnect", r#"{"id":"user_socket:1"}"#),
        ("GET", "/metrics", ""),
        ("OPTIONS", "/metrics", ""),
        ("GET", "/healthz", ""),
        ("GET", "/readyz", ""),
        ("GET", "/", ""),
        ("GET", "/socket/websocket?vsn=2.0.0", ""),
        ("OPTIONS", "/socket/websocket", ""),
    ] {
        let (status, head, _) = http_full(
            node.addr,
            method,
            path,
            &[origin, ("Access-Control-Request-Method", "POST")],
            body,
        )
        .await;
        assert!(
            !head.contains("access-control-"),
            "{method} {path} ({status}) has CORS headers:\n{head}"
        );
    }
}

// ------------------------------------------------------------------ secrets in logs

fn random_secret(what: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

/// A private `redis-server` that requires `password`; killed on drop.
struct PasswordRedis {
    port: u16,
    child: std::process::Child,
}

impl PasswordRedis {
    async fn start(password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (run .ci/setup)");
        let redis = PasswordRedis { port, child };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server never listened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        redis
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every string in `secrets` that occurs in `output`.
fn leaked<'a>(output: &str, secrets: &'a [(String, String)]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(_, s)| output.contains(s.as_str()))
        .map(|(what, _)| what.as_str())
        .collect()
}

#[tokio::test]
async fn the_binary_logs_no_secret_at_trace_level() {
    let jwt_secret = random_secret("jwt");
    let api_key = random_secret("api");
    let lp_secret = random_secret("lp");
    let redis_password = random_secret("redis");
    let redis = PasswordRedis::start(&redis_password).await;
    let redis_url = format!("redis://:{redis_password}@127.0.0.1:{}/", redis.port);
    let mut gw = LoggedGateway::start(
        &[
            "--jwt-secret",
            &jwt_secret,
            "--api-key",
            &api_key,
            "--longpoll-secret",
            &lp_secret,
            "--redis-url",
            &redis_url,
            "--longpoll-window-ms",
            "300",
            "--drain-interval-ms",
            "10",
            "--shutdown-timeout-ms",
            "5000",
        ],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let addr = gw.addr;
    // Ready means Redis accepted the password.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http(addr, "GET", "/readyz", &[], "").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready:\n{}",
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut secrets: Vec<(String, String)> = vec![
        ("--jwt-secret".into(), jwt_secret.clone()),
        ("--api-key".into(), api_key.clone()),
        ("--longpoll-secret".into(), lp_secret.clone()),
        ("the Redis password".into(), redis_password.clone()),
    ];
    // A JWT is a credential: neither it, its signature, nor its authToken form may be logged.
    let mut keep_token = |what: &str, token: &str| {
        secrets.push((format!("{what} JWT"), token.to_owned()));
        secrets.push((
            format!("{what} JWT signature"),
            segments(token)[2].to_owned(),
        ));
        secrets.push((
            format!("{what} JWT as authToken"),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(token),
        ));
    };
    let good = hs256(jwt_secret.as_bytes(), &valid_claims("log-user"));
    let guessed = hs256(b"guessed-secret", &valid_claims("log-user"));
    let expired = hs256(
        jwt_secret.as_bytes(),
        &json!({"sub": "1", "exp": now() - 60}),
    );
    let mistyped = hs256(jwt_secret.as_bytes(), &json!({"sub": "1", "exp": "soon"}));
    let confused = hs256(RSA_PUBLIC.as_bytes(), &valid_claims("1"));
    let none = unsigned(r#"{"alg":"none"}"#, &valid_claims("1"), "c2lnbmF0dXJl");
    for (what, token) in [
        ("valid", &good),
        ("wrongly signed", &guessed),
        ("expired", &expired),
        ("mistyped", &mistyped),
        ("key-confused", &confused),
        ("alg none", &none),
    ] {
        keep_token(what, token);
    }

    // Sessions with valid tokens on every carrier, each joined to a topic of its own (the demo
    // channel, with presence) and pushing to it.
    let mut sessions = Vec::new();
    for (i, carrier) in CARRIERS.into_iter().enumerate() {
        let topic = format!("room:logs-{i}");
        let mut s = connect(addr, carrier, Some(&good), None).await.unwrap();
        s.join_ok(&topic).await;
        let r = s.next_ref();
        s.send(json!(["1", r, topic, "new_msg", {"body": "hello"}]))
            .await;
        sessions.push((topic, s));
    }
    // Refused connects on every carrier.
    for token in [&guessed, &expired, &mistyped, &confused, &none] {
        for carrier in CARRIERS {
            assert_eq!(
                connect(addr, carrier, Some(token), None).await.err(),
                Some(403)
            );
        }
    }
    // Long-poll session tokens (bearer credentials too) in use, and a forged one.
    for (_, s) in &mut sessions {
        if let Conn::Lp(lp, _) = s {
            secrets.push(("a long-poll session token".into(), lp.token.clone()));
            let sig = lp.token.rsplit(':').next().unwrap().to_owned();
            secrets.push(("a long-poll token signature".into(), sig));
            let forged = Lp {
                addr,
                token: format!("{}x", lp.token),
                inbox: VecDeque::new(),
            };
            assert_eq!(forged.poll(&[]).await, json!({"status": 410}));
        }
    }
    // The HTTP API with the right key, a wrong one and a prefix of the right one.
    let wrong_key = random_secret("wrong-api");
    let prefix_key = api_key[..api_key.len() - 4].to_owned();
    secrets.push(("a wrong API key".into(), wrong_key.clone()));
    secrets.push(("a prefix of the API key".into(), prefix_key.clone()));
    for (key, expect) in [(&api_key, 202), (&wrong_key, 401), (&prefix_key, 401)] {
        let auth = format!("Bearer {key}");
        let headers = [("Authorization", auth.as_str())];
        for (topic, _) in &sessions {
            let body = json!({"topic": topic, "event": "from_api", "payload": {}}).to_string();
            let (status, _) = http(addr, "POST", "/api/broadcast", &headers, &body).await;
            assert_eq!(status, expect, "broadcast");
        }
        let body = json!({"id": "user_socket:nobody"}).to_string();
        let (status, _) = http(addr, "POST", "/api/disconnect", &headers, &body).await;
        assert_eq!(status, expect, "disconnect");
    }
    // Every session gets the API broadcast (after its push's reply and echo, and the demo
    // channel's presence frames); draining then ends them.
    for (_, s) in &mut sessions {
        while s.recv().await[3] != "from_api" {}
        s.assert_quiet().await;
    }
    let (status, _) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let exit = gw.terminate().await;
    let output = gw.output();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}:\n{output}");
    // The log level was on and the refusals were logged: the check below is not vacuous.
    for expected in [
        "listening on",
        "redis pubsub ready",
        "token refused",
        "websocket connect refused",
        "long-poll connect refused",
        "drained",
    ] {
        assert!(output.contains(expected), "no `{expected}` in:\n{output}");
    }
    let found = leaked(&output, &secrets);
    assert!(found.is_empty(), "the log contains {found:?}:\n{output}");

    // `--help` with the secrets in the environment shows none of their values.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .env("GATEWAY_JWT_SECRET", &jwt_secret)
        .env("GATEWAY_API_KEY", &api_key)
        .env("GATEWAY_LONGPOLL_SECRET", &lp_secret)
        .output()
        .unwrap();
    let help =
        String::from_utf8_lossy(&help.stdout).to_string() + &String::from_utf8_lossy(&help.stderr);
    assert!(help.contains("--jwt-secret"), "{help}");
    let found = leaked(&help, &secrets);
    assert!(found.is_empty(), "--help shows {found:?}:\n{help}");

    // A configuration error names the problem, not the secrets.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--jwt-secret", &jwt_secret, "--api-key", &api_key])
        .args(["--longpoll-secret", &lp_secret, "--redis-url", &redis_url])
        .args(["--jwt-public-key", "/nonexistent/key.pem"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{text}");
    assert!(text.contains("/nonexistent/key.pem"), "{text}");
    let found = leaked(&text, &secrets);
    assert!(
        found.is_empty(),
        "the error output contains {found:?}:\n{text}"
    );
}

#[tokio::test]
async fn an_empty_jwt_secret_never_lets_a_forged_token_in() {
    // E.g. `GATEWAY_JWT_SECRET: ${JWT_SECRET}` in a compose file with JWT_SECRET unset.
    let forged = hs256(b"", &valid_claims("attacker"));
    let empty_env = [("GATEWAY_JWT_SECRET", "")];
    for (args, env) in [
        (&[][..], &empty_env[..]),
        (&["--jwt-secret", ""][..], &[][..]),
    ] {
        // Either the node refuses to start (an empty secret is a configuration error)...
        let Ok(gw) = LoggedGateway::try_start(args, env).await else {
            continue;
        };
        // ...or it runs and a token signed with the empty key is refused on every carrier.
        for carrier in CARRIERS {
            assert_eq!(
                connect(gw.addr, carrier, Some(&forged), None).await.err(),
                Some(403),
                "{args:?} {env:?} {carrier:?}"
            );
        }
    }
}

#[tokio::test]
async fn help_shows_no_redis_password() {
    let password = random_secret("redis");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .env(
            "GATEWAY_REDIS_URL",
            format!("redis://:{password}@10.0.0.1:6379/"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--redis-url"), "{text}");
    let shown: Vec<&str> = text.lines().filter(|l| l.contains(&password)).collect();
    assert!(shown.is_empty(), "--help shows {shown:?}");
}
