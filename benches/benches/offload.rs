//! Criterion benches of the userspace offloads at 1, 16 and 64 TCP segments of 1398 payload
//! bytes (the MSS of a 1450-byte inner MTU with timestamps): segmentation of the super-frames
//! a TAP hands over, coalescing of the segments a peer sends, and the checksum over the same
//! segments (ours against the two-bytes-at-a-time `wire::internet_checksum`). Throughput is
//! the bytes of the wire-sized frames. 64 segments do not fit in one 64 KB super-frame: they
//! are the two (46 + 18 segments) that coalescing them produces.
//!
//! `offload/coalesce_udp` coalesces 1, 16 and 64 UDP datagrams of 64 payload bytes (a
//! small-packet flood) into USO super-frames; its throughput counts datagrams.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch::offload::{self, Coalescer, Segments, VnetHdr};
use vswitch::wire;

const MSS: usize = 1398;
const COUNTS: [usize; 3] = [1, 16, 64];
/// Ethernet, IPv4, TCP with the timestamps option.
const L4: usize = 14 + 20;
const HDRS: usize = L4 + 32;

/// Writes the Ethernet and IPv4 (DF, no options) headers of `f`, whose length is the frame's,
/// for transport `proto`, with identification `id` and a correct header checksum.
fn eth_ipv4(f: &mut [u8], id: u16, proto: u8) {
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (f.len() - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&[10, 244, 1, 2]);
    f[30..34].copy_from_slice(&[10, 244, 2, 3]);
    let c = wire::checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// One TCP segment with correct checksums: Ethernet, IPv4 (DF), TCP with timestamps.
fn tcp_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HDRS + payload.len()];
    eth_ipv4(&mut f, seq as u16, 6);
    f[L4..L4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[L4 + 2..L4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
    f[L4 + 8..L4 + 12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    f[L4 + 12] = 8 << 4;
    f[L4 + 13] = 0x10;
    f[L4 + 14..L4 + 16].copy_from_slice(&502u16.to_be_bytes());
    f[L4 + 20..L4 + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f[HDRS..].copy_from_slice(payload);
    let pseudo = wire::pseudo_header_v4([10, 244, 1, 2], [10, 244, 2, 3], 6, (f.len() - L4) as u16);
    let c = wire::checksum(&f[L4..], pseudo);
    f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// UDP payload bytes per datagram in the UDP benches.
const UDP_PAYLOAD: usize = 64;

/// One UDP datagram with correct checksums: Ethernet, IPv4 (DF), UDP.
fn udp_datagram(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; L4 + 8 + payload.len()];
    eth_ipv4(&mut f, id, 17);
    let udp_len = (f.len() - L4) as u16;
    f[L4..L4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[L4 + 2..L4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[L4 + 4..L4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    f[L4 + 8..].copy_from_slice(payload);
    let pseudo = wire::pseudo_header_v4([10, 244, 1, 2], [10, 244, 2, 3], 17, udp_len);
    let c = match wire::checksum(&f[L4..], pseudo) {
        0 => 0xffff,
        c => c,
    };
    f[L4 + 6..L4 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

/// `n` consecutive datagrams of one flow.
fn datagrams(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let payload: Vec<u8> = (0..UDP_PAYLOAD).map(|b| (b * 7 + i) as u8).collect();
            udp_datagram(i as u16, &payload)
        })
        .collect()
}

/// `n` consecutive segments of one flow.
fn segments(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let payload: Vec<u8> = (0..MSS).map(|b| (b * 7 + i) as u8).collect();
            tcp_segment(1 + (i * MSS) as u32, &payload)
        })
        .collect()
}

/// The super-frames coalescing `segs` produces, with their headers.
fn super_frames(segs: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut c = Coalescer::new();
    let mut out = Vec::new();
    let mut emit = |_: u32, h: &VnetHdr, f: &[u8]| out.push((*h, f.to_vec()));
    for s in segs {
        c.push(0, s, &mut emit);
    }
    c.flush(&mut emit);
    out
}

fn wire_bytes(segs: &[Vec<u8>]) -> u64 {
    segs.iter().map(|s| s.len() as u64).sum()
}

fn segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("offload/segment");
    for n in COUNTS {
        let segs = segments(n);
        let supers = super_frames(&segs);
        let mut out = Segments::new();
        g.throughput(Throughput::Bytes(wire_bytes(&segs)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &supers, |b, supers| {
            b.iter(|| {
                out.clear();
                for (h, f) in supers {
                    let done = offload::segment(h, black_box(f), &mut out);
                    black_box(done.is_ok());
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// Offers every frame to the coalescer and flushes it; returns the bytes emitted.
fn push_and_flush(co: &mut Coalescer, frames: &[Vec<u8>]) -> usize {
    let mut bytes = 0usize;
    let mut emit = |_: u32, _: &VnetHdr, f: &[u8]| bytes += black_box(f).len();
    for f in frames {
        co.push(0, black_box(f), &mut emit);
    }
    co.flush(&mut emit);
    bytes
}

fn coalesce(c: &mut Criterion) {
    let mut g = c.benchmark_group("offload/coalesce");
    for n in COUNTS {
        let segs = segments(n);
        let mut co = Coalescer::new();
        g.throughput(Throughput::Bytes(wire_bytes(&segs)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &segs, |b, segs| {
            b.iter(|| push_and_flush(&mut co, segs))
        });
    }
    g.finish();
}

fn coalesce_udp(c: &mut Criterion) {
    let mut g = c.benchmark_group("offload/coalesce_udp");
    for n in COUNTS {
        let dgrams = datagrams(n);
        let mut co = Coalescer::new();
        let mut writes = 0usize;
        co_check(&mut co, &dgrams, &mut writes);
        assert_eq!(writes, 1, "{n} datagrams make one super-frame");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &dgrams, |b, dgrams| {
            b.iter(|| push_and_flush(&mut co, dgrams))
        });
    }
    g.finish();
}

/// Coalesces `frames` once, counting the frames emitted.
fn co_check(co: &mut Coalescer, frames: &[Vec<u8>], writes: &mut usize) {
    let mut emit = |_: u32, _: &VnetHdr, _: &[u8]| *writes += 1;
    for f in frames {
        co.push(0, f, &mut emit);
    }
    co.flush(&mut emit);
}

fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("offload/checksum");
    for n in COUNTS {
        let segs = segments(n);
        g.throughput(Throughput::Bytes(wire_bytes(&segs)));
        g.bench_with_input(BenchmarkId::new("fast", n), &segs, |b, segs| {
            b.iter(|| {
                let mut acc = 0u16;
                for s in segs {
                    acc ^= wire::checksum(black_box(&s[L4..]), 0);
                }
                acc
            })
        });
        g.bench_with_input(BenchmarkId::new("reference", n), &segs, |b, segs| {
            b.iter(|| {
                let mut acc = 0u16;
                for s in segs {
                    acc ^= vswitch::wire::internet_checksum(black_box(&s[L4..]));
                }
                acc
            })
        });
    }
    g.finish();
}

criterion_group!(benches, segment, coalesce, coalesce_udp, checksum);
criterion_main!(benches);
