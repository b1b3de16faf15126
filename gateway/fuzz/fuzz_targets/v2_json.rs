//! V2 JSON text frames (`[join_ref, ref, topic, event, payload]`): any bytes either fail to
//! decode or give a message whose payload is a JSON value cut verbatim from the frame, and which
//! the server's V2 encoder (push and reply) writes back so that it decodes to the same fields.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use gateway::protocol::{decode_v2, encode_v2, json_string, Outgoing, Payload, Serializer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let decoded = decode_v2(&frame);
    assert_eq!(decoded, Serializer::V2.decode(false, frame.clone()));
    let Ok(m) = decoded else { return };
    let Payload::Json(payload) = &m.payload else {
        panic!("a text frame decoded to a binary payload");
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).expect("payload is one JSON value");
    let start = payload.as_ptr() as usize - frame.as_ptr() as usize;
    assert_eq!(&frame[start..start + payload.len()], &payload[..]);

    let push = encode_v2(Outgoing::Push {
        join_ref: m.join_ref.as_deref(),
        position: None,
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    });
    let again = decode_v2(&push).expect("the V2 encoder's push decodes");
    assert_eq!(
        (
            &again.join_ref,
            &again.msg_ref,
            &again.topic,
            &again.event,
            &again.payload
        ),
        (&m.join_ref, &None, &m.topic, &m.event, &m.payload)
    );

    // A reply wraps the payload as {"status": S, "response": P}; the event becomes the status.
    let reply = encode_v2(Outgoing::Reply {
        join_ref: m.join_ref.as_deref(),
        msg_ref: m.msg_ref.as_deref(),
        topic: &m.topic,
        status: &m.event,
        payload: &m.payload,
    });
    let again = decode_v2(&reply).expect("the V2 encoder's reply decodes");
    let mut body = BytesMut::new();
    body.put_slice(b"{\"status\":");
    json_string(&mut body, &m.event);
    body.put_slice(b",\"response\":");
    body.put_slice(payload);
    body.put_u8(b'}');
    assert_eq!(
        (
            &again.join_ref,
            &again.msg_ref,
            &again.topic,
            again.event.as_str()
        ),
        (&m.join_ref, &m.msg_ref, &m.topic, "phx_reply")
    );
    assert_eq!(again.payload, Payload::Json(body.freeze()));
});
