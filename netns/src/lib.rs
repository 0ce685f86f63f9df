//! Network namespaces, links and TAP devices for the vswitch daemon and its tests.
//!
//! Three pieces, all synchronous (blocking) so that async callers can run them on
//! `spawn_blocking`:
//!
//! - [`NetNs`]: create, open and delete network namespaces the way `ip netns` does
//!   (bind mounts under `/run/netns`), run closures or spawn processes inside them.
//! - [`Netlink`]: an rtnetlink connection bound to one namespace: veth pairs,
//!   bridges, VXLAN devices, moving, renaming and configuring links, addresses and
//!   routes.
//! - [`Tap`]: TAP devices opened through `/dev/net/tun` ioctls, with the virtio-net
//!   header, several queues and the segmentation offloads the kernel accepts.
//!
//! This is the one crate of the workspace that makes system calls directly; every
//! `unsafe` block is small and states why it is sound.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod name;
mod netlink;
mod ns;
mod sys;
mod tap;

pub use error::{Error, Result};
pub use name::validate_ifname;
pub use netlink::{LinkInfo, Netlink, RouteInfo, VxlanSpec};
pub use ns::{NetNs, NsId, NsRef};
pub use tap::{Offloads, Tap, TapFeatures, TapOptions};
