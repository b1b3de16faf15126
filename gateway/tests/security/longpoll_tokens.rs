//! Forged long-poll session tokens (a flipped signature, signatures and keys swapped between
//! sessions, another owner node) reach no session.

use std::time::Duration;

use gateway::Config;
use serde_json::json;
use testkit::LongPoll;

use crate::common::TestNode;
use crate::conn::{connect, Carrier, Conn};

#[tokio::test]
async fn forged_long_poll_session_tokens_reach_no_session() {
    let node = TestNode::start(Config {
        longpoll_secret: Some("cluster-wide-longpoll-secret".into()),
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let (Ok(Conn::Lp(mut a, _)), Ok(Conn::Lp(b, _))) = (
        connect(node.addr, Carrier::LpQuery, None, None).await,
        connect(node.addr, Carrier::LpQuery, None, None).await,
    ) else {
        panic!("long-poll open refused")
    };
    assert_eq!(
        a.post(&[json!(["1", "1", "room:lp", "phx_join", {}])])
            .await,
        json!({"status": 200})
    );
    assert_eq!(a.recv().await[4]["status"], "ok");
    // Something queued for A, which a forged poll must not take.
    node.broadcast("room:lp", "secret", json!({"for": "a"}))
        .await;
    // v1:<key>:<nonce>:<node>:<sig>
    let parts: Vec<&str> = a.token.split(':').collect();
    let b_parts: Vec<&str> = b.token.split(':').collect();
    assert_eq!(parts.len(), 5, "{}", a.token);
    let mut flipped_sig = parts[4].to_owned();
    let last = flipped_sig.pop().unwrap();
    flipped_sig.push(if last == 'A' { 'B' } else { 'A' });
    let forged = [
        format!("v1:{}:{}:{}:{flipped_sig}", parts[1], parts[2], parts[3]),
        // B's signature on A's session key.
        format!("v1:{}:{}:{}:{}", parts[1], b_parts[2], parts[3], b_parts[4]),
        // A's signature with B's key.
        format!("v1:{}:{}:{}:{}", b_parts[1], parts[2], parts[3], parts[4]),
        // Another owner node, signed with a guessed key: refused before any forwarding.
        format!("v1:{}:{}:gw-other:{}", parts[1], parts[2], parts[4]),
    ];
    for token in &forged {
        let fake = LongPoll::with_token(node.addr, token);
        let answer = fake.poll().await;
        assert_eq!(answer["status"], 410, "GET {token}: {answer}");
        // A token naming another node that does not verify is taken for an app's own `token`
        // param: the GET opens a fresh session (as any open would), never an existing one.
        if let Some(fresh) = answer["token"].as_str() {
            assert!(token.contains("gw-other"), "{token}: {answer}");
            assert!(fresh != a.token && fresh != b.token, "{answer}");
        }
        let push = json!(["1", "2", "room:lp", "new_msg", {"forged": true}]);
        assert_eq!(
            fake.post(&[push]).await,
            json!({"status": 410}),
            "POST {token}"
        );
    }
    assert_eq!(
        a.recv().await,
        json!([null, null, "room:lp", "secret", {"for": "a"}])
    );
    Conn::Lp(a, 10).assert_quiet().await;
}
