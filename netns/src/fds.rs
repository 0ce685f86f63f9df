//! Passing open descriptors between processes over a Unix stream socket (`SCM_RIGHTS`): how a
//! privileged helper hands the queues of a TAP it made to an unprivileged daemon.
//!
//! One message is some bytes with the descriptors attached to them. The receiver gets the
//! descriptors close-on-exec and owns them; descriptors beyond what it asked for, and a message
//! whose control data was cut short, are refused (and closed), never half taken.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::error::{Error, Result};

/// Most descriptors one message carries: the queues of one TAP.
pub const MAX_FDS: usize = crate::tap::MAX_QUEUES;

/// Sends `bytes` (at least one) with `fds` attached, in one `sendmsg`.
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    const OP: &str = "sending descriptors";
    if bytes.is_empty() || fds.len() > MAX_FDS {
        return Err(Error::invalid(
            OP,
            "",
            "a message needs bytes and at most 256 descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let control = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &control };
    let mut sent = 0;
    while sent < bytes.len() {
        // The descriptors go with the first bytes; the rest follows if the socket took part.
        let control = if sent == 0 { control } else { &[] };
        sent += sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| Error::from_errno(OP, "", e))?;
    }
    Ok(())
}

/// Receives one message into `buf`: how many bytes, and the descriptors that came with them
/// (at most `max_fds`). `Ok((0, []))` is the end of the stream. A non-blocking socket with
/// nothing to read gives `EAGAIN` (see [`Error::errno`]).
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> Result<(usize, Vec<OwnedFd>)> {
    const OP: &str = "receiving descriptors";
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::from_errno(OP, "", e))?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| Error::from_errno(OP, "", e))? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel installed `fd` in this process for this message, and
                // nothing else refers to it: it is ours to own (and to close).
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Error::invalid(OP, "", "the descriptors were cut short"));
    }
    if fds.len() > max_fds {
        return Err(Error::invalid(OP, "", "more descriptors than expected"));
    }
    Ok((msg.bytes, fds))
}

/// Borrows each descriptor of a list, for [`send_with_fds`].
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_a_socket_and_stay_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_read, pipe_write) = UnixStream::pair().unwrap();
        let owned: OwnedFd = pipe_write.into();
        send_with_fds(a.as_fd(), b"plug\n", &[owned.as_fd()]).unwrap();
        drop(owned);
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 4).unwrap();
        assert_eq!(&buf[..n], b"plug\n");
        assert_eq!(fds.len(), 1);
        let mut received = UnixStream::from(fds.into_iter().next().unwrap());
        received.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        pipe_read.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn too_many_descriptors_are_refused_and_none_is_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"x", &[x.as_fd(), y.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        assert!(recv_with_fds(b.as_fd(), &mut buf, 1).is_err());
        // The end of the stream is a zero-length message without descriptors.
        drop(a);
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!((n, fds.len()), (0, 0));
    }
}
