//! Network namespaces, links and TAP devices for the vswitch daemon and its tests.
//!
//! Four pieces, all synchronous (blocking) so that async callers can run them on
//! `spawn_blocking`:
//!
//! - [`NetNs`]: create, open and delete network namespaces the way `ip netns` does
//!   (bind mounts under `/run/netns`), run closures or spawn processes inside them.
//! - [`Netlink`]: an rtnetlink connection bound to one namespace: veth pairs,
//!   bridges, VXLAN devices, moving, renaming and configuring links, addresses and
//!   routes.
//! - [`nft`]: NAT rules (masquerade, published ports) in an nftables table of our own, sent
//!   over netlink.
//! - [`Tap`]: TAP devices opened through `/dev/net/tun` ioctls, with the virtio-net
//!   header, several queues and the segmentation offloads the kernel accepts.
//! - [`send_with_fds`] / [`recv_with_fds`]: descriptors (a TAP's queues) handed from one
//!   process to another over a Unix socket.
//!
//! Putting a container on the network, as the daemon does (from `spawn_blocking`):
//!
//! ```no_run
//! use netns::{Netlink, NetNs, NsRef, Offloads, Tap, TapOptions};
//!
//! # fn main() -> netns::Result<()> {
//! let ctr = NetNs::open(&"pid:4242".parse::<NsRef>()?)?;
//! let mut opts = TapOptions::new("vs4242");
//! opts.vnet_hdr = true;
//! opts.offloads = Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6;
//! let tap = Tap::create(&opts)?; // keep the queues: the datapath reads them
//!
//! Netlink::current()?.move_to_namespace_as(tap.name(), &ctr, "eth0")?;
//! let nl = Netlink::in_namespace(&ctr)?;
//! nl.set_mac("eth0", [0x02, 0, 10, 244, 1, 5])?;
//! nl.set_mtu("eth0", 1450)?;
//! nl.add_address("eth0", "10.244.1.5".parse().unwrap(), 24)?;
//! nl.set_up("eth0")?;
//! nl.add_route("0.0.0.0/0".parse().unwrap(), Some("10.244.1.1".parse().unwrap()), None)?;
//! # Ok(()) }
//! ```
//!
//! This is the one crate of the workspace that makes system calls directly; every
//! `unsafe` block is small and states why it is sound.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod fds;
mod name;
mod netlink;
pub mod nft;
mod ns;
mod sys;
mod tap;

pub use error::{Error, Result};
pub use fds::{MAX_FDS, borrow_all, recv_with_fds, send_with_fds};
pub use name::{IFNAME_MAX, validate_ifname};
pub use netlink::{LinkInfo, Netlink, RouteInfo, VXLAN_PORT, VxlanSpec};
pub use ns::{NETNS_RUN_DIR, NetNs, NsId, NsRef};
pub use tap::{MAX_QUEUES, Offloads, TUN_DEVICE, Tap, TapFeatures, TapOptions, VNET_HDR_LEN};
