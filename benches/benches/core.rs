//! Criterion benches of the switch core's per-frame path, for 64-byte and 1514-byte frames:
//! local switching, encapsulation to a known remote MAC, decapsulation to a local port, and
//! flooding an unknown unicast to 8 peers. Each reports frames/s and bytes/s of input frames.

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch::switch::{NetworkConfig, Output, PortConfig, PortId, Switch, SwitchConfig};
use vswitch::tunnel::encap_header;
use vswitch::wire::{Ipv4Packet, MacAddr, Vni};

/// Frame sizes, Ethernet header included.
const SIZES: [usize; 2] = [64, 1514];

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, n)
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)), 4789)
}

/// An Ethernet/IPv4/UDP frame of exactly `len` bytes.
fn frame(src: MacAddr, dst: MacAddr, sip: Ipv4Addr, dip: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    {
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        p.set_version_and_header_len(20);
        p.set_total_len(ip_len);
        p.set_dont_fragment();
        p.set_ttl(64);
        p.set_protocol(vswitch::wire::IpProtocol::UDP);
        p.set_src_addr(sip);
        p.set_dst_addr(dip);
        p.fill_checksum();
    }
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5001u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f
}

/// A switch with one network (MTU 1500, so 1514-byte frames pass), `ports` local ports and
/// `peers` peers.
fn switch(ports: u8, peers: u8) -> (Switch, Vec<PortId>) {
    let mut sw = Switch::new(SwitchConfig::default());
    sw.add_network(NetworkConfig {
        mtu: 1500,
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .expect("network");
    let ids = (0..ports)
        .map(|n| {
            sw.add_port(PortConfig {
                ips: vec![IpAddr::V4(ip(10 + n))],
                ..PortConfig::new(Vni::DEFAULT, mac(n))
            })
            .expect("port")
        })
        .collect();
    for n in 0..peers {
        sw.add_peer(peer(n + 1), &[Vni::DEFAULT]);
    }
    (sw, ids)
}

fn local_switch(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_switch");
    for size in SIZES {
        let (mut sw, p) = switch(2, 0);
        let f = frame(mac(0), mac(1), ip(10), ip(11), size);
        let mut out = Output::new();
        let now = Instant::now();
        for (name, throughput) in throughputs(size) {
            group.throughput(throughput);
            group.bench_with_input(BenchmarkId::new(name, size), &f, |b, f| {
                b.iter(|| {
                    sw.handle_frame(now, p[0], black_box(f), &mut out);
                    black_box(out.ports());
                })
            });
        }
    }
    group.finish();
}

fn encap(c: &mut Criterion) {
    let mut group = c.benchmark_group("encap");
    for size in SIZES {
        let (mut sw, p) = switch(1, 1);
        let now = Instant::now();
        let mut out = Output::new();
        // Learn the remote MAC from the peer first.
        let remote = MacAddr([0x02, 0x42, 0, 0, 1, 0]);
        let mut learn = encap_header(Vni::DEFAULT).to_vec();
        learn.extend_from_slice(&frame(remote, mac(0), ip(99), ip(10), 64));
        sw.handle_datagram(now, peer(1), &mut learn, &mut out);
        assert_eq!(out.dropped(), None);

        let f = frame(mac(0), remote, ip(10), ip(99), size);
        let mut buf = Vec::with_capacity(2048);
        for (name, throughput) in throughputs(size) {
            group.throughput(throughput);
            group.bench_with_input(BenchmarkId::new(name, size), &f, |b, f| {
                b.iter(|| {
                    sw.handle_frame(now, p[0], black_box(f), &mut out);
                    out.encap_into(f, &mut buf);
                    black_box((&buf, out.source_port(), out.transmits()));
                })
            });
        }
    }
    group.finish();
}

fn decap(c: &mut Criterion) {
    let mut group = c.benchmark_group("decap");
    for size in SIZES {
        let (mut sw, _) = switch(1, 1);
        let now = Instant::now();
        let mut out = Output::new();
        let remote = MacAddr([0x02, 0x42, 0, 0, 1, 0]);
        let mut d = encap_header(Vni::DEFAULT).to_vec();
        d.extend_from_slice(&frame(remote, mac(0), ip(99), ip(10), size));
        sw.handle_datagram(now, peer(1), &mut d, &mut out);
        assert_eq!(out.ports().len(), 1);
        for (name, throughput) in throughputs(size) {
            group.throughput(throughput);
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    sw.handle_datagram(now, peer(1), black_box(&mut d), &mut out);
                    black_box(out.frame(&d));
                })
            });
        }
    }
    group.finish();
}

fn flood_8_peers(c: &mut Criterion) {
    let mut group = c.benchmark_group("flood_8_peers");
    for size in SIZES {
        let (mut sw, p) = switch(1, 8);
        let now = Instant::now();
        let mut out = Output::new();
        let unknown = MacAddr([0x02, 0x42, 0, 0, 9, 9]);
        let f = frame(mac(0), unknown, ip(10), ip(99), size);
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| Vec::with_capacity(2048)).collect();
        for (name, throughput) in throughputs(size) {
            group.throughput(throughput);
            group.bench_with_input(BenchmarkId::new(name, size), &f, |b, f| {
                b.iter(|| {
                    sw.handle_frame(now, p[0], black_box(f), &mut out);
                    for (_, buf) in out.transmits().iter().zip(bufs.iter_mut()) {
                        out.encap_into(f, buf);
                    }
                    black_box(&bufs);
                })
            });
        }
        assert_eq!(out.transmits().len(), 8);
    }
    group.finish();
}

/// Each case is measured twice, once reported as frames/s and once as bytes/s.
fn throughputs(size: usize) -> [(&'static str, Throughput); 2] {
    [
        ("frames", Throughput::Elements(1)),
        ("bytes", Throughput::Bytes(size as u64)),
    ]
}

criterion_group!(benches, local_switch, encap, decap, flood_8_peers);
criterion_main!(benches);
