//! Seal and open throughput from small to jumbo frames, next to ring called directly and the
//! RustCrypto `chacha20poly1305` crate (the brief's named AEAD) as baselines; one whole handshake (initiation and response, both sides); and the replay
//! window's per-packet cost, alone and behind the per-lane mutex of `SharedReplay`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::BatchSize;
use crypto::{
    Handshaker, Opener, ReplayWindow, Sealer, SessionKey, SharedReplay, StaticSecret, TAG_LEN,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use ring::aead;

const HEADER_LEN: usize = 16;

fn key() -> SessionKey {
    match SessionKey::derive(1, &[0x42; 32], b"bench", &[b"seal"]) {
        Ok(key) => key,
        Err(e) => panic!("bench key: {e}"),
    }
}

fn seal_open(c: &mut Criterion) {
    for len in [64usize, 512, 1450, 9000] {
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
        // (a memcpy of the packet, about 1% of the cost).
        group.bench_function("open", |b| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                opener
                    .open_in_place(counter, black_box(&header), black_box(&mut buf))
                    .map(|plain| plain.len())
            })
        });

        let rust_crypto = {
            use chacha20poly1305::KeyInit;
            chacha20poly1305::ChaCha20Poly1305::new(&[0x42; 32].into())
        };
        let mut buf = vec![0xa5u8; len];
        let mut counter = 0u64;
        group.bench_function("seal_rustcrypto", |b| {
            b.iter(|| {
                use chacha20poly1305::AeadInPlace;
                counter += 1;
                rust_crypto.encrypt_in_place_detached(
                    &crypto::nonce(1, counter).into(),
                    black_box(&header),
                    black_box(&mut buf),
                )
            })
        });
        let mut sealed = vec![0xa5u8; len];
        let tag = {
            use chacha20poly1305::AeadInPlace;
            rust_crypto
                .encrypt_in_place_detached(&crypto::nonce(1, 0).into(), &header, &mut sealed)
                .unwrap_or_else(|e| panic!("bench seal: {e}"))
        };
        let mut buf = sealed.clone();
        group.bench_function("open_rustcrypto", |b| {
            b.iter(|| {
                use chacha20poly1305::AeadInPlace;
                buf.copy_from_slice(&sealed);
                rust_crypto.decrypt_in_place_detached(
                    &crypto::nonce(1, 0).into(),
                    black_box(&header),
                    black_box(&mut buf),
                    &tag,
                )
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
    let shared = SharedReplay::new();
    let mut counter = 0u64;
    group.bench_function("shared_mutex_check_commit_in_order", |b| {
        b.iter(|| {
            counter += 1;
            shared
                .check(black_box(counter))
                .and_then(|()| shared.commit(counter))
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let now = Instant::now();
    let unix = Duration::from_secs(1_750_000_000);
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4789);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let secret_a = StaticSecret::generate(&mut rng);
    let secret_b = StaticSecret::generate(&mut rng);
    let (a_bytes, b_bytes) = (secret_a.to_base64(), secret_b.to_base64());
    let node = |text: &str| {
        StaticSecret::from_base64(text)
            .and_then(|s| Handshaker::new(s, now, unix))
            .unwrap_or_else(|e| panic!("bench node: {e}"))
    };
    group.bench_function("initiation_and_response", |b| {
        b.iter_batched(
            || {
                let mut a = node(&a_bytes);
                let mut b = node(&b_bytes);
                let peer = a.add_peer(b.public_key(), None);
                b.add_peer(a.public_key(), None)
                    .unwrap_or_else(|e| panic!("bench peer: {e}"));
                (a, b, peer.unwrap_or_else(|e| panic!("bench peer: {e}")))
            },
            |(mut a, mut b, peer)| {
                let done = a.connect(peer, now, &mut rng).and_then(|()| {
                    let init = a.poll_transmit().map(|t| t.bytes).unwrap_or_default();
                    let reply = b.handle_message(now, from, &init, &mut rng)?.reply;
                    a.handle_message(now, from, &reply.unwrap_or_default(), &mut rng)
                });
                done.map(|outcome| outcome.established.is_some())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, seal_open, replay, handshake);
criterion_main!(benches);
