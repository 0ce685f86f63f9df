//! Drop reasons and the counters the switch keeps: global, per port and per peer.

use core::fmt;

/// Why the switch dropped a frame or datagram. Every drop has one, and each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than an Ethernet header (or, from a peer, than VXLAN plus Ethernet headers).
    Runt,
    /// A header the switch had to read is invalid, or the source MAC is not unicast.
    Malformed,
    /// From a peer: the VNI is not a network of this switch.
    UnknownVni,
    /// From a peer: the VXLAN I flag is clear.
    BadFlags,
    /// Longer than the network's MTU plus the Ethernet header (from a port, each segment a
    /// super-frame becomes; from a peer, the decapsulated frame).
    OverMtu,
    /// From an address that is not a peer (and unknown peers are not accepted, or too many).
    UnknownPeer,
    /// From a port the switch does not have.
    UnknownPort,
    /// From a port with port security: the source MAC or IP is not the port's.
    SpoofedSource,
    /// The destination is the port the frame came from.
    Hairpin,
    /// From a peer: the destination is known to be at a peer, not here.
    NotLocal,
    /// Broadcast, multicast or unknown unicast with nobody else on the network.
    NoMembers,
    /// From a peer that is not a member of the datagram's VNI.
    NotMember,
    /// Addressed to the gateway MAC, but not an ARP request or ICMP echo request it answers.
    Gateway,
    /// From a port: a virtio-net header that does not describe its frame (checksum fields not
    /// at the transport checksum, a GSO type that does not match the protocol, UFO, unknown
    /// types) or a super-frame that cannot be segmented.
    BadOffload,
    /// From a port: a super-frame whose `gso_size` is zero or below the floor.
    GsoTooSmall,
    /// From a port: a TCP super-frame carrying SYN, RST or URG.
    TsoFlags,
    /// From a port with port security: an EtherType other than IPv4, IPv6, ARP and those
    /// allowed by configuration.
    Ethertype,
    /// From a port with port security: an IPv6 Router Advertisement or Redirect.
    RaGuard,
    /// From a port: a broadcast, multicast, unknown unicast or ARP request over the port's
    /// flood rate.
    FloodLimited,
    /// From a peer: a plain datagram for a sealed network.
    Unsealed,
    /// A sealed datagram naming a session this node does not have (unknown, retired, or from
    /// before a restart), or a frame for a peer whose session is not up while its queue is full.
    NoSession,
    /// A sealed datagram that does not authenticate: tampered, truncated, forged, or sealed
    /// under another key.
    Unauthentic,
    /// A sealed datagram whose counter was already accepted, or is older than the replay window.
    Replayed,
    /// A frame routed to a network that has no gateway, or is gone.
    NoRoute,
    /// Network policy denies it: a deny rule, or an endpoint selected with no rule allowing it.
    PolicyDenied,
    /// Over a rate limit: the QoS of a port, or a policy's `limit(rate)` rule.
    RateLimited,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 26] = [
        DropReason::Runt,
        DropReason::Malformed,
        DropReason::UnknownVni,
        DropReason::BadFlags,
        DropReason::OverMtu,
        DropReason::UnknownPeer,
        DropReason::UnknownPort,
        DropReason::SpoofedSource,
        DropReason::Hairpin,
        DropReason::NotLocal,
        DropReason::NoMembers,
        DropReason::NotMember,
        DropReason::Gateway,
        DropReason::BadOffload,
        DropReason::GsoTooSmall,
        DropReason::TsoFlags,
        DropReason::Ethertype,
        DropReason::RaGuard,
        DropReason::FloodLimited,
        DropReason::Unsealed,
        DropReason::NoSession,
        DropReason::Unauthentic,
        DropReason::Replayed,
        DropReason::NoRoute,
        DropReason::PolicyDenied,
        DropReason::RateLimited,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// Stable snake_case name, for metrics and status output.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Malformed => "malformed",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::BadFlags => "bad_flags",
            DropReason::OverMtu => "over_mtu",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownPort => "unknown_port",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::Hairpin => "hairpin",
            DropReason::NotLocal => "not_local",
            DropReason::NoMembers => "no_members",
            DropReason::NotMember => "not_member",
            DropReason::Gateway => "gateway",
            DropReason::BadOffload => "bad_offload",
            DropReason::GsoTooSmall => "gso_too_small",
            DropReason::TsoFlags => "tso_flags",
            DropReason::Ethertype => "ethertype",
            DropReason::RaGuard => "ra_guard",
            DropReason::FloodLimited => "flood_limited",
            DropReason::Unsealed => "unsealed",
            DropReason::NoSession => "no_session",
            DropReason::Unauthentic => "unauthentic",
            DropReason::Replayed => "replayed",
            DropReason::NoRoute => "no_route",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::RateLimited => "rate_limited",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    pub(crate) fn bump(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// Adds another replica's counts to these.
    pub fn add(&mut self, other: &DropCounters) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// Switch-wide counters. Transmit counters count what the switch asked the caller to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from ports.
    pub port_rx_frames: u64,
    /// Bytes of frames received from ports.
    pub port_rx_bytes: u64,
    /// Frames handed to ports (one per destination port; replies included).
    pub port_tx_frames: u64,
    /// Bytes of frames handed to ports.
    pub port_tx_bytes: u64,
    /// Datagrams received from the underlay.
    pub peer_rx_datagrams: u64,
    /// Bytes of datagrams received (VXLAN header included).
    pub peer_rx_bytes: u64,
    /// Datagrams handed to peers (one per destination peer).
    pub peer_tx_datagrams: u64,
    /// Bytes of datagrams handed to peers (VXLAN header included).
    pub peer_tx_bytes: u64,
    /// Inputs flooded (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// New FDB entries learned.
    pub fdb_learned: u64,
    /// Learned FDB entries that moved to another location.
    pub fdb_moves: u64,
    /// Learned FDB entries aged out.
    pub fdb_aged: u64,
    /// Source MACs not learned because the table, or the share of their port or peer, was
    /// full (the frame was forwarded all the same).
    pub fdb_full: u64,
    /// Neighbours not learned because the table, or the share of their port or peer, was full.
    pub neighbours_full: u64,
    /// Learned neighbours aged out.
    pub neighbours_aged: u64,
    /// ARP requests answered for the gateway.
    pub gateway_arp_replies: u64,
    /// ICMP echo requests answered by the gateway.
    pub gateway_echo_replies: u64,
    /// DNS queries to a gateway handed to the name server.
    pub gateway_dns_queries: u64,
    /// ARP requests answered from the neighbour table instead of flooded.
    pub arp_suppressed: u64,
    /// Peers created for unknown addresses (`accept_unknown_peers`).
    pub dynamic_peers_created: u64,
    /// Sealed keepalives received: empty datagrams that confirm a new session.
    pub keepalives: u64,
    /// Frames routed from one network to another.
    pub routed: u64,
    /// ARP requests the gateway sent to resolve a routed frame's destination.
    pub route_resolves: u64,
    /// Routed frames whose TTL ran out, answered with ICMP time exceeded.
    pub ttl_exceeded: u64,
    /// Liveness probes received from peers (counted for the peer, then dropped unremarked).
    pub probes: u64,
    /// ICMP "fragmentation needed" and ICMPv6 "packet too big" errors sent, answering frames
    /// over the MTU.
    pub too_big_sent: u64,
    /// Such errors not sent because the port or peer was over its rate.
    pub too_big_limited: u64,
    /// TCP SYNs whose MSS option was lowered to what the MTU allows.
    pub mss_clamped: u64,
    /// Drops, by reason.
    pub drops: DropCounters,
}

/// Counters of one port (from the switch's view: rx is what the port sent in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames handed to the port.
    pub tx_frames: u64,
    /// Bytes handed to the port.
    pub tx_bytes: u64,
    /// Frames from the port that were dropped.
    pub drops: u64,
    /// Frames network policy denied: from the port, or from a peer to it.
    pub denied: u64,
    /// Frames over a rate limit: from the port, or from a peer to it.
    pub limited: u64,
}

/// Counters of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Datagrams received from the peer.
    pub rx_datagrams: u64,
    /// Bytes received from the peer (VXLAN header included).
    pub rx_bytes: u64,
    /// Datagrams handed to the peer.
    pub tx_datagrams: u64,
    /// Bytes handed to the peer (VXLAN header included).
    pub tx_bytes: u64,
    /// Datagrams from the peer that were dropped.
    pub drops: u64,
    /// The same, by reason.
    pub drop_reasons: DropCounters,
}

impl Counters {
    /// Adds another replica's counters to these (the daemon sums its workers').
    pub fn add(&mut self, other: &Counters) {
        self.port_rx_frames += other.port_rx_frames;
        self.port_rx_bytes += other.port_rx_bytes;
        self.port_tx_frames += other.port_tx_frames;
        self.port_tx_bytes += other.port_tx_bytes;
        self.peer_rx_datagrams += other.peer_rx_datagrams;
        self.peer_rx_bytes += other.peer_rx_bytes;
        self.peer_tx_datagrams += other.peer_tx_datagrams;
        self.peer_tx_bytes += other.peer_tx_bytes;
        self.flooded += other.flooded;
        self.fdb_learned += other.fdb_learned;
        self.fdb_moves += other.fdb_moves;
        self.fdb_aged += other.fdb_aged;
        self.fdb_full += other.fdb_full;
        self.neighbours_full += other.neighbours_full;
        self.neighbours_aged += other.neighbours_aged;
        self.gateway_arp_replies += other.gateway_arp_replies;
        self.gateway_echo_replies += other.gateway_echo_replies;
        self.gateway_dns_queries += other.gateway_dns_queries;
        self.arp_suppressed += other.arp_suppressed;
        self.dynamic_peers_created += other.dynamic_peers_created;
        self.keepalives += other.keepalives;
        self.routed += other.routed;
        self.route_resolves += other.route_resolves;
        self.ttl_exceeded += other.ttl_exceeded;
        self.probes += other.probes;
        self.too_big_sent += other.too_big_sent;
        self.too_big_limited += other.too_big_limited;
        self.mss_clamped += other.mss_clamped;
        self.drops.add(&other.drops);
    }
}

impl PortStats {
    /// Adds another replica's counters to these.
    pub fn add(&mut self, other: &PortStats) {
        self.rx_frames += other.rx_frames;
        self.rx_bytes += other.rx_bytes;
        self.tx_frames += other.tx_frames;
        self.tx_bytes += other.tx_bytes;
        self.drops += other.drops;
        self.denied += other.denied;
        self.limited += other.limited;
    }
}

impl PeerStats {
    /// Adds another replica's counters to these.
    pub fn add(&mut self, other: &PeerStats) {
        self.rx_datagrams += other.rx_datagrams;
        self.rx_bytes += other.rx_bytes;
        self.tx_datagrams += other.tx_datagrams;
        self.tx_bytes += other.tx_bytes;
        self.drops += other.drops;
        self.drop_reasons.add(&other.drop_reasons);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn drop_counters() {
        let mut c = DropCounters::default();
        c.bump(DropReason::Hairpin);
        c.bump(DropReason::Hairpin);
        c.bump(DropReason::Runt);
        assert_eq!(c.get(DropReason::Hairpin), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().count(), DropReason::COUNT);
    }
}
