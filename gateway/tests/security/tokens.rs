//! JWT refusals: every bad token on every carrier (HS256 node, RS256 node and its key
//! confusion, a node with both keys, `nbf`, a 1 MiB token), a good token in one carrier not
//! rescuing a bad one in another; each refusal counted and the witnesses still served.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use gateway::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use testkit::jwt::b64url as b64;
use testkit::{http_full, now, Client, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestNode;
use crate::conn::{assert_all_accepted, assert_all_refused, hs_node_config, Carrier, Witnesses};
use crate::keys::{
    hs256, refused_everywhere, rs256, segments, sign, valid_claims, HS_SECRET, OTHER_RSA_PRIVATE,
    RSA_PRIVATE, RSA_PUBLIC,
};

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
