//! The daemon's side of [`super::super::host_tap`]: reservations leased from the networks'
//! pools, their TAPs plugged into the datapath, the list saved before anything is forgotten,
//! and, at start, the TAPs found again and their leases kept.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use super::super::api::{ApiError, Attachment, ErrorKind};
use super::super::attach::mac_for;
use super::super::host_tap::{
    self, OWNER_IFNAME, PlugTapRequest, Reservation, ReservationStore, ReserveRequest,
    UnplugTapRequest, UnreserveRequest,
};
use super::{Daemon, Owner, State, unknown_network};
use crate::switch::PortId;

/// How long a plugged reservation is left alone before the sweep may find its sandbox gone:
/// the runtime creates the sandbox around the time it joins.
const SANDBOX_GRACE: Duration = Duration::from_secs(30);

/// One reservation, its port once plugged, and since when it is in its current state.
struct Entry {
    reservation: Reservation,
    port: Option<PortId>,
    since: Instant,
}

/// The reservations and the ports of those plugged.
pub(super) struct Reservations {
    store: ReservationStore,
    list: Vec<Entry>,
}

impl Reservations {
    pub(super) fn new(store: ReservationStore) -> Self {
        Self {
            store,
            list: Vec::new(),
        }
    }

    /// The lease owners the reservations hold.
    pub(super) fn owners(&self) -> impl Iterator<Item = Owner> + '_ {
        self.list.iter().map(|e| {
            let r = &e.reservation;
            (r.network.clone(), r.owner.clone(), OWNER_IFNAME.to_owned())
        })
    }

    /// How many reservations of `network` are plugged.
    pub(super) fn plugged_on(&self, network: &str) -> usize {
        self.list
            .iter()
            .filter(|e| e.port.is_some() && e.reservation.network == network)
            .count()
    }

    /// The plugged reservations as attachments, for `vswitch ports`, the FDB and the metrics:
    /// the endpoint as the container, the sandbox as its namespace, the TAP's name as given.
    pub(super) fn attachments(&self) -> impl Iterator<Item = (PortId, Attachment)> + '_ {
        self.list.iter().filter_map(|e| {
            let r = &e.reservation;
            let port = e.port?;
            Some((
                port,
                Attachment {
                    container_id: r.endpoint.clone().unwrap_or_else(|| r.owner.clone()),
                    netns: r.sandbox.clone().unwrap_or_default(),
                    ifname: r.tap.clone().unwrap_or_default(),
                    network: r.network.clone(),
                    vni: r.vni,
                    mac: r.mac,
                    address: r.address,
                    address6: None,
                    gateway: r.gateway,
                    mtu: r.mtu,
                    labels: Default::default(),
                    qos: None,
                    published: Vec::new(),
                    dns: None,
                },
            ))
        })
    }

    pub(super) fn list(&self) -> Vec<Reservation> {
        self.list.iter().map(|e| e.reservation.clone()).collect()
    }

    fn save_with(&self, f: impl FnOnce(&mut Vec<Reservation>)) -> anyhow::Result<()> {
        let mut list = self.list();
        f(&mut list);
        self.store
            .save(&list)
            .context("saving the reservation list: nothing was changed")
    }
}

impl Daemon {
    pub(super) fn reserve(
        &self,
        state: &mut State,
        r: ReserveRequest,
    ) -> anyhow::Result<Reservation> {
        let Some(network) = state.networks.get(&r.network) else {
            return Err(unknown_network(state, &r.network).into());
        };
        if let Some(ip) = r.ip
            && let Some(i) = state.reservations.list.iter().position(|e| {
                e.reservation.network == r.network && e.reservation.address.addr() == ip
            })
        {
            let existing = &state.reservations.list[i].reservation;
            match (&existing.endpoint, &r.endpoint) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::new(
                        ErrorKind::AddressTaken,
                        format!("{ip} is reserved for endpoint {a} on network {}", r.network),
                    )
                    .field("ip")
                    .into());
                }
                (None, Some(endpoint)) => {
                    let mut updated = existing.clone();
                    updated.endpoint = Some(endpoint.clone());
                    if let Some(mac) = r.mac {
                        updated.mac = mac;
                    }
                    state
                        .reservations
                        .save_with(|list| list[i] = updated.clone())?;
                    state.reservations.list[i].reservation = updated.clone();
                    return Ok(updated);
                }
                _ => return Ok(existing.clone()),
            }
        }
        let (vni, mtu, gateway) = (network.vni.get(), network.config.mtu(), network.gateway);
        let owner = format!("reserved-{:016x}", rand::random::<u64>());
        let addresses = state
            .leases
            .allocate(&r.network, &owner, OWNER_IFNAME, r.ip)?;
        let IpAddr::V4(v4) = addresses.v4.addr() else {
            anyhow::bail!("IPv4 address expected from the pool, got {}", addresses.v4);
        };
        let reservation = Reservation {
            network: r.network.clone(),
            vni,
            address: addresses.v4,
            gateway: IpAddr::V4(gateway),
            mtu,
            mac: r.mac.unwrap_or_else(|| mac_for(v4)),
            owner: owner.clone(),
            endpoint: r.endpoint,
            tap: None,
            sandbox: None,
        };
        if let Err(e) = state
            .reservations
            .save_with(|list| list.push(reservation.clone()))
        {
            let _ = state.leases.release(&r.network, &owner, OWNER_IFNAME);
            return Err(e);
        }
        state.reservations.list.push(Entry {
            reservation: reservation.clone(),
            port: None,
            since: Instant::now(),
        });
        info!(network = %r.network, address = %reservation.address, "address reserved");
        Ok(reservation)
    }

    pub(super) fn unreserve(
        &self,
        state: &mut State,
        r: &UnreserveRequest,
    ) -> anyhow::Result<bool> {
        let Some(i) = state.reservations.list.iter().position(|e| {
            e.reservation.network == r.network && e.reservation.address.addr() == r.address
        }) else {
            return Ok(false);
        };
        self.unplug_at(state, i)?;
        state.reservations.save_with(|list| {
            list.remove(i);
        })?;
        let reservation = state.reservations.list.remove(i).reservation;
        if let Err(e) = state
            .leases
            .release(&reservation.network, &reservation.owner, OWNER_IFNAME)
        {
            warn!(address = %reservation.address, "releasing a reservation: {e:#}");
            state.unreleased.push((
                reservation.network.clone(),
                reservation.owner.clone(),
                OWNER_IFNAME.to_owned(),
            ));
        }
        info!(network = %r.network, address = %r.address, "reservation released");
        Ok(true)
    }

    fn find_endpoint(state: &State, endpoint: &str) -> Result<usize, ApiError> {
        state
            .reservations
            .list
            .iter()
            .position(|e| e.reservation.endpoint.as_deref() == Some(endpoint))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("no address is reserved for endpoint {endpoint}"),
                )
                .field("endpoint")
            })
    }

    pub(super) fn plug_reserved_tap(
        &self,
        state: &mut State,
        r: PlugTapRequest,
    ) -> anyhow::Result<Reservation> {
        let i = Self::find_endpoint(state, &r.endpoint)?;
        if state.reservations.list[i].port.is_some() {
            return Ok(state.reservations.list[i].reservation.clone());
        }
        netns::validate_ifname(&r.tap).map_err(|e| {
            ApiError::new(ErrorKind::BadRequest, format!("TAP name {:?}: {e}", r.tap)).field("tap")
        })?;
        let mut plugged = state.reservations.list[i].reservation.clone();
        plugged.tap = Some(r.tap.clone());
        plugged.sandbox = Some(r.sandbox);
        // Recorded first: a crash from here on leaves a TAP the next start finds or forgets.
        state
            .reservations
            .save_with(|list| list[i] = plugged.clone())?;
        state.reservations.list[i].reservation = plugged.clone();
        let offloads = state.config.node.offloads;
        let made = host_tap::create(&r.tap, &plugged, offloads, self.datapath.workers())
            .and_then(|tap| self.switch_reservation(state, &plugged, tap));
        match made {
            Ok(id) => {
                state.reservations.list[i].port = Some(id);
                state.reservations.list[i].since = Instant::now();
                info!(endpoint = %r.endpoint, tap = %r.tap, address = %plugged.address, "TAP plugged");
                Ok(plugged)
            }
            Err(e) => {
                let _ = host_tap::delete(&plugged);
                let mut unplugged = plugged;
                unplugged.tap = None;
                unplugged.sandbox = None;
                if state
                    .reservations
                    .save_with(|list| list[i] = unplugged.clone())
                    .is_ok()
                {
                    state.reservations.list[i].reservation = unplugged;
                }
                Err(e.context(format!("plugging a TAP for endpoint {}", r.endpoint)))
            }
        }
    }

    pub(super) fn unplug_reserved_tap(
        &self,
        state: &mut State,
        r: &UnplugTapRequest,
    ) -> anyhow::Result<bool> {
        let Some(i) = state
            .reservations
            .list
            .iter()
            .position(|e| e.reservation.endpoint.as_deref() == Some(r.endpoint.as_str()))
        else {
            return Ok(false);
        };
        self.unplug_at(state, i)
    }

    /// Takes reservation `i`'s port off the switch, deletes its TAP where the runtime hands it
    /// back, and forgets both.
    fn unplug_at(&self, state: &mut State, i: usize) -> anyhow::Result<bool> {
        let reservation = state.reservations.list[i].reservation.clone();
        let port = state.reservations.list[i].port;
        let Some(tap) = reservation.tap.clone() else {
            return Ok(false);
        };
        if let Some(id) = port {
            self.datapath
                .ask(|reply| crate::io::Command::RemovePort { id, reply })?;
            state.reservations.list[i].port = None;
        }
        host_tap::delete(&reservation)?;
        let mut unplugged = reservation;
        unplugged.tap = None;
        unplugged.sandbox = None;
        state
            .reservations
            .save_with(|list| list[i] = unplugged.clone())?;
        state.reservations.list[i].reservation = unplugged;
        info!(%tap, "TAP unplugged");
        Ok(true)
    }

    fn switch_reservation(
        &self,
        state: &State,
        r: &Reservation,
        tap: netns::Tap,
    ) -> anyhow::Result<PortId> {
        let network = state
            .networks
            .get(&r.network)
            .with_context(|| format!("network {:?} is no longer configured", r.network))?;
        self.add_port(network.vni, r.mac, vec![r.address.addr()], tap)
    }

    /// Loads the reservations at start and plugs the TAPs still found. A reservation whose
    /// sandbox is gone lost its container while nobody could tell the daemon (it or the
    /// runtime's plugin was down): its TAP and address are released.
    pub(super) fn restore_reservations(&self, state: &mut State) -> anyhow::Result<()> {
        let loaded = state.reservations.store.load()?;
        let offloads = state.config.node.offloads;
        let mut gone = Vec::new();
        for mut reservation in loaded {
            let mut port = None;
            if sandbox_gone(&reservation) {
                gone.push((reservation.network.clone(), reservation.address.addr()));
            } else if reservation.tap.is_some() {
                let found = host_tap::reopen(&reservation, offloads, self.datapath.workers())
                    .and_then(|tap| match tap {
                        Some(tap) => self.switch_reservation(state, &reservation, tap).map(Some),
                        None => Ok(None),
                    });
                match found {
                    Ok(Some(id)) => port = Some(id),
                    Ok(None) => {
                        info!(address = %reservation.address, "the TAP of a reservation is gone");
                        reservation.tap = None;
                        reservation.sandbox = None;
                    }
                    Err(e) => warn!(
                        address = %reservation.address,
                        "cannot plug a reserved TAP again: {e:#}"
                    ),
                }
            }
            state.reservations.list.push(Entry {
                reservation,
                port,
                since: Instant::now()
                    .checked_sub(SANDBOX_GRACE)
                    .unwrap_or_else(Instant::now),
            });
        }
        let list = state.reservations.list();
        state.reservations.store.save(&list)?;
        self.release_gone(state, gone);
        let plugged = state
            .reservations
            .list
            .iter()
            .filter(|e| e.port.is_some())
            .count();
        if plugged > 0 {
            info!(plugged, "re-adopted reserved TAPs");
        }
        Ok(())
    }

    /// Releases the reservations whose sandbox has been gone since before the grace period.
    pub(super) fn sweep_reservations(&self, state: &mut State) {
        let gone: Vec<(String, IpAddr)> = state
            .reservations
            .list
            .iter()
            .filter(|e| e.since.elapsed() >= SANDBOX_GRACE && sandbox_gone(&e.reservation))
            .map(|e| (e.reservation.network.clone(), e.reservation.address.addr()))
            .collect();
        self.release_gone(state, gone);
    }

    fn release_gone(&self, state: &mut State, gone: Vec<(String, IpAddr)>) {
        for (network, address) in gone {
            info!(%network, %address, "the sandbox of a reservation is gone: releasing it");
            if let Err(e) = self.unreserve(state, &UnreserveRequest { network, address }) {
                warn!(%address, "releasing a reservation whose sandbox is gone: {e:#}");
            }
        }
    }
}

/// Whether a reservation was handed to a sandbox that no longer exists.
fn sandbox_gone(r: &Reservation) -> bool {
    let Some(sandbox) = &r.sandbox else {
        return false;
    };
    let Ok(ns_ref) = sandbox.parse::<netns::NsRef>() else {
        return false;
    };
    match netns::NetNs::open(&ns_ref) {
        Ok(_) => false,
        Err(netns::Error::InvalidArgument { .. }) => true,
        Err(e) => matches!(e.errno(), Some(libc::ENOENT)),
    }
}
