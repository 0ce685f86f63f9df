//! The embedded name server: container names answered on each network's gateway address.
//!
//! A container asks its gateway (UDP port 53); the switch hands such frames to the control
//! plane ([`crate::switch::Switch::set_gateway_dns`]), which answers here and writes the answer
//! back on the container's port. `NAME` and `NAME.NETWORK` are answered from the fleet's
//! endpoint registry (every container of the same network on any node, A and AAAA records,
//! TTL [`ANSWER_TTL`]); an unknown name of that form gets NXDOMAIN at once. Anything else is
//! forwarded, as it came, to the host's resolvers (`/etc/resolv.conf` of the daemon), and their
//! answer relayed back.
//!
//! The DNS message format is hickory-proto's; the frame around it is read and written with
//! [`crate::wire`]'s views. Nothing here panics on any input (`fuzz/fuzz_targets/dns.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::record::EndpointRecord;
use crate::switch::{DNS_PORT, Gateway, PortId};
use crate::wire::{
    ETHERNET_HEADER_LEN, EtherType, EthernetFrame, IPV4_MIN_HEADER_LEN, IpProtocol, Ipv4Packet,
    MacAddr, UDP_HEADER_LEN, UdpPacket,
};

/// TTL of the answers given for container names, in seconds: short, as containers come and go.
pub const ANSWER_TTL: u32 = 5;
/// Time a forwarded query waits for the host's resolvers.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries waiting at once; beyond, SERVFAIL.
pub const MAX_FORWARDS: usize = 64;
/// Largest DNS payload written back to a container (an answer from upstream that is larger is
/// truncated, with the TC bit, so the client retries over TCP with its own resolver).
const MAX_PAYLOAD: usize = 1232;

/// Container names by network, then by lower-case name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameTable {
    networks: BTreeMap<String, BTreeMap<String, Vec<IpAddr>>>,
}

impl NameTable {
    /// The names of these endpoints.
    pub fn from_endpoints<'a>(endpoints: impl IntoIterator<Item = &'a EndpointRecord>) -> Self {
        let mut table = NameTable::default();
        for e in endpoints {
            let names = table
                .networks
                .entry(e.network.to_ascii_lowercase())
                .or_default();
            let ips = names.entry(e.name.to_ascii_lowercase()).or_default();
            for ip in &e.ips {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
        }
        table
    }

    /// The addresses of `name` on `network`.
    pub fn lookup(&self, network: &str, name: &str) -> Option<&[IpAddr]> {
        self.networks
            .get(&network.to_ascii_lowercase())?
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
    }
}

/// What to do with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this DNS message back.
    Answer(Vec<u8>),
    /// Ask the host's resolvers.
    Forward,
    /// Not a query worth an answer (not DNS, or a response): drop it.
    Ignore,
}

/// Decides what to answer to the DNS message `payload` from a container on `network`.
pub fn answer(payload: &[u8], network: &str, names: &NameTable) -> Decision {
    let Ok(query) = Message::from_vec(payload) else {
        return Decision::Ignore;
    };
    if query.message_type() != MessageType::Query {
        return Decision::Ignore;
    }
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    if query.op_code() != OpCode::Query || query.queries().len() != 1 {
        response.set_response_code(if query.op_code() == OpCode::Query {
            ResponseCode::FormErr
        } else {
            ResponseCode::NotImp
        });
        return encode(&response);
    }
    let Some(question) = query.queries().first() else {
        return Decision::Ignore;
    };
    let Some(name) = container_name(question.name(), network) else {
        return Decision::Forward;
    };
    response.add_query(question.clone()).set_authoritative(true);
    match names.lookup(network, &name) {
        None => {
            response.set_response_code(ResponseCode::NXDomain);
        }
        Some(ips) => {
            for ip in ips {
                let rdata = match (question.query_type(), ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    ANSWER_TTL,
                    rdata,
                ));
            }
        }
    }
    encode(&response)
}

fn encode(message: &Message) -> Decision {
    match message.to_vec() {
        Ok(bytes) => Decision::Answer(bytes),
        Err(_) => Decision::Ignore,
    }
}

/// The container name a query asks for: `NAME` or `NAME.NETWORK` (case-insensitive, with or
/// without the final dot); `None` for any other name.
fn container_name(name: &Name, network: &str) -> Option<String> {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [one] => Some(one.clone()),
        [one, net] if net.eq_ignore_ascii_case(network) => Some(one.clone()),
        _ => None,
    }
}

/// Who asked, read off the query's frame: where the answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    /// The container's MAC.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its UDP port.
    pub port: u16,
}

/// The DNS payload of a query frame (Ethernet, IPv4, UDP to port 53 of `gateway`) and who sent
/// it; `None` for anything else.
pub fn parse_query(frame: &[u8], gateway: Gateway) -> Option<(Asker, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.is_tagged() || eth.ethertype() != EtherType::IPV4 || eth.dst_addr() != gateway.mac {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).ok()?;
    if ip.protocol() != IpProtocol::UDP || ip.dst_addr() != gateway.ip || ip.is_fragment() {
        return None;
    }
    let start = ETHERNET_HEADER_LEN + ip.header_len();
    let l4 = frame.get(start..start + ip.payload().len())?;
    let udp = UdpPacket::new_checked(l4).ok()?;
    let len = usize::from(udp.len());
    if udp.dst_port() != DNS_PORT || len < UDP_HEADER_LEN || len > l4.len() {
        return None;
    }
    let asker = Asker {
        mac: eth.src_addr(),
        ip: ip.src_addr(),
        port: udp.src_port(),
    };
    Some((asker, &l4[UDP_HEADER_LEN..len]))
}

/// The frame that carries `payload` from the gateway's port 53 back to `asker`.
pub fn answer_frame(asker: Asker, gateway: Gateway, payload: &[u8]) -> Vec<u8> {
    let truncated;
    let payload = if payload.len() > MAX_PAYLOAD {
        truncated = Message::from_vec(payload)
            .ok()
            .and_then(|m| m.truncate().to_vec().ok())
            .unwrap_or_default();
        &truncated[..]
    } else {
        payload
    };
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_len = IPV4_MIN_HEADER_LEN + udp_len;
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ip_len];
    frame[0..6].copy_from_slice(&asker.mac.0);
    frame[6..12].copy_from_slice(&gateway.mac.0);
    frame[12..14].copy_from_slice(&EtherType::IPV4.0.to_be_bytes());
    let l3 = &mut frame[ETHERNET_HEADER_LEN..];
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut *l3);
        ip.set_version_and_header_len(IPV4_MIN_HEADER_LEN);
        ip.set_total_len(ip_len as u16);
        ip.set_dont_fragment();
        ip.set_ttl(64);
        ip.set_protocol(IpProtocol::UDP);
        ip.set_src_addr(gateway.ip);
        ip.set_dst_addr(asker.ip);
        ip.fill_checksum();
    }
    let l4 = &mut l3[IPV4_MIN_HEADER_LEN..];
    l4[UDP_HEADER_LEN..].copy_from_slice(payload);
    {
        let mut udp = UdpPacket::new_unchecked(&mut *l4);
        udp.set_src_port(DNS_PORT);
        udp.set_dst_port(asker.port);
        udp.set_len(udp_len as u16);
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&gateway.ip.octets());
    pseudo[4..8].copy_from_slice(&asker.ip.octets());
    pseudo[9] = IpProtocol::UDP.0;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = crate::wire::partial_sum(&pseudo, 0);
    let checksum = match crate::wire::checksum(l4, sum) {
        0 => 0xffff,
        c => c,
    };
    UdpPacket::new_unchecked(&mut *l4).set_checksum(checksum);
    frame
}

/// What the name server needs to know about a port: its network and that network's gateway.
pub type PortLookup = dyn Fn(PortId) -> Option<(String, Gateway)> + Send + Sync;
/// Writes an answer frame to a port.
pub type Writer = dyn Fn(PortId, Vec<u8>) + Send + Sync;

/// The name server's thread: takes query frames, answers or forwards them.
pub struct NameServer {
    names: Arc<RwLock<NameTable>>,
}

impl NameServer {
    /// Serves the query frames arriving on `requests` until its senders are gone.
    pub fn start(
        requests: mpsc::Receiver<crate::io::ServiceRequest>,
        ports: Arc<PortLookup>,
        write: Arc<Writer>,
        upstreams: Vec<SocketAddr>,
    ) -> std::io::Result<Self> {
        let names = Arc::new(RwLock::new(NameTable::default()));
        let table = Arc::clone(&names);
        let in_flight = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                for request in requests {
                    let Some((network, gateway)) = ports(request.port) else {
                        continue;
                    };
                    let Some((asker, payload)) = parse_query(&request.frame, gateway) else {
                        continue;
                    };
                    let decision = {
                        let names = table.read().unwrap_or_else(|e| e.into_inner());
                        answer(payload, &network, &names)
                    };
                    match decision {
                        Decision::Answer(bytes) => {
                            write(request.port, answer_frame(asker, gateway, &bytes));
                        }
                        Decision::Ignore => {}
                        Decision::Forward => forward(
                            payload.to_vec(),
                            &upstreams,
                            &in_flight,
                            Arc::clone(&write),
                            request.port,
                            asker,
                            gateway,
                        ),
                    }
                }
            })?;
        Ok(Self { names })
    }

    /// Replaces the names answered.
    pub fn set_names(&self, names: NameTable) {
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }
}

/// Asks the host's resolvers on a thread of its own (at most [`MAX_FORWARDS`] at once), and
/// relays the first answer; SERVFAIL when there is none.
fn forward(
    query: Vec<u8>,
    upstreams: &[SocketAddr],
    in_flight: &Arc<AtomicUsize>,
    write: Arc<Writer>,
    port: PortId,
    asker: Asker,
    gateway: Gateway,
) {
    let servfail = |query: &[u8]| {
        Message::from_vec(query).ok().and_then(|q| {
            Message::error_msg(q.id(), q.op_code(), ResponseCode::ServFail)
                .add_queries(q.queries().to_vec())
                .to_vec()
                .ok()
        })
    };
    if upstreams.is_empty() || in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDS {
        if !upstreams.is_empty() {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(bytes) = servfail(&query) {
            write(port, answer_frame(asker, gateway, &bytes));
        }
        return;
    }
    let upstreams = upstreams.to_vec();
    let in_flight = Arc::clone(in_flight);
    let spawned = std::thread::Builder::new()
        .name("dns-forward".into())
        .spawn(move || {
            let answer = ask_upstreams(&query, &upstreams).or_else(|| servfail(&query));
            if let Some(bytes) = answer {
                write(port, answer_frame(asker, gateway, &bytes));
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        tracing::warn!("dns: cannot start a thread to forward a query");
    }
}

/// The first answer of the resolvers to `query` whose id matches, each tried in turn.
fn ask_upstreams(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for upstream in upstreams {
        let bind: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(bind) else {
            continue;
        };
        if socket.set_read_timeout(Some(FORWARD_TIMEOUT)).is_err()
            || socket.send_to(query, upstream).is_err()
        {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if from == *upstream && buf.get(..2) == Some(id) {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// The name servers of `/etc/resolv.conf`-style text.
pub fn upstreams_from(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;

    use super::*;

    fn endpoint(name: &str, network: &str, ip: &str) -> EndpointRecord {
        EndpointRecord {
            node: "n".into(),
            container_id: name.into(),
            ifname: "eth0".into(),
            name: name.into(),
            network: network.into(),
            vni: 42,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec![ip.parse().unwrap()],
            labels: BTreeMap::new(),
        }
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn names() -> NameTable {
        NameTable::from_endpoints(&[
            endpoint("web", "default", "10.244.2.5"),
            endpoint("Db", "default", "fd00::5"),
            endpoint("web", "blue", "10.245.1.9"),
        ])
    }

    fn answered(decision: Decision) -> Message {
        match decision {
            Decision::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn container_names_are_answered_per_network() {
        let t = names();
        for name in ["web", "web.", "WEB.default.", "web.default"] {
            let m = answered(answer(&query(name, RecordType::A), "default", &t));
            assert_eq!(m.id(), 0x1234);
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name}");
            assert_eq!(m.answers().len(), 1);
            assert_eq!(
                m.answers()[0].data(),
                &RData::A(A(Ipv4Addr::new(10, 244, 2, 5)))
            );
        }
        let m = answered(answer(&query("web", RecordType::A), "blue", &t));
        assert_eq!(
            m.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(10, 245, 1, 9)))
        );
        let m = answered(answer(&query("db", RecordType::AAAA), "default", &t));
        assert_eq!(m.answers().len(), 1);
        let m = answered(answer(&query("db", RecordType::A), "default", &t));
        assert_eq!(
            (m.response_code(), m.answers().len()),
            (ResponseCode::NoError, 0)
        );
        let m = answered(answer(&query("nobody", RecordType::A), "default", &t));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            answer(&query("example.com.", RecordType::A), "default", &t),
            Decision::Forward
        );
        assert_eq!(
            answer(&query("web.blue.", RecordType::A), "default", &t),
            Decision::Forward,
            "another network's name is not this network's"
        );
        assert_eq!(answer(b"\x00\x01garbage", "default", &t), Decision::Ignore);
    }

    #[test]
    fn answers_travel_back_in_a_well_formed_frame() {
        let gateway = Gateway {
            ip: Ipv4Addr::new(10, 244, 1, 1),
            mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
        };
        let asker = Asker {
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            ip: Ipv4Addr::new(10, 244, 1, 7),
            port: 40000,
        };
        let payload = query("web", RecordType::A);
        // A query is an answer frame the other way round, with the ports swapped.
        let mut q = answer_frame(
            Asker {
                mac: gateway.mac,
                ip: gateway.ip,
                port: 53,
            },
            Gateway {
                ip: asker.ip,
                mac: asker.mac,
            },
            &payload,
        );
        let udp = ETHERNET_HEADER_LEN + IPV4_MIN_HEADER_LEN;
        q[udp..udp + 2].copy_from_slice(&asker.port.to_be_bytes());
        q[udp + 2..udp + 4].copy_from_slice(&53u16.to_be_bytes());
        let (who, body) = parse_query(&q, gateway).unwrap();
        assert_eq!(who, asker);
        assert_eq!(body, &payload[..]);

        let reply = answer_frame(asker, gateway, &payload);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr(), asker.mac);
        let ip = Ipv4Packet::new_checked(&reply[ETHERNET_HEADER_LEN..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gateway.ip, asker.ip));
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&gateway.ip.octets());
        pseudo[4..8].copy_from_slice(&asker.ip.octets());
        pseudo[9] = 17;
        let l4 = ip.payload();
        pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        let sum = crate::wire::partial_sum(&pseudo, 0);
        assert_eq!(crate::wire::checksum(l4, sum), 0, "UDP checksum");
        assert!(
            parse_query(&reply, gateway).is_none(),
            "an answer is no query"
        );
    }

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let text = "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver fd00::53\nnameserver bogus\n";
        assert_eq!(
            upstreams_from(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
