//! Validation of a virtio-net header against the frame it came with.
//!
//! A container chooses every field of the vnet header it writes (any process with
//! `CAP_NET_RAW` can, through `AF_PACKET` with `PACKET_VNET_HDR`), so the header is untrusted
//! input: checksum completion writes where `csum_start + csum_offset` says, and segmentation
//! multiplies one write into as many frames as `gso_size` says. [`validate`] accepts a header
//! only when it says what the parsed frame is, and returns a header rebuilt from the parsed
//! frame ([`Offload::hdr`]): the only one the switch ever acts on or hands on to another TAP.
//!
//! What an accepted header guarantees, whatever the sender wrote:
//!
//! - checksum completion writes only the TCP (offset 16) or UDP (offset 6) checksum field of
//!   the transport header the frame's own IP header points at; it can change no address;
//! - a GSO frame is TCP over IPv4 (`GSO_TCPV4`), TCP over IPv6 (`GSO_TCPV6`) or UDP
//!   (`GSO_UDP_L4`) matching its IP header, with `gso_size` at least [`MIN_GSO_SIZE`], so it
//!   becomes at most [`MAX_SEGMENTS`](super::MAX_SEGMENTS) frames; a TCP super-frame carries no
//!   SYN, RST or URG (which must never be replicated into every segment);
//! - the length each segment will have on the wire is computed from the parsed headers, never
//!   from `hdr_len`.

use super::layout::{
    PROTO_TCP, PROTO_UDP, TCP_CSUM, TCP_FLAGS, TCP_MIN_LEN, TCP_OFF, UDP_CSUM, UDP_LEN, parse_ip,
};
use super::{OffloadError, VnetHdr};

/// The smallest `gso_size` accepted: Linux's smallest TCP MSS for path MTU (`TCP_MIN_MSS`).
/// A 64 KB super-frame then becomes at most 745 segments; anything smaller is an attempt to
/// turn one TAP write into thousands of datagrams per peer.
pub const MIN_GSO_SIZE: u16 = 88;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const URG: u8 = 0x20;

/// What a validated TAP frame asks of the switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// The header rebuilt from the parsed frame: `F_NEEDS_CSUM` with the real transport offset
    /// and checksum field, the GSO type and size, the real header length. Empty for a frame
    /// that needs nothing.
    pub hdr: VnetHdr,
    /// The length of each frame this one becomes on a wire: the frame itself, or the headers
    /// plus `gso_size` for a super-frame.
    pub segment_len: usize,
}

impl Offload {
    /// A frame that needs no offload work.
    pub fn plain(len: usize) -> Self {
        Offload {
            hdr: VnetHdr::default(),
            segment_len: len,
        }
    }

    /// Whether the frame is a super-frame to be cut into segments before any wire.
    pub fn is_gso(&self) -> bool {
        self.hdr.is_gso()
    }

    /// Whether the frame is a UDP super-frame (USO), which only some TAPs take whole.
    pub fn is_uso(&self) -> bool {
        self.hdr.gso_type == VnetHdr::GSO_UDP_L4
    }
}

/// Checks `hdr` against `frame` (the Ethernet frame that followed it) and returns what the
/// frame really asks for. See the module documentation for what acceptance guarantees.
pub fn validate(hdr: &VnetHdr, frame: &[u8]) -> Result<Offload, OffloadError> {
    let gso_type = hdr.gso_type & !VnetHdr::GSO_ECN;
    if gso_type == VnetHdr::GSO_NONE {
        if hdr.gso_type & VnetHdr::GSO_ECN != 0 {
            return Err(OffloadError::BadHeader("ECN flag without a GSO type"));
        }
        if !hdr.needs_csum() {
            return Ok(Offload::plain(frame.len()));
        }
    }
    if !hdr.needs_csum() {
        return Err(OffloadError::BadHeader("GSO without F_NEEDS_CSUM"));
    }
    let ip = parse_ip(frame)?;
    if ip.fragment {
        return Err(OffloadError::UnsupportedFrame("IPv4 fragment"));
    }
    let (csum_offset, l4_len) = match ip.proto {
        PROTO_TCP => {
            let off = *frame.get(ip.l4 + TCP_OFF).ok_or(OffloadError::Truncated)?;
            let thl = usize::from(off >> 4) * 4;
            if thl < TCP_MIN_LEN {
                return Err(OffloadError::BadHeader("TCP data offset"));
            }
            (TCP_CSUM, thl)
        }
        PROTO_UDP => (UDP_CSUM, UDP_LEN),
        _ => {
            return Err(OffloadError::UnsupportedFrame(
                "checksum offload for neither TCP nor UDP",
            ));
        }
    };
    let header_len = ip.l4 + l4_len;
    if header_len > ip.end {
        return Err(OffloadError::Truncated);
    }
    if usize::from(hdr.csum_start) != ip.l4 || usize::from(hdr.csum_offset) != csum_offset {
        return Err(OffloadError::BadHeader("csum_start/csum_offset"));
    }
    let mut clean = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: ip.l4 as u16,
        csum_offset: csum_offset as u16,
        ..VnetHdr::default()
    };
    if gso_type == VnetHdr::GSO_NONE {
        return Ok(Offload {
            hdr: clean,
            segment_len: frame.len(),
        });
    }
    let wanted = match (ip.proto, ip.v6) {
        (PROTO_TCP, false) => VnetHdr::GSO_TCPV4,
        (PROTO_TCP, true) => VnetHdr::GSO_TCPV6,
        _ => VnetHdr::GSO_UDP_L4,
    };
    if gso_type != wanted {
        return Err(if gso_type == VnetHdr::GSO_UDP {
            OffloadError::Unsupported(gso_type)
        } else {
            OffloadError::BadHeader("GSO type does not match the frame")
        });
    }
    if hdr.gso_type & VnetHdr::GSO_ECN != 0 && ip.proto != PROTO_TCP {
        return Err(OffloadError::BadHeader("ECN flag on UDP segmentation"));
    }
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall(hdr.gso_size));
    }
    if ip.proto == PROTO_TCP && frame[ip.l4 + TCP_FLAGS] & (SYN | RST | URG) != 0 {
        return Err(OffloadError::TsoFlags);
    }
    clean.gso_type = hdr.gso_type;
    clean.gso_size = hdr.gso_size;
    clean.hdr_len = header_len as u16;
    Ok(Offload {
        hdr: clean,
        segment_len: (header_len + usize::from(hdr.gso_size)).min(frame.len()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::offload::fixtures::{self, ACK, PSH, Spec, payload};
    use crate::offload::{Segments, complete_checksum, segment};
    use proptest::prelude::*;

    fn tso(spec: Spec, flags: u8) -> (VnetHdr, Vec<u8>) {
        fixtures::tso(&spec, 1, flags, &payload(4000), 1000)
    }

    #[test]
    fn a_well_formed_tso_frame_is_accepted_and_its_header_rebuilt() {
        let (mut hdr, frame) = tso(Spec::default(), ACK | PSH);
        let want = hdr;
        hdr.hdr_len = 9999;
        hdr.flags |= VnetHdr::F_DATA_VALID;
        let ok = validate(&hdr, &frame).unwrap();
        assert_eq!(ok.hdr, want);
        assert_eq!(ok.segment_len, usize::from(want.hdr_len) + 1000);
        assert!(ok.is_gso() && !ok.is_uso());
    }

    #[test]
    fn csum_start_and_offset_must_point_at_the_transport_checksum() {
        let (hdr, frame) = tso(Spec::default(), ACK);
        // IPv4 source (26), destination (30), source MAC (6), one byte off.
        for (start, offset) in [(26, 0), (14, 12), (0, 6), (34, 15), (35, 16), (34, 6)] {
            let bad = VnetHdr {
                csum_start: start,
                csum_offset: offset,
                ..hdr
            };
            assert_eq!(
                validate(&bad, &frame),
                Err(OffloadError::BadHeader("csum_start/csum_offset")),
                "{start}/{offset}"
            );
        }
    }

    #[test]
    fn gso_type_must_match_the_frame() {
        let (hdr, frame) = tso(Spec::default(), ACK);
        for gso_type in [VnetHdr::GSO_TCPV6, VnetHdr::GSO_UDP_L4, 2, 6, 0x7f] {
            let bad = VnetHdr { gso_type, ..hdr };
            assert!(matches!(
                validate(&bad, &frame),
                Err(OffloadError::BadHeader(_))
            ));
        }
        let ufo = VnetHdr {
            gso_type: VnetHdr::GSO_UDP,
            ..hdr
        };
        assert_eq!(validate(&ufo, &frame), Err(OffloadError::Unsupported(3)));
        let no_csum = VnetHdr { flags: 0, ..hdr };
        assert!(validate(&no_csum, &frame).is_err());
    }

    #[test]
    fn udp_gso_takes_no_ecn_and_tso_takes_it() {
        let spec = Spec::default();
        let (hdr, frame) = fixtures::uso(&spec, &payload(3000), 1000);
        assert!(validate(&hdr, &frame).unwrap().is_uso());
        let ecn = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4 | VnetHdr::GSO_ECN,
            ..hdr
        };
        assert!(validate(&ecn, &frame).is_err());
        let (hdr, frame) = tso(spec, ACK);
        let ecn = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            ..hdr
        };
        assert!(validate(&ecn, &frame).is_ok());
        let ecn_alone = VnetHdr {
            gso_type: VnetHdr::GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(validate(&ecn_alone, &frame).is_err());
    }

    #[test]
    fn gso_size_zero_or_below_the_floor_is_refused() {
        let (hdr, frame) = tso(Spec::default(), ACK);
        for size in [0, 1, MIN_GSO_SIZE - 1] {
            let bad = VnetHdr {
                gso_size: size,
                ..hdr
            };
            assert_eq!(
                validate(&bad, &frame),
                Err(OffloadError::GsoSizeTooSmall(size))
            );
        }
    }

    #[test]
    fn syn_rst_urg_never_ride_a_tso_frame() {
        for flag in [SYN, RST, URG, SYN | ACK] {
            let (hdr, frame) = tso(Spec::default(), flag);
            assert_eq!(validate(&hdr, &frame), Err(OffloadError::TsoFlags));
        }
    }

    #[test]
    fn segment_length_comes_from_the_parsed_headers_not_hdr_len() {
        let (hdr, frame) = tso(Spec::default(), ACK);
        let real = validate(&hdr, &frame).unwrap().segment_len;
        for lie in [0, 1, 20, 54, 65535] {
            let liar = VnetHdr {
                hdr_len: lie,
                ..hdr
            };
            assert_eq!(validate(&liar, &frame).unwrap().segment_len, real);
        }
    }

    #[test]
    fn plain_frames_pass_with_an_empty_header() {
        let (_, frame) = tso(Spec::default(), ACK);
        let junk = VnetHdr {
            flags: VnetHdr::F_DATA_VALID,
            hdr_len: 7,
            gso_size: 3,
            csum_start: 1,
            csum_offset: 2,
            ..VnetHdr::default()
        };
        assert_eq!(validate(&junk, &frame), Ok(Offload::plain(frame.len())));
        assert_eq!(validate(&junk, &[]), Ok(Offload::plain(0)));
    }

    /// Source MAC, IPv4/IPv6 source and destination of a frame (one 802.1Q tag at most).
    fn addresses(frame: &[u8]) -> Vec<u8> {
        let ip = parse_ip(frame).unwrap();
        let mut a = frame[..12].to_vec();
        if ip.v6 {
            a.extend_from_slice(&frame[ip.l3 + 8..ip.l3 + 40]);
        } else {
            a.extend_from_slice(&frame[ip.l3 + 12..ip.l3 + 20]);
        }
        a
    }

    proptest! {
        /// Whatever header a sender writes, what the switch does with an accepted one (complete
        /// the checksum, or segment) never changes an address.
        #[test]
        fn accepted_headers_cannot_change_addresses(
            flags in 0u8..4,
            gso_type in prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x81, 0x85, 0x44]),
            hdr_len in any::<u16>(),
            gso_size in 0u16..3000,
            csum_start in 0u16..80,
            csum_offset in 0u16..40,
            v6 in any::<bool>(),
            udp in any::<bool>(),
            vlan in any::<bool>(),
        ) {
            let spec = Spec { v6, vlan, ..Spec::default() };
            let (_, frame) = if udp {
                fixtures::uso(&spec, &payload(2500), 700)
            } else {
                fixtures::tso(&spec, 9, ACK, &payload(2500), 700)
            };
            let hdr = VnetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
            let Ok(ok) = validate(&hdr, &frame) else { return Ok(()) };
            let before = addresses(&frame);
            if ok.is_gso() {
                let mut out = Segments::new();
                segment(&ok.hdr, &frame, &mut out).unwrap();
                for seg in out.iter() {
                    prop_assert_eq!(addresses(seg), before.clone());
                }
            } else {
                let mut done = frame.clone();
                complete_checksum(&ok.hdr, &mut done).unwrap();
                prop_assert_eq!(addresses(&done), before);
            }
        }
    }
}
