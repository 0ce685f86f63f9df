//! Plain-text tables of what the daemon reports, as `vswitch status | ports | fdb | peers`
//! print them.

use std::fmt::Write;

use super::api::{Attachment, FdbView, PeerView, PortView, StatusView, Traffic};

/// Left-aligned columns separated by two spaces, one header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    text
}

/// Bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn traffic_cells(t: &Traffic) -> [String; 5] {
    [
        t.rx_frames.to_string(),
        bytes(t.rx_bytes),
        t.tx_frames.to_string(),
        bytes(t.tx_bytes),
        t.drops.to_string(),
    ]
}

/// `vswitch status`.
pub fn status(s: &StatusView) -> String {
    let mut text = format!(
        "node {}  endpoint {}  up {}s  store {}\npeers {}  fdb entries {}  workers {}\n\n",
        s.node,
        s.endpoint,
        s.uptime_secs,
        s.store,
        s.peers,
        s.fdb_entries,
        s.workers.len()
    );
    let rows: Vec<Vec<String>> = s
        .networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.vni.to_string(),
                n.subnet.to_string(),
                n.node_subnet.to_string(),
                n.gateway.to_string(),
                n.mtu.to_string(),
                n.ports.to_string(),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "NETWORK",
            "VNI",
            "SUBNET",
            "NODE SUBNET",
            "GATEWAY",
            "MTU",
            "PORTS",
        ],
        &rows,
    ));
    let [rx, rxb, tx, txb, drops] = traffic_cells(&s.traffic);
    let _ = write!(
        text,
        "\ntraffic  rx {rx} frames ({rxb})  tx {tx} frames ({txb})  dropped {drops}\n\
         refused  by TAPs {}  by the underlay {}  unsegmentable super-frames {}\n",
        s.tap_write_errors, s.udp_send_errors, s.offload_errors
    );
    if let Some(h) = &s.health {
        let store = match h.store_reachable {
            Some(true) => "store reachable",
            Some(false) => "store unreachable",
            None => "no shared store",
        };
        let _ = writeln!(
            text,
            "health   {} since {} (unix)  {store}  peers up {}/{}",
            h.state, h.since_unix_secs, h.peers_up, h.peers
        );
    }
    let _ = writeln!(
        text,
        "mtu      too-big errors sent {} (rate-limited {})  MSS clamped {}",
        s.mtu.too_big_sent, s.mtu.too_big_limited, s.mtu.mss_clamped
    );
    let _ = writeln!(
        text,
        "routing  routed {}  ARP resolves {}  TTL exceeded {}",
        s.routing.routed, s.routing.route_resolves, s.routing.ttl_exceeded
    );
    if s.workers.len() > 1 {
        let spread: Vec<String> = s.workers.iter().map(|w| w.rx_frames.to_string()).collect();
        let _ = writeln!(text, "per worker  rx frames {}", spread.join(" / "));
    }
    if !s.drops.is_empty() {
        let rows: Vec<Vec<String>> = s
            .drops
            .iter()
            .map(|(reason, n)| vec![reason.clone(), n.to_string()])
            .collect();
        text.push('\n');
        text.push_str(&table(&["DROP REASON", "COUNT"], &rows));
    }
    text
}

/// `vswitch reservations`: network, address, MAC, endpoint, TAP and where it was handed.
pub fn reservations(list: &[super::host_tap::Reservation]) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.network.clone(),
                r.address.to_string(),
                r.mac.to_string(),
                or_dash(&r.endpoint),
                or_dash(&r.tap),
                or_dash(&r.sandbox),
            ]
        })
        .collect();
    table(
        &["NETWORK", "ADDRESS", "MAC", "ENDPOINT", "TAP", "SANDBOX"],
        &rows,
    )
}

/// `vswitch ports`.
pub fn ports(ports: &[PortView]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let a = &p.attachment;
            let mut row = vec![
                a.container_id.clone(),
                a.ifname.clone(),
                a.network.clone(),
                a.address.to_string(),
                a.mac.to_string(),
            ];
            row.extend(traffic_cells(&p.traffic));
            row.push(p.denied.to_string());
            row.push(p.limited.to_string());
            row.push(a.qos.map_or_else(|| "-".into(), |q| q.rate.to_string()));
            row
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "IFACE",
            "NETWORK",
            "ADDRESS",
            "MAC",
            "RX",
            "RX BYTES",
            "TX",
            "TX BYTES",
            "DROPS",
            "DENIED",
            "LIMITED",
            "RATE",
        ],
        &rows,
    )
}

/// `vswitch fdb`.
pub fn fdb(entries: &[FdbView]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.network.clone(),
                e.vni.to_string(),
                e.mac.to_string(),
                e.location.clone(),
                if e.is_static { "static" } else { "learned" }.to_owned(),
                if e.is_static {
                    "-".to_owned()
                } else {
                    format!("{}s", e.age_secs)
                },
            ]
        })
        .collect();
    table(&["NETWORK", "VNI", "MAC", "LOCATION", "TYPE", "AGE"], &rows)
}

/// `vswitch peers`.
pub fn peers(peers: &[PeerView]) -> String {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                p.endpoint.to_string(),
                p.networks.join(","),
                p.macs.to_string(),
            ];
            row.extend(traffic_cells(&p.traffic));
            row.push(match &p.health {
                None => "-".into(),
                Some(h) => match h.last_heard_ms {
                    Some(ms) => format!(
                        "{} since {} (heard {ms} ms ago)",
                        h.state, h.since_unix_secs
                    ),
                    None => format!("{} since {}", h.state, h.since_unix_secs),
                },
            });
            row.push(if p.discovered { "fleet" } else { "config" }.into());
            row.push(match &p.session {
                None => "-".into(),
                Some(s) => session_cell(s),
            });
            row
        })
        .collect();
    let mut out = table(
        &[
            "PEER", "ENDPOINT", "NETWORKS", "MACS", "RX", "RX BYTES", "TX", "TX BYTES", "DROPS",
            "HEALTH", "FROM", "SESSION",
        ],
        &rows,
    );
    for p in peers.iter().filter(|p| !p.drops_by_reason.is_empty()) {
        let reasons: Vec<String> = p
            .drops_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(out, "  {} drops: {}", p.name, reasons.join(", "));
    }
    out
}

/// A sealed peer's session: state, handshakes, rekeys, age of the last, refused messages.
fn session_cell(s: &super::sealing::SessionStatus) -> String {
    let mut cell = s.state.clone();
    if let Some(age) = s.last_handshake_secs {
        let _ = write!(
            cell,
            " ({} handshakes, {} rekeys, last {age}s ago)",
            s.handshakes, s.rekeys
        );
    }
    if s.refused > 0 {
        let _ = write!(cell, ", {} refused", s.refused);
    }
    cell
}

/// `vswitch attach`: what a person needs to use the interface.
pub fn attachment(a: &Attachment) -> String {
    format!(
        "interface {} in {}\naddress   {}\ngateway   {}\nmac       {}\nmtu       {}\nnetwork   {} (vni {})\n",
        a.ifname, a.netns, a.address, a.gateway, a.mac, a.mtu, a.network, a.vni
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
