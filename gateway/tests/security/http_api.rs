//! The HTTP API key must be presented whole (missing, wrong, prefix, longer, other schemes
//! and places: 401, checked before the body is read), and CORS headers appear only on the
//! long-poll endpoint.

use std::time::Duration;

use gateway::Config;
use serde_json::{json, Value};
use testkit::jwt::b64url as b64;
use testkit::longpoll::urlencode;
use testkit::{http, http_full};

use crate::common::TestNode;

#[tokio::test]
async fn the_api_key_must_be_presented_whole() {
    let key = "k3y-2f6c1d9e8b7a";
    let node = TestNode::start(Config {
        api_key: Some(key.into()),
        ..Config::default()
    })
    .await;
    let mut ws = node.ws().await;
    ws.join_ok("room:api").await;
    let broadcast = json!({"topic": "room:api", "event": "e", "payload": {}}).to_string();
    let disconnect = json!({"id": "user_socket:nobody"}).to_string();
    let wrong: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("empty", Some(String::new())),
        ("Bearer and nothing", Some("Bearer".into())),
        ("wrong key", Some("Bearer nope".into())),
        ("prefix", Some(format!("Bearer {}", &key[..key.len() - 1]))),
        ("first byte only", Some(format!("Bearer {}", &key[..1]))),
        ("longer", Some(format!("Bearer {key}x"))),
        ("key twice", Some(format!("Bearer {key}{key}"))),
        (
            "last byte changed",
            Some(format!("Bearer {}X", &key[..key.len() - 1])),
        ),
        ("upper case", Some(format!("Bearer {}", key.to_uppercase()))),
        ("no scheme", Some(key.into())),
        ("Basic scheme", Some(format!("Basic {key}"))),
        ("Token scheme", Some(format!("Token {key}"))),
        (
            "Basic with the key as user",
            Some(format!("Basic {}", b64(format!("{key}:").as_bytes()))),
        ),
    ];
    for (path, body) in [
        ("/api/broadcast", &broadcast),
        ("/api/disconnect", &disconnect),
    ] {
        for (what, auth) in &wrong {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let (status, text) = http(node.addr, "POST", path, &headers, body).await;
            assert_eq!(status, 401, "{path} {what}");
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                json!({"error": "missing or wrong API key"}),
                "{path} {what}"
            );
        }
        // Other places a key might be looked for are not.
        for (p, headers) in [
            (format!("{path}?api_key={key}"), vec![]),
            (path.to_owned(), vec![("X-Api-Key", key)]),
        ] {
            assert_eq!(
                http(node.addr, "POST", &p, &headers, body).await.0,
                401,
                "{p}"
            );
        }
        // The key is checked before the body is read: no parse errors for strangers.
        let bearer_wrong = [("Authorization", "Bearer nope")];
        assert_eq!(
            http(node.addr, "POST", path, &bearer_wrong, "{").await.0,
            401
        );
    }
    // Nothing refused reached the session; the right key does.
    let auth = format!("Bearer {key}");
    let (status, _) = http(
        node.addr,
        "POST",
        "/api/broadcast",
        &[("Authorization", &auth)],
        &broadcast,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        ws.recv_json().await,
        json!([null, null, "room:api", "e", {}])
    );
    ws.assert_nothing_queued().await;
    let (status, _) = http(
        node.addr,
        "POST",
        "/api/disconnect",
        &[("Authorization", &auth)],
        &disconnect,
    )
    .await;
    assert_eq!(status, 202);
}

// ------------------------------------------------------------------ CORS

#[tokio::test]
async fn cors_headers_only_on_the_long_poll_endpoint() {
    let node = TestNode::start(Config {
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let origin = ("Origin", "https://elsewhere.example");
    // Long-poll: preflight and every answer allow any origin, never with credentials.
    let (status, head, _) = http_full(
        node.addr,
        "OPTIONS",
        "/socket/longpoll",
        &[
            origin,
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-phoenix-authtoken,x-phoenix-longpoll-token",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    for h in [
        "access-control-allow-origin: *",
        "access-control-allow-methods: get, post, options",
        "access-control-allow-headers: content-type,x-phoenix-authtoken,x-phoenix-longpoll-token",
    ] {
        assert!(head.contains(h), "{h} missing:\n{head}");
    }
    let (_, get_head, body) = http_full(
        node.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[origin],
        "",
    )
    .await;
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, post_head, _) = http_full(
        node.addr,
        "POST",
        &format!("/socket/longpoll?vsn=2.0.0&token={}", urlencode(&token)),
        &[origin, ("Content-Type", "application/x-ndjson")],
        &json!([null, "1", "phoenix", "heartbeat", {}]).to_string(),
    )
    .await;
    for head in [&head, &get_head, &post_head] {
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(!head.contains("access-control-allow-credentials"), "{head}");
    }
    // Everything else: no CORS headers at all, preflight or not.
    for (method, path, body) in [
        ("OPTIONS", "/api/broadcast", ""),
        (
            "POST",
            "/api/broadcast",
            r#"{"topic":"room:1","event":"e"}"#,
        ),
        ("OPTIONS", "/api/disconnect", ""),
        ("POST", "/api/disconnect", r#"{"id":"user_socket:1"}"#),
        ("GET", "/metrics", ""),
        ("OPTIONS", "/metrics", ""),
        ("GET", "/healthz", ""),
        ("GET", "/readyz", ""),
        ("GET", "/", ""),
        ("GET", "/socket/websocket?vsn=2.0.0", ""),
        ("OPTIONS", "/socket/websocket", ""),
    ] {
        let (status, head, _) = http_full(
            node.addr,
            method,
            path,
            &[origin, ("Access-Control-Request-Method", "POST")],
            body,
        )
        .await;
        assert!(
            !head.contains("access-control-"),
            "{method} {path} ({status}) has CORS headers:\n{head}"
        );
    }
}
