//! The Origin allow-list on both transports: allowed and refused origins (counted), a valid
//! token not excusing a foreign Origin, long-poll requests after the open checked too.

use std::time::Duration;

use gateway::Config;
use serde_json::json;

use crate::common::TestNode;
use crate::conn::{connect, hs_node_config, refusals, Carrier, Conn, Witnesses, CARRIERS};
use crate::keys::{hs256, valid_claims, HS_SECRET};

#[tokio::test]
async fn the_origin_allow_list_holds_on_both_transports() {
    let node = TestNode::start(Config {
        check_origin: vec![
            "https://app.example.com".into(),
            "https://*.corp.example:8443".into(),
        ],
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut w = Witnesses::start(node.addr, None, None).await;
    let allowed = [
        None,
        Some("https://app.example.com"),
        Some("https://app.example.com/"),
        Some("HTTPS://APP.EXAMPLE.COM"),
        Some("https://a.corp.example:8443"),
        Some("https://a.b.corp.example:8443"),
    ];
    for origin in allowed {
        for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
            let mut s = connect(node.addr, carrier, None, origin)
                .await
                .unwrap_or_else(|s| panic!("{origin:?} on {carrier:?} refused: {s}"));
            s.join_ok("room:origin").await;
        }
    }
    let refused = [
        "https://evil.example.net",
        "http://app.example.com",
        "wss://app.example.com",
        "https://app.example.com.evil.net",
        "https://evilapp.example.com",
        "https://sub.app.example.com",
        "https://app.example.com@evil.net",
        "https://evilcorp.example:8443",
        "https://a.corp.example",
        "https://a.corp.example:9443",
        "null",
        "",
    ];
    let before = refusals(node.addr, "origin").await;
    for origin in refused {
        for carrier in [Carrier::WsQuery, Carrier::LpQuery] {
            let r = connect(node.addr, carrier, None, Some(origin)).await;
            assert_eq!(r.err(), Some(403), "{origin:?} on {carrier:?}");
        }
    }
    assert_eq!(
        refusals(node.addr, "origin").await - before,
        2 * refused.len() as u64
    );
    w.still_served("refused origins").await;
    // With JWT auth on, a valid token does not excuse a foreign Origin.
    let jwt_node = TestNode::start(Config {
        check_origin: vec!["https://app.example.com".into()],
        ..hs_node_config()
    })
    .await;
    let good = hs256(HS_SECRET.as_bytes(), &valid_claims("1"));
    for carrier in CARRIERS {
        let r = connect(
            jwt_node.addr,
            carrier,
            Some(&good),
            Some("https://evil.example.net"),
        )
        .await;
        assert_eq!(r.err(), Some(403), "{carrier:?}");
        assert!(
            connect(
                jwt_node.addr,
                carrier,
                Some(&good),
                Some("https://app.example.com")
            )
            .await
            .is_ok(),
            "{carrier:?}"
        );
    }
}

#[tokio::test]
async fn long_poll_requests_from_a_foreign_origin_are_refused_after_the_open_too() {
    let node = TestNode::start(Config {
        check_origin: vec!["https://app.example.com".into()],
        longpoll_window: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let Ok(Conn::Lp(lp, _)) = connect(
        node.addr,
        Carrier::LpQuery,
        None,
        Some("https://app.example.com"),
    )
    .await
    else {
        panic!("long-poll open from the allowed origin refused")
    };
    let evil = [("Origin", "https://evil.example.net")];
    let join = json!(["1", "1", "room:x", "phx_join", {}]);
    assert_eq!(
        lp.post_lines(lp.addr, &[join.to_string()], &evil).await["status"],
        403,
        "POST"
    );
    assert_eq!(lp.poll_with(lp.addr, &evil).await["status"], 403, "GET");
}
