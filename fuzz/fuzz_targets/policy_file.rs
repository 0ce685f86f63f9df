#![no_main]
//! Fuzzes the policy file parsers, `policy::parse_toml` and `policy::parse_json`, on arbitrary
//! text (what `vswitch policy apply -f` reads, and the config's `[[policies]]`).
//!
//! Input: one byte choosing the format (even: TOML, odd: JSON), then the file's bytes.
//!
//! Checked, beyond "no panic": an error names where it is (a syntax error a path, an invalid
//! value its policy and field); accepted policies have unique non-empty names and port ranges
//! within 1..=65535 in order; written back out in the file's shape (both formats) they read
//! back the same; and they compile, with one listed rule per rule written.

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vswitch::policy::{Compiled, Direction, Policy, PolicyError, parse_json, parse_toml};

fuzz_target!(|input: &[u8]| {
    let Some((&format, rest)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = if format % 2 == 0 {
        parse_toml(text)
    } else {
        parse_json(text)
    };
    let policies = match parsed {
        Ok(policies) => policies,
        Err(PolicyError::Syntax { path, message, .. }) => {
            assert!(!path.is_empty(), "a syntax error names no place: {message}");
            return;
        }
        Err(PolicyError::Invalid { policy, field, .. }) => {
            assert!(!policy.is_empty(), "an error names no policy");
            assert!(!field.is_empty(), "an error names no field");
            return;
        }
        Err(e) => panic!("an error of a kind the parser does not document: {e}"),
    };
    let mut rules = 0;
    for (i, p) in policies.iter().enumerate() {
        assert!(!p.name.is_empty(), "accepted a policy without a name");
        assert!(
            policies[..i].iter().all(|q| q.name != p.name),
            "two policies named {:?}",
            p.name
        );
        for direction in [Direction::Ingress, Direction::Egress] {
            for rule in p.rules(direction) {
                rules += 1;
                for range in &rule.ports {
                    assert!(1 <= range.first && range.first <= range.last, "{range:?}");
                }
            }
        }
    }
    let json = serde_json::json!({ "policy": policies }).to_string();
    let back: Vec<Policy> = parse_json(&json)
        .unwrap_or_else(|e| panic!("accepted policies do not read back from JSON: {e}\n{json}"));
    assert_eq!(back, policies, "JSON round trip");
    #[derive(serde::Serialize)]
    struct File<'a> {
        policy: &'a [Policy],
    }
    let toml_text =
        toml::to_string(&File { policy: &policies }).expect("accepted policies serialize as TOML");
    let back = parse_toml(&toml_text).unwrap_or_else(|e| {
        panic!("accepted policies do not read back from TOML: {e}\n{toml_text}")
    });
    assert_eq!(back, policies, "TOML round trip");
    let compiled = Compiled::new(&policies, &[], Instant::now());
    assert_eq!(compiled.list().len(), rules);
});
