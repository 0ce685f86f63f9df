//! Sealing and opening in place: the [`Sealer`] owns the nonce counter of one key, the
//! [`Opener`] authenticates and decrypts what a peer's sealer produced.
//!
//! Both work on one caller buffer laid out as `payload || tag`, with the associated data (the
//! packet's headers) passed alongside, so a tunnel can seal `[header][frame][tag room]` with the
//! header as associated data and no allocation.

use crate::key::{SessionKey, TAG_LEN};
use crate::session::{LANE_BITS, MAX_LANES};
use crate::{Error, ReplayWindow, SharedReplay};

/// The sending half of a session: a key plus its strictly increasing nonce counter.
///
/// Counters run from the starting value up to `u64::MAX - 1`; once they are used up, or once the
/// limit set with [`set_limit`](Self::set_limit) is reached, sealing fails with a typed error and
/// never wraps.
///
/// # Restarts
///
/// A nonce must never repeat under one key, across restarts included. When a key outlives the
/// process, persist a high-water mark ahead of use:
///
/// 1. At start, read the persisted mark `m` (0 if none) and build `Sealer::resume(key, m)`.
/// 2. Durably persist `m + N` (for example N = 2^20), then call `set_limit(m + N)`.
/// 3. Seal. When [`remaining`](Self::remaining) runs low, or sealing returns
///    [`Error::CounterLimit`], persist `limit + N` durably and raise the limit to it.
///
/// After a crash at most N counters are skipped; none is reused, because no counter at or above
/// a persisted mark is ever sealed before that mark is on disk.
#[derive(Debug)]
pub struct Sealer {
    key: SessionKey,
    next: u64,
    limit: u64,
}

impl Sealer {
    /// A sealer for a fresh key, starting at counter 0 with no limit below the key's end.
    pub fn new(key: SessionKey) -> Self {
        Self::resume(key, 0)
    }

    /// A sealer that continues at `next_counter`, the persisted high-water mark of a previous
    /// run (see [Restarts](Self#restarts)).
    pub fn resume(key: SessionKey, next_counter: u64) -> Self {
        Self {
            key,
            next: next_counter,
            limit: u64::MAX,
        }
    }

    /// A sealer for sending worker `lane` of a key shared by several workers: it seals only
    /// counters in `[lane << LANE_BITS, (lane + 1) << LANE_BITS)`, so lanes never share a nonce
    /// (see [`session`](crate::SessionKeys)). Fails with [`Error::Lane`] for `lane >= MAX_LANES`.
    pub fn lane(key: SessionKey, lane: usize) -> Result<Self, Error> {
        if lane >= MAX_LANES {
            return Err(Error::Lane { lane });
        }
        let start = (lane as u64) << LANE_BITS;
        let mut sealer = Self::resume(key, start);
        sealer.set_limit(start.saturating_add(1 << LANE_BITS));
        Ok(sealer)
    }

    /// Id of the key this sealer uses.
    pub fn key_id(&self) -> u32 {
        self.key.id()
    }

    /// The counter the next seal will use.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Counters at or above this value are refused; `u64::MAX` unless lowered.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Refuses counters at or above `limit` (with [`Error::CounterLimit`]) until raised again.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// How many more packets can be sealed before the limit.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.next)
    }

    /// Takes the next counter, for callers that must write it into the associated data before
    /// sealing. The counter is spent even if the returned [`Reserved`] is dropped unused.
    pub fn reserve(&mut self) -> Result<Reserved<'_>, Error> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(Error::CounterExhausted);
        }
        if counter >= self.limit {
            return Err(Error::CounterLimit { limit: self.limit });
        }
        self.next = counter + 1;
        Ok(Reserved {
            key: &self.key,
            counter,
        })
    }

    /// Seals `in_out` with the next counter and returns that counter, for callers whose
    /// associated data does not carry it (it is still authenticated, through the nonce).
    ///
    /// `in_out` is `payload || tag room`: the payload is encrypted in place and the last
    /// [`TAG_LEN`] bytes are overwritten with the tag. A buffer too short for the tag fails with
    /// [`Error::NoTagRoom`] without spending a counter.
    pub fn seal_in_place(&mut self, aad: &[u8], in_out: &mut [u8]) -> Result<u64, Error> {
        if in_out.len() < TAG_LEN {
            return Err(Error::NoTagRoom { len: in_out.len() });
        }
        let reserved = self.reserve()?;
        let counter = reserved.counter();
        reserved.seal_in_place(aad, in_out)?;
        Ok(counter)
    }
}

/// One counter taken from a [`Sealer`], to be used for exactly one seal.
#[derive(Debug)]
#[must_use = "a reserved counter is spent whether or not it seals anything"]
pub struct Reserved<'a> {
    key: &'a SessionKey,
    counter: u64,
}

impl Reserved<'_> {
    /// The counter this reservation seals with; the receiver needs it to open.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Id of the key this reservation seals with.
    pub fn key_id(&self) -> u32 {
        self.key.id()
    }

    /// Seals `in_out` (`payload || tag room`) in place with `aad` as associated data: the
    /// payload becomes ciphertext and the last [`TAG_LEN`] bytes become the tag.
    pub fn seal_in_place(self, aad: &[u8], in_out: &mut [u8]) -> Result<(), Error> {
        let Some(tag_at) = in_out.len().checked_sub(TAG_LEN) else {
            return Err(Error::NoTagRoom { len: in_out.len() });
        };
        let (payload, tag_out) = in_out.split_at_mut(tag_at);
        let tag = self.key.seal(self.counter, aad, payload)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }
}

/// The receiving half of a session: opens what the peer's [`Sealer`] sealed under the same key.
///
/// Opening is stateless; replay protection lives in a [`ReplayWindow`] the caller keeps per
/// sending key, either composed by hand (check, open, commit) or through
/// [`open_in_place_checked`](Self::open_in_place_checked).
#[derive(Debug)]
pub struct Opener {
    key: SessionKey,
}

impl Opener {
    /// An opener for packets sealed under `key`.
    pub fn new(key: SessionKey) -> Self {
        Self { key }
    }

    /// Id of the key this opener uses.
    pub fn key_id(&self) -> u32 {
        self.key.id()
    }

    /// Authenticates `in_out` (`ciphertext || tag`) sealed with `counter` and `aad`, and decrypts
    /// it in place. Returns the plaintext, the first `in_out.len() - TAG_LEN` bytes of `in_out`.
    ///
    /// On failure the contents of `in_out` are unspecified and must be discarded.
    pub fn open_in_place<'a>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        self.key.open(counter, aad, in_out)
    }

    /// [`ReplayWindow::check`], then [`open_in_place`](Self::open_in_place), then
    /// [`ReplayWindow::commit`]: replays are rejected before any decryption, and only packets
    /// that authenticate move the window.
    pub fn open_in_place_checked<'a>(
        &self,
        window: &mut ReplayWindow,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        window.check(counter)?;
        let plain = self.key.open(counter, aad, in_out)?;
        window.commit(counter)?;
        Ok(plain)
    }

    /// The same as [`open_in_place_checked`](Self::open_in_place_checked) with a replay state
    /// shared between receiving threads: check, open, commit, with the lock (of the counter's
    /// lane only) held for the check and for the commit, never during decryption.
    pub fn open_in_place_shared<'a>(
        &self,
        replay: &SharedReplay,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        replay.check(counter)?;
        let plain = self.key.open(counter, aad, in_out)?;
        replay.commit(counter)?;
        Ok(plain)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::key::KEY_LEN;
    use std::collections::HashSet;

    const RFC_KEY: [u8; KEY_LEN] = [
        0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e,
        0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d,
        0x9e, 0x9f,
    ];
    const RFC_AAD: [u8; 12] = [
        0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    ];
    const RFC_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you \
only one tip for the future, sunscreen would be it.";
    const RFC_CIPHERTEXT: [u8; 114] = [
        0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb, 0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef, 0x7e,
        0xc2, 0xa4, 0xad, 0xed, 0x51, 0x29, 0x6e, 0x08, 0xfe, 0xa9, 0xe2, 0xb5, 0xa7, 0x36, 0xee,
        0x62, 0xd6, 0x3d, 0xbe, 0xa4, 0x5e, 0x8c, 0xa9, 0x67, 0x12, 0x82, 0xfa, 0xfb, 0x69, 0xda,
        0x92, 0x72, 0x8b, 0x1a, 0x71, 0xde, 0x0a, 0x9e, 0x06, 0x0b, 0x29, 0x05, 0xd6, 0xa5, 0xb6,
        0x7e, 0xcd, 0x3b, 0x36, 0x92, 0xdd, 0xbd, 0x7f, 0x2d, 0x77, 0x8b, 0x8c, 0x98, 0x03, 0xae,
        0xe3, 0x28, 0x09, 0x1b, 0x58, 0xfa, 0xb3, 0x24, 0xe4, 0xfa, 0xd6, 0x75, 0x94, 0x55, 0x85,
        0x80, 0x8b, 0x48, 0x31, 0xd7, 0xbc, 0x3f, 0xf4, 0xde, 0xf0, 0x8e, 0x4b, 0x7a, 0x9d, 0xe5,
        0x76, 0xd2, 0x65, 0x86, 0xce, 0xc6, 0x4b, 0x61, 0x16,
    ];
    const RFC_TAG: [u8; TAG_LEN] = [
        0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06,
        0x91,
    ];
    // RFC 8439 §2.8.2 nonce 07000000 4041424344454647: key id, then counter.
    const RFC_KEY_ID: u32 = 0x0700_0000;
    const RFC_COUNTER: u64 = 0x4041_4243_4445_4647;

    fn pair(id: u32) -> (Sealer, Opener) {
        let secret = [0x42; 32];
        let key = |id| SessionKey::derive(id, &secret, b"test", &[b"a->b"]).unwrap();
        (Sealer::new(key(id)), Opener::new(key(id)))
    }

    fn sealed(sealer: &mut Sealer, aad: &[u8], payload: &[u8]) -> (u64, Vec<u8>) {
        let mut buf = payload.to_vec();
        buf.extend_from_slice(&[0; TAG_LEN]);
        let counter = sealer.seal_in_place(aad, &mut buf).unwrap();
        (counter, buf)
    }

    #[test]
    fn rfc8439_aead_vector() {
        let key = SessionKey::new(RFC_KEY_ID, &RFC_KEY).unwrap();
        let mut sealer = Sealer::resume(key, RFC_COUNTER);
        let mut buf = RFC_PLAINTEXT.to_vec();
        buf.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(sealer.seal_in_place(&RFC_AAD, &mut buf), Ok(RFC_COUNTER));
        assert_eq!(&buf[..RFC_CIPHERTEXT.len()], &RFC_CIPHERTEXT[..]);
        assert_eq!(&buf[RFC_CIPHERTEXT.len()..], &RFC_TAG[..]);

        let opener = Opener::new(SessionKey::new(RFC_KEY_ID, &RFC_KEY).unwrap());
        let plain = opener
            .open_in_place(RFC_COUNTER, &RFC_AAD, &mut buf)
            .unwrap();
        assert_eq!(plain, RFC_PLAINTEXT);
    }

    #[test]
    fn round_trip_header_as_aad_in_one_buffer() {
        let (mut sealer, opener) = pair(7);
        let frame: Vec<u8> = (0..1450u32).map(|i| i as u8).collect();
        let header_len = 16;
        let mut packet = vec![0u8; header_len + frame.len() + TAG_LEN];
        packet[header_len..header_len + frame.len()].copy_from_slice(&frame);

        let (header, body) = packet.split_at_mut(header_len);
        let reserved = sealer.reserve().unwrap();
        header[..4].copy_from_slice(&reserved.key_id().to_be_bytes());
        header[4..12].copy_from_slice(&reserved.counter().to_be_bytes());
        reserved.seal_in_place(header, body).unwrap();
        assert_ne!(&packet[header_len..header_len + frame.len()], &frame[..]);

        let (header, body) = packet.split_at_mut(header_len);
        let counter = u64::from_be_bytes(header[4..12].try_into().unwrap());
        let plain = opener.open_in_place(counter, header, body).unwrap();
        assert_eq!(plain, &frame[..]);
    }

    #[test]
    fn round_trip_all_small_lengths() {
        let (mut sealer, opener) = pair(1);
        for len in 0..200 {
            let payload = vec![len as u8; len];
            let (counter, mut buf) = sealed(&mut sealer, b"hdr", &payload);
            assert_eq!(buf.len(), len + TAG_LEN);
            let plain = opener.open_in_place(counter, b"hdr", &mut buf).unwrap();
            assert_eq!(plain, &payload[..]);
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let (mut sealer, opener) = pair(3);
        let aad = b"outer header";
        let (counter, good) = sealed(&mut sealer, aad, b"an inner ethernet frame");

        for i in 0..good.len() {
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                let got = opener.open_in_place(counter, aad, &mut bad);
                assert_eq!(got.unwrap_err(), Error::Authentication, "byte {i}");
            }
        }
        for i in 0..aad.len() {
            let mut bad_aad = *aad;
            bad_aad[i] ^= 0x01;
            let mut buf = good.clone();
            let got = opener.open_in_place(counter, &bad_aad, &mut buf);
            assert_eq!(got.unwrap_err(), Error::Authentication);
        }
        for (c, a) in [
            (counter + 1, &aad[..]),
            (counter, &aad[..3]),
            (counter, &b""[..]),
        ] {
            let mut buf = good.clone();
            let got = opener.open_in_place(c, a, &mut buf);
            assert_eq!(got.unwrap_err(), Error::Authentication);
        }

        let (_, other_opener) = pair(4);
        let mut buf = good.clone();
        let got = other_opener.open_in_place(counter, aad, &mut buf);
        assert_eq!(got.unwrap_err(), Error::Authentication);

        let mut buf = good.clone();
        assert!(opener.open_in_place(counter, aad, &mut buf).is_ok());
    }

    #[test]
    fn truncated_and_extended_input_is_rejected() {
        let (mut sealer, opener) = pair(5);
        let (counter, good) = sealed(&mut sealer, b"", b"twenty-one bytes long");
        for len in 0..good.len() {
            let mut buf = good[..len].to_vec();
            let want = if len < TAG_LEN {
                Error::Truncated { len }
            } else {
                Error::Authentication
            };
            assert_eq!(
                opener.open_in_place(counter, b"", &mut buf).unwrap_err(),
                want
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        let got = opener.open_in_place(counter, b"", &mut longer);
        assert_eq!(got.unwrap_err(), Error::Authentication);
    }

    #[test]
    fn no_tag_room_spends_no_counter() {
        let (mut sealer, _) = pair(6);
        for len in 0..TAG_LEN {
            let mut buf = vec![0; len];
            assert_eq!(
                sealer.seal_in_place(b"", &mut buf),
                Err(Error::NoTagRoom { len })
            );
        }
        assert_eq!(sealer.next_counter(), 0);
        let reserved = sealer.reserve().unwrap();
        assert_eq!(
            reserved.seal_in_place(b"", &mut [0; 3]),
            Err(Error::NoTagRoom { len: 3 })
        );
        assert_eq!(sealer.next_counter(), 1);
        let mut exact = [0; TAG_LEN];
        assert_eq!(sealer.seal_in_place(b"", &mut exact), Ok(1));
    }

    #[test]
    fn counters_strictly_increase_and_nonces_never_repeat() {
        let (mut sealer, opener) = pair(8);
        let mut seen_counters = HashSet::new();
        let mut seen_ciphertexts = HashSet::new();
        let mut last = None;
        for _ in 0..2000 {
            let (counter, buf) = sealed(&mut sealer, b"", b"same plaintext every time");
            assert!(last.is_none_or(|l| counter > l));
            last = Some(counter);
            assert!(seen_counters.insert(counter));
            assert!(seen_ciphertexts.insert(buf.clone()));
            let mut buf = buf;
            assert!(opener.open_in_place(counter, b"", &mut buf).is_ok());
        }
        assert_eq!(sealer.next_counter(), 2000);
    }

    #[test]
    fn dropped_reservation_is_never_reused() {
        let (mut sealer, _) = pair(9);
        let first = sealer.reserve().unwrap().counter();
        let (second, _) = sealed(&mut sealer, b"", b"x");
        assert_eq!((first, second), (0, 1));
    }

    #[test]
    fn counter_exhaustion_is_an_error_not_a_wrap() {
        let (sealer, opener) = pair(10);
        let mut sealer = Sealer::resume(sealer.key, u64::MAX - 2);
        let (a, mut buf) = sealed(&mut sealer, b"", b"x");
        assert!(opener.open_in_place(a, b"", &mut buf).is_ok());
        let (b, _) = sealed(&mut sealer, b"", b"x");
        assert_eq!((a, b), (u64::MAX - 2, u64::MAX - 1));
        assert_eq!(sealer.remaining(), 0);
        for _ in 0..3 {
            let mut buf = [0; TAG_LEN + 1];
            assert_eq!(
                sealer.seal_in_place(b"", &mut buf),
                Err(Error::CounterExhausted)
            );
            assert_eq!(sealer.reserve().unwrap_err(), Error::CounterExhausted);
            assert_eq!(sealer.next_counter(), u64::MAX);
        }
        sealer.set_limit(5);
        assert_eq!(sealer.reserve().unwrap_err(), Error::CounterExhausted);
    }

    #[test]
    fn limit_holds_until_raised() {
        let (mut sealer, _) = pair(11);
        sealer.set_limit(3);
        assert_eq!(sealer.remaining(), 3);
        for want in 0..3 {
            assert_eq!(sealed(&mut sealer, b"", b"x").0, want);
        }
        assert_eq!(sealer.remaining(), 0);
        let mut buf = [0; TAG_LEN];
        assert_eq!(
            sealer.seal_in_place(b"", &mut buf),
            Err(Error::CounterLimit { limit: 3 })
        );
        assert_eq!(sealer.next_counter(), 3);
        sealer.set_limit(10);
        assert_eq!(sealed(&mut sealer, b"", b"x").0, 3);
        assert_eq!(sealer.remaining(), 6);
    }

    #[test]
    fn restart_with_persisted_high_water_mark_never_reuses_a_counter() {
        const MARGIN: u64 = 100;
        let secret = [9u8; 32];
        let key = || SessionKey::derive(1, &secret, b"", &[b"restart"]).unwrap();
        let mut persisted = 0u64;
        let mut used = HashSet::new();
        for (run, packets) in [150u64, 37, 0, 260].into_iter().enumerate() {
            let mut sealer = Sealer::resume(key(), persisted);
            persisted += MARGIN;
            sealer.set_limit(persisted);
            for _ in 0..packets {
                let mut buf = [0; TAG_LEN];
                let counter = match sealer.seal_in_place(b"", &mut buf) {
                    Err(Error::CounterLimit { limit }) => {
                        persisted = limit + MARGIN;
                        sealer.set_limit(persisted);
                        sealer.seal_in_place(b"", &mut buf).unwrap()
                    }
                    other => other.unwrap(),
                };
                assert!(counter < persisted);
                assert!(used.insert(counter), "run {run} reused {counter}");
            }
        }
    }

    #[test]
    fn checked_open_rejects_replays_and_does_not_commit_forgeries() {
        let (mut sealer, opener) = pair(12);
        let mut window = ReplayWindow::new();
        let packets: Vec<_> = (0..4)
            .map(|_| sealed(&mut sealer, b"h", b"frame"))
            .collect();

        let (c1, p1) = &packets[1];
        let mut forged = p1.clone();
        forged[0] ^= 1;
        let got = opener.open_in_place_checked(&mut window, *c1, b"h", &mut forged);
        assert_eq!(got.unwrap_err(), Error::Authentication);
        assert_eq!(window.last(), None);

        for i in [1, 0, 3, 2] {
            let (c, p) = &packets[i];
            let mut buf = p.clone();
            let plain = opener.open_in_place_checked(&mut window, *c, b"h", &mut buf);
            assert_eq!(plain.unwrap(), b"frame");
        }
        for (c, p) in &packets {
            let mut buf = p.clone();
            let got = opener.open_in_place_checked(&mut window, *c, b"h", &mut buf);
            assert_eq!(got.unwrap_err(), Error::Replayed { counter: *c });
            assert_eq!(buf, *p, "replay rejected before decryption");
        }
    }

    #[test]
    fn debug_of_sealer_and_opener_shows_no_key_material() {
        let key = [0x5a; KEY_LEN];
        let sealer = Sealer::new(SessionKey::new(3, &key).unwrap());
        let opener = Opener::new(SessionKey::new(3, &key).unwrap());
        let shown = format!("{sealer:?} {opener:?}");
        for needle in ["5a", "5A", "90, 90", "["] {
            assert!(!shown.contains(needle), "{shown} contains {needle}");
        }
    }
}
