use std::sync::Mutex;

use super::*;
use crate::control::api::{ApiError, ErrorKind, StatusView, Traffic};
use crate::docker::protocol::parse;

/// A daemon carrying network `app` (10.244.0.0/16, VNI 42, this node 10.244.1.0/24) that
/// reserves addresses from 10.244.1.2 up and records what it was asked.
#[derive(Default)]
struct FakeDaemon {
    requests: Mutex<Vec<Request>>,
    reservations: Mutex<Vec<Reservation>>,
    down: bool,
}

impl Control for FakeDaemon {
    fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        if self.down {
            return Err(ClientError::Connect {
                path: "/run/vswitch/vswitchd.sock".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        self.requests.lock().unwrap().push(request.clone());
        let mut reservations = self.reservations.lock().unwrap();
        Ok(match request {
            Request::Status => Reply::Status(Box::new(StatusView {
                node: "n1".into(),
                endpoint: "127.0.0.1:4789".parse().unwrap(),
                uptime_secs: 1,
                store: "embedded".into(),
                networks: vec![NetworkView {
                    name: "app".into(),
                    vni: 42,
                    subnet: "10.244.0.0/16".parse().unwrap(),
                    node_subnet: "10.244.1.0/24".parse().unwrap(),
                    gateway: "10.244.1.1".parse().unwrap(),
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
            Request::Reserve(r) => {
                if r.network != "app" {
                    return Err(ClientError::Refused(ApiError::new(
                        ErrorKind::UnknownNetwork,
                        "no network",
                    )));
                }
                let ip = r.ip.unwrap_or_else(|| {
                    IpAddr::V4([10, 244, 1, 2 + reservations.len() as u8].into())
                });
                if let Some(existing) = reservations.iter_mut().find(|x| x.address.addr() == ip) {
                    if r.endpoint.is_some() {
                        existing.endpoint.clone_from(&r.endpoint);
                    }
                    if let Some(mac) = r.mac {
                        existing.mac = mac;
                    }
                    return Ok(Reply::Reserved(existing.clone()));
                }
                let reservation = Reservation {
                    network: r.network.clone(),
                    vni: 42,
                    address: IpNet::new(ip, 16).unwrap(),
                    gateway: "10.244.1.1".parse().unwrap(),
                    mtu: 1450,
                    mac: r.mac.unwrap_or(MacAddr([0x0a, 0x58, 10, 244, 1, 9])),
                    owner: "reserved-0".into(),
                    endpoint: r.endpoint.clone(),
                    tap: None,
                    sandbox: None,
                };
                reservations.push(reservation.clone());
                Reply::Reserved(reservation)
            }
            Request::PlugTap(p) => {
                let r = reservations
                    .iter_mut()
                    .find(|x| x.endpoint.as_deref() == Some(p.endpoint.as_str()))
                    .unwrap();
                r.tap = Some(p.tap.clone());
                Reply::Reserved(r.clone())
            }
            Request::UnplugTap(_) => Reply::Unplugged(true),
            Request::Unreserve(u) => {
                let before = reservations.len();
                reservations.retain(|x| x.address.addr() != u.address);
                Reply::Unreserved(reservations.len() < before)
            }
            other => panic!("unexpected request {other:?}"),
        })
    }
}

fn driver(daemon: FakeDaemon) -> Driver<FakeDaemon> {
    Driver::in_memory(daemon)
}

fn call(driver: &Driver<FakeDaemon>, path: &str, body: &str) -> Result<Value, String> {
    driver.handle(parse(path, body.as_bytes()).unwrap())
}

const CREATE_APP: &str = r#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{}},
    "IPv4Data":[{"AddressSpace":"vswitch","Pool":"10.244.0.0/16","Gateway":"10.244.1.1/16"}],
    "IPv6Data":[]}"#;

#[test]
fn a_network_goes_from_pool_to_joined_endpoint_and_back() {
    let d = driver(FakeDaemon::default());
    let activated = call(&d, "/Plugin.Activate", "").unwrap();
    assert_eq!(activated["Implements"][1], "IpamDriver");
    let pool = call(
        &d,
        "/IpamDriver.RequestPool",
        r#"{"AddressSpace":"vswitch","Pool":"10.244.0.0/16","SubPool":"","Options":{},"V6":false}"#,
    )
    .unwrap();
    assert_eq!(pool["PoolID"], "app");
    assert_eq!(pool["Pool"], "10.244.0.0/16");
    let gateway = call(
        &d,
        "/IpamDriver.RequestAddress",
        r#"{"PoolID":"app","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
    )
    .unwrap();
    assert_eq!(gateway["Address"], "10.244.1.1/16");
    call(&d, "/NetworkDriver.CreateNetwork", CREATE_APP).unwrap();

    let address = call(
        &d,
        "/IpamDriver.RequestAddress",
        r#"{"PoolID":"app","Address":"","Options":{}}"#,
    )
    .unwrap();
    assert_eq!(address["Address"], "10.244.1.2/16");
    let endpoint = call(
        &d,
        "/NetworkDriver.CreateEndpoint",
        r#"{"NetworkID":"n1","EndpointID":"0123456789abcdef0123","Interface":{"Address":"10.244.1.2/16","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
    )
    .unwrap();
    assert_eq!(endpoint["Interface"]["MacAddress"], "0a:58:0a:f4:01:09");
    let joined = call(
        &d,
        "/NetworkDriver.Join",
        r#"{"NetworkID":"n1","EndpointID":"0123456789abcdef0123","SandboxKey":"/var/run/docker/netns/abc","Options":{}}"#,
    )
    .unwrap();
    assert_eq!(joined["InterfaceName"]["SrcName"], "vsw0123456789ab");
    assert_eq!(joined["InterfaceName"]["DstPrefix"], "eth");
    assert_eq!(joined["Gateway"], "10.244.1.1");
    call(
        &d,
        "/NetworkDriver.Leave",
        r#"{"NetworkID":"n1","EndpointID":"0123456789abcdef0123"}"#,
    )
    .unwrap();
    call(
        &d,
        "/IpamDriver.ReleaseAddress",
        r#"{"PoolID":"app","Address":"10.244.1.2"}"#,
    )
    .unwrap();
    call(&d, "/NetworkDriver.DeleteNetwork", r#"{"NetworkID":"n1"}"#).unwrap();
    assert!(d.control.reservations.lock().unwrap().is_empty());
    let plugged = d
        .control
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| matches!(r, Request::PlugTap(p) if p.sandbox == "/var/run/docker/netns/abc"));
    assert!(plugged);
}

#[test]
fn the_network_map_survives_a_restart_of_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let first = Driver::open(FakeDaemon::default(), dir.path()).unwrap();
    first
        .handle(parse("/NetworkDriver.CreateNetwork", CREATE_APP.as_bytes()).unwrap())
        .unwrap();
    drop(first);
    let second = Driver::open(FakeDaemon::default(), dir.path()).unwrap();
    assert_eq!(second.network_of("n1").unwrap(), "app");
}

#[test]
fn refusals_say_what_is_wrong() {
    let d = driver(FakeDaemon::default());
    let unknown = CREATE_APP.replace(
        r#"{"com.docker.network.generic":{}}"#,
        r#"{"com.docker.network.generic":{"colour":"red"}}"#,
    );
    let e = call(&d, "/NetworkDriver.CreateNetwork", &unknown).unwrap_err();
    assert!(e.contains("unknown option \"colour\""), "{e}");
    let default_ipam = CREATE_APP.replace(
        r#""AddressSpace":"vswitch""#,
        r#""AddressSpace":"LocalDefault""#,
    );
    let e = call(&d, "/NetworkDriver.CreateNetwork", &default_ipam).unwrap_err();
    assert!(e.contains("--ipam-driver"), "{e}");
    let wrong_vni = CREATE_APP.replace(
        r#"{"com.docker.network.generic":{}}"#,
        r#"{"com.docker.network.generic":{"vswitch.vni":"7"}}"#,
    );
    let e = call(&d, "/NetworkDriver.CreateNetwork", &wrong_vni).unwrap_err();
    assert!(e.contains("VNI 7"), "{e}");
    let e = call(
        &d,
        "/IpamDriver.RequestPool",
        r#"{"AddressSpace":"vswitch","Pool":"192.168.0.0/16"}"#,
    )
    .unwrap_err();
    assert!(
        e.contains("no vswitch network has subnet 192.168.0.0/16") && e.contains("app"),
        "{e}"
    );
    let e = call(
        &d,
        "/NetworkDriver.Join",
        r#"{"NetworkID":"nope","EndpointID":"e"}"#,
    )
    .unwrap_err();
    assert!(e.contains("nope"), "{e}");

    let down = driver(FakeDaemon {
        down: true,
        ..Default::default()
    });
    let e = call(
        &down,
        "/IpamDriver.RequestPool",
        r#"{"Pool":"10.244.0.0/16"}"#,
    )
    .unwrap_err();
    assert!(e.contains("vswitchd is not running"), "{e}");
}

#[test]
fn a_fixed_address_and_mac_are_passed_on() {
    let d = driver(FakeDaemon::default());
    call(&d, "/NetworkDriver.CreateNetwork", CREATE_APP).unwrap();
    let address = call(
        &d,
        "/IpamDriver.RequestAddress",
        r#"{"PoolID":"app","Address":"10.244.1.77"}"#,
    )
    .unwrap();
    assert_eq!(address["Address"], "10.244.1.77/16");
    let endpoint = call(
        &d,
        "/NetworkDriver.CreateEndpoint",
        r#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.244.1.77/16","MacAddress":"02:42:0a:f4:01:4d"}}"#,
    )
    .unwrap();
    assert!(endpoint.get("Interface").is_none(), "{endpoint}");
    let reservations = d.control.reservations.lock().unwrap();
    assert_eq!(reservations[0].mac.to_string(), "02:42:0a:f4:01:4d");
}

#[test]
fn tap_names_fit_an_interface_name() {
    assert_eq!(tap_name("0123456789abcdef"), "vsw0123456789ab");
    assert!(tap_name(&"f".repeat(64)).len() <= 15);
    assert_eq!(tap_name("a/b c"), "vswabc");
}
