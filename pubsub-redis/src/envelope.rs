//! The wire format of every message this crate puts into Redis: a versioned MessagePack map.
//!
//! It is written with `rmp_serde::to_vec_named` (a map keyed by field name, not a positional
//! array) so that a backend in any language can build one with an ordinary MessagePack library
//! and `PUBLISH` it straight into Redis (see the crate README). The payload travels as msgpack
//! `bin` (already-encoded JSON text, or raw binary when `binary` is true): receiving nodes frame
//! it without parsing it.
//!
//! Two versions: [`VERSION`] (1) is a broadcast to a topic's subscribers, the format backends
//! may publish; [`VERSION_KIND`] (2) adds a `kind` naming a message of the nodes' own (presence
//! replication, long-poll forwarding), which only nodes write. A version 1 envelope never has a
//! kind, whatever fields it carries, so nothing a backend publishes in the documented format can
//! pose as cluster traffic. Decoding rejects other versions with [`DecodeError::Version`]; the
//! dispatcher counts such messages instead of panicking.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Version of a broadcast envelope (the documented format).
pub const VERSION: u8 = 1;
/// Version of an envelope carrying a `kind` of the nodes' own.
pub const VERSION_KIND: u8 = 2;

/// One message between nodes (or from a backend to the nodes).
///
/// Field names are part of the wire contract; add fields only as optional ones, and bump
/// [`VERSION`] for anything a v1 reader would misread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire version: [`VERSION`] for a broadcast, [`VERSION_KIND`] for a message of `kind`.
    pub v: u8,
    /// Publisher node id; `""` for an external backend. Nodes drop topic messages whose origin
    /// is their own id (their local subscribers already got it from the local fan-out).
    #[serde(default)]
    pub origin: String,
    /// What a version 2 message is (the gateway defines the names); always empty in version 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The topic, e.g. `room:42`. Must equal the topic of the Redis channel it travels on.
    pub topic: String,
    /// The event name, e.g. `new_msg`.
    pub event: String,
    /// The payload bytes: encoded JSON text when `binary` is false, raw bytes otherwise.
    /// Decoding also accepts a msgpack `str` here, for backends whose library packs text so.
    #[serde(with = "payload_bytes")]
    pub payload: Bytes,
    /// True when `payload` is raw binary (a Phoenix binary push) rather than JSON text.
    #[serde(default)]
    pub binary: bool,
    /// The broadcast's position in its topic's history (`"<epoch>-<offset>"`), on topics that
    /// keep one. Only the history script writes it (appended as the map's last entry when the
    /// message is stored), so nodes deliver a positioned broadcast even when it is their own
    /// echo: every node then delivers a topic in position order. Absent in older envelopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// A session of the origin node that must not receive this broadcast (`broadcast_from`
    /// on a history topic, whose origin delivers from its own echo). Meaningless elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<u64>,
}

/// Why bytes read from Redis are not a usable [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A well-formed envelope of a version this build does not speak.
    #[error("unsupported envelope version {found} (this node reads versions {VERSION} and {VERSION_KIND})")]
    Version {
        /// The version field found in the message.
        found: u8,
    },
    /// A version 2 envelope without a kind.
    #[error("version {VERSION_KIND} envelope without a kind")]
    NoKind,
    /// Not a MessagePack map with the envelope's fields.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
}

/// Why an [`Envelope`] could not be encoded (in practice never; kept typed, not unwrapped).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode envelope: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

impl Envelope {
    /// Builds a broadcast envelope (version 1).
    pub fn new(
        origin: impl Into<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: impl Into<Bytes>,
        binary: bool,
    ) -> Self {
        Envelope {
            v: VERSION,
            origin: origin.into(),
            kind: String::new(),
            topic: topic.into(),
            event: event.into(),
            payload: payload.into(),
            binary,
            position: None,
            except: None,
        }
    }

    /// Builds a version 2 envelope of `kind` (a message of the nodes' own).
    pub fn of_kind(
        origin: impl Into<String>,
        kind: impl Into<String>,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Envelope {
            v: VERSION_KIND,
            kind: kind.into(),
            ..Envelope::new(origin, topic, "", payload, false)
        }
    }

    /// Encodes as a MessagePack map (field names included).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Decodes and checks the version. Unknown extra fields are ignored (forward compatible
    /// additions within a version); `origin` and `binary` default to `""` and `false`. A
    /// version 1 envelope's `kind` is cleared; a version 2 one without a kind is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        match rmp_serde::from_slice::<Envelope>(bytes) {
            Ok(mut env) if env.v == VERSION => {
                env.kind.clear();
                Ok(env)
            }
            Ok(env) if env.v == VERSION_KIND && !env.kind.is_empty() => Ok(env),
            Ok(env) if env.v == VERSION_KIND => Err(DecodeError::NoKind),
            Ok(env) => Err(DecodeError::Version { found: env.v }),
            Err(err) => {
                // A future version may change fields so that the full decode fails; report the
                // version then, since that is the actionable cause.
                #[derive(Deserialize)]
                struct Probe {
                    v: u8,
                }
                match rmp_serde::from_slice::<Probe>(bytes) {
                    Ok(probe) if probe.v != VERSION && probe.v != VERSION_KIND => {
                        Err(DecodeError::Version { found: probe.v })
                    }
                    _ => Err(DecodeError::Malformed(err)),
                }
            }
        }
    }
}

/// serde adapter: `Bytes` as msgpack `bin`, reading `bin` or `str`.
mod payload_bytes {
    use bytes::Bytes;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &Bytes, ser: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(bytes.as_ref(), ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Bytes, D::Error> {
        de.deserialize_byte_buf(PayloadVisitor)
    }

    struct PayloadVisitor;

    impl<'de> Visitor<'de> for PayloadVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("payload bytes (msgpack bin or str)")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v.as_bytes()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
        // An array of small ints is what `Vec<u8>` without serde_bytes produces; accept it so
        // such publishers work, slowly.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            "node-a",
            "room:1",
            "new_msg",
            &br#"{"body":"hi"}"#[..],
            false,
        )
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let bytes = env.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        let bin = Envelope::new("", "t", "e", vec![0u8, 255, 7], true);
        assert_eq!(Envelope::decode(&bin.encode().unwrap()).unwrap(), bin);
    }

    #[test]
    fn encodes_as_named_map_with_bin_payload() {
        let bytes = sample().encode().unwrap();
        // fixmap with 6 entries, first key "v".
        assert_eq!(bytes[0], 0x86);
        assert_eq!(&bytes[1..3], &[0xa1, b'v']);
        // payload is `bin 8` (0xc4) followed by its length, not an array of ints.
        let body = br#"{"body":"hi"}"#;
        let needle = [&[0xc4, body.len() as u8][..], &body[..]].concat();
        assert!(bytes.windows(needle.len()).any(|w| w == needle.as_slice()));
    }

    #[test]
    fn kinds_travel_in_version_2_only() {
        let env = Envelope::of_kind("node-a", "presence_hb", "hb", &b"{}"[..]);
        let decoded = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!((decoded.v, decoded.kind.as_str()), (2, "presence_hb"));
        // A version 1 envelope that names a kind is still a plain broadcast.
        let mut forged = sample();
        forged.kind = "presence_hb".into();
        let decoded = Envelope::decode(&rmp_serde::to_vec_named(&forged).unwrap()).unwrap();
        assert_eq!((decoded.v, decoded.kind.as_str()), (1, ""));
        // A version 2 envelope must name its kind.
        let mut bare = sample();
        bare.v = 2;
        assert!(matches!(
            Envelope::decode(&rmp_serde::to_vec_named(&bare).unwrap()),
            Err(DecodeError::NoKind)
        ));
    }

    #[test]
    fn version_mismatch_is_rejected() {
        let mut env = sample();
        env.v = 9;
        let bytes = rmp_serde::to_vec_named(&env).unwrap();
        match Envelope::decode(&bytes) {
            Err(DecodeError::Version { found: 9 }) => {}
            other => panic!("expected version error, got {other:?}"),
        }
    }

    #[test]
    fn future_version_with_other_fields_reports_version() {
        #[derive(Serialize)]
        struct V3 {
            v: u8,
            frames: Vec<u32>,
        }
        let bytes = rmp_serde::to_vec_named(&V3 {
            v: 3,
            frames: vec![1],
        })
        .unwrap();
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::Version { found: 3 })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        for garbage in [
            &b""[..],
            b"\xff\xff\xff",
            b"hello world",
            &[0x81, 0xa1, b'v'],
        ] {
            assert!(matches!(
                Envelope::decode(garbage),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn backend_style_map_with_str_payload_and_defaults() {
        // What a minimal backend might send: no origin, no binary, payload packed as str.
        #[derive(Serialize)]
        struct Minimal<'a> {
            v: u8,
            topic: &'a str,
            event: &'a str,
            payload: &'a str,
            extra: u32,
        }
        let bytes = rmp_serde::to_vec_named(&Minimal {
            v: 1,
            topic: "room:1",
            event: "shout",
            payload: "{}",
            extra: 9,
        })
        .unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.origin, "");
        assert!(!env.binary);
        assert_eq!(&env.payload[..], b"{}");
    }
}
