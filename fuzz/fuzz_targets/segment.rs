#![no_main]
//! Fuzzes userspace TSO/USO: `offload::segment` on a vnet header and a frame, into a segment
//! buffer with room for a VXLAN header in front of every segment, as the worker uses it.
//!
//! Input: the 12-byte virtio-net header, then the frame.
//!
//! Checked, beyond "no panic": on error the buffer is left as it was; a frame that is not GSO
//! comes out alone, completed exactly as `complete_checksum` completes it; the segments of a
//! super-frame are well-formed wire frames that carry the super-frame's payload in order with
//! the right sequence numbers, flags and IPv4 identifications (see `check::assert_segments`),
//! and the buffer holds them back to back, each behind its filled-in headroom.

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use vswitch::offload::{self, Segments, VNET_HDR_LEN, VnetHdr};
use vswitch::tunnel::{self, VXLAN_HEADER_LEN};
use vswitch::wire::Vni;
use vswitch_fuzz::check;

const MARKER: &[u8] = b"held before";

thread_local! {
    static SEGMENTS: RefCell<Segments> = RefCell::new(Segments::with_headroom(VXLAN_HEADER_LEN));
}

fuzz_target!(|input: &[u8]| {
    let Ok(hdr) = VnetHdr::parse(input) else {
        return;
    };
    let frame = &input[VNET_HDR_LEN..];
    SEGMENTS.with_borrow_mut(|out| {
        out.clear();
        out.push(MARKER);
        let held = (out.len(), out.total_len());
        let result = offload::segment(&hdr, frame, out);
        let mut alone = frame.to_vec();
        let completed = offload::complete_checksum(&hdr, &mut alone);
        if result.is_err() {
            assert_eq!((out.len(), out.total_len()), held, "error left segments");
            assert_eq!(out.get(0), Some(MARKER), "error changed held segments");
            if !hdr.is_gso() {
                assert!(
                    completed.is_err(),
                    "segment() failed where completion works"
                );
            }
            return;
        }
        if !hdr.is_gso() {
            assert_eq!(
                completed,
                Ok(()),
                "segment() passed what completion refuses"
            );
            assert_eq!(out.len(), 2, "a frame that is not GSO came out as several");
            assert_eq!(
                out.get(1),
                Some(&alone[..]),
                "not completed as complete_checksum"
            );
            return;
        }
        out.clear();
        assert!(
            offload::segment(&hdr, frame, out).is_ok(),
            "segment() is not deterministic"
        );
        check::assert_segments(&hdr, frame, out);
        let header = tunnel::encap_header(Vni::DEFAULT);
        out.fill_headroom(&header);
        let mut at = 0;
        let bytes = out.as_bytes();
        for seg in out.iter() {
            assert_eq!(&bytes[at..at + VXLAN_HEADER_LEN], &header, "headroom");
            at += VXLAN_HEADER_LEN;
            assert_eq!(&bytes[at..at + seg.len()], seg, "segment bytes");
            at += seg.len();
        }
        assert_eq!(at, bytes.len(), "bytes after the last segment");
    });
});
