//! What the fuzz targets share: a switch set up like a small node ([`fixture`]), and checks of
//! the frames the datapath produces ([`check`]) written independently of the code under test
//! (headers read with etherparse, checksums summed by a plain RFC 1071 loop), so that a bug in
//! vswitch's own parser or checksum cannot hide itself.

pub mod check;
pub mod fixture;

/// Splits `input` into records, each behind a 2-byte little-endian length; a length longer than
/// what is left takes the rest. How targets that take a sequence (frames pushed into a
/// coalescer) cut their input.
pub fn records(mut input: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = input.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (record, rest) = rest.split_at(len);
        input = rest;
        Some(record)
    })
}
