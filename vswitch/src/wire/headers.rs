//! Where the headers of an Ethernet frame sit: past every VLAN tag to the EtherType, and for
//! IPv4 and IPv6 where the transport header starts and where the packet ends. The one header
//! walk that port security, segmentation, coalescing and checksum completion share.

use super::{Error, EtherType, Result, read_u16};

/// EtherTypes of VLAN tags walked through: 802.1Q, 802.1ad (QinQ), and the pre-standard 0x9100.
pub const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// The most VLAN tags walked before a frame is called malformed.
pub const MAX_VLAN_TAGS: usize = 4;

const ETHERTYPE_AT: usize = 12;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// The EtherType past every VLAN tag, and where its payload starts. `Truncated` when the frame
/// ends inside the tags, `Malformed` past [`MAX_VLAN_TAGS`] tags.
pub fn ethertype_past_tags(frame: &[u8]) -> Result<(EtherType, usize)> {
    let mut at = ETHERTYPE_AT;
    for _ in 0..=MAX_VLAN_TAGS {
        let ethertype = frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Error::Truncated)?;
        if !VLAN_TPIDS.contains(&ethertype) {
            return Ok((EtherType(ethertype), at + 2));
        }
        at += 4;
    }
    Err(Error::Malformed)
}

/// Where the IP and transport headers of an Ethernet frame sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeaders {
    /// Offset of the IP header (past the Ethernet header and every VLAN tag).
    pub l3: usize,
    /// Offset of the transport header (IPv6: the first header after the fixed one).
    pub l4: usize,
    /// End of the IP packet as its header declares it (frame padding excluded).
    pub end: usize,
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// The transport protocol (IPv4 protocol, IPv6 next header: extension headers are not
    /// walked, so this is then the extension's number).
    pub proto: u8,
    /// IPv4 only: the packet is a fragment (MF set or a non-zero offset).
    pub fragment: bool,
}

impl IpHeaders {
    /// Walks the Ethernet header, its VLAN tags and the IPv4 or IPv6 header, checking every
    /// declared length against the frame. `Unsupported` for a frame that is not IP and for an
    /// IPv6 jumbogram; `Malformed` for a wrong version or IPv4 header or total length.
    pub fn locate(frame: &[u8]) -> Result<IpHeaders> {
        let (ethertype, l3) = ethertype_past_tags(frame)?;
        match ethertype {
            EtherType::IPV4 => {
                let vihl = *frame.get(l3).ok_or(Error::Truncated)?;
                let ihl = usize::from(vihl & 0x0f) * 4;
                if vihl >> 4 != 4 || ihl < IPV4_MIN_LEN {
                    return Err(Error::Malformed);
                }
                if frame.len() < l3 + ihl {
                    return Err(Error::Truncated);
                }
                let total = usize::from(read_u16(frame, l3 + 2));
                if total < ihl {
                    return Err(Error::Malformed);
                }
                if frame.len() < l3 + total {
                    return Err(Error::Truncated);
                }
                Ok(IpHeaders {
                    l3,
                    l4: l3 + ihl,
                    end: l3 + total,
                    v6: false,
                    proto: frame[l3 + 9],
                    fragment: read_u16(frame, l3 + 6) & 0x3fff != 0,
                })
            }
            EtherType::IPV6 => {
                if frame.len() < l3 + IPV6_LEN {
                    return Err(Error::Truncated);
                }
                if frame[l3] >> 4 != 6 {
                    return Err(Error::Malformed);
                }
                let payload = usize::from(read_u16(frame, l3 + 4));
                if payload == 0 {
                    return Err(Error::Unsupported);
                }
                if frame.len() < l3 + IPV6_LEN + payload {
                    return Err(Error::Truncated);
                }
                Ok(IpHeaders {
                    l3,
                    l4: l3 + IPV6_LEN,
                    end: l3 + IPV6_LEN + payload,
                    v6: true,
                    proto: frame[l3 + 6],
                    fragment: false,
                })
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// The source and destination addresses as they sit in the IP header (8 bytes for IPv4,
    /// 32 for IPv6), for pseudo-header sums and flow keys.
    pub fn addresses<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let (start, len) = if self.v6 { (8, 32) } else { (12, 8) };
        frame
            .get(self.l3 + start..self.l3 + start + len)
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ipv4(tags: &[u16], total: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 1]);
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x20, 0, 64, 17, 0, 0]);
        f[14 + 4 * tags.len() + 2..14 + 4 * tags.len() + 4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.resize(14 + 4 * tags.len() + usize::from(total), 0);
        f
    }

    #[test]
    fn ipv4_behind_any_tags() {
        for tags in [
            &[][..],
            &[0x8100],
            &[0x88a8, 0x8100],
            &[0x9100, 0x8100, 0x8100],
        ] {
            let f = ipv4(tags, 28);
            let ip = IpHeaders::locate(&f).unwrap();
            let l3 = 14 + 4 * tags.len();
            assert_eq!(
                (ip.l3, ip.l4, ip.end, ip.proto, ip.v6),
                (l3, l3 + 20, l3 + 28, 17, false)
            );
            assert!(ip.fragment, "MF is set in the fixture");
            assert_eq!(ip.addresses(&f), &[10, 0, 0, 1, 10, 0, 0, 2]);
        }
        let deep = ipv4(&[0x8100; MAX_VLAN_TAGS + 1], 28);
        assert_eq!(IpHeaders::locate(&deep), Err(Error::Malformed));
    }

    #[test]
    fn lengths_are_checked() {
        let f = ipv4(&[], 28);
        assert_eq!(IpHeaders::locate(&f[..f.len() - 1]), Err(Error::Truncated));
        assert_eq!(IpHeaders::locate(&f[..20]), Err(Error::Truncated));
        assert_eq!(IpHeaders::locate(&f[..13]), Err(Error::Truncated));
        let mut short_total = f.clone();
        short_total[17] = 10;
        assert_eq!(IpHeaders::locate(&short_total), Err(Error::Malformed));
        let mut v5 = f.clone();
        v5[14] = 0x55;
        assert_eq!(IpHeaders::locate(&v5), Err(Error::Malformed));
        let mut arp = f;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(IpHeaders::locate(&arp), Err(Error::Unsupported));
    }
}
