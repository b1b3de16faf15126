//! Long-poll session tokens (`v1:<key>:<nonce hex>:<node>:<sig>`): any text parses or not
//! without panicking; a parsed token prints back to a text that parses to the same token; it
//! verifies only if it is exactly what the node would have signed. The input also drives
//! sign → parse → verify with fuzzed key, nonce and node id.
#![no_main]

use gateway::transport::longpoll::Token;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-longpoll-secret";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(t) = Token::parse(text) {
            assert_eq!(Token::parse(&Token::sign_raw(&t)).as_ref(), Some(&t));
            let genuine = Token::parse(&Token::sign(SECRET, t.key, t.nonce, &t.node));
            assert_eq!(t.verify(SECRET), genuine.as_ref() == Some(&t));
        }
    }

    // Structured: 8 bytes key, 8 bytes nonce, the rest (lossy UTF-8) the node id.
    if data.len() >= 16 {
        let key = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let nonce = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let node = String::from_utf8_lossy(&data[16..]);
        let signed = Token::sign(SECRET, key, nonce, &node);
        match Token::parse(&signed) {
            // Node ids are never empty; an empty one is the only way a signed token fails to parse.
            None => assert!(node.is_empty()),
            Some(t) => {
                assert_eq!((t.key, t.nonce, t.node.as_str()), (key, nonce, &*node));
                assert!(t.verify(SECRET));
                assert!(!t.verify(b"another secret"));
                assert_eq!(Token::sign_raw(&t), signed);
            }
        }
    }
});
