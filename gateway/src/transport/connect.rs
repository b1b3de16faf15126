//! What every transport checks before a session exists: serializer negotiation by `vsn`, the
//! Origin allow-list and the token (query `token`, or a transport-specific carrier such as the
//! WebSocket `authToken` subprotocol or the long-poll `X-Phoenix-AuthToken` header).

use axum::http::{header, HeaderMap};
use tracing::debug;

use crate::auth::Claims;
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
