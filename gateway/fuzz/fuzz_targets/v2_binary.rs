//! V2 binary frames: any bytes either fail to decode as a client push or decode to fields that
//! rebuild exactly the input frame. The decoded fields then go through the server encoders
//! (push, reply, broadcast), whose headers must describe exactly what follows them.
#![no_main]

use bytes::Bytes;
use gateway::protocol::{decode_binary_push, encode_binary, Outgoing, Payload, Serializer};
use libfuzzer_sys::fuzz_target;

/// Split a server frame into its length-prefixed fields and the payload.
fn server_fields(frame: &[u8], fields: usize) -> (Vec<&[u8]>, &[u8]) {
    let lens = &frame[1..1 + fields];
    let mut at = 1 + fields;
    let mut out = Vec::new();
    for &len in lens {
        out.push(&frame[at..at + len as usize]);
        at += len as usize;
    }
    (out, &frame[at..])
}

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    // V1 ignores the opcode: a binary frame is read as JSON text, exactly like a text frame.
    assert_eq!(
        Serializer::V1.decode(true, frame.clone()),
        Serializer::V1.decode(false, frame.clone())
    );
    let decoded = decode_binary_push(frame.clone());
    assert_eq!(decoded, Serializer::V2.decode(true, frame.clone()));
    let Ok(m) = decoded else { return };
    let Payload::Binary(payload) = &m.payload else {
        panic!("a binary frame decoded to a JSON payload");
    };
    let jr = m.join_ref.as_deref().unwrap_or("");
    let r = m.msg_ref.as_deref().unwrap_or("");
    let mut rebuilt = vec![
        0u8,
        jr.len() as u8,
        r.len() as u8,
        m.topic.len() as u8,
        m.event.len() as u8,
    ];
    for s in [jr, r, &m.topic, &m.event] {
        rebuilt.extend_from_slice(s.as_bytes());
    }
    rebuilt.extend_from_slice(payload);
    assert_eq!(
        &rebuilt[..],
        data,
        "decoded fields do not rebuild the frame"
    );

    let push = encode_binary(Outgoing::Push {
        join_ref: m.join_ref.as_deref(),
        position: None,
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    })
    .expect("fields of at most 255 bytes encode");
    assert_eq!(push[0], 0);
    let (f, p) = server_fields(&push, 3);
    assert_eq!(f, [jr.as_bytes(), m.topic.as_bytes(), m.event.as_bytes()]);
    assert_eq!(p, &payload[..]);

    let reply = encode_binary(Outgoing::Reply {
        join_ref: m.join_ref.as_deref(),
        msg_ref: m.msg_ref.as_deref(),
        topic: &m.topic,
        status: &m.event,
        payload: &m.payload,
    })
    .expect("fields of at most 255 bytes encode");
    assert_eq!(reply[0], 1);
    let (f, p) = server_fields(&reply, 4);
    assert_eq!(
        f,
        [
            jr.as_bytes(),
            r.as_bytes(),
            m.topic.as_bytes(),
            m.event.as_bytes()
        ]
    );
    assert_eq!(p, &payload[..]);

    let broadcast = encode_binary(Outgoing::Broadcast {
        position: None,
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    })
    .expect("fields of at most 255 bytes encode");
    assert_eq!(broadcast[0], 2);
    let (f, p) = server_fields(&broadcast, 2);
    assert_eq!(f, [m.topic.as_bytes(), m.event.as_bytes()]);
    assert_eq!(p, &payload[..]);
});
