//! Node identities: a static X25519 key pair per node, peers named by their public keys, and an
//! optional pre-shared key per network.
//!
//! Text form of every key is standard base64 with padding (44 characters for 32 bytes), the form
//! WireGuard uses, so keys can be pasted between config files and tools. Secrets are zeroized on
//! drop and `Debug` never shows them; [`StaticSecret::to_base64`] and
//! [`PresharedKey::to_base64`] return the text in a zeroizing string for the binary to write to a
//! file with mode 0600. Writing files is not done here.

use core::fmt;
use core::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;

/// Length of X25519 keys and of the pre-shared key, in bytes.
pub const IDENTITY_KEY_LEN: usize = 32;

/// This node's static X25519 private key.
///
/// Not `Clone`; zeroized on drop; `Debug` shows only the public key.
pub struct StaticSecret {
    bytes: Zeroizing<[u8; IDENTITY_KEY_LEN]>,
    public: PublicKey,
}

impl StaticSecret {
    /// A new secret drawn from `rng` (clamped as X25519 requires).
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; IDENTITY_KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        Self::from_bytes(*bytes)
    }

    /// The secret with these 32 bytes; they are clamped as X25519 requires, so any 32 bytes are
    /// a valid secret. The argument is a copy the caller should zeroize.
    pub fn from_bytes(mut bytes: [u8; IDENTITY_KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let bytes = Zeroizing::new(bytes);
        let public = PublicKey(curve25519_public(&bytes));
        Self { bytes, public }
    }

    /// The public key peers configure for this node.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The secret in base64, in a string that is zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.bytes[..]))
    }

    /// Parses the base64 form written by [`to_base64`](Self::to_base64).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        Ok(Self::from_bytes(*decode_key(text)?))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticSecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A node's X25519 public key: how peers are named and configured.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; IDENTITY_KEY_LEN]);

impl PublicKey {
    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; IDENTITY_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(Self(*decode_key(text)?))
    }
}

/// A network's optional pre-shared key, mixed into every handshake of that network (the `psk2`
/// of IKpsk2): without it a future break of X25519 alone does not reveal traffic.
///
/// Not `Clone`; zeroized on drop; `Debug` shows nothing of it.
pub struct PresharedKey(Zeroizing<[u8; IDENTITY_KEY_LEN]>);

impl PresharedKey {
    /// A new key drawn from `rng`.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut key = Self(Zeroizing::new([0; IDENTITY_KEY_LEN]));
        rng.fill_bytes(&mut key.0[..]);
        key
    }

    /// The key with these bytes. The argument is a copy the caller should zeroize.
    pub fn from_bytes(bytes: [u8; IDENTITY_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key in base64, in a string that is zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.0[..]))
    }

    /// Parses the base64 form written by [`to_base64`](Self::to_base64).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        Ok(Self(decode_key(text)?))
    }

    /// A copy in a zeroizing box, for one handshake.
    pub(crate) fn copy(&self) -> Self {
        Self(Zeroizing::new(*self.0))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; IDENTITY_KEY_LEN]>, Error> {
    let mut decoded = Zeroizing::new(Vec::with_capacity(IDENTITY_KEY_LEN + 3));
    STANDARD
        .decode_vec(text.trim().as_bytes(), &mut decoded)
        .map_err(|_| Error::KeyEncoding)?;
    let mut out = Zeroizing::new([0u8; IDENTITY_KEY_LEN]);
    if decoded.len() != IDENTITY_KEY_LEN {
        decoded.zeroize();
        return Err(Error::KeyEncoding);
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

/// X25519 public key of a clamped secret, through the same implementation the handshake uses.
fn curve25519_public(secret: &[u8; IDENTITY_KEY_LEN]) -> [u8; IDENTITY_KEY_LEN] {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut out = [0u8; IDENTITY_KEY_LEN];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519) {
        dh.set(secret);
        out.copy_from_slice(dh.pubkey());
        // Overwrite the copy of the secret inside the DH object before it is dropped.
        dh.set(&[0; IDENTITY_KEY_LEN]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 §6.1, Alice.
        let secret = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(StaticSecret::from_bytes(secret).public_key().0, public);
    }

    #[test]
    fn base64_round_trips_and_rejects_bad_text() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = StaticSecret::generate(&mut rng);
        let text = secret.to_base64();
        assert_eq!(text.len(), 44);
        let again = StaticSecret::from_base64(&text).unwrap();
        assert_eq!(again.public_key(), secret.public_key());

        let public = secret.public_key();
        let shown = public.to_string();
        assert_eq!(shown.parse::<PublicKey>().unwrap(), public);
        assert_eq!(format!(" {shown}\n").parse::<PublicKey>().unwrap(), public);

        let psk = PresharedKey::generate(&mut rng);
        let psk2 = PresharedKey::from_base64(&psk.to_base64()).unwrap();
        assert_eq!(psk.as_bytes(), psk2.as_bytes());

        for bad in [
            "",
            "abc",
            "not base64 at all!",
            &shown[..40],
            &format!("{shown}AAAA"),
        ] {
            assert_eq!(bad.parse::<PublicKey>().unwrap_err(), Error::KeyEncoding);
            assert_eq!(
                StaticSecret::from_base64(bad).unwrap_err(),
                Error::KeyEncoding
            );
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let secret = StaticSecret::from_bytes([0x11; 32]);
        let psk = PresharedKey::from_bytes([0x22; 32]);
        let shown = format!("{secret:?} {secret:#?} {psk:?} {psk:#?}");
        assert!(!shown.contains(secret.to_base64().as_str()), "{shown}");
        assert!(!shown.contains(psk.to_base64().as_str()), "{shown}");
        for needle in ["17, 17", "34, 34", "0x11", "0x22", "ERER", "IiIi"] {
            assert!(!shown.contains(needle), "{shown} contains {needle}");
        }
        assert!(shown.contains(&secret.public_key().to_string()));
    }
}
