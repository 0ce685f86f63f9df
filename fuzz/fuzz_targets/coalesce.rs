#![no_main]
//! Fuzzes userspace GRO: a sequence of frames pushed into an `offload::Coalescer`, with flushes
//! between receive batches, as the worker feeds it frames from peers bound for TAP ports.
//!
//! Input: a settings byte (bit 0: no UDP coalescing, a kernel without USO; bit 1: a coalescer
//! with room for one flow, so that every other flow evicts it), then records, each a 2-byte
//! little-endian length and that many bytes: a control byte and a frame. Control byte: bits
//! 0-1, the port; bit 6, flush after this frame (end of a receive batch); bit 7, complete a
//! partial checksum first (`complete_partial_checksum`, which the worker runs on every frame).
//!
//! Checked, beyond "no panic": every frame emitted is well formed and its vnet header agrees
//! with it (see `check::assert_coalesced`: a super-frame segments back into well-formed
//! frames); together they stand for exactly the frames pushed, to the ports they were pushed
//! to; nothing is held after a flush; packets whose IPv4 header
//! checksum is wrong pass through unmerged.

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use vswitch::offload::{Coalescer, VnetHdr, complete_partial_checksum};
use vswitch_fuzz::{check, records};

thread_local! {
    static COALESCERS: RefCell<[Coalescer; 2]> =
        RefCell::new([Coalescer::new(), Coalescer::with_flows(1)]);
}

fuzz_target!(|input: &[u8]| {
    let Some((&settings, input)) = input.split_first() else {
        return;
    };
    COALESCERS.with_borrow_mut(|coalescers| {
        let coalescer = &mut coalescers[usize::from(settings >> 1 & 1)];
        coalescer.set_udp(settings & 1 == 0);
        let mut pushed = [0usize; 4];
        let mut emitted = [0usize; 4];
        // Packets whose IPv4 header checksum does not verify, pushed and emitted unmerged.
        let (mut bad_in, mut bad_out) = (0usize, 0usize);
        let mut emit = |port: u32, hdr: &VnetHdr, frame: &[u8]| {
            if !hdr.is_gso() && check::bad_ipv4_header(frame) {
                bad_out += 1;
            }
            let n = check::assert_coalesced(hdr, frame);
            let slot = emitted
                .get_mut(port as usize)
                .unwrap_or_else(|| panic!("emitted to port {port}, never pushed to"));
            *slot += n;
        };
        let mut frame = Vec::new();
        for record in records(input) {
            let Some((&control, bytes)) = record.split_first() else {
                continue;
            };
            let port = usize::from(control & 3);
            frame.clear();
            frame.extend_from_slice(bytes);
            if control & 0x80 != 0 && complete_partial_checksum(&mut frame) {
                check::assert_completed(&frame);
            }
            pushed[port] += 1;
            bad_in += usize::from(check::bad_ipv4_header(&frame));
            coalescer.push(port as u32, &frame, &mut emit);
            if control & 0x40 != 0 {
                coalescer.flush(&mut emit);
            }
        }
        coalescer.flush(&mut emit);
        assert_eq!(coalescer.open_flows(), 0, "flows held after a flush");
        assert_eq!(emitted, pushed, "frames lost, duplicated or sent elsewhere");
        // A packet whose IPv4 header is corrupt never merges into one with a recomputed,
        // valid header (Linux's GRO refuses to merge it too).
        assert_eq!(
            bad_out, bad_in,
            "packets with a bad IPv4 header checksum merged"
        );
    });
});
