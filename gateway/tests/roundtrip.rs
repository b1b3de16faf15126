//! Property tests: encode/decode round trips of every codec a client's bytes go through — V1 and
//! V2 JSON frames, V2 binary push/reply/broadcast frames, long-poll bodies and answers, long-poll
//! session tokens, and WebSocket frames split at arbitrary points. The fuzz targets in
//! `gateway/fuzz` check the same codecs against hostile input; these check that well-formed
//! input comes back unchanged.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use gateway::protocol::websocket::{encode_frame, parse_frame, OpCode};
use gateway::protocol::{
    decode_binary_push, decode_v1, decode_v2, encode_binary, encode_v1, encode_v2, Message,
    Outgoing, Payload, ProtocolError, Serializer,
};
use gateway::transport::longpoll::{body_lines, decode_line, LpReply, Token};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, nested a few levels, with arbitrary Unicode in strings and keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Eighths print and parse back exactly (arbitrary f64s may be off by one ulp).
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 8.0)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The JSON text of a value, as a client would send it.
fn json_payload() -> impl Strategy<Value = Payload> {
    json_value().prop_map(|v| Payload::raw_json(serde_json::to_vec(&v).unwrap()))
}

/// A ref as phoenix.js makes them (a counter), or absent.
fn a_ref() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[0-9]{1,10}")
}

/// A field that fits a binary frame's one-byte length (at most 255 bytes of UTF-8).
fn short_field() -> impl Strategy<Value = String> {
    "(?s).{0,60}"
}

fn s(o: &Option<String>) -> Option<&str> {
    o.as_deref()
}

fn json(o: &Option<String>) -> String {
    serde_json::to_string(o).unwrap()
}

/// A client V2 binary push: kind 0, four lengths, the fields, the payload.
fn client_binary_push(jr: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Bytes {
    let mut f = vec![
        0,
        jr.len() as u8,
        r.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for x in [jr, r, topic, event] {
        f.extend_from_slice(x.as_bytes());
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// Read a server binary frame as phoenix.js does: kind, `n` one-byte lengths, fields, payload.
fn server_binary_fields(frame: &[u8], n: usize) -> (u8, Vec<String>, Vec<u8>) {
    let mut at = 1 + n;
    let mut fields = Vec::new();
    for &len in &frame[1..1 + n] {
        fields.push(String::from_utf8(frame[at..at + len as usize].to_vec()).unwrap());
        at += len as usize;
    }
    (frame[0], fields, frame[at..].to_vec())
}

/// A client WebSocket frame (masked, as RFC 6455 requires of clients).
fn client_ws_frame(b0: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b0];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

proptest! {
    #[test]
    fn v2_client_frames_decode_to_their_fields(
        jr in a_ref(), r in a_ref(), topic in any::<String>(), event in any::<String>(),
        payload in json_payload(),
    ) {
        let text = format!(
            "[{},{},{},{},{}]",
            json(&jr),
            json(&r),
            serde_json::to_string(&topic).unwrap(),
            serde_json::to_string(&event).unwrap(),
            std::str::from_utf8(payload.bytes()).unwrap(),
        );
        let m = decode_v2(&Bytes::from(text)).unwrap();
        prop_assert_eq!(m, Message { join_ref: jr, msg_ref: r, topic, event, payload });
    }

    #[test]
    fn v2_server_frames_decode_back(
        jr in a_ref(), r in a_ref(), topic in any::<String>(), event in any::<String>(),
        payload in json_value(),
    ) {
        let p = Payload::json(&payload);
        // a push's ref slot carries the position of an intercepted broadcast, if any
        let push = decode_v2(&encode_v2(Outgoing::Push {
            join_ref: s(&jr), position: s(&r), topic: &topic, event: &event, payload: &p,
        })).unwrap();
        prop_assert_eq!(&push, &Message {
            join_ref: jr.clone(), msg_ref: r.clone(), topic: topic.clone(), event: event.clone(),
            payload: p.clone(),
        });

        let broadcast = decode_v2(&encode_v2(Outgoing::Broadcast {
            position: s(&r),
            topic: &topic, event: &event, payload: &p,
        })).unwrap();
        prop_assert_eq!(&broadcast, &Message { join_ref: None, ..push.clone() });

        let jr_s = jr.clone().unwrap_or_default();
        let control = decode_v2(&encode_v2(Outgoing::Control {
            join_ref: &jr_s, topic: &topic, event: &event, payload: &p,
        })).unwrap();
        prop_assert_eq!(
            (control.join_ref, control.msg_ref),
            (Some(jr_s.clone()), Some(jr_s))
        );

        let reply = decode_v2(&encode_v2(Outgoing::Reply {
            join_ref: s(&jr), msg_ref: s(&r), topic: &topic, status: &event, payload: &p,
        })).unwrap();
        prop_assert_eq!((&reply.join_ref, &reply.msg_ref), (&jr, &r));
        prop_assert_eq!((reply.topic.as_str(), reply.event.as_str()), (topic.as_str(), "phx_reply"));
        let body: Value = serde_json::from_slice(reply.payload.bytes()).unwrap();
        prop_assert_eq!(body, serde_json::json!({"status": event, "response": payload}));
    }

    #[test]
    fn v1_frames_round_trip(
        jr in a_ref(), r in a_ref(), topic in any::<String>(), event in any::<String>(),
        payload in json_payload(),
    ) {
        let text = format!(
            r#"{{"topic":{},"event":{},"payload":{},"ref":{},"join_ref":{}}}"#,
            serde_json::to_string(&topic).unwrap(),
            serde_json::to_string(&event).unwrap(),
            std::str::from_utf8(payload.bytes()).unwrap(),
            json(&r),
            json(&jr),
        );
        let m = decode_v1(&Bytes::from(text)).unwrap();
        prop_assert_eq!(&m, &Message {
            join_ref: jr.clone(), msg_ref: r.clone(), topic: topic.clone(), event: event.clone(),
            payload: payload.clone(),
        });

        // The server's V1 encoder drops the join ref (a push's ref is an intercepted
        // broadcast's position, if any); a reply keeps the client's ref.
        let push = decode_v1(&encode_v1(Outgoing::Push {
            join_ref: s(&jr), position: None, topic: &topic, event: &event, payload: &payload,
        }).unwrap()).unwrap();
        prop_assert_eq!(push, Message { join_ref: None, msg_ref: None, ..m.clone() });
        let positioned = decode_v1(&encode_v1(Outgoing::Push {
            join_ref: s(&jr), position: s(&r), topic: &topic, event: &event, payload: &payload,
        }).unwrap()).unwrap();
        prop_assert_eq!(positioned, Message { join_ref: None, ..m.clone() });
        let reply = decode_v1(&encode_v1(Outgoing::Reply {
            join_ref: s(&jr), msg_ref: s(&r), topic: &topic, status: "ok", payload: &payload,
        }).unwrap()).unwrap();
        prop_assert_eq!((&reply.msg_ref, reply.event.as_str()), (&r, "phx_reply"));
        // V1 has no binary frames.
        let bin = Payload::Binary(Bytes::from_static(b"x"));
        let v1_binary = encode_v1(Outgoing::Broadcast { position: None, topic: &topic, event: &event, payload: &bin });
        prop_assert!(v1_binary.is_none());
    }

    #[test]
    fn v2_binary_push_from_clients_round_trips(
        jr in a_ref(), r in a_ref(), topic in short_field(), event in short_field(),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let frame = client_binary_push(
            s(&jr).unwrap_or(""), s(&r).unwrap_or(""), &topic, &event, &payload,
        );
        let m = decode_binary_push(frame.clone()).unwrap();
        prop_assert_eq!(&m, &Message {
            join_ref: jr, msg_ref: r, topic, event, payload: Payload::Binary(Bytes::from(payload)),
        });
        prop_assert_eq!(Serializer::V2.decode(true, frame.clone()).unwrap(), m);
        // V1 reads JSON whatever the frame's opcode: a V2 binary push is not JSON.
        prop_assert!(matches!(
            Serializer::V1.decode(true, frame),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn v2_binary_server_frames_carry_their_fields(
        jr in a_ref(), r in a_ref(), topic in short_field(), event in short_field(),
        status in "[a-z]{0,10}", payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let p = Payload::Binary(Bytes::from(payload.clone()));
        let (jr_s, r_s) = (jr.clone().unwrap_or_default(), r.clone().unwrap_or_default());

        let push = encode_binary(Outgoing::Push {
            join_ref: s(&jr), position: None, topic: &topic, event: &event, payload: &p,
        }).unwrap();
        prop_assert_eq!(
            server_binary_fields(&push, 3),
            (0, vec![jr_s.clone(), topic.clone(), event.clone()], payload.clone())
        );
        let reply = encode_binary(Outgoing::Reply {
            join_ref: s(&jr), msg_ref: s(&r), topic: &topic, status: &status, payload: &p,
        }).unwrap();
        prop_assert_eq!(
            server_binary_fields(&reply, 4),
            (1, vec![jr_s, r_s, topic.clone(), status], payload.clone())
        );
        let broadcast = encode_binary(Outgoing::Broadcast {
            position: None,
            topic: &topic, event: &event, payload: &p,
        }).unwrap();
        prop_assert_eq!(
            server_binary_fields(&broadcast, 2),
            (2, vec![topic.clone(), event.clone()], payload)
        );
        // The serializer picks the binary encoder for binary payloads.
        let enc = Serializer::V2
            .encode(Outgoing::Broadcast { position: None, topic: &topic, event: &event, payload: &p })
            .unwrap();
        prop_assert!(!enc.text);
        prop_assert_eq!(enc.bytes, broadcast);
    }

    #[test]
    fn v2_binary_refuses_fields_over_255_bytes(extra in 256usize..1024) {
        let long = "x".repeat(extra);
        let p = Payload::Binary(Bytes::from_static(b"p"));
        let broadcast = encode_binary(Outgoing::Broadcast { position: None, topic: &long, event: "e", payload: &p });
        let push = encode_binary(Outgoing::Push {
            join_ref: None, position: None, topic: "t", event: &long, payload: &p,
        });
        let reply = encode_binary(Outgoing::Reply {
            join_ref: Some(&long), msg_ref: None, topic: "t", status: "ok", payload: &p,
        });
        prop_assert_eq!((broadcast, push, reply), (None, None, None));
    }

    #[test]
    fn longpoll_tokens_sign_parse_verify(
        key in any::<u64>(), nonce in any::<u64>(), node in "(?s).{1,40}",
        secret in prop::collection::vec(any::<u8>(), 0..64),
        other in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let text = Token::sign(&secret, key, nonce, &node);
        let t = Token::parse(&text).unwrap();
        prop_assert_eq!((t.key, t.nonce, t.node.as_str()), (key, nonce, node.as_str()));
        prop_assert!(t.verify(&secret));
        // HMAC pads short keys with zero bytes, so keys differing only in trailing zeros are
        // the same key; any other key fails.
        let trim = |k: &[u8]| k[..k.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)].to_vec();
        prop_assert_eq!(t.verify(&other), trim(&other) == trim(&secret));
        prop_assert_eq!(Token::sign_raw(&t), text.clone());
        // Changing any signed field breaks the signature.
        let mut moved = t.clone();
        moved.key = key.wrapping_add(1);
        prop_assert!(!Token::parse(&Token::sign_raw(&moved)).unwrap().verify(&secret));
        let mut renonced = t.clone();
        renonced.nonce = nonce ^ 1;
        prop_assert!(!Token::parse(&Token::sign_raw(&renonced)).unwrap().verify(&secret));
        let mut rehomed = t;
        rehomed.node = format!("{node}x");
        prop_assert!(!Token::parse(&Token::sign_raw(&rehomed)).unwrap().verify(&secret));
    }

    #[test]
    fn longpoll_post_bodies_split_into_their_frames(
        frames in prop::collection::vec((a_ref(), any::<String>(), json_payload(), any::<bool>()), 1..20),
        crlf in any::<bool>(),
    ) {
        // Each frame is a V2 JSON array or (for some) a base64 binary push, one per line.
        let lines: Vec<Bytes> = frames.iter().map(|(r, topic, payload, binary)| {
            if *binary {
                let raw = client_binary_push("1", s(r).unwrap_or(""), "t", "e", payload.bytes());
                Bytes::from(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                encode_v2(Outgoing::Push { join_ref: s(r), position: None, topic, event: "e", payload })
            }
        }).collect();
        let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let body = Bytes::from(lines.join(sep));
        let split = body_lines(body.clone(), true);
        prop_assert_eq!(&split, &lines);
        for (line, (r, topic, payload, binary)) in split.iter().zip(&frames) {
            let m = decode_line(Serializer::V2, line).unwrap();
            if *binary {
                prop_assert_eq!(&m.msg_ref, r);
                prop_assert_eq!(m.payload, Payload::Binary(payload.bytes().clone()));
                prop_assert!(decode_line(Serializer::V1, line).is_err());
            } else {
                prop_assert_eq!((&m.topic, &m.payload), (topic, payload));
            }
        }
        // Without ndjson the whole body is one frame.
        prop_assert_eq!(body_lines(body.clone(), false), vec![body]);
    }

    #[test]
    fn longpoll_answers_carry_token_and_frames(
        status in prop_oneof![Just(200u16), Just(204), Just(410)],
        token in prop::option::of(any::<String>()),
        messages in prop::option::of(prop::collection::vec(any::<String>(), 0..8)),
    ) {
        // Entries are long-poll framed: each frame's text as a JSON string literal.
        let entry = |m: &String| Bytes::from(serde_json::to_vec(m).unwrap());
        let reply = LpReply {
            status,
            token: token.clone(),
            messages: messages.as_ref().map(|m| m.iter().map(entry).collect()),
        };
        let body: Value = serde_json::from_slice(&reply.body()).unwrap();
        prop_assert_eq!(&body["status"], &Value::from(status));
        prop_assert_eq!(body.get("token").cloned(), token.map(Value::String));
        prop_assert_eq!(
            body.get("messages").cloned(),
            messages.map(|m| Value::Array(m.into_iter().map(Value::String).collect()))
        );
    }

    #[test]
    fn websocket_frames_parse_whatever_the_chunking(
        frames in prop::collection::vec(
            (prop_oneof![Just(0x81u8), Just(0x82), Just(0x01), Just(0x80), Just(0x89), Just(0x8a)],
             any::<[u8; 4]>(),
             prop_oneof![0usize..130, 65_530usize..65_540, 70_000usize..70_010]),
            1..6),
        chunk in 1usize..5000,
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, (b0, mask, len)) in frames.iter().enumerate() {
            // Control frames carry at most 125 bytes.
            let len = if b0 & 0x08 != 0 { len % 126 } else { *len };
            let payload: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            stream.extend(client_ws_frame(*b0, *mask, &payload));
            expected.push((b0 & 0x80 != 0, b0 & 0x0f, payload));
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = parse_frame(&mut buf, 1 << 20).unwrap() {
                let op = match f.opcode {
                    OpCode::Continuation => 0,
                    OpCode::Text => 1,
                    OpCode::Binary => 2,
                    OpCode::Close => 8,
                    OpCode::Ping => 9,
                    OpCode::Pong => 10,
                };
                got.push((f.fin, op, f.payload.to_vec()));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn websocket_server_frames_have_exact_lengths(
        len in prop_oneof![0usize..130, 65_530usize..65_540, 70_000usize..70_010],
    ) {
        let payload: Vec<u8> = (0..len).map(|j| j as u8).collect();
        let f = encode_frame(OpCode::Binary, &payload);
        prop_assert_eq!(f[0], 0x82);
        let (n, at) = match f[1] {
            126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
            127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        prop_assert!(f[1] & 0x80 == 0, "server frames are not masked");
        prop_assert_eq!(n, len);
        prop_assert_eq!(&f[at..], &payload[..]);
    }
}
