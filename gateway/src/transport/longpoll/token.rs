//! Long-poll session tokens: `v1:<session key>:<nonce>:<owner node id>:<signature>`. The token
//! names the node that owns the session, so any node can route a request to the owner (no sticky
//! sessions), and is HMAC-SHA256 signed so it cannot be forged. The owner always verifies; with a
//! cluster-wide `--longpoll-secret` every node can verify before forwarding.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A parsed (not yet verified) token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Session key on the owner node.
    pub key: u64,
    /// Random per session, so keys reused after a restart give different tokens.
    pub nonce: u64,
    /// Owner node id.
    pub node: String,
    /// Signature over the other fields.
    sig: String,
}

fn mac(secret: &[u8], key: u64, nonce: u64, node: &str) -> String {
    // HMAC accepts keys of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(format!("v1:{key}:{nonce:x}:{node}").as_bytes());
    B64.encode(m.finalize().into_bytes())
}

impl Token {
    /// Sign a new token.
    pub fn sign(secret: &[u8], key: u64, nonce: u64, node: &str) -> String {
        format!(
            "v1:{key}:{nonce:x}:{node}:{}",
            mac(secret, key, nonce, node)
        )
    }

    /// Parse; `None` for anything that is not a token of ours (e.g. an app's own `token` param).
    pub fn parse(s: &str) -> Option<Token> {
        let rest = s.strip_prefix("v1:")?;
        let (key, rest) = rest.split_once(':')?;
        let (nonce, rest) = rest.split_once(':')?;
        let (node, sig) = rest.rsplit_once(':')?;
        if node.is_empty() || sig.is_empty() {
            return None;
        }
        Some(Token {
            key: key.parse().ok()?,
            nonce: u64::from_str_radix(nonce, 16).ok()?,
            node: node.to_owned(),
            sig: sig.to_owned(),
        })
    }

    /// The token's text form again (to forward it unchanged).
    pub fn sign_raw(t: &Token) -> String {
        format!("v1:{}:{:x}:{}:{}", t.key, t.nonce, t.node, t.sig)
    }

    /// Whether the signature is valid for `secret` (constant-time comparison).
    pub fn verify(&self, secret: &[u8]) -> bool {
        let expected = mac(secret, self.key, self.nonce, &self.node);
        expected.as_bytes().ct_eq(self.sig.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let t = Token::sign(b"secret", 42, 0xabc, "gw-1:odd");
        let p = Token::parse(&t).unwrap();
        assert_eq!((p.key, p.nonce, p.node.as_str()), (42, 0xabc, "gw-1:odd"));
        assert!(p.verify(b"secret"));
        assert!(!p.verify(b"other"));
        let forged = t.replacen("v1:42:", "v1:43:", 1);
        assert!(!Token::parse(&forged).unwrap().verify(b"secret"));
        for junk in [
            "",
            "user-jwt.abc.def",
            "v1:x:1:n:s",
            "v1:1:zz:n:s",
            "v1:1:1::s",
        ] {
            assert!(Token::parse(junk).is_none(), "{junk}");
        }
    }
}
