//! A container's TAP queue as the datapath sees it: non-blocking reads and writes of whole
//! Ethernet frames (no packet-info header) on a file descriptor the `netns` crate opened.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// One TAP queue owned by the datapath.
pub struct TapQueue {
    fd: OwnedFd,
}

impl TapQueue {
    /// Takes over an open, non-blocking TAP queue.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// The descriptor to wait on.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame; `WouldBlock` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.fd.as_fd(), buf).map_err(io::Error::from)
    }

    /// Writes one frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(self.fd.as_fd(), frame).map_err(io::Error::from)
    }
}
