//! The one long-poll client of the tests: a Phoenix LongPoll session seen from the client, over
//! plain HTTP requests (so each may reach another node, as through a round-robin proxy). Every
//! answer is HTTP 200 with the logical status in the JSON body; the client asserts that, and
//! hands the body over.

use std::collections::VecDeque;
use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::http::http_full;
use crate::ws::UNTIL_WAIT;

/// The serializer of a session unless one is named.
const VSN: &str = "2.0.0";

/// A long-poll session: the node it was opened on, and its session token.
pub struct LongPoll {
    /// Where requests go unless another address is given.
    pub addr: SocketAddr,
    /// The session token the node issued (or a forged one, for refusal tests).
    pub token: String,
    /// The serializer (`vsn`) every request names.
    vsn: String,
    /// Frames received by a poll and not yet consumed.
    inbox: VecDeque<Value>,
}

/// Query-string encoding (tokens carry `:` and base64 characters).
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl LongPoll {
    /// A client for a session token obtained elsewhere (or made up).
    pub fn with_token(addr: SocketAddr, token: &str) -> LongPoll {
        LongPoll {
            addr,
            token: token.to_owned(),
            vsn: VSN.to_owned(),
            inbox: VecDeque::new(),
        }
    }

    /// Open a session with the V2 serializer: `GET /socket/longpoll?vsn=2.0.0{query}` with
    /// `headers`. `Err` is the status of a refusal, whose body must carry nothing but that
    /// status.
    pub async fn open(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<LongPoll, u16> {
        Self::open_vsn(addr, VSN, query, headers).await
    }

    /// [`LongPoll::open`] with serializer `vsn` (e.g. `1.0.0`).
    pub async fn open_vsn(
        addr: SocketAddr,
        vsn: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<LongPoll, u16> {
        let path = format!("/socket/longpoll?vsn={vsn}{query}");
        let (status, _, body) = http_full(addr, "GET", &path, headers, "").await;
        assert_eq!(status, 200, "long-poll answers are HTTP 200: {body}");
        let v: Value = serde_json::from_str(&body).expect("long-poll answers are JSON");
        match (v["status"].as_u64(), v["token"].as_str()) {
            (Some(410), Some(t)) => Ok(LongPoll {
                vsn: vsn.to_owned(),
                ..LongPoll::with_token(addr, t)
            }),
            (Some(s), None) => {
                assert_eq!(v, json!({"status": s}), "a refusal carries only the status");
                Err(s as u16)
            }
            _ => panic!("unexpected long-poll connect answer {body}"),
        }
    }

    /// The session's URL path (token in the query).
    pub fn path(&self) -> String {
        format!(
            "/socket/longpoll?vsn={}&token={}",
            self.vsn,
            urlencode(&self.token)
        )
    }

    /// POST ndjson `lines` to `via` with extra `headers`; the answer body.
    pub async fn post_lines(
        &self,
        via: SocketAddr,
        lines: &[String],
        headers: &[(&str, &str)],
    ) -> Value {
        let mut h = vec![("Content-Type", "application/x-ndjson")];
        h.extend_from_slice(headers);
        let (status, _, text) = http_full(via, "POST", &self.path(), &h, &lines.join("\n")).await;
        assert_eq!(status, 200, "long-poll answers are HTTP 200: {text}");
        serde_json::from_str(&text).expect("long-poll answers are JSON")
    }

    /// POST `frames` (one per line) to the session's node; the answer body.
    pub async fn post(&self, frames: &[Value]) -> Value {
        let lines: Vec<String> = frames.iter().map(Value::to_string).collect();
        self.post_lines(self.addr, &lines, &[]).await
    }

    /// One poll through `via` with extra `headers`; the answer body.
    pub async fn poll_with(&self, via: SocketAddr, headers: &[(&str, &str)]) -> Value {
        let (status, _, text) = http_full(via, "GET", &self.path(), headers, "").await;
        assert_eq!(status, 200, "long-poll answers are HTTP 200: {text}");
        serde_json::from_str(&text).expect("long-poll answers are JSON")
    }

    /// One poll on the session's node; the answer body.
    pub async fn poll(&self) -> Value {
        self.poll_with(self.addr, &[]).await
    }

    /// The next frame, polling as long as needed (at most [`UNTIL_WAIT`]). Every poll must
    /// answer 200 (messages) or 204 (window over) with this session's token.
    pub async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + UNTIL_WAIT;
        while self.inbox.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no long-poll frame within {UNTIL_WAIT:?}"
            );
            let answer = self.poll().await;
            assert!(
                answer["status"] == 200 || answer["status"] == 204,
                "poll answered {answer}"
            );
            assert_eq!(answer["token"], self.token.as_str(), "{answer}");
            for m in answer["messages"].as_array().expect("messages") {
                let text = m.as_str().expect("messages are JSON text");
                self.inbox
                    .push_back(serde_json::from_str(text).expect("a JSON frame"));
            }
        }
        self.inbox.pop_front().expect("not empty")
    }

    /// Polls until at least `n` frames have arrived; returns every frame those polls brought
    /// (so a test sees when more came than it expected).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.recv().await);
        }
        out.extend(self.inbox.drain(..));
        out
    }

    /// Frames until one satisfies `pred` (the others are dropped); the failure lists them.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + UNTIL_WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "long-poll: no {what}; saw {seen:?}"
            );
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
            seen.push(m);
        }
    }
}
