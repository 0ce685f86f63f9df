//! Handshake messages on the wire, and the MAC that rejects junk before any Diffie-Hellman.
//!
//! Both messages travel as the whole payload of one UDP datagram on the VXLAN port; byte 0
//! tells them apart from VXLAN (whose first byte is `0x08` or `0x00`) and from sealed data.
//! Integers are little endian. `noise` is the Noise message of
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` with the prologue [`PROLOGUE`].
//!
//! Initiation, 148 bytes, initiator to responder:
//!
//! ```text
//!  0      1           4                8                                                  116
//! +------+-----------+----------------+---------------------------------------------------+
//! | 0xC1 | 0x00 x 3  | sender index   | noise: e (32) | enc(s) 32+16 | enc(timestamp) 12+16 |
//! +------+-----------+----------------+---------------------------------------------------+
//!  116                  132                  148
//! +--------------------+--------------------+
//! | mac1 (16)          | mac2 (16, zero)    |
//! +--------------------+--------------------+
//! ```
//!
//! Response, 92 bytes, responder to initiator:
//!
//! ```text
//!  0      1           4              8                12                          60
//! +------+-----------+--------------+----------------+---------------------------+
//! | 0xC2 | 0x00 x 3  | sender index | receiver index | noise: e (32) | enc() 16  |
//! +------+-----------+--------------+----------------+---------------------------+
//!  60                   76                   92
//! +--------------------+--------------------+
//! | mac1 (16)          | mac2 (16, zero)    |
//! +--------------------+--------------------+
//! ```
//!
//! - *sender index*: a random 32-bit number the sender picked for this session; the peer puts it
//!   in every sealed packet it sends on the session (as the receiver index), so the receiver
//!   finds the keys without trying them all.
//! - *timestamp*: 12 bytes, seconds since the Unix epoch (u64 big endian) then nanoseconds (u32
//!   big endian), strictly increasing per sender across restarts; the responder accepts an
//!   initiation only with a timestamp above the last it accepted from that peer, so a recorded
//!   initiation cannot be replayed to knock out a session.
//! - *mac1*: keyed BLAKE2s-128 of every byte before it, under
//!   `BLAKE2s-256("vswitch mac1" || receiver's static public key)`. Anyone who knows the
//!   receiver's public key can compute it, but junk and scans are rejected for the price of one
//!   hash, before rate limiting and before any Diffie-Hellman.
//! - *mac2*: reserved for a cookie reply scheme (WireGuard's MAC2, message type 0xC3); sent as
//!   zeros and not read today, so adding cookies later does not change these layouts.

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};

use crate::identity::PublicKey;

/// The Noise protocol name: WireGuard's choice of pattern and primitives.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Prologue mixed into every handshake: names this protocol and its version, so a handshake
/// of any other protocol or version cannot complete against ours.
pub const PROLOGUE: &[u8] = b"vswitch sealed v1 Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

/// Byte 0 of a handshake initiation.
pub const TYPE_INITIATION: u8 = 0xC1;
/// Byte 0 of a handshake response.
pub const TYPE_RESPONSE: u8 = 0xC2;
/// Byte 0 reserved for a cookie reply (not sent yet).
pub const TYPE_COOKIE_REPLY: u8 = 0xC3;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of each of mac1 and mac2.
pub const MAC_LEN: usize = 16;
/// Length of the initiation timestamp.
pub const TIMESTAMP_LEN: usize = 12;

/// Byte ranges of the fields, as in the diagrams above.
pub mod field {
    use core::ops::Range;

    /// Message type, every message.
    pub const TYPE: usize = 0;
    /// Reserved, zero, every message.
    pub const RESERVED: Range<usize> = 1..4;
    /// Sender index (u32 LE), every message.
    pub const SENDER: Range<usize> = 4..8;
    /// Receiver index (u32 LE), response only.
    pub const RECEIVER: Range<usize> = 8..12;

    /// Noise message of an initiation.
    pub const INIT_NOISE: Range<usize> = 8..116;
    /// mac1 of an initiation.
    pub const INIT_MAC1: Range<usize> = 116..132;
    /// mac2 of an initiation (reserved, zero).
    pub const INIT_MAC2: Range<usize> = 132..148;

    /// Noise message of a response.
    pub const RESP_NOISE: Range<usize> = 12..60;
    /// mac1 of a response.
    pub const RESP_MAC1: Range<usize> = 60..76;
    /// mac2 of a response (reserved, zero).
    pub const RESP_MAC2: Range<usize> = 76..92;
}

const MAC1_LABEL: &[u8] = b"vswitch mac1";

/// The key of mac1 for messages sent to the holder of `receiver`.
pub(crate) fn mac1_key(receiver: &PublicKey) -> [u8; 32] {
    let mut hash = Blake2s256::new();
    hash.update(MAC1_LABEL);
    hash.update(receiver.as_bytes());
    hash.finalize().into()
}

fn mac(key: &[u8; 32], covered: &[u8]) -> Blake2sMac<U16> {
    // A 32-byte key is always accepted by BLAKE2s (keys up to 32 bytes).
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("BLAKE2s accepts 32-byte keys"));
    Mac::update(&mut mac, covered);
    mac
}

/// Writes mac1 into `message` (a whole initiation or response) and zeroes mac2.
pub(crate) fn seal_macs(key: &[u8; 32], message: &mut [u8]) {
    let mac1_at = message.len() - 2 * MAC_LEN;
    let tag = mac(key, &message[..mac1_at]).finalize().into_bytes();
    message[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&tag);
    message[mac1_at + MAC_LEN..].fill(0);
}

/// Writes the mac fields of `message` (a whole initiation or response of the right length) for
/// the holder of `receiver`, as its sender does; does nothing to a message too short for them.
/// For tools and fuzzing that craft messages by hand.
pub fn seal_mac1(receiver: &PublicKey, message: &mut [u8]) {
    if message.len() >= 2 * MAC_LEN {
        seal_macs(&mac1_key(receiver), message);
    }
}

/// Whether mac1 of `message` (a whole initiation or response) is right, in constant time.
pub(crate) fn mac1_ok(key: &[u8; 32], message: &[u8]) -> bool {
    let mac1_at = message.len() - 2 * MAC_LEN;
    mac(key, &message[..mac1_at])
        .verify_slice(&message[mac1_at..mac1_at + MAC_LEN])
        .is_ok()
}

pub(crate) fn read_u32(bytes: &[u8], at: core::ops::Range<usize>) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[at]);
    u32::from_le_bytes(le)
}

/// Timestamp bytes for `unix_nanos`: big endian seconds then nanoseconds, so that byte order is
/// time order.
pub(crate) fn timestamp(unix_nanos: u128) -> [u8; TIMESTAMP_LEN] {
    let secs = u64::try_from(unix_nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = u32::try_from(unix_nanos % 1_000_000_000).unwrap_or(0);
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..8].copy_from_slice(&secs.to_be_bytes());
    out[8..].copy_from_slice(&nanos.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ranges_tile_each_message() {
        assert_eq!(field::INIT_NOISE.len(), 32 + 48 + TIMESTAMP_LEN + 16);
        assert_eq!(field::INIT_MAC2.end, INITIATION_LEN);
        assert_eq!(field::INIT_NOISE.end, field::INIT_MAC1.start);
        assert_eq!(field::INIT_MAC1.end, field::INIT_MAC2.start);
        assert_eq!(field::RESP_NOISE.end, field::RESP_MAC1.start);
        assert_eq!(field::RESP_MAC1.end, field::RESP_MAC2.start);
        assert_eq!(field::RESP_NOISE.len(), 32 + 16);
        assert_eq!(field::RESP_MAC2.end, RESPONSE_LEN);
        assert_eq!(field::RESP_NOISE.start, field::RECEIVER.end);
    }

    #[test]
    fn timestamps_order_as_bytes() {
        let a = timestamp(1_700_000_000_999_999_999);
        let b = timestamp(1_700_000_001_000_000_000);
        assert!(a < b);
        assert_eq!(&b[8..], &[0; 4]);
    }

    #[test]
    fn mac1_detects_any_flipped_bit() {
        let key = mac1_key(&PublicKey::from_bytes([9; 32]));
        let mut msg = [0x5au8; RESPONSE_LEN];
        seal_macs(&key, &mut msg);
        assert!(mac1_ok(&key, &msg));
        for i in 0..field::RESP_MAC2.start {
            let mut bad = msg;
            bad[i] ^= 1;
            assert!(!mac1_ok(&key, &bad), "byte {i}");
        }
        let mut other = msg;
        other[field::RESP_MAC2.start] ^= 1;
        assert!(mac1_ok(&key, &other), "mac2 is not covered by mac1");
        let wrong = mac1_key(&PublicKey::from_bytes([8; 32]));
        assert!(!mac1_ok(&wrong, &msg));
    }
}
