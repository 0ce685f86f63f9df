//! Links, addresses and routes of one network namespace over rtnetlink.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{self, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::name::validate_ifname;
use crate::ns::NetNs;

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// A blocking rtnetlink connection bound to one network namespace.
///
/// The namespace is fixed when the connection is opened ([`Netlink::current`],
/// [`Netlink::in_namespace`]); later namespace changes of the calling thread do not
/// affect it. Every method blocks on a private single-threaded runtime, so none may
/// be called from inside an async task: use `spawn_blocking`.
pub struct Netlink {
    rt: Option<Runtime>,
    handle: Handle,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async task;
        // shutting it down in the background never does.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

/// What [`Netlink::link_info`] reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: Option<u32>,
    /// Hardware address, if the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Link kind (`veth`, `bridge`, `vxlan`, `tun`, ...), if the kernel reports one.
    pub kind: Option<String>,
    /// Index of the bridge or bond this link is enslaved to.
    pub master: Option<u32>,
}

/// A route of the main table, as [`Netlink::routes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
}

/// Parameters of a Linux kernel VXLAN device, for [`Netlink::create_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Interface name.
    pub name: String,
    /// VXLAN network identifier, below 2^24.
    pub vni: u32,
    /// Source address of the outer packets.
    pub local: Option<IpAddr>,
    /// Unicast peer VTEP: every frame without a learned destination goes there.
    pub remote: Option<IpAddr>,
    /// UDP destination port.
    pub port: u16,
    /// Underlay interface the tunnel is bound to.
    pub underlay: Option<String>,
    /// Learn remote MAC addresses from received packets.
    pub learning: bool,
}

impl VxlanSpec {
    /// A spec for `name` and `vni` on port 4789 with learning on and no addresses.
    pub fn new(name: impl Into<String>, vni: u32) -> VxlanSpec {
        VxlanSpec {
            name: name.into(),
            vni,
            local: None,
            remote: None,
            port: VXLAN_PORT,
            underlay: None,
            learning: true,
        }
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn parse_link(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mtu: None,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        kind: None,
        master: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => info.mtu = Some(*mtu),
            LinkAttribute::Address(addr) => info.mac = mac_of(addr),
            LinkAttribute::Controller(idx) => info.master = Some(*idx),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let link::LinkInfo::Kind(kind) = i {
                        info.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage) -> Option<RouteInfo> {
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(RouteInfo { dst, gateway, oif })
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn current() -> Result<Netlink> {
        const OP: &str = "opening netlink";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::os(OP, "runtime", e))?;
        let (conn, handle, _) = {
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(|e| Error::os(OP, "socket", e))?
        };
        rt.spawn(conn);
        Ok(Netlink {
            rt: Some(rt),
            handle,
        })
    }

    /// Opens a connection inside `ns`, from a thread that entered it.
    pub fn in_namespace(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::current)?
    }

    /// Runs one request to completion on the private runtime.
    fn block_on<F: Future>(&self, op: &'static str, object: &str, fut: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::invalid(
                op,
                object,
                "blocking netlink call from an async task (use spawn_blocking)",
            ));
        }
        match &self.rt {
            Some(rt) => Ok(rt.block_on(fut)),
            None => Err(Error::invalid(op, object, "netlink connection closed")),
        }
    }

    /// Runs one request and maps its error.
    fn request<T>(
        &self,
        op: &'static str,
        object: &str,
        fut: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T> {
        self.block_on(op, object, fut)?
            .map_err(|e| Error::from_rtnetlink(op, object, e))
    }

    fn index_for(&self, op: &'static str, object: &str, name: &str) -> Result<u32> {
        self.link_index(name)?.ok_or_else(|| Error::NoSuchLink {
            op,
            object: object.to_owned(),
            link: name.to_owned(),
        })
    }

    fn get_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        validate_ifname(name)?;
        let mut req = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match self.request("looking up link", name, req.try_next()) {
            Err(err) if err.is_not_found() => Ok(None),
            other => other,
        }
    }

    fn add(&self, op: &'static str, object: &str, msg: LinkMessage) -> Result<()> {
        self.request(op, object, self.handle.link().add(msg).execute())
    }

    fn change(&self, op: &'static str, object: &str, msg: LinkMessage) -> Result<()> {
        self.request(op, object, self.handle.link().change(msg).execute())
    }

    /// The index of link `name`, or `None` if there is no such link.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.get_link(name)?.map(|m| m.header.index))
    }

    /// Index, name, MTU, MAC, state, kind and master of link `name`, or `None` if
    /// there is no such link.
    pub fn link_info(&self, name: &str) -> Result<Option<LinkInfo>> {
        Ok(self.get_link(name)?.as_ref().map(parse_link))
    }

    /// Every link of the namespace.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = self.request("listing links", "", req.try_collect())?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    /// Creates a veth pair `a` <-> `b`, both down, in this namespace.
    pub fn create_veth(&self, a: &str, b: &str) -> Result<()> {
        validate_ifname(a)?;
        validate_ifname(b)?;
        self.add(
            "creating veth",
            &format!("{a}/{b}"),
            LinkVeth::new(a, b).build(),
        )
    }

    /// Creates a Linux bridge, down.
    pub fn create_bridge(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        self.add("creating bridge", name, LinkBridge::new(name).build())
    }

    /// Creates a Linux kernel VXLAN device, down.
    pub fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        const OP: &str = "creating vxlan";
        let name = spec.name.as_str();
        validate_ifname(name)?;
        if spec.vni >= 1 << 24 {
            return Err(Error::invalid(OP, name, "VNI does not fit in 24 bits"));
        }
        let mut b = LinkVxlan::new(name, spec.vni)
            .port(spec.port)
            .learning(spec.learning);
        match (spec.local, spec.remote) {
            (Some(IpAddr::V4(_)), Some(IpAddr::V6(_)))
            | (Some(IpAddr::V6(_)), Some(IpAddr::V4(_))) => {
                return Err(Error::invalid(
                    OP,
                    name,
                    "local and remote addresses of different families",
                ));
            }
            _ => {}
        }
        match spec.local {
            Some(IpAddr::V4(a)) => b = b.local(a),
            Some(IpAddr::V6(a)) => b = b.local6(a),
            None => {}
        }
        match spec.remote {
            Some(IpAddr::V4(a)) => b = b.remote(a),
            Some(IpAddr::V6(a)) => b = b.remote6(a),
            None => {}
        }
        if let Some(dev) = &spec.underlay {
            b = b.dev(self.index_for(OP, name, dev)?);
        }
        self.add(OP, name, b.build())
    }

    /// Appends a forwarding entry to kernel VXLAN device `dev`: frames for `mac`
    /// go to the VTEP at `dst`. The all-zero MAC is the flood list: one entry per
    /// peer gives head-end replication, as
    /// `bridge fdb append 00:00:00:00:00:00 dev DEV dst IP` does.
    pub fn append_vxlan_fdb(&self, dev: &str, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        const OP: &str = "appending fdb entry to";
        let index = self.index_for(OP, dev, dev)?;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }),
        ];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let object = format!("{dev} ({dst})");
        let mut handle = self.handle.clone();
        let replies = handle
            .request(req)
            .map_err(|e| Error::from_rtnetlink(OP, object.clone(), e))?;
        self.request(OP, &object, async move {
            let mut replies = std::pin::pin!(replies);
            while let Some(reply) = replies.next().await {
                if let NetlinkPayload::Error(err) = reply.payload {
                    if err.code.is_some() {
                        return Err(rtnetlink::Error::NetlinkError(err));
                    }
                }
            }
            Ok(())
        })
    }

    /// Enslaves `link` to `bridge`.
    pub fn set_master(&self, link: &str, bridge: &str) -> Result<()> {
        const OP: &str = "setting master of";
        let index = self.index_for(OP, link, link)?;
        let master = self.index_for(OP, link, bridge)?;
        self.change(
            OP,
            link,
            LinkUnspec::new_with_index(index).controller(master).build(),
        )
    }

    /// Releases `link` from its bridge, if any.
    pub fn set_nomaster(&self, link: &str) -> Result<()> {
        const OP: &str = "releasing master of";
        let index = self.index_for(OP, link, link)?;
        self.change(
            OP,
            link,
            LinkUnspec::new_with_index(index).nocontroller().build(),
        )
    }

    /// Brings link `name` up.
    pub fn set_up(&self, name: &str) -> Result<()> {
        const OP: &str = "bringing up";
        let index = self.index_for(OP, name, name)?;
        self.change(OP, name, LinkUnspec::new_with_index(index).up().build())
    }

    /// Brings link `name` down.
    pub fn set_down(&self, name: &str) -> Result<()> {
        const OP: &str = "bringing down";
        let index = self.index_for(OP, name, name)?;
        self.change(OP, name, LinkUnspec::new_with_index(index).down().build())
    }

    /// Sets the MTU of link `name`.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        const OP: &str = "setting mtu of";
        let index = self.index_for(OP, name, name)?;
        self.change(OP, name, LinkUnspec::new_with_index(index).mtu(mtu).build())
    }

    /// Sets the hardware address of link `name`.
    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        const OP: &str = "setting mac of";
        let index = self.index_for(OP, name, name)?;
        self.change(
            OP,
            name,
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
    }

    /// Renames link `name` to `new_name`. The link must be down.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        const OP: &str = "renaming";
        validate_ifname(new_name)?;
        let index = self.index_for(OP, name, name)?;
        self.change(
            OP,
            name,
            LinkUnspec::new_with_index(index).name(new_name).build(),
        )
    }

    /// Moves link `name` into namespace `ns`, keeping its name. Open TAP queues
    /// stay valid.
    pub fn move_to_namespace(&self, name: &str, ns: &NetNs) -> Result<()> {
        self.move_link(name, ns, None)
    }

    /// Moves link `name` into namespace `ns` and gives it `new_name` there, in one
    /// step, so a name taken in this namespace (or in `ns`) never collides.
    pub fn move_to_namespace_as(&self, name: &str, ns: &NetNs, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        self.move_link(name, ns, Some(new_name))
    }

    fn move_link(&self, name: &str, ns: &NetNs, new_name: Option<&str>) -> Result<()> {
        const OP: &str = "moving link";
        let object = format!("{name} to namespace {}", ns.label());
        let index = self.index_for(OP, &object, name)?;
        let mut b = LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd());
        if let Some(n) = new_name {
            b = b.name(n);
        }
        self.change(OP, &object, b.build())
    }

    /// Adds `addr/prefix_len` to link `name`.
    pub fn add_address(&self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
        const OP: &str = "adding address to";
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(Error::invalid(OP, name, "prefix length too long"));
        }
        let index = self.index_for(OP, name, name)?;
        self.request(
            OP,
            &format!("{name} ({addr}/{prefix_len})"),
            self.handle.address().add(index, addr, prefix_len).execute(),
        )
    }

    /// The addresses of link `name`, each with its prefix length.
    pub fn addresses(&self, name: &str) -> Result<Vec<IpNet>> {
        const OP: &str = "listing addresses of";
        let index = self.index_for(OP, name, name)?;
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs: Vec<_> = self.request(OP, name, req.try_collect())?;
        let mut out = Vec::new();
        for msg in msgs.iter().filter(|m| m.header.index == index) {
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Removes address `net` from link `name`; `false` when the link does not carry it.
    pub fn delete_address(&self, name: &str, net: IpNet) -> Result<bool> {
        const OP: &str = "removing address from";
        let object = format!("{name} ({net})");
        let index = self.index_for(OP, &object, name)?;
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs: Vec<_> = self.request(OP, &object, req.try_collect())?;
        let found = msgs.into_iter().find(|msg| {
            msg.header.index == index
                && msg.header.prefix_len == net.prefix_len()
                && msg.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Local(a) | AddressAttribute::Address(a)
                        if *a == net.addr())
                })
        });
        let Some(msg) = found else {
            return Ok(false);
        };
        match self.request(OP, &object, self.handle.address().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(err) if err.is_not_found() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Adds a route to `dst` (`0.0.0.0/0` for the default route) via `gateway`
    /// and/or out of link `dev`. Host bits of `dst` are ignored. Without a gateway
    /// the route has link scope, as `ip route add PREFIX dev DEV` gives.
    pub fn add_route(&self, dst: IpNet, gateway: Option<IpAddr>, dev: Option<&str>) -> Result<()> {
        const OP: &str = "adding route";
        let object = dst.trunc().to_string();
        if gateway.is_none() && dev.is_none() {
            return Err(Error::invalid(
                OP,
                object,
                "neither gateway nor device given",
            ));
        }
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|_| Error::invalid(OP, object.clone(), "invalid destination"))?;
        if let Some(gw) = gateway {
            b = b
                .gateway(gw)
                .map_err(|_| Error::invalid(OP, object.clone(), "gateway of another family"))?;
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(dev) = dev {
            b = b.output_interface(self.index_for(OP, &object, dev)?);
        }
        self.request(OP, &object, self.handle.route().add(b.build()).execute())
    }

    /// The unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        const OP: &str = "listing routes";
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let req = self.handle.route().get(msg).execute();
            let msgs: Vec<RouteMessage> = self.request(OP, "", req.try_collect())?;
            out.extend(msgs.iter().filter_map(parse_route));
        }
        Ok(out)
    }

    /// Deletes link `name` (for a veth, both ends). Returns `false` if there was no
    /// such link, so repeating a delete is harmless.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        const OP: &str = "deleting link";
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        match self.request(OP, name, self.handle.link().del(index).execute()) {
            Ok(()) => Ok(true),
            Err(err) if err.is_not_found() => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteMessage;
    use std::net::Ipv4Addr;

    #[test]
    fn vxlan_spec_defaults() {
        let s = VxlanSpec::new("vx0", 42);
        assert_eq!(s.port, 4789);
        assert!(s.learning);
        assert!(s.local.is_none() && s.remote.is_none() && s.underlay.is_none());
    }

    #[test]
    fn parse_link_message() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Controller(3),
            LinkAttribute::LinkInfo(vec![link::LinkInfo::Kind(link::InfoKind::Veth)]),
        ];
        let info = parse_link(&msg);
        assert_eq!(
            info,
            LinkInfo {
                index: 7,
                name: "eth0".into(),
                mtu: Some(1450),
                mac: Some([2, 0, 0, 0, 0, 1]),
                up: true,
                lower_up: false,
                kind: Some("veth".into()),
                master: Some(3),
            }
        );
        msg.attributes = vec![LinkAttribute::Address(vec![1, 2, 3])];
        assert_eq!(parse_link(&msg).mac, None);
    }

    #[test]
    fn parse_default_route() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1))),
            RouteAttribute::Oif(4),
        ];
        let r = parse_route(&msg).unwrap();
        assert_eq!(r.dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(r.gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(r.oif, Some(4));
        msg.header.table = 255;
        assert!(parse_route(&msg).is_none());
    }
}
