//! Connection authentication. Two modes: `none` (development: anyone connects, no session id)
//! and JWT (HS256 with a shared secret, optionally RS256 with a public key). The token comes
//! from the `token` query parameter or the phoenix.js `authToken` WebSocket subprotocol. The
//! algorithm is taken from the key, never from the token: `alg: none` and HS/RS confusion are
//! refused.

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::TopicPattern;

/// Claims of a verified token (serialized into backend hook bodies as `session.claims`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Claims {
    /// Subject: the session id is `user_socket:<sub>`.
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry (seconds since the epoch), enforced.
    pub exp: u64,
    /// Topics (exact or `prefix:*`) this token may join on `token` channels.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
}

impl Claims {
    /// The session id topic (`user_socket:<sub>`).
    pub fn session_id(&self) -> Option<String> {
        self.sub.as_ref().map(|s| format!("user_socket:{s}"))
    }

    /// Whether the `topics` claim allows joining `topic`.
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_some_and(|t| t.iter().any(|p| TopicPattern::parse(p).matches(topic)))
    }
}

/// Why a token was refused (logged at debug; the client only sees HTTP 403).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A connect without a token while JWT auth is on.
    #[error("token required")]
    Missing,
    /// The token's algorithm has no configured key (includes `none` and HS/RS confusion).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// Bad signature, expired, malformed, or missing claims.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Key material problems at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The RS256 public key is not a PEM RSA key.
    #[error("invalid RS256 public key: {0}")]
    Rsa(#[source] jsonwebtoken::errors::Error),
}

/// The node's authenticator.
#[derive(Clone)]
pub struct Auth {
    /// HS256 key from the shared secret.
    hs256: Option<DecodingKey>,
    /// RS256 public key.
    rs256: Option<DecodingKey>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Auth")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .finish()
    }
}

impl Auth {
    /// Build from an optional HS256 secret and an optional RS256 public key (PEM).
    pub fn new(hs256_secret: Option<&str>, rs256_pem: Option<&[u8]>) -> Result<Self, KeyError> {
        Ok(Auth {
            hs256: hs256_secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            rs256: rs256_pem
                .map(DecodingKey::from_rsa_pem)
                .transpose()
                .map_err(KeyError::Rsa)?,
        })
    }

    /// Whether tokens are required (any key configured).
    pub fn enabled(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some()
    }

    /// Verify a connect: `Ok(None)` in open mode, `Ok(Some(claims))` for a valid token.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = token.ok_or(AuthError::Missing)?;
        let header = decode_header(token)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::Algorithm)?;
        let mut validation = Validation::new(header.alg);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.validate_aud = false;
        Ok(Some(decode::<Claims>(token, key, &validation)?.claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn open_mode_needs_no_token() {
        assert_eq!(Auth::new(None, None).unwrap().verify(None).unwrap(), None);
    }

    #[test]
    fn hs256_tokens() {
        let auth = Auth::new(Some("s3cret"), None).unwrap();
        let good = token(
            "s3cret",
            serde_json::json!({"sub": "42", "exp": now() + 60, "topics": ["private:*"]}),
        );
        let c = auth.verify(Some(&good)).unwrap().unwrap();
        assert_eq!(c.session_id().as_deref(), Some("user_socket:42"));
        assert!(c.allows_topic("private:7") && !c.allows_topic("room:1"));
        assert!(matches!(auth.verify(None), Err(AuthError::Missing)));
        let wrong = token("other", serde_json::json!({"sub": "42", "exp": now() + 60}));
        assert!(auth.verify(Some(&wrong)).is_err());
        let expired = token(
            "s3cret",
            serde_json::json!({"sub": "42", "exp": now() - 600}),
        );
        assert!(auth.verify(Some(&expired)).is_err());
        let no_exp = token("s3cret", serde_json::json!({"sub": "42"}));
        assert!(auth.verify(Some(&no_exp)).is_err());
        assert!(auth.verify(Some("garbage")).is_err());
    }

    #[test]
    fn alg_none_and_confusion_are_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({"sub": "1", "exp": now() + 60}).to_string();
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(&claims)
        );
        let auth = Auth::new(Some("s3cret"), None).unwrap();
        assert!(auth.verify(Some(&none)).is_err());
        // An RS256-labelled token on a node without an RSA key is refused, whatever it is signed with.
        let rs = format!(
            "{}.{}.sig",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(&claims)
        );
        assert!(matches!(auth.verify(Some(&rs)), Err(AuthError::Algorithm)));
    }
}
