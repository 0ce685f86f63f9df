//! TAP devices through `/dev/net/tun`: creation, queues, the virtio-net header and
//! segmentation offloads.
//!
//! Offloads are only ever enabled together with the vnet header: without it the
//! kernel would hand the reader unmarked 64 KB super-frames.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::ops::{BitAnd, BitOr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_uint};

use crate::error::{Error, Result};
use crate::name::validate_ifname;
use crate::sys::{self, IfReq, consts};

/// Path of the TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Length of the virtio-net header this crate configures (`virtio_net_hdr_v1`,
/// with `num_buffers`). The kernel default would be 10.
pub const VNET_HDR_LEN: usize = 12;

/// Most queues one TAP device may have (the kernel's `MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// Segmentation and checksum offloads the reader of a TAP handles
/// (`TUN_F_*` of `TUNSETOFFLOAD`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Offloads(u32);

impl Offloads {
    /// No offloads: every frame is complete and checksummed.
    pub const NONE: Offloads = Offloads(0);
    /// Frames may carry a partial checksum to be completed by the reader.
    pub const CSUM: Offloads = Offloads(consts::TUN_F_CSUM);
    /// TCP segmentation offload over IPv4.
    pub const TSO4: Offloads = Offloads(consts::TUN_F_TSO4);
    /// TCP segmentation offload over IPv6.
    pub const TSO6: Offloads = Offloads(consts::TUN_F_TSO6);
    /// TSO with the ECN bits set.
    pub const TSO_ECN: Offloads = Offloads(consts::TUN_F_TSO_ECN);
    /// UDP segmentation offload over IPv4 (the kernel enables USO only when
    /// `USO4` and `USO6` are requested together).
    pub const USO4: Offloads = Offloads(consts::TUN_F_USO4);
    /// UDP segmentation offload over IPv6.
    pub const USO6: Offloads = Offloads(consts::TUN_F_USO6);
    /// Checksum, TSO and USO for both IP versions: what a vhost-style datapath uses.
    pub const ALL: Offloads = Offloads(
        consts::TUN_F_CSUM
            | consts::TUN_F_TSO4
            | consts::TUN_F_TSO6
            | consts::TUN_F_TSO_ECN
            | consts::TUN_F_USO4
            | consts::TUN_F_USO6,
    );

    /// The `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Offloads from `TUN_F_*` bits, dropping bits this type does not know.
    pub const fn from_bits_truncate(bits: u32) -> Offloads {
        Offloads(bits & Self::ALL.0)
    }

    /// True if no offload is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if every offload of `other` is set in `self`.
    pub const fn contains(self, other: Offloads) -> bool {
        self.0 & other.0 == other.0
    }

    /// The offloads of `self` that are not in `other`.
    pub const fn difference(self, other: Offloads) -> Offloads {
        Offloads(self.0 & !other.0)
    }

    /// The sequence of offload sets tried by [`Tap::create`], best first: the
    /// request, then without USO, then without ECN, then checksum only, then none.
    fn fallbacks(self) -> Vec<Offloads> {
        let mut out: Vec<Offloads> = Vec::with_capacity(5);
        let steps = [
            self,
            self.difference(Self::USO4 | Self::USO6),
            self.difference(Self::USO4 | Self::USO6 | Self::TSO_ECN),
            self & Self::CSUM,
            Self::NONE,
        ];
        for s in steps {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

impl BitOr for Offloads {
    type Output = Offloads;
    fn bitor(self, rhs: Offloads) -> Offloads {
        Offloads(self.0 | rhs.0)
    }
}

impl BitAnd for Offloads {
    type Output = Offloads;
    fn bitand(self, rhs: Offloads) -> Offloads {
        Offloads(self.0 & rhs.0)
    }
}

impl fmt::Debug for Offloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Offloads, &str); 6] = [
            (Offloads::CSUM, "CSUM"),
            (Offloads::TSO4, "TSO4"),
            (Offloads::TSO6, "TSO6"),
            (Offloads::TSO_ECN, "TSO_ECN"),
            (Offloads::USO4, "USO4"),
            (Offloads::USO6, "USO6"),
        ];
        if self.is_empty() {
            return f.write_str("Offloads(NONE)");
        }
        f.write_str("Offloads(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// How to create or attach to a TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Interface name; empty lets the kernel pick (`tapN`).
    pub name: String,
    /// Prepend a 12-byte virtio-net header to every frame (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Number of queues (descriptors); more than one makes the device
    /// multi-queue (`IFF_MULTI_QUEUE`).
    pub queues: usize,
    /// Make the device multi-queue even with one queue, so that it can be attached to later
    /// with any number of queues. A device's multi-queue flag is fixed when it is created,
    /// and attaching must use the same.
    pub multi_queue: bool,
    /// Offloads to enable; needs `vnet_hdr`. The kernel may accept fewer.
    pub offloads: Offloads,
    /// Keep the device when its last queue closes.
    pub persist: bool,
}

impl TapOptions {
    /// One queue, no vnet header, no offloads, not persistent.
    pub fn new(name: impl Into<String>) -> TapOptions {
        TapOptions {
            name: name.into(),
            vnet_hdr: false,
            queues: 1,
            multi_queue: false,
            offloads: Offloads::NONE,
            persist: false,
        }
    }

    /// Checks the options for consistency.
    fn validate(&self, op: &'static str) -> Result<()> {
        if !self.name.is_empty() {
            validate_ifname(&self.name)?;
        }
        let object = || self.name.clone();
        if self.queues == 0 || self.queues > MAX_QUEUES {
            return Err(Error::invalid(op, object(), "queues must be 1 to 256"));
        }
        if !self.offloads.is_empty() && !self.vnet_hdr {
            return Err(Error::invalid(
                op,
                object(),
                "offloads need the vnet header",
            ));
        }
        if !self.offloads.difference(Offloads::CSUM).is_empty()
            && !self.offloads.contains(Offloads::CSUM)
        {
            return Err(Error::invalid(op, object(), "TSO and USO need CSUM"));
        }
        Ok(())
    }

    /// The `ifr_flags` for `TUNSETIFF`.
    fn iff_flags(&self) -> c_int {
        let mut flags = consts::IFF_TAP | consts::IFF_NO_PI;
        if self.vnet_hdr {
            flags |= consts::IFF_VNET_HDR;
        }
        if self.queues > 1 || self.multi_queue {
            flags |= consts::IFF_MULTI_QUEUE;
        }
        flags
    }
}

/// What the kernel's TUN driver supports (`TUNGETFEATURES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapFeatures {
    /// `IFF_VNET_HDR` is supported.
    pub vnet_hdr: bool,
    /// `IFF_MULTI_QUEUE` is supported.
    pub multi_queue: bool,
    /// The raw `IFF_*` feature bits.
    pub bits: u32,
}

/// An open TAP device: one non-blocking, close-on-exec descriptor per queue.
///
/// A device that is not persistent disappears when the last queue is closed. The
/// descriptors stay valid when the device is moved to another namespace or renamed.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<OwnedFd>,
    vnet_hdr_len: usize,
    offloads: Offloads,
}

fn open_queue(op: &'static str, name: &str) -> Result<OwnedFd> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| Error::os(op, format!("{name} ({TUN_DEVICE})"), e))?;
    Ok(file.into())
}

impl Tap {
    /// Creates a TAP device in the calling thread's namespace. Fails with `EEXIST`
    /// if a device of that name exists.
    ///
    /// With `vnet_hdr`, the header length is set to 12. Requested offloads are
    /// probed: if the kernel refuses the set, USO, then ECN, then segmentation are
    /// dropped; [`Tap::offloads`] tells what was accepted.
    pub fn create(opts: &TapOptions) -> Result<Tap> {
        Self::open(opts, true)
    }

    /// Opens the queues of an existing TAP device (typically a persistent one) by
    /// name, in the calling thread's namespace. `opts` must match how it was
    /// created (multi-queue or not). With `persist` set, the device is made
    /// persistent; otherwise its persistence is left as it is.
    pub fn attach(opts: &TapOptions) -> Result<Tap> {
        const OP: &str = "attaching to tap";
        if opts.name.is_empty() {
            return Err(Error::invalid(OP, "", "a name is needed"));
        }
        validate_ifname(&opts.name)?;
        nix::net::if_::if_nametoindex(opts.name.as_str())
            .map_err(|e| Error::from_errno(OP, opts.name.clone(), e))?;
        Self::open(opts, false)
    }

    fn open(opts: &TapOptions, create: bool) -> Result<Tap> {
        let op = if create {
            "creating tap"
        } else {
            "attaching to tap"
        };
        opts.validate(op)?;
        let flags = opts.iff_flags();
        let first = open_queue(op, &opts.name)?;
        let excl = if create { consts::IFF_TUN_EXCL } else { 0 };
        let mut req = IfReq::new(&opts.name, flags | excl);
        sys::tun_set_iff(first.as_fd(), &mut req).map_err(|e| {
            let e = match e.raw_os_error() {
                Some(libc::EBUSY) if create => std::io::Error::from_raw_os_error(libc::EEXIST),
                _ => e,
            };
            Error::os(op, opts.name.clone(), e)
        })?;
        let name = req.name();
        let mut queues = Vec::with_capacity(opts.queues);
        queues.push(first);
        while queues.len() < opts.queues {
            let fd = open_queue(op, &name)?;
            let mut req = IfReq::new(&name, flags);
            sys::tun_set_iff(fd.as_fd(), &mut req)
                .map_err(|e| Error::os("adding queue to tap", name.clone(), e))?;
            queues.push(fd);
        }
        let mut tap = Tap {
            name,
            queues,
            vnet_hdr_len: 0,
            offloads: Offloads::NONE,
        };
        if opts.vnet_hdr {
            tap.set_vnet_hdr_len()?;
        }
        tap.offloads = tap.probe_offloads(opts.offloads)?;
        if opts.persist {
            tap.set_persist(true)?;
        }
        Ok(tap)
    }

    /// Takes the queues of a TAP opened elsewhere (received from another process): each must
    /// be a queue of the same TAP device, with the virtio-net header of this crate or none.
    /// `offloads` are the ones to enable (with the vnet header only), probed as by
    /// [`Tap::create`]; setting them needs no privilege on a queue one holds.
    pub fn from_queues(queues: Vec<OwnedFd>, offloads: Offloads) -> Result<Tap> {
        const OP: &str = "taking the queues of";
        let mut name = None;
        let mut vnet_hdr = None;
        for fd in &queues {
            let req = sys::tun_get_iff(fd.as_fd())
                .map_err(|e| Error::os(OP, "a received descriptor", e))?;
            let flags = c_int::from(req.flags);
            if flags & consts::IFF_TAP == 0 || flags & consts::IFF_NO_PI == 0 {
                return Err(Error::invalid(
                    OP,
                    req.name(),
                    "not a TAP without packet info",
                ));
            }
            let has_vnet_hdr = flags & consts::IFF_VNET_HDR != 0;
            let this = req.name();
            if name.get_or_insert_with(|| this.clone()) != &this
                || *vnet_hdr.get_or_insert(has_vnet_hdr) != has_vnet_hdr
            {
                return Err(Error::invalid(OP, this, "queues of different devices"));
            }
        }
        let Some(name) = name else {
            return Err(Error::invalid(OP, "", "no queue was given"));
        };
        if queues.len() > MAX_QUEUES {
            return Err(Error::invalid(OP, name, "more than 256 queues"));
        }
        let mut tap = Tap {
            name,
            queues,
            vnet_hdr_len: 0,
            offloads: Offloads::NONE,
        };
        if vnet_hdr == Some(true) {
            let len = sys::tun_get_vnet_hdr_sz(tap.first())
                .map_err(|e| Error::os(OP, tap.name.clone(), e))?;
            if usize::try_from(len).ok() != Some(VNET_HDR_LEN) {
                return Err(Error::invalid(
                    OP,
                    tap.name.clone(),
                    "vnet header is not 12 bytes",
                ));
            }
            tap.vnet_hdr_len = VNET_HDR_LEN;
            tap.offloads = tap.probe_offloads(offloads)?;
        }
        Ok(tap)
    }

    fn first(&self) -> BorrowedFd<'_> {
        // `open` never builds a Tap without queues; an empty Tap has been taken
        // apart by `into_queues` and cannot be reached.
        match self.queues.first() {
            Some(fd) => fd.as_fd(),
            None => unreachable_no_queue(),
        }
    }

    fn set_vnet_hdr_len(&mut self) -> Result<()> {
        const OP: &str = "setting vnet header length of";
        let want = VNET_HDR_LEN as c_int;
        sys::tun_set_vnet_hdr_sz(self.first(), want)
            .map_err(|e| Error::os(OP, self.name.clone(), e))?;
        let got = sys::tun_get_vnet_hdr_sz(self.first())
            .map_err(|e| Error::os(OP, self.name.clone(), e))?;
        if got != want {
            return Err(Error::invalid(
                OP,
                self.name.clone(),
                "kernel kept another length",
            ));
        }
        self.vnet_hdr_len = VNET_HDR_LEN;
        Ok(())
    }

    fn probe_offloads(&self, want: Offloads) -> Result<Offloads> {
        const OP: &str = "setting offloads of";
        for candidate in want.fallbacks() {
            match sys::tun_set_offload(self.first(), candidate.bits() as c_uint) {
                Ok(()) => {
                    if candidate != want {
                        tracing::debug!(
                            tap = %self.name,
                            requested = ?want,
                            accepted = ?candidate,
                            "kernel refused some TAP offloads"
                        );
                    }
                    return Ok(candidate);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
                Err(e) => return Err(Error::os(OP, self.name.clone(), e)),
            }
        }
        Err(Error::invalid(
            OP,
            self.name.clone(),
            "kernel refused every offload set",
        ))
    }

    /// The features of this kernel's TUN driver, read from a fresh descriptor
    /// without creating a device.
    pub fn features() -> Result<TapFeatures> {
        let fd = open_queue("probing tun features", "")?;
        let bits = sys::tun_get_features(fd.as_fd())
            .map_err(|e| Error::os("probing tun features", TUN_DEVICE, e))?;
        let has = |flag: c_int| bits & (flag as c_uint) != 0;
        Ok(TapFeatures {
            vnet_hdr: has(consts::IFF_VNET_HDR),
            multi_queue: has(consts::IFF_MULTI_QUEUE),
            bits,
        })
    }

    /// The name the device was created or attached with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's name now, as the kernel reports it (it changes when the device
    /// is renamed, also inside another namespace).
    pub fn current_name(&self) -> Result<String> {
        sys::tun_get_iff(self.first())
            .map(|req| req.name())
            .map_err(|e| Error::os("reading name of tap", self.name.clone(), e))
    }

    /// The queue descriptors, in the order they were opened.
    pub fn queues(&self) -> &[OwnedFd] {
        &self.queues
    }

    /// Takes the queue descriptors, e.g. to wrap them in `AsyncFd`.
    pub fn into_queues(self) -> Vec<OwnedFd> {
        self.queues
    }

    /// Length of the virtio-net header before each frame: 12, or 0 without one.
    pub fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }

    /// The offloads the kernel accepted.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Makes the device persistent (it survives its last queue) or not.
    pub fn set_persist(&self, on: bool) -> Result<()> {
        sys::tun_set_persist(self.first(), on)
            .map_err(|e| Error::os("setting persistence of tap", self.name.clone(), e))
    }
}

#[cold]
fn unreachable_no_queue() -> ! {
    unreachable!("a Tap always holds at least one queue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_flags() {
        let mut o = TapOptions::new("t0");
        assert_eq!(o.iff_flags(), 0x1002);
        o.vnet_hdr = true;
        assert_eq!(o.iff_flags(), 0x5002);
        o.queues = 4;
        assert_eq!(o.iff_flags(), 0x5102);
    }

    #[test]
    fn option_validation() {
        let mut o = TapOptions::new("t0");
        assert!(o.validate("x").is_ok());
        o.queues = 0;
        assert!(o.validate("x").is_err());
        o.queues = 257;
        assert!(o.validate("x").is_err());
        o.queues = 256;
        assert!(o.validate("x").is_ok());
        o.offloads = Offloads::CSUM;
        assert!(o.validate("x").is_err(), "offloads without vnet header");
        o.vnet_hdr = true;
        assert!(o.validate("x").is_ok());
        o.offloads = Offloads::TSO4;
        assert!(o.validate("x").is_err(), "TSO without CSUM");
        o.offloads = Offloads::ALL;
        assert!(o.validate("x").is_ok());
        o.name = "much-too-long-name".into();
        assert!(o.validate("x").is_err());
        o.name = String::new();
        assert!(o.validate("x").is_ok());
    }

    #[test]
    fn offload_bits() {
        assert_eq!(Offloads::ALL.bits(), 0x7f & !0x10);
        let o = Offloads::CSUM | Offloads::TSO4 | Offloads::USO4 | Offloads::USO6;
        assert_eq!(o.bits(), 0x63);
        assert!(o.contains(Offloads::CSUM | Offloads::TSO4));
        assert!(!o.contains(Offloads::TSO6));
        assert_eq!(Offloads::from_bits_truncate(0xff), Offloads::ALL);
        assert_eq!(format!("{o:?}"), "Offloads(CSUM|TSO4|USO4|USO6)");
        assert_eq!(format!("{:?}", Offloads::NONE), "Offloads(NONE)");
    }

    #[test]
    fn offload_fallbacks() {
        let f = Offloads::ALL.fallbacks();
        assert_eq!(f[0], Offloads::ALL);
        assert_eq!(
            f[1],
            Offloads::ALL.difference(Offloads::USO4 | Offloads::USO6)
        );
        assert_eq!(f[2], Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6);
        assert_eq!(f[3], Offloads::CSUM);
        assert_eq!(f[4], Offloads::NONE);
        assert_eq!(Offloads::NONE.fallbacks(), vec![Offloads::NONE]);
        assert_eq!(
            Offloads::CSUM.fallbacks(),
            vec![Offloads::CSUM, Offloads::NONE]
        );
    }
}
