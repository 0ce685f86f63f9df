//! Session keys and the nonce layout they are used with.
//!
//! A [`SessionKey`] is a ChaCha20-Poly1305 key (RFC 8439) held by ring, tagged with a 32-bit key
//! id. The 96-bit nonce for a packet is `key_id (32 bits, big endian) || counter (64 bits, big
//! endian)`, the layout of RFC 8439 §2.8 with the key id as the constant part; see [`nonce`].
//! The key itself offers no sealing: only a [`Sealer`](crate::Sealer), which owns the counter,
//! can produce nonces.

use core::fmt;
use core::sync::atomic::{Ordering, compiler_fence};

use ring::{aead, hkdf};
use zeroize::Zeroizing;

use crate::Error;

/// Length of a ChaCha20-Poly1305 key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag that follows every sealed payload, in bytes.
pub const TAG_LEN: usize = 16;

/// The nonce used for `counter` under the key with id `key_id`: the key id, then the counter, both
/// big endian.
pub fn nonce(key_id: u32, counter: u64) -> [u8; NONCE_LEN] {
    let mut out = [0; NONCE_LEN];
    out[..4].copy_from_slice(&key_id.to_be_bytes());
    out[4..].copy_from_slice(&counter.to_be_bytes());
    out
}

/// A ChaCha20-Poly1305 session key with its 32-bit key id.
///
/// Not `Clone`: each key goes into exactly one [`Sealer`](crate::Sealer) or
/// [`Opener`](crate::Opener). Two senders must never seal under the same key bytes and key id,
/// so give each direction and each sender its own key, for example by deriving them with distinct
/// labels.
///
/// `Debug` shows the key id only. The crate keeps no copy of the key bytes: derivation output
/// passes through a zeroized buffer, and on drop the key state inside ring is overwritten in
/// place with an all-zero key, since ring offers no zeroization of its own. As with any
/// zeroization in Rust, copies left behind by moves of the value are out of reach.
pub struct SessionKey {
    id: u32,
    key: aead::LessSafeKey,
}

impl SessionKey {
    /// A key from exactly [`KEY_LEN`] bytes of secret material.
    pub fn new(id: u32, bytes: &[u8]) -> Result<Self, Error> {
        let len = bytes.len();
        if len != KEY_LEN {
            return Err(Error::KeyLength { len });
        }
        let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, bytes)
            .map_err(|_| Error::KeyLength { len })?;
        Ok(Self {
            id,
            key: aead::LessSafeKey::new(unbound),
        })
    }

    /// A key derived with HKDF-SHA256 (RFC 5869): extract from `secret` with `salt`, expand with
    /// `labels` concatenated as the info string.
    ///
    /// Labels are concatenated without separators, so make them unambiguous (fixed length or
    /// length-prefixed) and include whatever must make the key unique: protocol, direction,
    /// sender, epoch.
    pub fn derive(id: u32, secret: &[u8], salt: &[u8], labels: &[&[u8]]) -> Result<Self, Error> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(labels, &aead::CHACHA20_POLY1305)
            .and_then(|expanded| expanded.fill(&mut okm[..]))
            .map_err(|_| Error::KeyDerivation)?;
        Self::new(id, &okm[..])
    }

    /// The key id, the first four bytes of every nonce under this key.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Encrypts `payload` in place and returns its tag.
    pub(crate) fn seal(
        &self,
        counter: u64,
        aad: &[u8],
        payload: &mut [u8],
    ) -> Result<aead::Tag, Error> {
        self.key
            .seal_in_place_separate_tag(self.nonce(counter), aead::Aad::from(aad), payload)
            .map_err(|_| Error::TooLong)
    }

    /// Authenticates and decrypts `in_out` (ciphertext then tag) in place; returns the plaintext.
    pub(crate) fn open<'a>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], Error> {
        if in_out.len() < TAG_LEN {
            return Err(Error::Truncated { len: in_out.len() });
        }
        self.key
            .open_in_place(self.nonce(counter), aead::Aad::from(aad), in_out)
            .map_err(|_| Error::Authentication)
    }

    fn nonce(&self, counter: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(nonce(self.id, counter))
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        if let Ok(zero) = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &[0; KEY_LEN]) {
            self.key = aead::LessSafeKey::new(zero);
        }
        core::hint::black_box(&self.key);
        compiler_fence(Ordering::SeqCst);
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seal_probe(key: &SessionKey) -> Vec<u8> {
        let mut buf = b"probe".to_vec();
        let tag = key.seal(1, b"aad", &mut buf).unwrap();
        buf.extend_from_slice(tag.as_ref());
        buf
    }

    #[test]
    fn nonce_is_key_id_then_counter_big_endian() {
        assert_eq!(
            nonce(0x0700_0000, 0x4041_4243_4445_4647),
            [
                0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47
            ]
        );
        assert_eq!(nonce(0, 0), [0; NONCE_LEN]);
        assert_eq!(nonce(u32::MAX, u64::MAX), [0xff; NONCE_LEN]);
        assert_ne!(nonce(1, 0), nonce(0, 1));
    }

    #[test]
    fn wrong_key_length_is_rejected() {
        for len in [0, 16, 31, 33, 64] {
            let bytes = vec![7u8; len];
            assert_eq!(
                SessionKey::new(1, &bytes).unwrap_err(),
                Error::KeyLength { len }
            );
        }
        assert!(SessionKey::new(1, &[7; KEY_LEN]).is_ok());
    }

    #[test]
    fn derive_matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        // First 32 bytes of the test case's OKM; HKDF output does not depend on its length.
        let okm = [
            0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
            0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
            0xec, 0xc4, 0xc5, 0xbf,
        ];
        let derived = SessionKey::derive(9, &ikm, &salt, &[&info]).unwrap();
        let direct = SessionKey::new(9, &okm).unwrap();
        assert_eq!(seal_probe(&derived), seal_probe(&direct));
        let split = SessionKey::derive(9, &ikm, &salt, &[&info[..3], &info[3..]]).unwrap();
        assert_eq!(seal_probe(&split), seal_probe(&direct));
    }

    #[test]
    fn derive_separates_inputs() {
        let base = seal_probe(&SessionKey::derive(1, b"secret", b"salt", &[b"a->b"]).unwrap());
        for other in [
            SessionKey::derive(1, b"secret", b"salt", &[b"b->a"]).unwrap(),
            SessionKey::derive(1, b"secret", b"SALT", &[b"a->b"]).unwrap(),
            SessionKey::derive(1, b"Secret", b"salt", &[b"a->b"]).unwrap(),
            SessionKey::derive(2, b"secret", b"salt", &[b"a->b"]).unwrap(),
        ] {
            assert_ne!(seal_probe(&other), base);
        }
        assert_eq!(
            seal_probe(&SessionKey::derive(1, b"secret", b"salt", &[b"a->b"]).unwrap()),
            base
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SessionKey::new(0x1234, &[0xa5; KEY_LEN]).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains("SessionKey"));
        assert!(shown.contains(&0x1234.to_string()));
        for needle in ["a5", "A5", "165", "[", "LessSafeKey"] {
            assert!(!shown.contains(needle), "{shown} contains {needle}");
        }
    }

    #[test]
    fn open_rejects_input_shorter_than_tag() {
        let key = SessionKey::new(1, &[1; KEY_LEN]).unwrap();
        for len in 0..TAG_LEN {
            let mut buf = vec![0u8; len];
            assert_eq!(
                key.open(0, b"", &mut buf).unwrap_err(),
                Error::Truncated { len }
            );
        }
    }
}
