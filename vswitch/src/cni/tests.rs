//! The plugin against a stand-in daemon on a Unix socket: what it asks, what it prints.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;

use super::*;
use crate::control::api::{ApiError, ErrorKind, Response};

/// A daemon that answers each request with the next of `answers`; returns its socket and the
/// requests it got.
fn daemon(answers: Vec<Response>) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<Request>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vswitchd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            tx.send(serde_json::from_str(&line).unwrap()).unwrap();
            let mut reply = serde_json::to_vec(&answer).unwrap();
            reply.push(b'\n');
            (&stream).write_all(&reply).unwrap();
        }
    });
    (dir, socket, rx)
}

fn env(command: &str) -> Env {
    Env {
        command: command.into(),
        container_id: Some("ctr1".into()),
        netns: Some("/var/run/netns/ctr1".into()),
        ifname: Some("eth0".into()),
        args: None,
    }
}

fn conf(version: &str, socket: &std::path::Path, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"cniVersion":"{version}","name":"default","type":"vswitch-cni","socket":"{}"{extra}}}"#,
        socket.display()
    )
    .into_bytes()
}

#[test]
fn add_asks_for_the_container_and_prints_the_spec_result() {
    let (_dir, socket, requests) = daemon(vec![Response::Ok(Reply::Attached(
        Attachment::example("ctr1"),
    ))]);
    let stdin = conf(
        "1.0.0",
        &socket,
        r#","dns":{"nameservers":["10.244.0.10"]},"runtimeConfig":{"ips":["10.244.1.2/16"],"mac":"0a:58:0a:f4:01:02","labels":{"app":"web"},"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":""}]}"#,
    );
    let mut e = env("ADD");
    e.args = Some("IgnoreUnknown=1;K8S_POD_NAME=x;FOO=bar".into());
    let out = run(&e, &stdin).unwrap().unwrap();
    let Request::Attach(asked) = requests.recv().unwrap() else {
        panic!()
    };
    assert_eq!(asked.netns, "/var/run/netns/ctr1");
    assert_eq!(asked.network.as_deref(), Some("default"));
    assert_eq!(asked.container_id.as_deref(), Some("ctr1"));
    assert_eq!(asked.ip, Some("10.244.1.2".parse().unwrap()));
    assert_eq!(asked.mac.unwrap().to_string(), "0a:58:0a:f4:01:02");
    let published: Vec<String> = asked.publish.iter().map(ToString::to_string).collect();
    assert_eq!(published, ["8080:80/tcp", "5353:53/udp"]);
    assert_eq!(asked.labels["app"], "web");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/var/run/netns/ctr1"}],
            "ips": [{"address": "10.244.1.2/16", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {"nameservers": ["10.244.0.10"]},
        })
    );
}

#[test]
fn a_chained_add_keeps_the_previous_result_and_older_versions_say_the_family() {
    let (_dir, socket, _requests) = daemon(vec![Response::Ok(Reply::Attached(
        Attachment::example("ctr1"),
    ))]);
    let prev = r#","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"lo0"}],"ips":[{"version":"4","address":"192.0.2.1/32","interface":0}],"dns":{"domain":"x"},"extra":1}"#;
    let out = run(&env("ADD"), &conf("0.4.0", &socket, prev))
        .unwrap()
        .unwrap();
    let result: CniResult = serde_json::from_str(&out).unwrap();
    assert_eq!(result.interfaces.len(), 2);
    assert_eq!(result.interfaces[1].name, "eth0");
    assert_eq!(result.ips[1].interface, Some(1));
    assert_eq!(result.ips[1].version.as_deref(), Some("4"));
    assert_eq!(result.dns.domain.as_deref(), Some("x"));
    assert_eq!(result.rest["extra"], 1);
}

#[test]
fn refusals_become_the_spec_error_with_our_codes() {
    let (_dir, socket, _requests) = daemon(vec![Response::Error(
        ApiError::new(ErrorKind::UnknownNetwork, "no network is named \"red\"").field("network"),
    )]);
    let e = run(&env("ADD"), &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::UNKNOWN_NETWORK);
    assert!(e.details.as_deref().unwrap().contains("red"));
    let json: Value = serde_json::to_value(&e).unwrap();
    assert_eq!(json["cniVersion"], "1.0.0");
    assert_eq!(json["code"], 101);
    assert_eq!(json["msg"], "unknown network");
}

#[test]
fn input_errors_use_the_spec_codes() {
    let socket = PathBuf::from("/nonexistent/vswitchd.sock");
    let e = run(&env("ADD"), b"{not json").unwrap_err();
    assert_eq!(e.code, codes::DECODE_FAILURE);
    let e = run(&env("ADD"), &conf("9.9.9", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
    let mut no_netns = env("ADD");
    no_netns.netns = None;
    let e = run(&no_netns, &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
    assert!(e.details.unwrap().contains("CNI_NETNS"));
    let e = run(&env("FROB"), &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
    let mut unknown_arg = env("ADD");
    unknown_arg.args = Some("FOO=bar".into());
    let e = run(&unknown_arg, &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::INVALID_ENVIRONMENT);
    let bandwidth =
        r#","runtimeConfig":{"bandwidth":{"ingressRate":1000000,"egressRate":2000000}}"#;
    let e = run(&env("ADD"), &conf("1.0.0", &socket, bandwidth)).unwrap_err();
    assert_eq!(e.code, codes::UNSUPPORTED_FIELD);
    assert!(e.details.unwrap().contains("one rate"));
    let host_ip = r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"127.0.0.1"}]}"#;
    let e = run(&env("ADD"), &conf("1.0.0", &socket, host_ip)).unwrap_err();
    assert_eq!(e.code, codes::UNSUPPORTED_FIELD);
    let sctp = r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}"#;
    let e = run(&env("ADD"), &conf("1.0.0", &socket, sctp)).unwrap_err();
    assert_eq!(e.code, codes::INVALID_NETWORK_CONFIG);
    let two = r#","runtimeConfig":{"ips":["10.244.1.2/16","10.244.1.3/16"]}"#;
    let e = run(&env("ADD"), &conf("1.0.0", &socket, two)).unwrap_err();
    assert_eq!(e.code, codes::INVALID_NETWORK_CONFIG);
    let e = run(&env("ADD"), &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::DAEMON_NOT_RUNNING);
    assert!(e.details.unwrap().contains("vswitchd is not running"));
}

#[test]
fn del_succeeds_when_everything_is_already_gone() {
    let socket = PathBuf::from("/nonexistent/vswitchd.sock");
    // No daemon, no namespace: nothing to undo.
    let mut gone = env("DEL");
    gone.netns = Some("/nonexistent/netns".into());
    assert_eq!(run(&gone, &conf("1.0.0", &socket, "")), Ok(None));
    gone.netns = None;
    assert_eq!(run(&gone, &conf("1.0.0", &socket, "")), Ok(None));
    // No daemon but the namespace is there: the interface would stay, so it is an error.
    let mut present = env("DEL");
    present.netns = Some("/proc/self/ns/net".into());
    let e = run(&present, &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::DAEMON_NOT_RUNNING);
    // The daemon has no record: success (the plugin looks for the attachment first, to
    // remove an interface a helper made).
    let (_dir, socket, requests) = daemon(vec![
        Response::Ok(Reply::Ports(Vec::new())),
        Response::Ok(Reply::Detached(false)),
    ]);
    assert_eq!(run(&env("DEL"), &conf("1.0.0", &socket, "")), Ok(None));
    assert!(matches!(requests.recv().unwrap(), Request::Ports));
    assert!(matches!(requests.recv().unwrap(), Request::Detach(d) if d.container_id == "ctr1"));
}

#[test]
fn check_of_an_unknown_container_is_code_3() {
    let (_dir, socket, _requests) = daemon(vec![Response::Ok(Reply::Ports(Vec::new()))]);
    let e = run(&env("CHECK"), &conf("1.0.0", &socket, "")).unwrap_err();
    assert_eq!(e.code, codes::UNKNOWN_CONTAINER);
}

#[test]
fn version_lists_what_we_speak() {
    let out = run(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#)
        .unwrap()
        .unwrap();
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["cniVersion"], "0.4.0");
    assert!(
        json["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.0.0"))
    );
}

#[test]
fn prev_results_are_checked_against_the_attachment() {
    let a = Attachment::example("ctr1");
    let conf = NetConf {
        cni_version: "1.0.0".into(),
        ..Default::default()
    };
    let good = result_of(CniResult::default(), &conf, &a, "/var/run/netns/ctr1");
    assert_eq!(check_prev_result(&good, &a, "/var/run/netns/ctr1"), Ok(()));
    let mut other_ip = good.clone();
    other_ip.ips[0].address = "10.244.1.9/16".into();
    assert!(check_prev_result(&other_ip, &a, "/var/run/netns/ctr1").is_err());
    assert!(check_prev_result(&good, &a, "/var/run/netns/other").is_err());
}

#[test]
fn bandwidth_becomes_the_ports_rate_limit() {
    let parse = |json: &str| -> NetConf {
        serde_json::from_str(&format!(
            r#"{{"cniVersion":"1.0.0","name":"default","type":"vswitch-cni","runtimeConfig":{{"bandwidth":{json}}}}}"#
        ))
        .unwrap()
    };
    let (rate, burst) =
        requested_bandwidth(&parse(r#"{"ingressRate":8000000,"ingressBurst":96000}"#)).unwrap();
    assert_eq!(rate.map(BitRate::bits_per_sec), Some(8_000_000));
    assert_eq!(burst, Some(12_000), "bits to bytes");
    let (rate, burst) = requested_bandwidth(&parse(
        r#"{"ingressRate":1000000,"egressRate":1000000,"ingressBurst":8,"egressBurst":80000}"#,
    ))
    .unwrap();
    assert_eq!(rate.map(BitRate::bits_per_sec), Some(1_000_000));
    assert_eq!(burst, Some(10_000), "the larger burst");
    assert_eq!(requested_bandwidth(&parse("{}")).unwrap(), (None, None));
    let e = requested_bandwidth(&parse(r#"{"ingressRate":1,"egressRate":2}"#)).unwrap_err();
    assert_eq!(e.code, codes::UNSUPPORTED_FIELD);
}

#[test]
fn the_daemons_name_server_is_the_results_dns_unless_the_config_names_one() {
    let mut attachment = Attachment::example("ctr1");
    attachment.dns = Some(attachment.gateway);
    let answers = vec![
        Response::Ok(Reply::Attached(attachment.clone())),
        Response::Ok(Reply::Attached(attachment)),
    ];
    let (_dir, socket, _requests) = daemon(answers);
    let out = run(&env("ADD"), &conf("1.0.0", &socket, ""))
        .unwrap()
        .unwrap();
    let result: CniResult = serde_json::from_str(&out).unwrap();
    assert_eq!(result.dns.nameservers, ["10.244.1.1"]);
    assert_eq!(result.dns.search, ["default"]);
    let given = r#","dns":{"nameservers":["192.0.2.53"]}"#;
    let out = run(&env("ADD"), &conf("1.0.0", &socket, given))
        .unwrap()
        .unwrap();
    let result: CniResult = serde_json::from_str(&out).unwrap();
    assert_eq!(result.dns.nameservers, ["192.0.2.53"]);
}
