//! The gateway as a router: containers reach the host and an "outside" namespace standing for
//! the internet (masqueraded behind the host's address), the outside reaches a container's
//! services through ports published on the host, connected networks exchange traffic across
//! hosts while unconnected ones do not, and nothing the daemon made is left once it is gone.
//!
//! Every rule and link lives in namespaces these tests create: the lab's hosts and containers
//! and an outside namespace joined to one host by a veth (203.0.113.0/24, TEST-NET-3).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netns::{NetNs, Netlink};
use vswitch::control::api::{AttachRequest, Attachment, DetachRequest, Reply, Request};
use vswitch::control::gateway::PortMapping;
use vswitch_e2e::{HostKind, Lab, reaches, tcp_transfer};

const HOST_OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const TIMEOUT: Duration = Duration::from_secs(5);

static NAMES: AtomicU32 = AtomicU32::new(0);

/// A namespace of the test's own, deleted on drop (on panic too).
struct OwnNs {
    name: String,
    ns: NetNs,
}

impl OwnNs {
    fn new(tag: &str) -> Self {
        let name = format!(
            "gw{tag}{}x{}",
            std::process::id(),
            NAMES.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs::create(&name).expect("creating a namespace");
        Netlink::in_namespace(&ns)
            .expect("netlink")
            .set_up("lo")
            .expect("lo up");
        OwnNs { name, ns }
    }
}

impl Drop for OwnNs {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// The outside world: a namespace joined to host `host` by a veth, the host at
/// 203.0.113.1/24 on `out0`, the outside at 203.0.113.2/24 with no route back into the cluster.
fn outside(lab: &Lab, host: usize) -> OwnNs {
    let out = OwnNs::new("o");
    let nl = Netlink::in_namespace(&lab.hosts[host].ns).expect("netlink");
    nl.create_veth("out0", "out1").expect("veth");
    nl.move_to_namespace_as("out1", &out.ns, "eth0")
        .expect("moving the veth");
    nl.add_address("out0", IpAddr::V4(HOST_OUTSIDE), 24)
        .expect("address");
    nl.set_up("out0").expect("up");
    let onl = Netlink::in_namespace(&out.ns).expect("netlink");
    onl.add_address("eth0", IpAddr::V4(OUTSIDE), 24)
        .expect("address");
    onl.set_up("eth0").expect("up");
    out
}

fn network(name: &str, vni: u32, second_octet: u8, host: usize, extra: &str) -> String {
    format!(
        "[[networks]]\nname = \"{name}\"\nvni = {vni}\nsubnet = \"10.{second_octet}.0.0/16\"\n\
         node_subnet = \"10.{second_octet}.{}.0/24\"\n{extra}\n",
        host + 1
    )
}

fn attach(lab: &Lab, host: usize, ns: &OwnNs, publish: &[&str]) -> Result<Attachment, String> {
    let request = Request::Attach(AttachRequest {
        netns: ns.name.clone(),
        publish: publish
            .iter()
            .map(|p| p.parse().expect("mapping"))
            .collect(),
        ..Default::default()
    });
    match lab.call(host, &request) {
        Ok(Reply::Attached(a)) => Ok(a),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

fn v4(a: &Attachment) -> Ipv4Addr {
    match a.address.addr() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// Accepts one TCP connection on `listener` and answers with the peer's address as text.
fn tell_peer(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accepting");
        let _ = stream.write_all(peer.ip().to_string().as_bytes());
    })
}

/// Connects from `ns` to `to` and returns what the server says.
fn ask(ns: &NetNs, to: SocketAddr) -> String {
    let mut stream = ns
        .run(|| TcpStream::connect_timeout(&to, TIMEOUT))
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reading");
    answer
}

fn listen(ns: &NetNs, addr: Ipv4Addr, port: u16) -> TcpListener {
    ns.run(|| TcpListener::bind((addr, port)))
        .expect("entering the namespace")
        .expect("listening")
}

/// Echoes UDP datagrams on `port` in `ns`, for a bounded time.
fn udp_echo(ns: &NetNs, port: u16) -> std::thread::JoinHandle<()> {
    let socket = ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .expect("entering the namespace")
        .expect("binding");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..10 {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let _ = socket.send_to(&buf[..n], from);
        }
    })
}

/// Sends a datagram from `ns` to `to` until it is echoed (a few tries); returns whether it was.
fn udp_round_trip(ns: &NetNs, to: SocketAddr) -> bool {
    let socket = ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("entering the namespace")
        .expect("binding");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    (0..5).any(|_| {
        socket.send_to(b"published", to).expect("sending");
        matches!(socket.recv_from(&mut buf), Ok((9, _))) && &buf[..9] == b"published"
    })
}

/// What of ours the host namespace holds: our nftables table, our interfaces, the routes
/// through them.
fn leftovers(lab: &Lab, host: usize) -> Vec<String> {
    let ns = &lab.hosts[host].ns;
    let mut found = Vec::new();
    let table = ns
        .command("nft")
        .args(["list", "table", "inet", "vswitch"])
        .output()
        .expect("running nft");
    if table.status.success() {
        found.push(format!(
            "table inet vswitch:\n{}",
            String::from_utf8_lossy(&table.stdout)
        ));
    }
    let nl = Netlink::in_namespace(ns).expect("netlink");
    let links = nl.links().expect("links");
    for link in &links {
        if link.name.starts_with("vsw-") || link.kind.as_deref() == Some("tun") {
            found.push(format!("link {}", link.name));
        }
    }
    for route in nl.routes().expect("routes") {
        if route.dst.to_string().starts_with("10.") {
            found.push(format!("route {route:?}"));
        }
    }
    found
}

fn vswitch_cli(lab: &Lab, host: usize, args: &[&str]) -> std::process::Output {
    let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch");
    lab.hosts[host]
        .ns
        .command(&exe)
        .arg("--socket")
        .arg(&lab.hosts[host].socket)
        .args(args)
        .output()
        .expect("running vswitch")
}

#[test]
fn containers_reach_the_host_and_the_outside_and_published_ports_reach_them() {
    let mut lab = Lab::new("gwn").expect("lab");
    let h = lab.add_host(HostKind::Vswitch).expect("host");
    let out = outside(&lab, h);
    lab.start_vswitchd(h, &[], &network("default", 42, 244, h, "masquerade = true"))
        .expect("vswitchd");
    let host_ns = &lab.hosts[h].ns;
    let gateway = Ipv4Addr::new(10, 244, 1, 1);

    // The host port holds the gateway address; the switch still answers the gateway's pings.
    let nl = Netlink::in_namespace(host_ns).expect("netlink");
    let addresses = nl.addresses("vsw-default").expect("host port");
    assert!(
        addresses.iter().any(|a| a.addr() == IpAddr::V4(gateway)),
        "{addresses:?}"
    );

    let web = OwnNs::new("w");
    let web_at = attach(&lab, h, &web, &["8080:80/tcp", "5353:53/udp"]).expect("attach");
    let web_ip = v4(&web_at);
    assert_eq!(web_at.published.len(), 2);
    assert!(reaches(&web.ns, gateway));

    // A container reaches the outside, which sees the host's address.
    let server = listen(&out.ns, OUTSIDE, 7000);
    let told = tell_peer(server);
    assert_eq!(
        ask(&web.ns, SocketAddr::from((OUTSIDE, 7000))),
        HOST_OUTSIDE.to_string()
    );
    told.join().expect("server");

    // A container reaches the host by the gateway address, and the host the container.
    let on_host = listen(host_ns, gateway, 7001);
    let told = tell_peer(on_host);
    assert_eq!(
        ask(&web.ns, SocketAddr::from((gateway, 7001))),
        web_ip.to_string()
    );
    told.join().expect("host server");
    tcp_transfer(host_ns, &web.ns, web_ip, 256 * 1024);

    // The outside reaches the container's service through the published port, TCP and UDP,
    // and so does the host itself on its own address.
    let service = listen(&web.ns, Ipv4Addr::UNSPECIFIED, 80);
    let told = tell_peer(service);
    assert_eq!(
        ask(&out.ns, SocketAddr::from((HOST_OUTSIDE, 8080))),
        OUTSIDE.to_string()
    );
    told.join().expect("service");
    let service = listen(&web.ns, Ipv4Addr::UNSPECIFIED, 80);
    let told = tell_peer(service);
    let from_host = ask(host_ns, SocketAddr::from((lab.hosts[h].address, 8080)));
    assert!(!from_host.is_empty());
    told.join().expect("service");
    let echo = udp_echo(&web.ns, 53);
    assert!(udp_round_trip(
        &out.ns,
        SocketAddr::from((HOST_OUTSIDE, 5353))
    ));
    drop(echo);

    // A port published already is refused, naming its holder.
    let other = OwnNs::new("x");
    let refused = attach(&lab, h, &other, &["8080:8080/tcp"]).expect_err("port taken");
    assert!(
        refused.contains(&web.name) && refused.contains("8080"),
        "{refused}"
    );
    let udp_same_number: PortMapping = "8080:80/udp".parse().expect("mapping");
    attach(&lab, h, &other, &[&udp_same_number.to_string()]).expect("UDP 8080 is free");

    // A container reaches another's published port on the host's address too (hairpin): the
    // answer comes back through the host, which masqueraded the connection behind the gateway.
    let service = listen(&web.ns, Ipv4Addr::UNSPECIFIED, 80);
    let told = tell_peer(service);
    assert_eq!(
        ask(&other.ns, SocketAddr::from((HOST_OUTSIDE, 8080))),
        gateway.to_string()
    );
    told.join().expect("service");

    // What the host holds now, and nothing of it once the containers and the daemon are gone.
    let before = leftovers(&lab, h);
    eprintln!("before:\n{}", before.join("\n"));
    let table = before
        .iter()
        .find(|l| l.starts_with("table"))
        .expect("table");
    assert!(
        table.contains("masquerade") && table.contains("dnat"),
        "{table}"
    );
    assert!(before.iter().any(|l| l == "link vsw-default"));
    for ns in [&web, &other] {
        let reply = lab.call(
            h,
            &Request::Detach(DetachRequest {
                container_id: ns.name.clone(),
                ifname: None,
            }),
        );
        assert!(matches!(reply, Ok(Reply::Detached(true))), "{reply:?}");
    }
    let after_detach = leftovers(&lab, h);
    assert!(
        !after_detach.iter().any(|l| l.contains("dnat")),
        "published ports go with their container: {after_detach:?}"
    );
    lab.stop_vswitchd(h, false).expect("stopping");
    let after = leftovers(&lab, h);
    eprintln!("after:\n{}", after.join("\n"));
    assert!(after.is_empty(), "left behind: {after:?}");
    let clean = vswitch_cli(&lab, h, &["node", "clean"]);
    assert!(clean.status.success(), "{clean:?}");
    assert_eq!(
        String::from_utf8_lossy(&clean.stdout),
        "nothing to remove\n"
    );

    // A daemon killed outright leaves its table (the next start removes it); node clean
    // removes it too.
    lab.spawn_vswitchd(h).expect("restarting");
    assert!(leftovers(&lab, h).iter().any(|l| l.starts_with("table")));
    lab.stop_vswitchd(h, true).expect("killing");
    assert!(leftovers(&lab, h).iter().any(|l| l.starts_with("table")));
    let clean = vswitch_cli(&lab, h, &["node", "clean"]);
    let said = String::from_utf8_lossy(&clean.stdout);
    assert!(
        said.contains("removed nftables table inet vswitch"),
        "{said}"
    );
    assert!(leftovers(&lab, h).is_empty());
}

#[test]
fn connected_networks_route_across_hosts_and_unconnected_ones_do_not() {
    let mut lab = Lab::new("gwr").expect("lab");
    let hosts = [
        lab.add_host(HostKind::Vswitch).expect("host"),
        lab.add_host(HostKind::Vswitch).expect("host"),
    ];
    for &h in &hosts {
        // Every network has a host port, so the host (which forwards, for masquerade) must
        // not connect a and c behind the switch's back either.
        let config = network("a", 42, 244, h, "routes_to = [\"b\"]\nmasquerade = true")
            + &network("b", 43, 245, h, "masquerade = true")
            + &network("c", 44, 246, h, "masquerade = true");
        lab.start_vswitchd(h, &[], &config).expect("vswitchd");
    }
    let a = lab.add_container(hosts[0], "a", None).expect("container");
    let b = lab.add_container(hosts[1], "b", None).expect("container");
    let c = lab.add_container(hosts[1], "c", None).expect("container");
    let ip = |i: usize| lab.containers[i].ip;
    let ns = |i: usize| &lab.containers[i].ns;

    assert!(reaches(ns(a), ip(b)), "a reaches b across hosts");
    assert!(reaches(ns(b), ip(a)), "and b reaches a");
    tcp_transfer(ns(a), ns(b), ip(b), 1 << 20);
    tcp_transfer(ns(b), ns(a), ip(a), 1 << 20);
    for (from, to) in [(a, c), (c, a), (b, c), (c, b)] {
        assert!(!reaches(ns(from), ip(to)), "{from} must not reach {to}");
    }
}
