//! V1 JSON text frames (`{"topic","event","payload","ref","join_ref"?}`): any bytes either fail
//! to decode or give a message whose payload is a JSON value cut verbatim from the frame, and
//! which survives the server's V1 encoder unchanged.
#![no_main]

use bytes::Bytes;
use gateway::protocol::{decode_v1, encode_v1, Outgoing, Payload, Serializer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let decoded = decode_v1(&frame);
    assert_eq!(decoded, Serializer::V1.decode(false, frame.clone()));
    let Ok(m) = decoded else { return };
    let Payload::Json(payload) = &m.payload else {
        panic!("a text frame decoded to a binary payload");
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).expect("payload is one JSON value");
    // The payload is a slice of the frame, not a copy.
    let start = payload.as_ptr() as usize - frame.as_ptr() as usize;
    assert_eq!(&frame[start..start + payload.len()], &payload[..]);

    let out = encode_v1(Outgoing::Push {
        join_ref: m.join_ref.as_deref(),
        position: None,
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    })
    .expect("a JSON payload always encodes");
    let again = decode_v1(&out).expect("the V1 encoder's output decodes");
    assert_eq!(again.topic, m.topic);
    assert_eq!(again.event, m.event);
    assert_eq!(again.payload, m.payload);
    // A V1 push carries neither ref.
    assert_eq!((again.join_ref, again.msg_ref), (None, None));
});
