//! HS256 JSON Web Tokens minted by hand (header and payload may be any text, so a test can also
//! make tokens a JWT library refuses to produce), and the clock their claims are set from.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;

/// base64url without padding, the JWT segment encoding.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 JWT with `{"alg":"HS256","typ":"JWT"}` and `claims`, signed with `secret`.
pub fn jwt(secret: &str, claims: Value) -> String {
    jwt_raw(
        secret.as_bytes(),
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims.to_string(),
    )
}

/// `header.payload.HMAC-SHA256(secret)` over arbitrary header and payload text (a non-JSON
/// payload, a header that is not JSON).
pub fn jwt_raw(secret: &[u8], header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

/// Seconds since the Unix epoch, for `exp` and `nbf` claims.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
