//! The daemon's counters in the Prometheus text exposition format (version 0.0.4), served on
//! `node.metrics_address` at `/metrics`.

use std::fmt::Write;

use super::api::{PeerView, PortView, Traffic};
use crate::io::IoCounters;
use crate::switch::Counters;

/// What one scrape reports.
pub struct Snapshot<'a> {
    /// Switch-wide counters.
    pub counters: &'a Counters,
    /// Counters of the I/O shell.
    pub io: IoCounters,
    /// MAC table entries.
    pub fdb_entries: usize,
    /// Attached containers.
    pub ports: &'a [PortView],
    /// Peers.
    pub peers: &'a [PeerView],
    /// Each datapath worker's traffic, in worker order.
    pub workers: &'a [Traffic],
}

/// Escapes a label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders a scrape.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let c = s.counters;
    let totals: [(&str, &str, u64); 8] = [
        (
            "vswitch_port_rx_frames_total",
            "Frames received from containers.",
            c.port_rx_frames,
        ),
        (
            "vswitch_port_rx_bytes_total",
            "Bytes received from containers.",
            c.port_rx_bytes,
        ),
        (
            "vswitch_port_tx_frames_total",
            "Frames written to containers.",
            c.port_tx_frames,
        ),
        (
            "vswitch_port_tx_bytes_total",
            "Bytes written to containers.",
            c.port_tx_bytes,
        ),
        (
            "vswitch_peer_rx_datagrams_total",
            "VXLAN datagrams received from peers.",
            c.peer_rx_datagrams,
        ),
        (
            "vswitch_peer_rx_bytes_total",
            "VXLAN bytes received from peers.",
            c.peer_rx_bytes,
        ),
        (
            "vswitch_peer_tx_datagrams_total",
            "VXLAN datagrams sent to peers.",
            c.peer_tx_datagrams,
        ),
        (
            "vswitch_peer_tx_bytes_total",
            "VXLAN bytes sent to peers.",
            c.peer_tx_bytes,
        ),
    ];
    for (name, help, value) in totals {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "vswitch_drops_total",
        "counter",
        "Frames and datagrams dropped, by reason.",
    );
    for (reason, n) in c.drops.iter() {
        let _ = writeln!(
            out,
            "vswitch_drops_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    let io: [(&str, &str, u64); 3] = [
        (
            "vswitch_tap_write_errors_total",
            "Frames a container's TAP refused.",
            s.io.tap_write_errors,
        ),
        (
            "vswitch_udp_send_errors_total",
            "Datagrams the underlay refused.",
            s.io.udp_send_errors,
        ),
        (
            "vswitch_offload_errors_total",
            "Super-frames that could not be segmented.",
            s.io.offload_errors,
        ),
    ];
    for (name, help, value) in io {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "vswitch_worker_frames_total",
        "counter",
        "Frames and datagrams each datapath worker took in (rx) and sent (tx).",
    );
    for (index, traffic) in s.workers.iter().enumerate() {
        for (direction, value) in [("rx", traffic.rx_frames), ("tx", traffic.tx_frames)] {
            let _ = writeln!(
                out,
                "vswitch_worker_frames_total{{worker=\"{index}\",direction=\"{direction}\"}} {value}"
            );
        }
    }
    let gauges: [(&str, &str, usize); 3] = [
        ("vswitch_fdb_entries", "MAC table entries.", s.fdb_entries),
        ("vswitch_ports", "Attached containers.", s.ports.len()),
        ("vswitch_peers", "Configured peers.", s.peers.len()),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "vswitch_container_bytes_total",
        "counter",
        "Bytes from (rx) and to (tx) each attached container.",
    );
    for p in s.ports {
        let a = &p.attachment;
        let labels = format!(
            "container=\"{}\",ifname=\"{}\",network=\"{}\"",
            label(&a.container_id),
            label(&a.ifname),
            label(&a.network)
        );
        let _ = writeln!(
            out,
            "vswitch_container_bytes_total{{{labels},direction=\"rx\"}} {}",
            p.traffic.rx_bytes
        );
        let _ = writeln!(
            out,
            "vswitch_container_bytes_total{{{labels},direction=\"tx\"}} {}",
            p.traffic.tx_bytes
        );
    }
    family(
        &mut out,
        "vswitch_peer_bytes_total",
        "counter",
        "VXLAN bytes from (rx) and to (tx) each peer.",
    );
    for p in s.peers {
        let labels = format!("peer=\"{}\"", label(&p.name));
        let _ = writeln!(
            out,
            "vswitch_peer_bytes_total{{{labels},direction=\"rx\"}} {}",
            p.traffic.rx_bytes
        );
        let _ = writeln!(
            out,
            "vswitch_peer_bytes_total{{{labels},direction=\"tx\"}} {}",
            p.traffic.tx_bytes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{Attachment, Traffic};

    #[test]
    fn scrapes_follow_the_text_format() {
        let counters = Counters {
            port_rx_frames: 7,
            ..Counters::default()
        };
        let ports = vec![PortView {
            attachment: Attachment::example("web\"1"),
            traffic: Traffic {
                rx_bytes: 100,
                tx_bytes: 200,
                ..Traffic::default()
            },
        }];
        let text = render(&Snapshot {
            counters: &counters,
            io: IoCounters::default(),
            fdb_entries: 3,
            ports: &ports,
            peers: &[],
            workers: &[Traffic::default(), Traffic::default()],
        });
        assert!(text.contains("vswitch_worker_frames_total{worker=\"1\",direction=\"rx\"} 0\n"));
        assert!(text.contains(
            "# TYPE vswitch_port_rx_frames_total counter\nvswitch_port_rx_frames_total 7\n"
        ));
        assert!(text.contains("vswitch_drops_total{reason=\"unknown_peer\"} 0\n"));
        assert!(text.contains("vswitch_fdb_entries 3\n"));
        assert!(text.contains(
            "vswitch_container_bytes_total{container=\"web\\\"1\",ifname=\"eth0\",network=\"default\",direction=\"tx\"} 200\n"
        ));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
