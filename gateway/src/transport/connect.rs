//! What every transport checks before a session exists: serializer negotiation by `vsn`, the
//! Origin allow-list and the token (query `token`, or a transport-specific carrier such as the
//! WebSocket `authToken` subprotocol or the long-poll `X-Phoenix-AuthToken` header) — and then,
//! when `[backend] connect = true`, the backend's `connect` hook (`identify`).

use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::auth::Claims;
use crate::backend::contract::{self, Connected};
use crate::backend::{BackendError, Hook};
use crate::channel::Identity;
use crate::edge::Edge;
use crate::protocol::{negotiate, Serializer};

/// Query parameters the handshake uses. For repeated keys the last value wins (Plug semantics).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnectParams {
    /// `vsn`.
    pub vsn: Option<String>,
    /// `token`.
    pub token: Option<String>,
}

impl ConnectParams {
    /// Parse a query string.
    pub fn parse(query: Option<&str>) -> Self {
        let mut p = ConnectParams::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "vsn" => p.vsn = Some(v.into_owned()),
                "token" => p.token = Some(v.into_owned()),
                _ => {}
            }
        }
        p
    }
}

/// Whether `origin` passes the allow-list (empty list or no Origin header: allowed).
pub fn origin_allowed(allow: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    if allow.is_empty() {
        return true;
    }
    let split = |s: &str| -> Option<(String, String, Option<String>)> {
        let (scheme, rest) = s.split_once("://")?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p.to_owned())),
            _ => (rest, None),
        };
        Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
    };
    let Some((scheme, host, port)) = split(origin) else {
        return false;
    };
    allow.iter().filter_map(|a| split(a)).any(|(s, h, p)| {
        let host_ok = match h.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")) || host == suffix,
            None => host == h,
        };
        s == scheme && host_ok && (p.is_none() || p == port)
    })
}

/// Run the connect checks. `Err` carries the refusal reason (a metric label).
pub fn authorize(
    edge: &Edge,
    query: Option<&str>,
    headers: &HeaderMap,
    carried_token: Option<&str>,
) -> Result<(Serializer, Option<Claims>), &'static str> {
    let params = ConnectParams::parse(query);
    let serializer = negotiate(params.vsn.as_deref()).map_err(|_| "vsn")?;
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !origin_allowed(&edge.config.check_origin, origin) {
        return Err("origin");
    }
    let claims = edge
        .auth
        .verify(carried_token.or(params.token.as_deref()))
        .map_err(|e| {
            debug!(error = %e, "token refused");
            "auth"
        })?;
    Ok((serializer, claims))
}

/// Why the connect hook did not admit a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HookRefusal {
    /// The backend answered `{"error": …}` (HTTP 403).
    #[error("refused by the backend")]
    Refused,
    /// The hook failed: timeout, unavailable, busy or an answer outside the contract (HTTP 503).
    #[error("backend connect hook failed")]
    Failed,
}

impl HookRefusal {
    /// Metric label (`gateway_connect_refusals_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            HookRefusal::Refused => "backend_refused",
            HookRefusal::Failed => "backend_failed",
        }
    }
}

/// Who the new session is: its verified claims and, when the connect hook is on, the socket id
/// and assigns the backend answered (`None`: anonymous, nothing to keep).
pub async fn identify(
    edge: &Edge,
    query: Option<&str>,
    headers: &HeaderMap,
    claims: Option<Claims>,
) -> Result<Option<Box<Identity>>, HookRefusal> {
    let Some(backend) = edge.backend.as_ref().filter(|b| b.connect) else {
        return Ok(claims.map(|claims| {
            Box::new(Identity {
                claims: Some(claims),
                ..Identity::default()
            })
        }));
    };
    // Every query parameter but the serializer's `vsn`: phoenix.js sends the socket's
    // `params` there. For repeated keys the last value wins, as in `ConnectParams`.
    let mut params = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "vsn" {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let body = contract::connect_body(params, header(header::ORIGIN), header(header::USER_AGENT));
    let answer = backend
        .call(Hook::Connect, &body)
        .await
        .map_err(|_| HookRefusal::Failed)?;
    match contract::parse_connect(answer, backend.max_assigns) {
        Ok(Connected::Accept { id, assigns }) => Ok(Some(Box::new(Identity {
            claims,
            id,
            assigns,
        }))),
        Ok(Connected::Refuse(error)) => {
            debug!(%error, "backend refused the connect");
            Err(HookRefusal::Refused)
        }
        Err(e) => {
            warn!(error = %e, "backend connect answer refused");
            backend.count_error(Hook::Connect, &BackendError::Invalid(e.to_string()));
            Err(HookRefusal::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_query_value_wins() {
        let p = ConnectParams::parse(Some("token=user&vsn=2.0.0&token=session"));
        assert_eq!(
            p,
            ConnectParams {
                vsn: Some("2.0.0".into()),
                token: Some("session".into())
            }
        );
        assert_eq!(ConnectParams::parse(None), ConnectParams::default());
    }

    #[test]
    fn origin_allow_list() {
        let allow = vec![
            "https://example.com".to_owned(),
            "https://*.corp.io:8443".to_owned(),
        ];
        assert!(origin_allowed(&allow, None));
        assert!(origin_allowed(&[], Some("https://evil.com")));
        assert!(origin_allowed(&allow, Some("https://example.com")));
        assert!(origin_allowed(&allow, Some("https://example.com:444")));
        assert!(!origin_allowed(&allow, Some("http://example.com")));
        assert!(!origin_allowed(&allow, Some("https://evil.com")));
        assert!(origin_allowed(&allow, Some("https://a.corp.io:8443")));
        assert!(!origin_allowed(&allow, Some("https://a.corp.io:9000")));
        assert!(!origin_allowed(&allow, Some("garbage")));
    }
}
