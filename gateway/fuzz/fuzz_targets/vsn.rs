//! `vsn` negotiation: any query value is refused or picks the serializer its major version names.
#![no_main]

use gateway::protocol::{negotiate, Serializer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(vsn) = std::str::from_utf8(data) else {
        return;
    };
    match negotiate(Some(vsn)) {
        Ok(Serializer::V1) => assert!(vsn.starts_with("1.0.")),
        Ok(Serializer::V2) => assert!(vsn.starts_with("2.0.")),
        Err(_) => {}
    }
});
