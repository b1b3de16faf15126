//! The suite's keys (an RSA pair, another RSA key, the HMAC secret) and the tokens made from
//! them: valid ones, and every bad token any node must refuse.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use testkit::jwt::{b64url as b64, jwt_raw};
use testkit::now;

/// Test-only RSA key pair, generated for this suite (`openssl genrsa -traditional 2048`); it
/// protects nothing.
pub const RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
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
pub const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
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
pub const OTHER_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
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

pub const HS_SECRET: &str = "hs256-secret-for-the-security-suite";

/// Claims a node accepts: a subject and an expiry ten minutes ahead.
pub fn valid_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

/// A token signed by the jsonwebtoken library (the header names `alg`).
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

pub fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

pub fn rs256(private_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

/// An unsigned token with the given header (`alg: none` and friends) and `signature` appended.
pub fn unsigned(header: &str, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

pub fn segments(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

/// Tokens every node with `HS_SECRET` and/or `RSA_PUBLIC` must refuse, named for failure messages.
pub fn refused_everywhere() -> Vec<(&'static str, String)> {
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
            jwt_raw(secret, r#"{"alg":"HS256","typ":"JWT"}"#, "sub=1"),
        ),
        (
            "payload a JSON array",
            jwt_raw(secret, r#"{"alg":"HS256","typ":"JWT"}"#, "[]"),
        ),
        (
            "header not JSON",
            jwt_raw(secret, "HS256", &valid_claims("1").to_string()),
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
