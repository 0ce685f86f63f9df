//! The binaries as a person meets them: a bad config stops `vswitchd` at once with the file, the
//! key and the reason; the CLI says clearly when no daemon is listening.

use std::process::Command;

fn vswitchd(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("vswitchd.toml");
    std::fs::write(&path, config).expect("writing the config");
    Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("running vswitchd")
}

#[test]
fn a_bad_config_names_the_file_the_key_and_the_reason() {
    let out = vswitchd(
        "[node]\nname = \"a\"\naddress = \"192.0.2.1\"\n[[networks]]\nname = \"x\"\nvni = 99999999\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vswitchd.toml: networks[0].vni:"),
        "{stderr}"
    );
    assert!(stderr.contains("99999999"), "{stderr}");

    let out = vswitchd("[node]\nname = \"a\"\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("address"), "{stderr}");
}

#[test]
fn an_underlay_interface_that_does_not_exist_is_a_config_error() {
    let out = vswitchd("[node]\nname = \"a\"\ninterface = \"nosuchif0\"\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vswitchd.toml: node.interface:"),
        "{stderr}"
    );
    assert!(stderr.contains("nosuchif0"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["--config", "/nonexistent/vswitchd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vswitchd.toml"));
}

#[test]
fn the_cli_says_when_no_daemon_listens() {
    let out = Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .args(["--socket", "/nonexistent/vswitchd.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "vswitchd is not running: there is no control socket at /nonexistent/vswitchd.sock"
        ),
        "{stderr}"
    );
}
