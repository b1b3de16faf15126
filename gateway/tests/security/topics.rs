//! The `topics` claim decides joins of `token` channels on both transports
//! (`{"reason":"unauthorized"}`), other joins unaffected; open mode refuses token channels.

use std::time::Duration;

use gateway::config::ConfigFile;
use gateway::Config;
use serde_json::json;
use testkit::{http, now};

use crate::common::TestNode;
use crate::conn::{connect, hs_node_config, Carrier};
use crate::keys::{hs256, valid_claims, HS_SECRET};

const TOKEN_CHANNELS: &str = r#"
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]

[[channels]]
pattern = "private:*"
join = "token"
broadcast = ["new_msg"]
"#;

#[tokio::test]
async fn the_topics_claim_decides_token_joins_on_both_transports() {
    let node = TestNode::start(Config {
        channels: ConfigFile::parse(TOKEN_CHANNELS).unwrap().channels,
        ..hs_node_config()
    })
    .await;
    let secret = HS_SECRET.as_bytes();
    let alice = hs256(
        secret,
        &json!({"sub": "alice", "exp": now() + 600, "topics": ["private:alice", "private:team:*"]}),
    );
    let no_topics = hs256(secret, &valid_claims("bob"));
    let unauthorized = (json!("error"), json!({"reason": "unauthorized"}));
    for carrier in [Carrier::WsQuery, Carrier::LpHeader] {
        let mut a = connect(node.addr, carrier, Some(&alice), None)
            .await
            .unwrap();
        for topic in [
            "private:bob",
            "private:alice2",
            "private:alic",
            "private:*",
            "private:",
            "private:team",
        ] {
            assert_eq!(
                a.join(topic, json!({})).await,
                unauthorized,
                "{topic} on {carrier:?}"
            );
        }
        // Refused joins leave the session usable: the allowed ones still succeed.
        a.join_ok("private:alice").await;
        a.join_ok("private:team:red").await;
        a.join_ok("room:lobby").await;
        // A join payload cannot grant what the connect token does not.
        assert_eq!(
            a.join(
                "private:bob",
                json!({"token": hs256(secret, &json!({"sub": "bob", "exp": now() + 600, "topics": ["private:*"]})), "topics": ["private:*"]})
            )
            .await,
            unauthorized
        );
        let mut b = connect(node.addr, carrier, Some(&no_topics), None)
            .await
            .unwrap();
        assert_eq!(b.join("private:alice", json!({})).await, unauthorized);
        b.join_ok("room:lobby").await;
        // Broadcasts reach only the topics that were joined.
        for topic in ["private:bob", "private:alice"] {
            let body = json!({"topic": topic, "event": "new_msg", "payload": {"to": topic}});
            let (status, _) = http(
                node.addr,
                "POST",
                "/api/broadcast",
                &[("Authorization", "Bearer security-suite-api-key")],
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 202);
        }
        assert_eq!(
            a.recv().await,
            json!([null, null, "private:alice", "new_msg", {"to": "private:alice"}])
        );
        a.assert_quiet().await;
        b.assert_quiet().await;
    }
    // Open mode: `token` channels refuse everyone (README "Auth").
    let open = TestNode::start(Config {
        channels: ConfigFile::parse(TOKEN_CHANNELS).unwrap().channels,
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
        let mut s = connect(open.addr, carrier, Some(&alice), None)
            .await
            .unwrap();
        assert_eq!(s.join("private:alice", json!({})).await, unauthorized);
        s.join_ok("room:lobby").await;
    }
}
