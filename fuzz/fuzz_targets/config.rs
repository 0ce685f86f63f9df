#![no_main]
//! Fuzzes the daemon's config parser, `control::config::Config::parse`, on arbitrary text.
//!
//! Input: the file's bytes (a file that is not UTF-8 is refused before parsing, by
//! `Config::load`).
//!
//! Checked, beyond "no panic": an error names the file and a key (`-` for the file as a whole)
//! in the form `config PATH: KEY: REASON`; an accepted config holds what validation promises
//! (every VNI in range, at least one network, unique names); and its TOML form, written back
//! out, loads again.

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vswitch::control::config::Config;

const PATH: &str = "/etc/vswitch/vswitchd.toml";

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let config = match Config::parse(Path::new(PATH), text) {
        Ok(config) => config,
        Err(e) => {
            let message = e.to_string();
            assert_eq!(
                e.path,
                Path::new(PATH),
                "error names another file: {message}"
            );
            assert!(!e.key.is_empty(), "error names no key: {message}");
            assert!(!e.reason.is_empty(), "error gives no reason: {message}");
            let prefix = format!("config {PATH}: {}: ", e.key);
            assert!(
                message.starts_with(&prefix),
                "error message form: {message}"
            );
            return;
        }
    };
    assert!(!config.networks.is_empty(), "accepted without a network");
    for (i, net) in config.networks.iter().enumerate() {
        assert!(
            net.vni().get() <= 0x00ff_ffff,
            "networks[{i}].vni out of range"
        );
        assert!(
            config.networks[..i].iter().all(|n| n.name != net.name),
            "two networks named {:?}",
            net.name
        );
    }
    let written = toml::to_string(&config).expect("an accepted config serializes");
    if let Err(e) = Config::parse(Path::new(PATH), &written) {
        panic!("an accepted config does not load again: {e}\n{written}");
    }
});
