//! Seal and open throughput for small and MTU-sized frames, next to ring called directly as a
//! baseline, and the replay window's per-packet cost.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crypto::{Opener, ReplayWindow, Sealer, SessionKey, TAG_LEN};
use ring::aead;

const HEADER_LEN: usize = 16;

fn key() -> SessionKey {
    match SessionKey::derive(1, &[0x42; 32], b"bench", &[b"seal"]) {
        Ok(key) => key,
        Err(e) => panic!("bench key: {e}"),
    }
}

fn seal_open(c: &mut Criterion) {
    for len in [64usize, 1450] {
        let mut group = c.benchmark_group(format!("chacha20poly1305/{len}B"));
        group.throughput(Throughput::Bytes(len as u64));

        let header = [0u8; HEADER_LEN];
        let mut sealer = Sealer::new(key());
        let mut buf = vec![0xa5u8; len + TAG_LEN];
        group.bench_function("seal", |b| {
            b.iter(|| sealer.seal_in_place(black_box(&header), black_box(&mut buf)))
        });

        let raw = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &[0x42; 32])
            .map(aead::LessSafeKey::new)
            .unwrap_or_else(|e| panic!("bench key: {e}"));
        let mut buf = vec![0xa5u8; len];
        let mut counter = 0u64;
        group.bench_function("seal_ring_direct", |b| {
            b.iter(|| {
                counter += 1;
                let nonce = aead::Nonce::assume_unique_for_key(crypto::nonce(1, counter));
                raw.seal_in_place_separate_tag(
                    nonce,
                    aead::Aad::from(black_box(&header)),
                    black_box(&mut buf),
                )
            })
        });

        let mut sealer = Sealer::new(key());
        let opener = Opener::new(key());
        let mut sealed = vec![0xa5u8; len + TAG_LEN];
        let counter = sealer
            .seal_in_place(&header, &mut sealed)
            .unwrap_or_default();
        let mut buf = sealed.clone();
        // Opening decrypts in place, so each iteration restores the sealed bytes first
        // (a memcpy of at most 1466 bytes, well under 1% of the cost).
        group.bench_function("open", |b| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                opener
                    .open_in_place(counter, black_box(&header), black_box(&mut buf))
                    .map(|plain| plain.len())
            })
        });
        group.finish();
    }
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(1));
    let mut window = ReplayWindow::new();
    let mut counter = 0u64;
    group.bench_function("check_commit_in_order", |b| {
        b.iter(|| {
            counter += 1;
            window
                .check(black_box(counter))
                .and_then(|()| window.commit(counter))
        })
    });
    group.finish();
}

criterion_group!(benches, seal_open, replay);
criterion_main!(benches);
