//! Phoenix V2 JSON messages as the load generator sends and reads them (protocol reference §2.1).
//!
//! Outbound frames are formatted directly as text; inbound frames are decoded just far enough to
//! route them: replies by `ref` (with the `recovered` flag a join with `since` gets back), and
//! the `seq`/`ts` probe inside fan-out broadcast payloads with the position in its `ref` slot
//! (borrowed: nothing is allocated per probe).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The event name the fan-out publisher uses, so probes are told apart from other pushes.
pub const PROBE_EVENT: &str = "lt_probe";

/// `[jr, r, topic, "phx_join", {}]` with `join_ref == ref`.
pub fn join(join_ref: u32, topic: &str) -> String {
    format!(
        r#"["{join_ref}","{join_ref}",{},"phx_join",{{}}]"#,
        quote(topic)
    )
}

/// `[jr, r, topic, "phx_leave", {}]`.
pub fn leave(join_ref: u32, msg_ref: u32, topic: &str) -> String {
    format!(
        r#"["{join_ref}","{msg_ref}",{},"phx_leave",{{}}]"#,
        quote(topic)
    )
}

/// `[null, r, "phoenix", "heartbeat", {}]`.
pub fn heartbeat(msg_ref: u32) -> String {
    format!(r#"[null,"{msg_ref}","phoenix","heartbeat",{{}}]"#)
}

/// JSON string literal for `s`.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The broadcast body for `POST /api/broadcast` carrying a probe.
pub fn probe_body(topic: &str, seq: u64, ts_us: u64, pad: &str) -> String {
    format!(
        r#"{{"topic":{},"event":"{PROBE_EVENT}","payload":{{"seq":{seq},"ts":{ts_us},"pad":"{pad}"}}}}"#,
        quote(topic)
    )
}

/// What the client needs to know about one server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `phx_reply` to the message with this ref; `ok` is `status == "ok"`.
    Reply {
        /// The echoed ref, parsed as the client's numeric counter (None if not numeric).
        msg_ref: Option<u32>,
        /// Whether the status was `ok`.
        ok: bool,
        /// The response's `recovered` field, when present (a join on a topic with history).
        recovered: Option<bool>,
    },
    /// A fan-out probe broadcast.
    Probe {
        /// Publisher sequence number (per topic).
        seq: u64,
        /// Publisher send time, microseconds since the Unix epoch.
        ts_us: u64,
        /// The `ref` slot: the broadcast's position on a topic with history.
        position: Option<Cow<'a, str>>,
    },
    /// `phx_close` / `phx_error`: the channel is gone.
    ChannelClosed,
    /// Any other push (presence, other events): counted, otherwise ignored.
    Other,
}

/// Why an inbound text frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable phoenix message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// The five-element V2 array, borrowing what it can.
type Wire<'a> = (
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    Cow<'a, str>,
    Cow<'a, str>,
    &'a RawValue,
);

/// Reply payload shape.
#[derive(Deserialize)]
struct ReplyPayload<'a> {
    /// `ok` / `error` / anything.
    #[serde(borrow)]
    status: Cow<'a, str>,
    /// The response, read only for `recovered`.
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

/// The one response field the load generator reads (other fields ignored).
#[derive(Deserialize)]
struct Recovered {
    /// Whether a join with `since` recovered exactly.
    recovered: Option<bool>,
}

/// Probe payload shape (other fields ignored).
#[derive(Deserialize)]
struct ProbePayload {
    /// Sequence number.
    seq: u64,
    /// Send timestamp (µs since epoch).
    ts: u64,
}

/// Decodes one V2 JSON text frame.
pub fn decode(text: &[u8]) -> Result<Inbound<'_>, DecodeError> {
    let (_jr, msg_ref, _topic, event, payload): Wire<'_> = serde_json::from_slice(text)?;
    Ok(match event.as_ref() {
        "phx_reply" => {
            let p: ReplyPayload<'_> = serde_json::from_str(payload.get())?;
            Inbound::Reply {
                msg_ref: msg_ref.and_then(|r| r.parse().ok()),
                ok: p.status == "ok",
                recovered: p
                    .response
                    .and_then(|r| serde_json::from_str::<Recovered>(r.get()).ok())
                    .and_then(|r| r.recovered),
            }
        }
        PROBE_EVENT => {
            let p: ProbePayload = serde_json::from_str(payload.get())?;
            Inbound::Probe {
                seq: p.seq,
                ts_us: p.ts,
                position: msg_ref,
            }
        }
        "phx_close" | "phx_error" => Inbound::ChannelClosed,
        _ => Inbound::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_frames_match_the_reference() {
        assert_eq!(
            join(3, "room:lobby"),
            r#"["3","3","room:lobby","phx_join",{}]"#
        );
        assert_eq!(heartbeat(5), r#"[null,"5","phoenix","heartbeat",{}]"#);
        assert_eq!(
            leave(3, 6, "room:lobby"),
            r#"["3","6","room:lobby","phx_leave",{}]"#
        );
        let body: serde_json::Value =
            serde_json::from_str(&probe_body("room:1", 7, 99, "xx")).unwrap();
        assert_eq!(body["payload"]["seq"], 7);
        assert_eq!(body["event"], PROBE_EVENT);
    }

    #[test]
    fn decodes_replies_probes_and_closes() {
        let r =
            decode(br#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#).unwrap();
        assert_eq!(
            r,
            Inbound::Reply {
                msg_ref: Some(3),
                ok: true,
                recovered: None
            }
        );
        let r = decode(br#"[null,"7","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#).unwrap();
        assert_eq!(
            r,
            Inbound::Reply {
                msg_ref: Some(7),
                ok: false,
                recovered: None
            }
        );
        let p = decode(br#"[null,null,"room:1","lt_probe",{"seq":4,"ts":123,"pad":""}]"#).unwrap();
        assert_eq!(
            p,
            Inbound::Probe {
                seq: 4,
                ts_us: 123,
                position: None
            }
        );
        let c = decode(br#"["3","3","room:lobby","phx_close",{}]"#).unwrap();
        assert_eq!(c, Inbound::ChannelClosed);
        assert_eq!(
            decode(br#"[null,null,"room:1","new_msg",{"body":"hi"}]"#).unwrap(),
            Inbound::Other
        );
        assert!(decode(b"not json").is_err());
    }
}
