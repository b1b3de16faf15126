//! The HTTP client of the backend hooks: one pooled keep-alive hyper client per node, each hook
//! POSTed as JSON to `{url}/{hook}` (signed when a secret is set), bounded by the hook timeout
//! and by the node's requests in flight. Every failure is classified into the four reasons
//! clients see and metrics count; nothing here waits longer than the timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::config::BackendSpec;
use crate::metrics::Metrics;

/// Largest answer body read from the backend; a larger one is a `backend error`.
const MAX_ANSWER: usize = 1 << 20;

/// The hooks, as they appear in URLs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A new session (`{url}/connect`).
    Connect,
    /// A join of a `join = "backend"` channel.
    Join,
    /// A client event of a `handle_in = "backend"` channel.
    Event,
    /// A backend channel ended.
    Leave,
}

impl Hook {
    /// The path segment and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Join => "join",
            Hook::Event => "event",
            Hook::Leave => "leave",
        }
    }
}

/// Why a hook failed. The client sees `{"reason": reason()}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No complete answer within the timeout.
    #[error("backend timeout")]
    Timeout,
    /// Connection refused or reset, or a 5xx answer.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// An answer outside the contract (not 2xx, not JSON, wrong shape).
    #[error("backend error: {0}")]
    Invalid(String),
    /// The node's requests in flight are at their bound: failed at once.
    #[error("backend busy")]
    Busy,
}

impl BackendError {
    /// The `reason` clients get.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Timeout => "backend timeout",
            BackendError::Unavailable(_) => "backend unavailable",
            BackendError::Invalid(_) => "backend error",
            BackendError::Busy => "backend busy",
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::Invalid(_) => "error",
            BackendError::Busy => "busy",
        }
    }
}

/// A node's connection to its backend.
pub struct Backend {
    /// Pooled keep-alive HTTP/1 client (connections are reused across hooks and sessions).
    client: Client<HttpConnector, Full<Bytes>>,
    /// `{url}` without a trailing `/`.
    base: String,
    /// Longest a hook may take, connect to last byte.
    timeout: Duration,
    /// HMAC-SHA256 key of `X-Gateway-Signature`, when configured.
    secret: Option<Vec<u8>>,
    /// Permits for requests in flight; none left = `backend busy` at once.
    in_flight: Arc<Semaphore>,
    /// Whether new sessions go through `{url}/connect`.
    pub connect: bool,
    /// Whether ending backend channels are reported to `{url}/leave`.
    pub leave: bool,
    /// Largest assigns, in bytes of JSON.
    pub max_assigns: usize,
    /// Requests, errors and latency per hook.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Hex HMAC-SHA256 of `body` under `key` (the `X-Gateway-Signature` value).
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Backend {
    /// The client for `spec` (validated by `Config::validate`).
    pub fn new(
        spec: &BackendSpec,
        max_in_flight: usize,
        max_assigns: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.timeout()));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        // Every series at 0 from the start on a node with a backend, so rates and the
        // GatewayBackendErrors ratio are defined before the first failure.
        for hook in [Hook::Connect, Hook::Join, Hook::Event, Hook::Leave] {
            metrics.backend_requests.with_label_values(&[hook.as_str()]);
            metrics.backend_seconds.with_label_values(&[hook.as_str()]);
            for reason in ["timeout", "unavailable", "error", "busy"] {
                metrics
                    .backend_errors
                    .with_label_values(&[hook.as_str(), reason]);
            }
        }
        Backend {
            client,
            base: spec.url.trim_end_matches('/').to_owned(),
            timeout: spec.timeout(),
            secret: spec.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            connect: spec.connect,
            leave: spec.leave,
            max_assigns,
            metrics,
        }
    }

    /// Count a hook that failed before it was sent (`backend busy` of a full event queue).
    pub fn count_error(&self, hook: Hook, err: &BackendError) {
        self.metrics
            .backend_errors
            .with_label_values(&[hook.as_str(), err.label()])
            .inc();
    }

    /// POST `body` to `{url}/{hook}` and return the JSON answer. Counted per hook; fails within
    /// the timeout, and at once when the node's requests in flight are at their bound.
    pub async fn call(&self, hook: Hook, body: &Value) -> Result<Value, BackendError> {
        let m = &self.metrics;
        m.backend_requests.with_label_values(&[hook.as_str()]).inc();
        let result = match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let start = Instant::now();
                let r = tokio::time::timeout(self.timeout, self.send(hook, body)).await;
                drop(permit);
                m.backend_seconds
                    .with_label_values(&[hook.as_str()])
                    .observe(start.elapsed().as_secs_f64());
                r.unwrap_or(Err(BackendError::Timeout))
            }
            Err(_) => Err(BackendError::Busy),
        };
        if let Err(e) = &result {
            debug!(hook = hook.as_str(), error = %e, "backend hook failed");
            self.count_error(hook, e);
        }
        result
    }

    async fn send(&self, hook: Hook, body: &Value) -> Result<Value, BackendError> {
        let bytes = Bytes::from(body.to_string());
        let uri: Uri = format!("{}/{}", self.base, hook.as_str())
            .parse()
            .map_err(|e| BackendError::Invalid(format!("url: {e}")))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &self.secret {
            req = req.header("x-gateway-signature", signature(key, &bytes));
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| BackendError::Invalid(format!("request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let status = resp.status();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| BackendError::Unavailable(format!("reading the answer: {e}")))?
            .to_bytes();
        if status.is_server_error() {
            return Err(BackendError::Unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(BackendError::Invalid(format!("HTTP {status}")));
        }
        serde_json::from_slice(&answer).map_err(|e| BackendError::Invalid(format!("not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
