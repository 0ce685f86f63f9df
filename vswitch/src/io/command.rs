//! Everything the control plane can ask of a datapath worker, as one type: [`Command`]. A
//! worker applies the commands it receives between two batches, in the order they were sent,
//! and answers on the command's [`Reply`] when it has one. Every worker gets the same commands
//! in the same order (but for [`Command::SendRaw`], which only the first one carries out), so
//! the replicas agree on networks, ports, peers and sessions.
//!
//! Queries never come this way: they read the snapshots the workers publish
//! ([`super::WorkerSnapshot`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, mpsc};

use super::tap::TapQueue;
use super::worker::{PortError, SealingEvent, ServiceRequest, Worker};
use crate::policy::PortQos;
use crate::switch::{
    NetworkConfig, Pinned, PolicyInstall, PortConfig, PortId, Route, SessionInstall, SwitchError,
};
use crate::wire::{MacAddr, Vni};
use crypto::{SessionKeys, SharedReplay};

/// A control-plane change for one worker, applied between batches.
pub enum Command {
    /// Adds a network, or updates the one with the same VNI (its MTU, gateway, sealing).
    AddNetwork {
        /// The network.
        config: NetworkConfig,
        /// Whether the switch took it.
        reply: Reply<Result<(), SwitchError>>,
    },
    /// Removes a network, with every port on it.
    RemoveNetwork {
        /// The network's VNI.
        vni: Vni,
        /// The ports that went with it.
        reply: Reply<Vec<PortId>>,
    },
    /// Adds a peer that carries `vnis`, or sets the VNIs of the peer at `addr`.
    AddPeer {
        /// The peer's underlay address.
        addr: SocketAddr,
        /// The networks it carries.
        vnis: Vec<Vni>,
        /// Done.
        reply: Reply<()>,
    },
    /// Removes the peer at `addr`, and what was learned behind it.
    RemovePeer {
        /// The peer's underlay address.
        addr: SocketAddr,
        /// Whether there was such a peer.
        reply: Reply<bool>,
    },
    /// Adds a container's port and starts serving its TAP: the worker reads the queue with its
    /// own index, if there is one, and writes to queue `index % queues.len()`.
    AddPort {
        /// Every queue of the TAP, one per worker when it is multi-queue.
        queues: Arc<[Arc<TapQueue>]>,
        /// The port as the switch sees it.
        config: PortConfig,
        /// The port's id (the same on every worker), or why it could not be added.
        reply: Reply<Result<PortId, PortError>>,
    },
    /// Adds a network's host port (see [`crate::switch::Switch::add_host_port`]) and starts
    /// serving its TAP, as [`Command::AddPort`] does for a container's.
    AddHostPort {
        /// Every queue of the TAP, one per worker when it is multi-queue.
        queues: Arc<[Arc<TapQueue>]>,
        /// The network.
        vni: Vni,
        /// The port's id (the same on every worker), or why it could not be added.
        reply: Reply<Result<PortId, PortError>>,
    },
    /// Sets the networks each network routes to (an empty list: none).
    SetRoutes {
        /// Each network with its routes.
        routes: Arc<[(Vni, Vec<Route>)]>,
        /// Whether the switch knew every network.
        reply: Reply<Result<(), SwitchError>>,
    },
    /// Removes a port and stops serving its TAP.
    RemovePort {
        /// The port.
        id: PortId,
        /// Whether there was such a port.
        reply: Reply<bool>,
    },
    /// Sends handshake messages and requests for sessions to `events` from now on.
    SetSealingEvents {
        /// Where they go: the handshake thread.
        events: mpsc::Sender<SealingEvent>,
        /// Done.
        reply: Reply<()>,
    },
    /// Installs a sealed session with the peer at `peer`, sealing on the worker's own counter
    /// lane of the session's send key (its index), and sends what waited for it.
    InstallSession {
        /// The peer's configured underlay address.
        peer: SocketAddr,
        /// The session's keys, as the handshake made them.
        keys: Arc<SessionKeys>,
        /// The session's replay window, shared by every worker.
        replay: Arc<SharedReplay>,
        /// Whether to seal with it at once (the initiator) or once the peer used it.
        send_now: bool,
        /// Whether the keys gave a sealer and an opener.
        reply: Reply<Result<(), crypto::Error>>,
    },
    /// Forgets a sealed session that the handshakes retired.
    RetireSession {
        /// This node's index of the session.
        local_index: u32,
        /// Done.
        reply: Reply<()>,
    },
    /// Puts a compiled policy set in force (or none: every network open).
    SetPolicy {
        /// The compiled policies with the shared connection table and log limiter.
        install: Option<PolicyInstall>,
        /// Done.
        reply: Reply<()>,
    },
    /// Sets or clears the rate limits of ports (buckets shared by every worker).
    SetPortQos {
        /// Each port with its limits, or `None` to lift them.
        changes: Arc<[(PortId, Option<Arc<PortQos>>)]>,
        /// Done.
        reply: Reply<()>,
    },
    /// Applies one plan of the fleet's membership (peers joined and left, endpoints pinned and
    /// unpinned), whole and in order, between two batches.
    ApplyFleet {
        /// The plan's changes, in order.
        changes: Arc<[FleetChange]>,
        /// Done.
        reply: Reply<()>,
    },
    /// Hands DNS queries to gateways to the name server from now on (when its queue is full,
    /// they are dropped and counted).
    ServeGatewayDns {
        /// Where the queries go.
        requests: mpsc::SyncSender<ServiceRequest>,
        /// Done.
        reply: Reply<()>,
    },
    /// Writes a frame the control plane made (a DNS answer) to a port; only the first worker
    /// is sent this.
    WriteToPort {
        /// The port.
        port: PortId,
        /// The whole Ethernet frame.
        frame: Vec<u8>,
    },
    /// For each of these peers, the session the worker seals with (this node's index of it) and
    /// how many datagrams it sealed under it, for the count-based rekey: asked by the handshake
    /// thread once a second, never by queries.
    CountSealed {
        /// The peers' configured underlay addresses.
        peers: Arc<[SocketAddr]>,
        /// The sessions and counts, in the same order.
        reply: Reply<Vec<Option<(u32, u64)>>>,
    },
    /// Sends one datagram as it is (a handshake message) to `addr`; only the first worker is
    /// sent this.
    SendRaw {
        /// Where to.
        addr: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Stops the worker's loop.
    Stop,
    /// Panics inside the worker's loop: for the test of what a worker's panic does (see
    /// [`super::TEST_PANIC_ENV`]).
    Panic,
}

/// One change of a fleet plan ([`Command::ApplyFleet`]) to a worker's switch.
#[derive(Debug, Clone)]
pub enum FleetChange {
    /// A node joined: its peer, carrying the networks both nodes share.
    AddPeer {
        /// The node's underlay address.
        addr: SocketAddr,
        /// The shared networks.
        vnis: Vec<Vni>,
    },
    /// A node left: its peer goes, with what was learned behind it.
    RemovePeer {
        /// The node's underlay address.
        addr: SocketAddr,
    },
    /// A remote container's MAC and addresses, pinned to its node's peer.
    Pin {
        /// The node's underlay address.
        peer: SocketAddr,
        /// The container's network.
        vni: Vni,
        /// Its MAC.
        mac: MacAddr,
        /// Its IPv4 addresses.
        ips: Vec<Ipv4Addr>,
    },
    /// A remote container gone: its pinned entries go.
    Unpin {
        /// The container's network.
        vni: Vni,
        /// Its MAC.
        mac: MacAddr,
        /// Its IPv4 addresses.
        ips: Vec<Ipv4Addr>,
    },
}

impl FleetChange {
    fn apply(&self, worker: &mut Worker) {
        let switch = worker.switch();
        match self {
            FleetChange::AddPeer { addr, vnis } => {
                switch.add_peer(*addr, vnis);
            }
            FleetChange::RemovePeer { addr } => {
                if let Some(id) = switch.peer_id(*addr) {
                    switch.remove_peer(id);
                }
            }
            FleetChange::Pin {
                peer,
                vni,
                mac,
                ips,
            } => match switch.pin_remote(*peer, *vni, *mac, ips) {
                Pinned::Done => {}
                refused => tracing::debug!(%mac, %vni, "fleet: endpoint not pinned: {refused:?}"),
            },
            FleetChange::Unpin { vni, mac, ips } => {
                switch.unpin_remote(*vni, *mac, ips);
            }
        }
    }
}

/// Where a worker answers one command; the control plane waits on the other end.
pub struct Reply<T>(mpsc::SyncSender<T>);

impl<T> Reply<T> {
    /// A reply and the receiver its answer arrives on.
    pub(super) fn channel() -> (Self, mpsc::Receiver<T>) {
        let (sender, receiver) = mpsc::sync_channel(1);
        (Self(sender), receiver)
    }

    /// Answers. Nobody waiting any more (the asker gave up) is not the worker's concern.
    fn send(self, value: T) {
        let _ = self.0.send(value);
    }
}

impl Worker {
    /// Carries out one command.
    pub(super) fn execute(&mut self, command: Command) {
        match command {
            Command::AddNetwork { config, reply } => reply.send(self.switch().add_network(config)),
            Command::RemoveNetwork { vni, reply } => reply.send(self.switch().remove_network(vni)),
            Command::AddPeer { addr, vnis, reply } => {
                self.switch().add_peer(addr, &vnis);
                reply.send(());
            }
            Command::RemovePeer { addr, reply } => {
                let switch = self.switch();
                let removed = switch
                    .peer_id(addr)
                    .is_some_and(|peer| switch.remove_peer(peer));
                reply.send(removed);
            }
            Command::AddPort {
                queues,
                config,
                reply,
            } => reply.send(self.add_port(&queues, config)),
            Command::AddHostPort { queues, vni, reply } => {
                reply.send(self.add_host_port(&queues, vni));
            }
            Command::SetRoutes { routes, reply } => {
                let switch = self.switch();
                reply.send(
                    routes
                        .iter()
                        .try_for_each(|(vni, routes)| switch.set_routes(*vni, routes.clone())),
                );
            }
            Command::RemovePort { id, reply } => reply.send(self.remove_port(id)),
            Command::SetSealingEvents { events, reply } => {
                self.set_sealing_events(events);
                reply.send(());
            }
            Command::InstallSession {
                peer,
                keys,
                replay,
                send_now,
                reply,
            } => {
                let install = keys.sealer(self.index()).and_then(|sealer| {
                    Ok(SessionInstall {
                        peer,
                        local_index: keys.local_index,
                        remote_index: keys.remote_index,
                        sealer,
                        send_now,
                        opener: keys.opener()?,
                        replay,
                    })
                });
                reply.send(install.map(|install| self.install_session(install)));
            }
            Command::RetireSession { local_index, reply } => {
                self.switch().retire_session(local_index);
                reply.send(());
            }
            Command::SetPolicy { install, reply } => {
                self.switch().set_policy(install);
                reply.send(());
            }
            Command::SetPortQos { changes, reply } => {
                for (id, qos) in changes.iter() {
                    self.switch().set_port_qos(*id, qos.clone());
                }
                reply.send(());
            }
            Command::ApplyFleet { changes, reply } => {
                for change in changes.iter() {
                    change.apply(self);
                }
                reply.send(());
            }
            Command::ServeGatewayDns { requests, reply } => {
                self.set_services(requests);
                self.switch().set_gateway_dns(true);
                reply.send(());
            }
            Command::WriteToPort { port, frame } => self.write_to_port(port, &frame),
            Command::CountSealed { peers, reply } => {
                let switch = self.switch();
                reply.send(peers.iter().map(|&addr| switch.sealed_to(addr)).collect());
            }
            Command::SendRaw { addr, bytes } => self.send_raw(addr, &bytes),
            Command::Stop => self.running = false,
            Command::Panic => panic!("{}: the forced test panic", super::TEST_PANIC_ENV),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;
    use crate::io::Datapath;
    use crate::switch::SwitchConfig;
    use crate::wire::MacAddr;

    /// A stand-in for a TAP queue: one end of a datagram socket pair (the datapath's), the
    /// other end the container's.
    fn queue() -> (Arc<[Arc<TapQueue>]>, OwnedFd) {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        (Arc::from([Arc::new(TapQueue::new(ours, false))]), theirs)
    }

    /// An ARP request from `mac`/`ip` for an address nobody holds: flooded.
    fn arp_request(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&mac.0);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&mac.0);
        frame.extend_from_slice(&ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&[10, 0, 0, 99]);
        frame
    }

    fn port(vni: Vni, last: u8) -> PortConfig {
        PortConfig {
            vni,
            mac: MacAddr([0x0a, 0x58, 10, 0, 0, last]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))],
            port_security: true,
        }
    }

    #[test]
    fn every_worker_applies_the_same_commands_and_answers() {
        let local = "127.0.0.1:0".parse().expect("address");
        let datapath =
            Datapath::start(SwitchConfig::default(), local, 1, 2).expect("datapath starts");
        let vni = Vni::try_from(7).expect("vni");

        // A port on a network the workers do not carry is refused by each, the same way.
        let (queues_a, container_a) = queue();
        let refused = datapath
            .ask(|reply| Command::AddPort {
                queues: Arc::clone(&queues_a),
                config: port(vni, 2),
                reply,
            })
            .expect("answers");
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().all(Result::is_err));

        let network = NetworkConfig {
            vni,
            mtu: 1450,
            gateway: None,
            sealed: false,
            clamp_mss: true,
        };
        let added = datapath
            .ask(|reply| Command::AddNetwork {
                config: network.clone(),
                reply,
            })
            .expect("answers");
        assert!(added.iter().all(Result::is_ok));

        let (queues_b, container_b) = queue();
        let mut ids = Vec::new();
        for (queues, last) in [(&queues_a, 2), (&queues_b, 3)] {
            let added = datapath
                .ask(|reply| Command::AddPort {
                    queues: Arc::clone(queues),
                    config: port(vni, last),
                    reply,
                })
                .expect("answers");
            let added: Vec<PortId> = added.into_iter().map(|r| r.expect("added")).collect();
            assert_eq!(added[0], added[1], "the replicas agree on the port's id");
            ids.push(added[0]);
        }

        // The ports are served: a flood from one reaches the other.
        let request = arp_request(port(vni, 2).mac, Ipv4Addr::new(10, 0, 0, 2));
        nix::unistd::write(&container_a, &request).expect("write");
        let mut buf = [0u8; 128];
        let deadline = Instant::now() + Duration::from_secs(5);
        let received = loop {
            match nix::unistd::read(&container_b, &mut buf) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("no flood reached port b: {e}"),
            }
        };
        assert_eq!(&buf[..received], &request[..]);

        let peer: SocketAddr = "127.0.0.2:4789".parse().expect("address");
        let set = datapath
            .ask(|reply| Command::AddPeer {
                addr: peer,
                vnis: vec![vni],
                reply,
            })
            .expect("answers");
        assert_eq!(set.len(), 2);
        for expected in [true, false] {
            let removed = datapath
                .ask(|reply| Command::RemovePeer { addr: peer, reply })
                .expect("answers");
            assert_eq!(removed, vec![expected; 2]);
        }
        for expected in [true, false] {
            let id = ids[0];
            let removed = datapath
                .ask(|reply| Command::RemovePort { id, reply })
                .expect("answers");
            assert_eq!(removed, vec![expected; 2]);
        }
        let gone = datapath
            .ask(|reply| Command::RemoveNetwork { vni, reply })
            .expect("answers");
        assert_eq!(gone, vec![vec![ids[1]]; 2]);

        datapath.stop().expect("workers stop cleanly");
    }

    #[test]
    fn a_stopped_datapath_says_so() {
        let local = "127.0.0.1:0".parse().expect("address");
        let datapath =
            Datapath::start(SwitchConfig::default(), local, 1, 1).expect("datapath starts");
        let workers = datapath.remote();
        datapath.stop().expect("workers stop cleanly");
        let vni = Vni::default();
        assert!(
            workers
                .ask(|reply| Command::RemoveNetwork { vni, reply })
                .is_err()
        );
        assert!(
            workers
                .tell_first(Command::SendRaw {
                    addr: "127.0.0.1:9".parse().expect("address"),
                    bytes: Vec::new(),
                })
                .is_err()
        );
    }
}
