//! A container's TAP queue as the datapath sees it: non-blocking reads and writes of whole
//! Ethernet frames (no packet-info header) on a file descriptor the `netns` crate opened, each
//! preceded by a virtio-net header when the queue was opened with one (`IFF_VNET_HDR`), which
//! is how TSO/USO super-frames and checksum offload cross the TAP.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::offload::VnetHdr;

/// One TAP queue owned by the datapath.
pub struct TapQueue {
    fd: OwnedFd,
    vnet_hdr: bool,
    uso: bool,
}

impl TapQueue {
    /// Takes over an open, non-blocking TAP queue; `vnet_hdr` says whether every frame on it
    /// carries a 12-byte virtio-net header.
    pub fn new(fd: OwnedFd, vnet_hdr: bool) -> Self {
        Self {
            fd,
            vnet_hdr,
            uso: false,
        }
    }

    /// Marks the queue as taking UDP segmentation offload (the kernel accepted `TUN_F_USO4`),
    /// which tells that USO super-frames may be written to it too.
    pub fn with_uso(mut self, uso: bool) -> Self {
        self.uso = uso && self.vnet_hdr;
        self
    }

    /// Whether USO super-frames may be written to the queue.
    pub fn takes_uso(&self) -> bool {
        self.uso
    }

    /// Whether frames carry a virtio-net header (and may be super-frames).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The descriptor to wait on.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame into `buf`, behind its virtio-net header when the queue has them, and
    /// returns the bytes read (the switch parses and validates the header). `WouldBlock` when
    /// the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.fd.as_fd(), buf).map_err(io::Error::from)
    }

    /// Writes one frame with its header; a queue without vnet headers must only be given
    /// frames whose header is empty (the caller segments and completes checksums first).
    pub fn write(&self, hdr: &VnetHdr, frame: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            let hdr = hdr.emit();
            nix::sys::uio::writev(self.fd.as_fd(), &[IoSlice::new(&hdr), IoSlice::new(frame)])
                .map_err(io::Error::from)
        } else {
            nix::unistd::write(self.fd.as_fd(), frame).map_err(io::Error::from)
        }
    }
}
