#![no_main]
//! Fuzzes the embedded name server's whole answer path (`fleet::dns`): a frame from a
//! container to its gateway (`parse_query`), the DNS message in it (`answer`, hickory-proto's
//! parser), and the frame carrying the answer back (`answer_frame`). The input is used twice:
//! as a whole frame, and as a bare DNS message (which reaches the parser far more often).
//!
//! Checked, beyond "no panic": an answer is a DNS response with the query's id; the answer
//! frame is addressed back to the asker from the gateway's port 53, with a valid IPv4 header
//! checksum, and is no query itself.

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use vswitch::fleet::dns::{Asker, Decision, NameTable, answer, answer_frame, parse_query};
use vswitch::fleet::record::EndpointRecord;
use vswitch::switch::Gateway;
use vswitch::wire::{EthernetFrame, Ipv4Packet, MacAddr};

const GATEWAY: Gateway = Gateway {
    ip: Ipv4Addr::new(10, 244, 1, 1),
    mac: MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x01]),
};

fn names() -> NameTable {
    let endpoint = |name: &str, ip: IpAddr| EndpointRecord {
        node: "n".into(),
        container_id: name.into(),
        ifname: "eth0".into(),
        name: name.into(),
        network: "default".into(),
        vni: 42,
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
        ips: vec![ip],
        labels: Default::default(),
    };
    NameTable::from_endpoints(&[
        endpoint("web", IpAddr::V4(Ipv4Addr::new(10, 244, 2, 5))),
        endpoint("db", "fd00::5".parse().unwrap()),
    ])
}

fn check_answer(query: &[u8], decision: &Decision, asker: Asker) {
    let Decision::Answer(bytes) = decision else {
        return;
    };
    assert!(bytes.len() >= 12, "an answer shorter than a DNS header");
    assert_eq!(
        bytes[..2],
        query[..2],
        "the answer's id differs from the query's"
    );
    assert_ne!(bytes[2] & 0x80, 0, "the answer is not a response");
    let frame = answer_frame(asker, GATEWAY, bytes);
    let eth = EthernetFrame::new_checked(&frame[..]).expect("answer frame");
    assert_eq!(eth.dst_addr(), asker.mac);
    assert_eq!(eth.src_addr(), GATEWAY.mac);
    let ip = Ipv4Packet::new_checked(&frame[14..]).expect("answer IPv4 header");
    assert!(ip.verify_checksum(), "answer IPv4 checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY.ip, asker.ip));
    assert!(
        parse_query(&frame, GATEWAY).is_none(),
        "an answer taken for a query"
    );
}

fuzz_target!(|data: &[u8]| {
    let names = names();
    let asker = Asker {
        mac: MacAddr([2, 0, 0, 0, 0, 7]),
        ip: Ipv4Addr::new(10, 244, 1, 7),
        port: 40000,
    };
    let bare = answer(data, "default", &names);
    check_answer(data, &bare, asker);
    if let Some((asker, payload)) = parse_query(data, GATEWAY) {
        let decision = answer(payload, "default", &names);
        check_answer(payload, &decision, asker);
    }
});
