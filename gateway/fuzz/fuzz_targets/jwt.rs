//! JWT verification (HS256 secret and RS256 public key configured). First input byte: even →
//! the rest is a token as the client sends it (header, claims and signature all hostile); odd →
//! the rest is the claims JSON of a token correctly signed with the HS256 secret, so the claims
//! decoding and the expiry and topic checks are reached too.
#![no_main]

use base64::Engine;
use gateway::auth::Auth;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &str = "fuzz-jwt-secret";
const RS256_PUBLIC: &[u8] = include_bytes!("../keys/rs256_public.pem");

fn auth() -> &'static Auth {
    static AUTH: std::sync::OnceLock<Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| Auth::new(Some(SECRET), Some(RS256_PUBLIC)).expect("valid test keys"))
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn hs256_signature(signing_input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hs256_token(claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims)
    );
    let sig = B64.encode(hs256_signature(&signing_input));
    format!("{signing_input}.{sig}")
}

/// Whether `token` carries a genuine HS256 signature by the test secret.
fn signed_by_us(token: &str) -> bool {
    let Some((signing_input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    B64.decode(sig)
        .is_ok_and(|sig| sig == hs256_signature(signing_input))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        hs256_token(rest)
    };
    let Ok(Some(claims)) = auth().verify(Some(&token)) else {
        return;
    };
    // Accepted: signed with the test secret (nobody can sign with the RSA key: its private half
    // was thrown away), and not expired beyond the 5 s leeway.
    assert!(
        signed_by_us(&token),
        "a token not signed with the test key was accepted"
    );
    assert!(claims.exp + 5 >= now(), "an expired token was accepted");
    assert_eq!(
        claims.session_id(),
        claims.sub.as_ref().map(|s| format!("user_socket:{s}"))
    );
    for pattern in claims.topics.iter().flatten() {
        assert!(
            claims.allows_topic(pattern),
            "{pattern:?} must allow itself"
        );
    }
    if claims.topics.is_none() {
        assert!(!claims.allows_topic("room:lobby"));
    }
});
