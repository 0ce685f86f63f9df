//! Raw ioctls on `/dev/net/tun` and namespace file descriptors.
//!
//! The only module with `unsafe` code besides the `pre_exec` hook of
//! [`NetNs::command`](crate::NetNs::command). Each function wraps one ioctl, takes
//! a borrowed descriptor and returns `io::Result`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_short, c_uint, c_ulong};

/// Request codes and flags of `<linux/if_tun.h>` and `<linux/nsfs.h>`, as the
/// libc crate encodes them for the target architecture.
pub(crate) mod consts {
    pub(crate) use libc::{
        IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_TUN_EXCL, IFF_VNET_HDR, NS_GET_NSTYPE, TUN_F_CSUM,
        TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6, TUNGETFEATURES, TUNGETIFF,
        TUNGETVNETHDRSZ, TUNSETIFF, TUNSETOFFLOAD, TUNSETPERSIST, TUNSETVNETHDRSZ,
    };
}

/// `struct ifreq` as used by the TUN ioctls: a name and the `ifr_flags` member of
/// the union, padded to the kernel's 40 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    pub(crate) name: [u8; libc::IFNAMSIZ],
    pub(crate) flags: c_short,
    _pad: [u8; 22],
}

impl IfReq {
    /// A request for interface `name` (at most 15 bytes, checked by the caller)
    /// with `flags`; longer names are cut to fit, keeping the terminating NUL.
    pub(crate) fn new(name: &str, flags: c_int) -> IfReq {
        let mut buf = [0u8; libc::IFNAMSIZ];
        let bytes = name.as_bytes();
        let len = bytes.len().min(libc::IFNAMSIZ - 1);
        buf[..len].copy_from_slice(&bytes[..len]);
        IfReq {
            name: buf,
            // The kernel reads ifr_flags as a short; every TUN flag fits in 16 bits.
            flags: flags as c_short,
            _pad: [0; 22],
        }
    }

    /// The interface name the kernel wrote back, up to the first NUL.
    pub(crate) fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `TUNSETIFF`: creates or attaches to the TUN/TAP device named in `req`; the kernel
/// writes the final name back into `req`.
pub(crate) fn tun_set_iff(fd: BorrowedFd<'_>, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor; `req` points to a writable, properly sized
    // and aligned `struct ifreq` for the duration of the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), consts::TUNSETIFF, req as *mut IfReq) })?;
    Ok(())
}

/// `TUNGETIFF`: reads the name and flags of the device the queue is attached to.
pub(crate) fn tun_get_iff(fd: BorrowedFd<'_>) -> io::Result<IfReq> {
    let mut req = IfReq::new("", 0);
    // SAFETY: as in `tun_set_iff`; the kernel writes at most `sizeof(struct ifreq)`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), consts::TUNGETIFF, &mut req as *mut IfReq) })?;
    Ok(req)
}

/// `TUNSETPERSIST`: keeps the device after its last queue closes, or not.
pub(crate) fn tun_set_persist(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let arg = c_ulong::from(on);
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), consts::TUNSETPERSIST, arg) })?;
    Ok(())
}

/// `TUNSETOFFLOAD`: tells the kernel which offloads the reader handles.
pub(crate) fn tun_set_offload(fd: BorrowedFd<'_>, flags: c_uint) -> io::Result<()> {
    let arg = c_ulong::from(flags);
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), consts::TUNSETOFFLOAD, arg) })?;
    Ok(())
}

/// `TUNSETVNETHDRSZ`: sets the virtio-net header length prepended to each frame.
pub(crate) fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, len: c_int) -> io::Result<()> {
    // SAFETY: the kernel reads one `int` through the pointer, which is valid for
    // the duration of the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            consts::TUNSETVNETHDRSZ,
            &len as *const c_int,
        )
    })?;
    Ok(())
}

/// `TUNGETVNETHDRSZ`: reads the virtio-net header length.
pub(crate) fn tun_get_vnet_hdr_sz(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    let mut len: c_int = 0;
    // SAFETY: the kernel writes one `int` through the pointer, which is valid and
    // writable for the duration of the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            consts::TUNGETVNETHDRSZ,
            &mut len as *mut c_int,
        )
    })?;
    Ok(len)
}

/// `TUNGETFEATURES`: the `IFF_*` flags this kernel's TUN driver supports.
pub(crate) fn tun_get_features(fd: BorrowedFd<'_>) -> io::Result<c_uint> {
    let mut features: c_uint = 0;
    // SAFETY: the kernel writes one `unsigned int` through the pointer, which is
    // valid and writable for the duration of the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            consts::TUNGETFEATURES,
            &mut features as *mut c_uint,
        )
    })?;
    Ok(features)
}

/// `NS_GET_NSTYPE`: the `CLONE_NEW*` type of the namespace behind `fd`.
pub(crate) fn ns_get_type(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type as the result.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), consts::NS_GET_NSTYPE) })
}

#[cfg(test)]
mod tests {
    use super::consts::*;
    use super::*;

    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    #[test]
    fn request_codes_match_the_kernel_headers() {
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETPERSIST, 0x4004_54cb);
        assert_eq!(TUNGETFEATURES, 0x8004_54cf);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNGETIFF, 0x8004_54d2);
        assert_eq!(TUNGETVNETHDRSZ, 0x8004_54d7);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(NS_GET_NSTYPE, 0xb703);
    }

    #[test]
    fn flag_values_match_the_kernel_headers() {
        assert_eq!(IFF_TAP, 0x0002);
        assert_eq!(IFF_MULTI_QUEUE, 0x0100);
        assert_eq!(IFF_NO_PI, 0x1000);
        assert_eq!(IFF_VNET_HDR, 0x4000);
        assert_eq!(IFF_TUN_EXCL, 0x8000);
        assert_eq!(TUN_F_CSUM, 0x01);
        assert_eq!(TUN_F_TSO4, 0x02);
        assert_eq!(TUN_F_TSO6, 0x04);
        assert_eq!(TUN_F_TSO_ECN, 0x08);
        assert_eq!(TUN_F_USO4, 0x20);
        assert_eq!(TUN_F_USO6, 0x40);
    }

    #[test]
    fn ifreq_layout() {
        assert_eq!(size_of::<IfReq>(), size_of::<libc::ifreq>());
        assert_eq!(std::mem::offset_of!(IfReq, flags), libc::IFNAMSIZ);
        let req = IfReq::new("tap0", IFF_TAP | IFF_NO_PI);
        assert_eq!(req.name(), "tap0");
        assert_eq!(req.flags, 0x1002);
        let long = IfReq::new("abcdefghijklmnopqrst", 0);
        assert_eq!(long.name(), "abcdefghijklmno");
        assert_eq!(long.name[15], 0);
    }
}
