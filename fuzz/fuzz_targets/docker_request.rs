#![no_main]
//! Fuzzes `vswitch-docker`'s reading of Docker's calls: a path and a JSON body parsed as
//! `docker::protocol::parse` does with every request on the plugin socket, and whatever
//! parses handled by the driver (options, addresses, MACs and names are read from strings
//! there) against a stand-in daemon carrying one network.
//!
//! Input: the HTTP path, a newline, then the body.
//!
//! Checked, beyond "no panic": parsing is deterministic, and every answer, accepted or
//! refused, is a JSON object Docker can read (a refusal has a non-empty message).

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vswitch::control::api::{ClientError, NetworkView, Reply, Request, StatusView, Traffic};
use vswitch::control::host_tap::Reservation;
use vswitch::docker::driver::{Control, Driver};
use vswitch::docker::protocol;

/// A daemon carrying `app` (10.244.0.0/16, this node 10.244.1.0/24) that grants every request.
struct StandIn;

impl Control for StandIn {
    fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        let reservation = |ip: Option<IpAddr>| Reservation {
            network: "app".into(),
            vni: 42,
            address: ipnet::IpNet::new(ip.unwrap_or([10, 244, 1, 2].into()), 16)
                .unwrap_or_default(),
            gateway: [10, 244, 1, 1].into(),
            mtu: 1450,
            mac: vswitch::wire::MacAddr([0x0a, 0x58, 10, 244, 1, 2]),
            owner: "reserved-0".into(),
            endpoint: None,
            tap: Some("vswtap".into()),
            sandbox: None,
        };
        Ok(match request {
            Request::Status => Reply::Status(Box::new(StatusView {
                node: "n".into(),
                endpoint: "127.0.0.1:4789".parse().expect("address"),
                uptime_secs: 0,
                store: "embedded".into(),
                networks: vec![NetworkView {
                    name: "app".into(),
                    vni: 42,
                    subnet: "10.244.0.0/16".parse().expect("subnet"),
                    node_subnet: "10.244.1.0/24".parse().expect("subnet"),
                    gateway: [10, 244, 1, 1].into(),
                    mtu: 1450,
                    ports: 0,
                }],
                peers: 0,
                fdb_entries: 0,
                traffic: Traffic::default(),
                drops: Vec::new(),
                tap_write_errors: 0,
                udp_send_errors: 0,
                offload_errors: 0,
                workers: Vec::new(),
                mtu: Default::default(),
                routing: Default::default(),
                health: None,
            })),
            Request::Reserve(r) => Reply::Reserved(reservation(r.ip)),
            Request::PlugTap(_) => Reply::Reserved(reservation(None)),
            Request::UnplugTap(_) => Reply::Unplugged(true),
            Request::Unreserve(_) => Reply::Unreserved(true),
            _ => Reply::Reservations(Vec::new()),
        })
    }
}

fn driver() -> &'static Driver<StandIn> {
    static DRIVER: OnceLock<Driver<StandIn>> = OnceLock::new();
    DRIVER.get_or_init(|| Driver::in_memory(StandIn))
}

fuzz_target!(|input: &[u8]| {
    let split = input
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(input.len());
    let Ok(path) = std::str::from_utf8(&input[..split]) else {
        return;
    };
    let body = input.get(split + 1..).unwrap_or_default();
    let parsed = protocol::parse(path, body);
    assert_eq!(
        parsed,
        protocol::parse(path, body),
        "parsing is not deterministic"
    );
    let Ok(call) = parsed else {
        return;
    };
    match driver().handle(call) {
        Ok(answer) => assert!(answer.is_object(), "answer is not an object: {answer}"),
        Err(message) => {
            assert!(!message.is_empty(), "empty refusal");
            assert!(protocol::error_body(&message)["Err"].is_string());
        }
    }
});
