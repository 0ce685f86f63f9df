#![no_main]
//! Fuzzes the control protocol parsers: one line read from the control socket parsed as a
//! `control::api::Request` (what `vswitchd` does with every line a client sends), and the
//! same line parsed as a `control::api::Response` (what the `vswitch` client does with the
//! daemon's answer).
//!
//! Input: the line's bytes (invalid UTF-8 is refused before parsing, as the socket's line
//! reader does).
//!
//! Checked, beyond "no panic": whatever parses serializes, and that JSON parses again and
//! serializes to the same text (the protocol's types round-trip).

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vswitch::control::api::{Request, Response};

/// Parses `line` as `T`; when it parses, checks that its JSON form is stable.
fn round_trip<T: Serialize + DeserializeOwned>(line: &str) {
    let Ok(value) = serde_json::from_str::<T>(line) else {
        return;
    };
    let json = serde_json::to_string(&value).expect("a parsed value serializes");
    let again: T = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("own JSON does not parse back: {e}: {json}"));
    let json2 = serde_json::to_string(&again).expect("a parsed value serializes");
    assert_eq!(json, json2, "JSON form not stable");
}

fuzz_target!(|input: &[u8]| {
    let Ok(line) = std::str::from_utf8(input) else {
        return;
    };
    round_trip::<Request>(line);
    round_trip::<Response>(line);
});
