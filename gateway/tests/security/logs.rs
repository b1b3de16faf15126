//! The real binary at `RUST_LOG=trace` writes no secret, JWT, API key, Redis password or
//! session token to its log, `--help` or a configuration error; an empty JWT secret never
//! lets a forged token in.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use testkit::redis::RedisServer;
use testkit::{http, now, LongPoll, WAIT};

use crate::common::gateway_on_free_port;
use crate::conn::{connect, Conn, CARRIERS};
use crate::keys::{hs256, segments, unsigned, valid_claims, RSA_PUBLIC};

fn random_secret(what: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

/// Every string in `secrets` that occurs in `output`.
fn leaked<'a>(output: &str, secrets: &'a [(String, String)]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(_, s)| output.contains(s.as_str()))
        .map(|(what, _)| what.as_str())
        .collect()
}

#[tokio::test]
async fn the_binary_logs_no_secret_at_trace_level() {
    let jwt_secret = random_secret("jwt");
    let api_key = random_secret("api");
    let lp_secret = random_secret("lp");
    let redis_password = random_secret("redis");
    let redis = RedisServer::options()
        .password(&redis_password)
        .start()
        .await;
    let redis_url = redis.url();
    let mut gw = gateway_on_free_port(
        &[
            "--jwt-secret",
            &jwt_secret,
            "--api-key",
            &api_key,
            "--longpoll-secret",
            &lp_secret,
            "--redis-url",
            &redis_url,
            "--longpoll-window-ms",
            "300",
            "--drain-interval-ms",
            "10",
            "--shutdown-timeout-ms",
            "5000",
        ],
        &[("RUST_LOG", "trace")],
    )
    .start()
    .await;
    let addr = gw.addr;
    // Ready means Redis accepted the password.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http(addr, "GET", "/readyz", &[], "").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready:\n{}",
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut secrets: Vec<(String, String)> = vec![
        ("--jwt-secret".into(), jwt_secret.clone()),
        ("--api-key".into(), api_key.clone()),
        ("--longpoll-secret".into(), lp_secret.clone()),
        ("the Redis password".into(), redis_password.clone()),
    ];
    // A JWT is a credential: neither it, its signature, nor its authToken form may be logged.
    let mut keep_token = |what: &str, token: &str| {
        secrets.push((format!("{what} JWT"), token.to_owned()));
        secrets.push((
            format!("{what} JWT signature"),
            segments(token)[2].to_owned(),
        ));
        secrets.push((
            format!("{what} JWT as authToken"),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(token),
        ));
    };
    let good = hs256(jwt_secret.as_bytes(), &valid_claims("log-user"));
    let guessed = hs256(b"guessed-secret", &valid_claims("log-user"));
    let expired = hs256(
        jwt_secret.as_bytes(),
        &json!({"sub": "1", "exp": now() - 60}),
    );
    let mistyped = hs256(jwt_secret.as_bytes(), &json!({"sub": "1", "exp": "soon"}));
    let confused = hs256(RSA_PUBLIC.as_bytes(), &valid_claims("1"));
    let none = unsigned(r#"{"alg":"none"}"#, &valid_claims("1"), "c2lnbmF0dXJl");
    for (what, token) in [
        ("valid", &good),
        ("wrongly signed", &guessed),
        ("expired", &expired),
        ("mistyped", &mistyped),
        ("key-confused", &confused),
        ("alg none", &none),
    ] {
        keep_token(what, token);
    }

    // Sessions with valid tokens on every carrier, each joined to a topic of its own (the demo
    // channel, with presence) and pushing to it.
    let mut sessions = Vec::new();
    for (i, carrier) in CARRIERS.into_iter().enumerate() {
        let topic = format!("room:logs-{i}");
        let mut s = connect(addr, carrier, Some(&good), None).await.unwrap();
        s.join_ok(&topic).await;
        let r = s.next_ref();
        s.send(json!(["1", r, topic, "new_msg", {"body": "hello"}]))
            .await;
        sessions.push((topic, s));
    }
    // Refused connects on every carrier.
    for token in [&guessed, &expired, &mistyped, &confused, &none] {
        for carrier in CARRIERS {
            assert_eq!(
                connect(addr, carrier, Some(token), None).await.err(),
                Some(403)
            );
        }
    }
    // Long-poll session tokens (bearer credentials too) in use, and a forged one.
    for (_, s) in &mut sessions {
        if let Conn::Lp(lp, _) = s {
            secrets.push(("a long-poll session token".into(), lp.token.clone()));
            let sig = lp.token.rsplit(':').next().unwrap().to_owned();
            secrets.push(("a long-poll token signature".into(), sig));
            let forged = LongPoll::with_token(addr, &format!("{}x", lp.token));
            assert_eq!(forged.poll().await, json!({"status": 410}));
        }
    }
    // The HTTP API with the right key, a wrong one and a prefix of the right one.
    let wrong_key = random_secret("wrong-api");
    let prefix_key = api_key[..api_key.len() - 4].to_owned();
    secrets.push(("a wrong API key".into(), wrong_key.clone()));
    secrets.push(("a prefix of the API key".into(), prefix_key.clone()));
    for (key, expect) in [(&api_key, 202), (&wrong_key, 401), (&prefix_key, 401)] {
        let auth = format!("Bearer {key}");
        let headers = [("Authorization", auth.as_str())];
        for (topic, _) in &sessions {
            let body = json!({"topic": topic, "event": "from_api", "payload": {}}).to_string();
            let (status, _) = http(addr, "POST", "/api/broadcast", &headers, &body).await;
            assert_eq!(status, expect, "broadcast");
        }
        let body = json!({"id": "user_socket:nobody"}).to_string();
        let (status, _) = http(addr, "POST", "/api/disconnect", &headers, &body).await;
        assert_eq!(status, expect, "disconnect");
    }
    // Every session gets the API broadcast (after its push's reply and echo, and the demo
    // channel's presence frames); draining then ends them.
    for (_, s) in &mut sessions {
        while s.recv().await[3] != "from_api" {}
        s.assert_quiet().await;
    }
    let (status, _) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let exit = gw.terminate().await;
    let output = gw.output();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}:\n{output}");
    // The log level was on and the refusals were logged: the check below is not vacuous.
    for expected in [
        "listening on",
        "redis pubsub ready",
        "token refused",
        "websocket connect refused",
        "long-poll connect refused",
        "drained",
    ] {
        assert!(output.contains(expected), "no `{expected}` in:\n{output}");
    }
    let found = leaked(&output, &secrets);
    assert!(found.is_empty(), "the log contains {found:?}:\n{output}");

    // `--help` with the secrets in the environment shows none of their values.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .env("GATEWAY_JWT_SECRET", &jwt_secret)
        .env("GATEWAY_API_KEY", &api_key)
        .env("GATEWAY_LONGPOLL_SECRET", &lp_secret)
        .output()
        .unwrap();
    let help =
        String::from_utf8_lossy(&help.stdout).to_string() + &String::from_utf8_lossy(&help.stderr);
    assert!(help.contains("--jwt-secret"), "{help}");
    let found = leaked(&help, &secrets);
    assert!(found.is_empty(), "--help shows {found:?}:\n{help}");

    // A configuration error names the problem, not the secrets.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--jwt-secret", &jwt_secret, "--api-key", &api_key])
        .args(["--longpoll-secret", &lp_secret, "--redis-url", &redis_url])
        .args(["--jwt-public-key", "/nonexistent/key.pem"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{text}");
    assert!(text.contains("/nonexistent/key.pem"), "{text}");
    let found = leaked(&text, &secrets);
    assert!(
        found.is_empty(),
        "the error output contains {found:?}:\n{text}"
    );
}

#[tokio::test]
async fn an_empty_jwt_secret_never_lets_a_forged_token_in() {
    // E.g. `GATEWAY_JWT_SECRET: ${JWT_SECRET}` in a compose file with JWT_SECRET unset.
    let forged = hs256(b"", &valid_claims("attacker"));
    let empty_env = [("GATEWAY_JWT_SECRET", "")];
    for (args, env) in [
        (&[][..], &empty_env[..]),
        (&["--jwt-secret", ""][..], &[][..]),
    ] {
        // Either the node refuses to start (an empty secret is a configuration error)...
        let Ok(gw) = gateway_on_free_port(args, env).try_start().await else {
            continue;
        };
        // ...or it runs and a token signed with the empty key is refused on every carrier.
        for carrier in CARRIERS {
            assert_eq!(
                connect(gw.addr, carrier, Some(&forged), None).await.err(),
                Some(403),
                "{args:?} {env:?} {carrier:?}"
            );
        }
    }
}

#[tokio::test]
async fn help_shows_no_redis_password() {
    let password = random_secret("redis");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .env(
            "GATEWAY_REDIS_URL",
            format!("redis://:{password}@10.0.0.1:6379/"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--redis-url"), "{text}");
    let shown: Vec<&str> = text.lines().filter(|l| l.contains(&password)).collect();
    assert!(shown.is_empty(), "--help shows {shown:?}");
}
