//! NAT rules in an nftables table of our own, sent over netlink (libnftnl through the `nftnl`
//! crate): masquerade of a network's traffic leaving the cluster, published ports, and a
//! forward filter keeping the host from connecting interfaces that must stay apart.
//!
//! The whole table is replaced in one netlink transaction ([`apply`]): added if missing,
//! deleted, and built again with every chain and rule, so the kernel sees either the old rules
//! or the new ones, and applying the same rules twice is the same as once. Removing everything
//! is one table delete ([`delete_table`]). The rules go to the namespace of the calling thread.
//!
//! The table, for one masqueraded network and one published port, as `nft list table inet
//! vswitch` prints it:
//!
//! ```text
//! table inet vswitch {
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         meta nfproto ipv4 fib daddr type local meta l4proto tcp tcp dport 8080 dnat ip to 10.244.1.2:80
//!     }
//!     chain output {
//!         type nat hook output priority dstnat; policy accept;
//!         meta nfproto ipv4 fib daddr type local meta l4proto tcp tcp dport 8080 dnat ip to 10.244.1.2:80
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta nfproto ipv4 ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
//!         meta nfproto ipv4 ct status dnat ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         iifname "vsw-a" oifname "vsw-b" drop
//!         iifname "vsw-b" oifname "vsw-a" drop
//!     }
//! }
//! ```

use std::ffi::CString;
use std::io;
use std::net::SocketAddrV4;
use std::ptr;

use ipnet::Ipv4Net;
use nftnl::expr::{self, Expression, Register};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
    nft_expr,
};

use crate::{Error, Result};

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Traffic from `source` to anywhere but `cluster` leaves with the host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The network's subnet.
    pub source: Ipv4Net,
    /// Destinations that are not rewritten: every subnet of the cluster's networks.
    pub cluster: Vec<Ipv4Net>,
}

/// Connections to a port of any of the host's addresses go to a container's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host's port.
    pub host_port: u16,
    /// The container's address and port.
    pub target: SocketAddrV4,
    /// The subnet of the container's network: connections to the published port from inside
    /// it are masqueraded too, so that the answer comes back through the host (hairpin).
    pub network: Ipv4Net,
}

/// Everything the table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatRules {
    /// Networks whose traffic to outside the cluster is masqueraded.
    pub masquerade: Vec<Masquerade>,
    /// Published ports.
    pub published: Vec<PublishedPort>,
    /// Interfaces between which the host forwards nothing: the host ports of networks that
    /// the switch alone connects, if at all.
    pub isolated: Vec<String>,
}

/// `NFT_FIB_RESULT_ADDRTYPE`: the fib expression yields the address type of the lookup.
const FIB_RESULT_ADDRTYPE: u32 = 3;
/// `NFTA_FIB_F_DADDR`: look up the destination address.
const FIB_F_DADDR: u32 = 1 << 1;
/// `RTN_LOCAL`: an address of this host.
const RTN_LOCAL: u32 = 2;

/// `fib daddr type`: loads the routing type of the destination address into register 1.
struct FibDaddrType;

impl Expression for FibDaddrType {
    fn to_expr(&self, _rule: &Rule) -> ptr::NonNull<sys::nftnl_expr> {
        // SAFETY: the name is a NUL-terminated string; a null result is handled below.
        let raw = unsafe { sys::nftnl_expr_alloc(c"fib".as_ptr()) };
        let Some(expr) = ptr::NonNull::new(raw) else {
            // As the nftnl crate does for its own expressions: out of memory for a few bytes.
            std::process::abort();
        };
        for (attr, value) in [
            (sys::NFTNL_EXPR_FIB_DREG, libc::NFT_REG_1 as u32),
            (sys::NFTNL_EXPR_FIB_RESULT, FIB_RESULT_ADDRTYPE),
            (sys::NFTNL_EXPR_FIB_FLAGS, FIB_F_DADDR),
        ] {
            // SAFETY: `expr` is a live expression just allocated, and each attribute is a u32
            // attribute of the fib expression.
            unsafe { sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value) };
        }
        expr
    }
}

/// Replaces the table `inet NAME` with one holding `rules`, in one transaction.
pub fn apply(name: &str, rules: &NatRules) -> Result<()> {
    let table = Table::new(table_name(name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    // Adding an existing table is no error; deleting then adding empties it atomically.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    let mut prerouting = Chain::new(c"prerouting", &table);
    let mut output = Chain::new(c"output", &table);
    let mut postrouting = Chain::new(c"postrouting", &table);
    let mut forward = Chain::new(c"forward", &table);
    forward.set_type(ChainType::Filter);
    forward.set_hook(Hook::Forward, 0);
    forward.set_policy(Policy::Accept);
    batch.add(&forward, MsgType::Add);
    for from in &rules.isolated {
        for to in rules.isolated.iter().filter(|to| *to != from) {
            let mut rule = Rule::new(&forward);
            rule.add_expr(&nft_expr!(meta iifname));
            rule.add_expr(&nft_expr!(cmp == ifname_bytes(from)?.as_slice()));
            rule.add_expr(&nft_expr!(meta oifname));
            rule.add_expr(&nft_expr!(cmp == ifname_bytes(to)?.as_slice()));
            rule.add_expr(&nft_expr!(verdict drop));
            batch.add(&rule, MsgType::Add);
        }
    }
    for (chain, hook, priority) in [
        (&mut prerouting, Hook::PreRouting, -100),
        (&mut output, Hook::Out, -100),
        (&mut postrouting, Hook::PostRouting, 100),
    ] {
        chain.set_type(ChainType::Nat);
        chain.set_hook(hook, priority);
        chain.set_policy(Policy::Accept);
        batch.add(&*chain, MsgType::Add);
    }

    for port in &rules.published {
        for chain in [&prerouting, &output] {
            let mut rule = Rule::new(chain);
            ipv4_only(&mut rule);
            rule.add_expr(&FibDaddrType);
            rule.add_expr(&nft_expr!(cmp == RTN_LOCAL));
            match_port(&mut rule, port.protocol, port.host_port);
            rule.add_expr(&expr::Immediate::new(
                port.target.ip().octets(),
                Register::Reg1,
            ));
            rule.add_expr(&expr::Immediate::new(
                port.target.port().to_be(),
                Register::Reg2,
            ));
            rule.add_expr(&expr::Nat {
                nat_type: expr::NatType::DNat,
                family: ProtoFamily::Ipv4,
                ip_register: Register::Reg1,
                port_register: Some(Register::Reg2),
            });
            batch.add(&rule, MsgType::Add);
        }
    }

    for m in &rules.masquerade {
        let mut rule = Rule::new(&postrouting);
        ipv4_only(&mut rule);
        match_net(&mut rule, Field::Source, m.source, true);
        for &net in &m.cluster {
            match_net(&mut rule, Field::Destination, net, false);
        }
        rule.add_expr(&nft_expr!(masquerade));
        batch.add(&rule, MsgType::Add);
    }

    let mut hairpins: Vec<Ipv4Net> = rules.published.iter().map(|p| p.network).collect();
    hairpins.sort_unstable();
    hairpins.dedup();
    for net in hairpins {
        let mut rule = Rule::new(&postrouting);
        ipv4_only(&mut rule);
        rule.add_expr(&nft_expr!(ct status));
        let dnat = expr::ConntrackStatus::DST_NAT.bits();
        rule.add_expr(&nft_expr!(bitwise mask dnat, xor 0u32));
        rule.add_expr(&nft_expr!(cmp != 0u32));
        match_net(&mut rule, Field::Source, net, true);
        match_net(&mut rule, Field::Destination, net, true);
        rule.add_expr(&nft_expr!(masquerade));
        batch.add(&rule, MsgType::Add);
    }

    send(&batch.finalize(), name)
}

/// Deletes the table `inet NAME` with everything in it; `Ok(false)` when there was none.
pub fn delete_table(name: &str) -> Result<bool> {
    let table = Table::new(table_name(name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Del);
    match send(&batch.finalize(), name) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn table_name(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| Error::InvalidName {
        name: name.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// An interface name as the kernel keeps it: NUL-padded to 16 bytes.
fn ifname_bytes(name: &str) -> Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    if name.is_empty() || name.len() > 15 {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "an interface name has 1 to 15 bytes",
        });
    }
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(bytes)
}

fn ipv4_only(rule: &mut Rule<'_>) {
    rule.add_expr(&nft_expr!(meta nfproto));
    rule.add_expr(&nft_expr!(cmp == libc::NFPROTO_IPV4 as u8));
}

fn match_port(rule: &mut Rule<'_>, protocol: Protocol, port: u16) {
    rule.add_expr(&nft_expr!(meta l4proto));
    match protocol {
        Protocol::Tcp => {
            rule.add_expr(&nft_expr!(cmp == libc::IPPROTO_TCP as u8));
            rule.add_expr(&nft_expr!(payload tcp dport));
        }
        Protocol::Udp => {
            rule.add_expr(&nft_expr!(cmp == libc::IPPROTO_UDP as u8));
            rule.add_expr(&nft_expr!(payload udp dport));
        }
    }
    rule.add_expr(&nft_expr!(cmp == port.to_be()));
}

enum Field {
    Source,
    Destination,
}

/// Matches the source or destination address inside (`inside`) or outside `net`.
fn match_net(rule: &mut Rule<'_>, field: Field, net: Ipv4Net, inside: bool) {
    match field {
        Field::Source => rule.add_expr(&nft_expr!(payload ipv4 saddr)),
        Field::Destination => rule.add_expr(&nft_expr!(payload ipv4 daddr)),
    }
    rule.add_expr(&nft_expr!(bitwise mask net.netmask(), xor 0u32));
    if inside {
        rule.add_expr(&nft_expr!(cmp == net.network()));
    } else {
        rule.add_expr(&nft_expr!(cmp != net.network()));
    }
}

/// Sends a batch on a netfilter socket of the current namespace and checks every answer.
fn send(batch: &FinalizedBatch, name: &str) -> Result<()> {
    let os = |source: io::Error| Error::Os {
        op: "changing nftables table",
        object: format!("inet {name}"),
        source,
    };
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(os)?;
    let portid = socket.portid();
    socket.send_all(batch).map_err(os)?;
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        for message in socket.recv(&mut buffer[..]).map_err(os)? {
            let message = message.map_err(os)?;
            let Some(seq) = expected.next() else {
                return Err(os(io::Error::other("an answer to no request")));
            };
            mnl::cb_run(message, seq, portid).map_err(os)?;
        }
    }
    Ok(())
}
