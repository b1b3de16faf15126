//! The WebSocket frame codec, fed arbitrary bytes as a stream, as the connection does: the input
//! arrives in chunks, each chunk is appended to the read buffer and every complete frame is
//! parsed; data frames go to the fragment assembler, close payloads are validated. The first two
//! input bytes pick the message size limit (up to 64 KiB) and the chunk size (1–256 bytes).
#![no_main]

use bytes::BytesMut;
use gateway::protocol::websocket::{parse_close, parse_frame, Assembler, OpCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = (*limit as usize + 1) * 256;
    let chunk = *chunk as usize + 1;
    let mut buf = BytesMut::new();
    let mut assembler = Assembler::default();
    let mut consumed = 0usize;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let frame = match parse_frame(&mut buf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumes nothing");
                    break;
                }
                // The connection closes with the error's code.
                Err(e) => {
                    let _ = e.close_code();
                    return;
                }
            };
            assert!(buf.len() < before);
            consumed += before - buf.len();
            assert!(frame.payload.len() <= max);
            if frame.opcode.is_control() {
                assert!(frame.fin && frame.payload.len() <= 125);
                if frame.opcode == OpCode::Close {
                    let _ = parse_close(&frame.payload);
                    return;
                }
                continue;
            }
            match assembler.push(frame, max) {
                Ok(Some((op, message))) => {
                    assert!(matches!(op, OpCode::Text | OpCode::Binary));
                    assert!(message.len() <= max);
                }
                Ok(None) => assert!(assembler.in_progress()),
                Err(_) => return,
            }
        }
    }
    assert_eq!(
        consumed + buf.len(),
        stream.len(),
        "every byte is a frame or still buffered"
    );
});
