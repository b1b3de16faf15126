//! Long-poll POST bodies: ndjson (or a single frame) whose lines are JSON text frames or base64
//! V2 binary frames. The first input byte picks ndjson/whole-body and V1/V2; the rest is the body.
#![no_main]

use base64::Engine;
use bytes::Bytes;
use gateway::protocol::{Payload, Serializer};
use gateway::transport::longpoll::{body_lines, decode_line};
use libfuzzer_sys::fuzz_target;

/// phoenix.js sends at most 100 frames per POST; the node handles no more.
const MAX_LINES: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 != 0;
    let serializer = if mode & 2 != 0 {
        Serializer::V2
    } else {
        Serializer::V1
    };
    let body = Bytes::copy_from_slice(body);
    let lines = body_lines(body.clone(), ndjson);
    if ndjson {
        assert!(lines.len() <= MAX_LINES);
        for line in &lines {
            assert!(!line.is_empty(), "empty ndjson lines are skipped");
            assert!(!line.contains(&b'\n'), "a line never spans a newline");
        }
        let total: usize = lines.iter().map(|l| l.len()).sum();
        assert!(total <= body.len());
    } else {
        assert_eq!(lines, [body]);
    }
    for line in &lines {
        let Ok(m) = decode_line(serializer, line) else {
            continue;
        };
        match &m.payload {
            // V1 reads JSON from a base64 line too (its serializer ignores the opcode).
            Payload::Json(_) => assert!(
                matches!(line.first(), Some(b'[' | b'{')) || serializer == Serializer::V1
            ),
            Payload::Binary(p) => {
                assert_eq!(serializer, Serializer::V2, "V1 has no binary frames");
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .expect("a binary frame came from base64");
                assert!(raw.ends_with(p));
            }
        }
    }
});
