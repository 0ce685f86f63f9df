//! The Internet checksum (RFC 1071), the one every layer uses, computed eight bytes at a time.
//!
//! Bytes are read in native order and summed as 32-bit halves into a 64-bit accumulator, which
//! cannot overflow for any slice that fits in memory; the one's-complement sum does not depend
//! on byte order up to a final swap, and a trailing odd byte counts as the high byte of a word.
//! Sums are chained as `u32` values no larger than `0xffff`, so chaining never overflows.

/// One's-complement sum of `data` (as big-endian 16-bit words) added to `initial`, folded to
/// 16 bits but not complemented. Chain calls to sum non-contiguous pieces; every piece but the
/// last must have an even length.
pub fn partial_sum(data: &[u8], initial: u32) -> u32 {
    let mut acc: u64 = 0;
    let mut wide = data.chunks_exact(32);
    for c in &mut wide {
        let mut lanes = [0u64; 4];
        for (lane, w) in lanes.iter_mut().zip(c.chunks_exact(8)) {
            let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            *lane = (v & 0xffff_ffff) + (v >> 32);
        }
        acc += lanes[0] + lanes[1] + lanes[2] + lanes[3];
    }
    let rest = wide.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc += (v & 0xffff_ffff) + (v >> 32);
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_ne_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    let native = fold64(acc);
    let be = u16::from_be(native);
    u32::from(fold(u32::from(be) + u32::from(fold(initial))))
}

/// The checksum to store in a header: the complement of the folded sum of `data` and
/// `initial` (for instance a pseudo-header sum). Summing a packet whose checksum field is
/// correct gives 0.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(partial_sum(data, initial))
}

/// The Internet checksum of `data` alone: computing it over a header whose checksum field
/// holds a correct value yields 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    checksum(data, 0)
}

/// The checksum field after one 16-bit word it covers changed from `old` to `new`, without
/// summing the packet again (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`). A checksum that
/// did not verify before still does not after. For a value at an odd offset from the start of
/// what the checksum covers, pass both values byte-swapped: a word straddling two aligned words
/// adds its bytes the other way round.
pub fn update_checksum(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!checksum) + u32::from(!old) + u32::from(new))
}

/// Folds a sum to 16 bits with end-around carry.
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

fn fold64(acc: u64) -> u16 {
    let s = (acc & 0xffff_ffff) + (acc >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32)
}

/// Pseudo-header sum for TCP or UDP over IPv4 (RFC 793), `len` the transport length.
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&src);
    a[4..].copy_from_slice(&dst);
    pseudo_header_v4_raw(&a, proto, u32::from(len))
}

/// Pseudo-header sum for TCP or UDP over IPv6 (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u32 {
    let mut a = [0u8; 32];
    a[..16].copy_from_slice(&src);
    a[16..].copy_from_slice(&dst);
    pseudo_header_v6_raw(&a, proto, len)
}

/// `addrs` is source then destination address as they sit in the IPv4 header.
pub(crate) fn pseudo_header_v4_raw(addrs: &[u8], proto: u8, len: u32) -> u32 {
    partial_sum(addrs, u32::from(proto) + (len & 0xffff))
}

/// `addrs` is source then destination address as they sit in the IPv6 header.
pub(crate) fn pseudo_header_v6_raw(addrs: &[u8], proto: u8, len: u32) -> u32 {
    partial_sum(addrs, u32::from(proto) + u32::from(fold(len)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two bytes at a time, the textbook way.
    fn reference(data: &[u8], initial: u32) -> u16 {
        let mut acc = u64::from(initial);
        let mut pairs = data.chunks_exact(2);
        for p in &mut pairs {
            acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
        }
        if let [b] = pairs.remainder() {
            acc += u64::from(*b) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(partial_sum(&data, 0), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn empty_and_odd() {
        assert_eq!(checksum(&[], 0), 0xffff);
        assert_eq!(checksum(&[0x12], 0), !0x1200);
        assert_eq!(checksum(&[0x12, 0x34, 0x56], 0), !(0x1234 + 0x5600));
    }

    #[test]
    fn all_ones_and_carries() {
        let data = vec![0xffu8; 4099];
        assert_eq!(checksum(&data, 0), reference(&data, 0));
        assert_eq!(checksum(&data, 0xffff_ffff), reference(&data, 0xffff_ffff));
    }

    #[test]
    fn ipv4_header_verifies_to_zero() {
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr, 0), 0);
    }

    #[test]
    fn pseudo_headers() {
        let v4 = pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 1000);
        assert_eq!(fold(v4), fold(0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 1000));
        let mut s = [0u8; 16];
        s[15] = 1;
        let mut d = [0u8; 16];
        d[15] = 2;
        d[0] = 0xfe;
        let v6 = pseudo_header_v6(s, d, 17, 0x1_0004);
        assert_eq!(fold(v6), fold(1 + 0xfe00 + 2 + 17 + 1 + 4));
    }

    proptest! {
        #[test]
        fn incremental_update_matches_a_full_sum(
            data in proptest::collection::vec(any::<u8>(), 2..200),
            at in 0usize..199,
            new in any::<u16>(),
        ) {
            let at = at.min(data.len() - 2);
            let before = checksum(&data, 0);
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let mut changed = data.clone();
            changed[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let (o, n) = if at % 2 == 0 { (old, new) } else { (old.swap_bytes(), new.swap_bytes()) };
            let updated = update_checksum(before, o, n);
            // 0x0000 and 0xffff are the same one's-complement number.
            let full = checksum(&changed, 0);
            prop_assert!(updated == full || (updated, full) == (0xffff, 0) || (updated, full) == (0, 0xffff),
                "{updated:#06x} != {full:#06x}");
        }

        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..2000),
                             skip in 0usize..8, initial in any::<u32>()) {
            let d = data.get(skip..).unwrap_or(&[]);
            prop_assert_eq!(checksum(d, initial), reference(d, initial));
            prop_assert_eq!(internet_checksum(d), reference(d, 0));
        }

        #[test]
        fn chaining_even_pieces(data in proptest::collection::vec(any::<u8>(), 0..600),
                                cut in 0usize..300) {
            let cut = (cut * 2).min(data.len() & !1);
            let chained = checksum(&data[cut..], partial_sum(&data[..cut], 0));
            prop_assert_eq!(chained, reference(&data, 0));
        }
    }
}
