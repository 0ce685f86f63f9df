#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Realistic inputs the fuzzers start from: frames and super-frames as a container's kernel hands
them to a TAP (with their virtio-net header), VXLAN datagrams as a peer sends them, control
requests and replies, config files. Addresses and MACs are those of the fuzz fixture
(fuzz/src/fixture.rs), so that frames pass port security and reach the peer. Python's standard
library only; run it from anywhere: `python3 fuzz/seeds.py`.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

GATEWAY_MAC = bytes([0x0A, 0x58, 0x0A, 0xF4, 0x01, 0x01])
PORT_A_MAC = bytes([0x0A, 0x58, 0x0A, 0xF4, 0x01, 0x02])
PORT_B_MAC = bytes([0x0A, 0x58, 0x0A, 0xF4, 0x01, 0x03])
PORT_C_MAC = bytes([0x0A, 0x58, 0x0A, 0xF5, 0x01, 0x02])
REMOTE_MAC = bytes([0x0A, 0x58, 0x0A, 0xF4, 0x02, 0x02])
BROADCAST = b"\xff" * 6
GATEWAY_IP = bytes([10, 244, 1, 1])
PORT_A_IP = bytes([10, 244, 1, 2])
PORT_B_IP = bytes([10, 244, 1, 3])
PORT_C_IP = bytes([10, 245, 1, 2])
REMOTE_IP = bytes([10, 244, 2, 2])
PORT_A_IP6 = bytes.fromhex("fd000010024400010000000000000002")
REMOTE_IP6 = bytes.fromhex("fd000010024400020000000000000002")

TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, PSH, ACK, ECE, CWR = 0x01, 0x02, 0x08, 0x10, 0x40, 0x80

# virtio-net header
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 4, 5, 0x80


def csum_sum(data, acc=0):
    if len(data) % 2:
        data += b"\0"
    for (word,) in struct.iter_unpack("!H", data):
        acc += word
    return acc


def fold(acc):
    while acc > 0xFFFF:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def checksum(data, acc=0):
    return ~fold(csum_sum(data, acc)) & 0xFFFF


def payload(n, salt=0):
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def eth(dst, src, ethertype, vlan=None):
    if vlan is None:
        return dst + src + struct.pack("!H", ethertype)
    return dst + src + struct.pack("!HHH", 0x8100, vlan, ethertype)


def ipv4(src, dst, proto, body_len, ident=0x1234, ttl=64, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + body_len, ident, 0x4000, ttl, proto, 0, src, dst
    ) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def ipv6(src, dst, proto, body_len, hop=64):
    return struct.pack("!IHBB16s16s", 0x60000000, body_len, proto, hop, src, dst)


def pseudo(src, dst, proto, length):
    return csum_sum(src + dst) + proto + (length & 0xFFFF) + (length >> 16)


def tcp(src, dst, seq, flags, data, ack=0x5000, options=b"", partial=False, sport=40000, dport=5201):
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + options
    seg = hdr + data
    ps = pseudo(src, dst, TCP, len(seg))
    value = fold(ps) if partial else checksum(seg, ps)
    return seg[:16] + struct.pack("!H", value) + seg[18:]


def udp(src, dst, data, partial=False, sport=40000, dport=5201, length=None):
    n = 8 + len(data)
    seg = struct.pack("!HHHH", sport, dport, n if length is None else length, 0) + data
    ps = pseudo(src, dst, UDP, n if length is None else length)
    value = fold(ps) if partial else (checksum(seg, ps) or 0xFFFF)
    return seg[:6] + struct.pack("!H", value) + seg[8:]


def tcp4_frame(src_mac, dst_mac, src, dst, seq, flags, data, partial=False, options=b"", ident=0x1234, vlan=None):
    seg = tcp(src, dst, seq, flags, data, options=options, partial=partial)
    return eth(dst_mac, src_mac, 0x0800, vlan) + ipv4(src, dst, TCP, len(seg), ident=ident) + seg


def tcp6_frame(src_mac, dst_mac, src, dst, seq, flags, data, partial=False, options=b""):
    seg = tcp(src, dst, seq, flags, data, options=options, partial=partial)
    return eth(dst_mac, src_mac, 0x86DD) + ipv6(src, dst, TCP, len(seg)) + seg


def udp4_frame(src_mac, dst_mac, src, dst, data, partial=False, ident=0x1234, length=None):
    seg = udp(src, dst, data, partial=partial, length=length)
    return eth(dst_mac, src_mac, 0x0800) + ipv4(src, dst, UDP, len(seg), ident=ident) + seg


def udp6_frame(src_mac, dst_mac, src, dst, data, partial=False, length=None):
    seg = udp(src, dst, data, partial=partial, length=length)
    return eth(dst_mac, src_mac, 0x86DD) + ipv6(src, dst, UDP, len(seg)) + seg


def arp(op, sender_mac, sender_ip, target_mac, target_ip, dst=BROADCAST):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sender_mac + sender_ip + target_mac + target_ip
    return eth(dst, sender_mac, 0x0806) + body


def icmp_echo(src_mac, dst_mac, src, dst, ident=7, seq=1, data=b"ping" * 8):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return eth(dst_mac, src_mac, 0x0800) + ipv4(src, dst, ICMP, len(body)) + body


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, port=0):
    """The 12-byte virtio-net header; `port` goes in num_buffers, which the fuzz fixture reads
    as the source port (0: A, 1: B, 2: C)."""
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, port)


def vxlan(vni, frame, flags=0x08, reserved=b"\0\0\0", last=0):
    return bytes([flags]) + reserved + struct.pack("!I", vni << 8 | last) + frame


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


MSS = 1398
TS_OPTIONS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)
# What Linux puts in a SYN from an interface with a 9000-byte MTU: MSS, SACK permitted,
# timestamps, NOP, window scale.
SYN_OPTIONS = struct.pack("!BBH", 2, 4, 8960) + b"\x04\x02\x08\x0a" + struct.pack("!II", 1, 0) + b"\x01\x03\x03\x07"


def tso4(src_mac, dst_mac, n, mss=MSS, flags=ACK | PSH, options=b"", vlan=None, ecn=False):
    frame = tcp4_frame(src_mac, dst_mac, PORT_A_IP, REMOTE_IP, 1, flags, payload(n * mss), partial=True,
                       options=options, vlan=vlan)
    l3 = 18 if vlan is not None else 14
    hdr = vnet(NEEDS_CSUM, GSO_TCPV4 | (GSO_ECN if ecn else 0), l3 + 40 + len(options), mss, l3 + 20, 16)
    return hdr, frame


def tso6(src_mac, dst_mac, n, mss=MSS - 20, flags=ACK | PSH):
    frame = tcp6_frame(src_mac, dst_mac, PORT_A_IP6, REMOTE_IP6, 1, flags, payload(n * mss), partial=True)
    return vnet(NEEDS_CSUM, GSO_TCPV6, 14 + 60, mss, 54, 16), frame


def uso4(src_mac, dst_mac, n, size=1000):
    data = payload(n * size)
    frame = udp4_frame(src_mac, dst_mac, PORT_A_IP, REMOTE_IP, data, partial=True)
    return vnet(NEEDS_CSUM, GSO_UDP_L4, 14 + 28, size, 34, 6), frame


def uso6(src_mac, dst_mac, n, size=1000):
    data = payload(n * size)
    frame = udp6_frame(src_mac, dst_mac, PORT_A_IP6, REMOTE_IP6, data, partial=True)
    return vnet(NEEDS_CSUM, GSO_UDP_L4, 14 + 48, size, 54, 6), frame


def frame_from_port():
    t = "frame_from_port"
    syn = tcp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, 1, SYN, b"")
    write(t, "tcp-syn-to-peer", vnet() + syn)
    partial = tcp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, 1, ACK | PSH, payload(200), partial=True)
    write(t, "tcp-partial-checksum-to-peer", vnet(NEEDS_CSUM, csum_start=34, csum_offset=16) + partial)
    write(t, "tcp-to-port-b", vnet() + tcp4_frame(PORT_A_MAC, PORT_B_MAC, PORT_A_IP, PORT_B_IP, 9, ACK, payload(64)))
    write(t, "arp-request-gateway", vnet() + arp(1, PORT_A_MAC, PORT_A_IP, b"\0" * 6, GATEWAY_IP))
    write(t, "arp-request-remote", vnet() + arp(1, PORT_A_MAC, PORT_A_IP, b"\0" * 6, REMOTE_IP))
    write(t, "arp-reply-unicast", vnet() + arp(2, PORT_A_MAC, PORT_A_IP, REMOTE_MAC, REMOTE_IP, dst=REMOTE_MAC))
    write(t, "icmp-echo-gateway", vnet() + icmp_echo(PORT_A_MAC, GATEWAY_MAC, PORT_A_IP, GATEWAY_IP))
    hdr, frame = tso4(PORT_A_MAC, REMOTE_MAC, 3)
    write(t, "tso4-to-peer", hdr + frame)
    hdr, frame = tso4(PORT_A_MAC, REMOTE_MAC, 2, options=TS_OPTIONS, flags=ACK | PSH | FIN)
    write(t, "tso4-timestamps-fin-to-peer", hdr + frame)
    hdr, frame = tso6(PORT_A_MAC, REMOTE_MAC, 2)
    write(t, "tso6-to-peer", hdr + frame)
    hdr, frame = uso4(PORT_A_MAC, REMOTE_MAC, 3)
    write(t, "uso4-to-peer", hdr + frame)
    hdr, frame = uso6(PORT_A_MAC, BROADCAST, 2)
    write(t, "uso6-flood", hdr + frame)
    write(t, "udp6-to-peer", vnet() + udp6_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP6, REMOTE_IP6, payload(100)))
    hdr, frame = tso4(PORT_B_MAC, REMOTE_MAC, 2, vlan=7)
    write(t, "tso4-tagged-from-b", vnet(*struct.unpack("<BBHHHH", hdr[:10]), port=1) + frame)
    write(t, "udp-broadcast-from-b", vnet(port=1) + udp4_frame(PORT_B_MAC, BROADCAST, PORT_B_IP, bytes([10, 244, 255, 255]), payload(40)))
    write(t, "udp-broadcast-from-c", vnet(port=2) + udp4_frame(PORT_C_MAC, BROADCAST, PORT_C_IP, bytes([10, 245, 255, 255]), payload(40)))
    port_d_ip = bytes([10, 246, 1, 2])
    write(t, "udp-routed-to-port-d", vnet() + udp4_frame(PORT_A_MAC, GATEWAY_MAC, PORT_A_IP, port_d_ip, payload(60)))
    write(t, "udp-routed-unknown", vnet() + udp4_frame(PORT_A_MAC, GATEWAY_MAC, PORT_A_IP, bytes([10, 246, 2, 9]), payload(20)))
    write(t, "tcp-to-outside-host-port", vnet() + tcp4_frame(PORT_A_MAC, GATEWAY_MAC, PORT_A_IP, bytes([198, 51, 100, 7]), 1, SYN, b""))
    hdr, frame = tso4(PORT_A_MAC, GATEWAY_MAC, 3)
    write(t, "tso4-to-gateway", hdr + frame)
    # MTU: a SYN whose MSS is clamped (complete and partial checksum), frames over the MTU
    # that are answered with ICMP errors.
    syn = tcp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, 1, SYN, b"", options=SYN_OPTIONS)
    write(t, "tcp-syn-mss-to-peer", vnet() + syn)
    syn = tcp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, 1, SYN, b"", options=SYN_OPTIONS, partial=True)
    write(t, "tcp-syn-mss-partial-to-peer", vnet(NEEDS_CSUM, csum_start=34, csum_offset=16) + syn)
    syn6 = tcp6_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP6, REMOTE_IP6, 1, SYN | ACK, b"", options=SYN_OPTIONS)
    write(t, "tcp6-syn-ack-mss-to-peer", vnet() + syn6)
    write(t, "udp-over-mtu-to-peer", vnet() + udp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, payload(1500)))
    write(t, "udp6-over-mtu-to-peer", vnet() + udp6_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP6, REMOTE_IP6, payload(1500)))
    hdr, frame = tso4(PORT_A_MAC, REMOTE_MAC, 3, mss=1460)
    write(t, "tso4-segments-over-mtu", hdr + frame)


def datagram_from_peer():
    t = "datagram_from_peer"

    def sel(selector, stride, data):
        return bytes([selector]) + struct.pack("<H", stride) + data

    arp_req = arp(1, REMOTE_MAC, REMOTE_IP, b"\0" * 6, PORT_A_IP)
    write(t, "arp-request", sel(0, 0, vxlan(42, arp_req)))
    write(t, "arp-request-unknown-peer", sel(1, 0, vxlan(42, arp_req)))
    write(t, "arp-request-unknown-peer-accepted", sel(3, 0, vxlan(42, arp_req)))
    write(t, "arp-request-vni-43", sel(0, 0, vxlan(43, arp_req)))
    write(t, "reserved-bits-set", sel(0, 0, vxlan(42, arp_req, flags=0xFF, reserved=b"\xff\xff\xff", last=0xFF)))
    one = tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, ACK, payload(MSS))
    write(t, "tcp-segment", sel(0, 0, vxlan(42, one)))
    partial = tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, ACK | PSH, payload(300), partial=True)
    write(t, "tcp-partial-checksum", sel(0, 0, vxlan(42, partial)))
    # GRO trains: equal-size datagrams back to back, the stride their size.
    train = [vxlan(42, tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1 + i * 600, ACK, payload(600, i), ident=i))
             for i in range(4)]
    write(t, "gro-tcp4-train", sel(0, len(train[0]), b"".join(train)))
    train = [vxlan(42, tcp6_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP6, PORT_A_IP6, 1 + i * 500, ACK, payload(500, i), options=TS_OPTIONS))
             for i in range(3)]
    write(t, "gro-tcp6-train", sel(0, len(train[0]), b"".join(train)))
    train = [vxlan(42, udp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, payload(200, i), ident=i)) for i in range(5)]
    write(t, "gro-udp4-train", sel(0, len(train[0]), b"".join(train)))
    write(t, "gro-udp4-train-no-uso", sel(4, len(train[0]), b"".join(train)))
    train = [vxlan(42, udp6_frame(REMOTE_MAC, PORT_B_MAC, REMOTE_IP6, PORT_A_IP6, payload(120, i))) for i in range(3)]
    write(t, "gro-udp6-train", sel(0, len(train[0]), b"".join(train)))
    flood = vxlan(42, udp4_frame(REMOTE_MAC, BROADCAST, REMOTE_IP, bytes([10, 244, 255, 255]), payload(50)))
    write(t, "udp-broadcast", sel(0, 0, flood))
    syn = tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, SYN, b"", options=SYN_OPTIONS)
    write(t, "tcp-syn-mss", sel(0, 0, vxlan(42, syn)))
    syn = tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, SYN | ACK, b"", options=SYN_OPTIONS, partial=True)
    write(t, "tcp-syn-ack-mss-partial", sel(0, 0, vxlan(42, syn)))
    over = udp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, payload(1500))
    write(t, "udp-over-mtu", sel(0, 0, vxlan(42, over)))
    over = udp6_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP6, PORT_A_IP6, payload(1500))
    write(t, "udp6-over-mtu-unknown-peer-accepted", sel(3, 0, vxlan(42, over)))


def segment():
    t = "segment"
    for name, (hdr, frame) in {
        "tso4": tso4(PORT_A_MAC, REMOTE_MAC, 3),
        "tso4-timestamps": tso4(PORT_A_MAC, REMOTE_MAC, 4, mss=500, options=TS_OPTIONS),
        "tso4-ecn-cwr-fin": tso4(PORT_A_MAC, REMOTE_MAC, 3, mss=300, flags=ACK | PSH | FIN | CWR | ECE, ecn=True),
        "tso4-tagged": tso4(PORT_A_MAC, REMOTE_MAC, 2, mss=700, vlan=5),
        "tso6": tso6(PORT_A_MAC, REMOTE_MAC, 3, mss=400),
        "uso4": uso4(PORT_A_MAC, REMOTE_MAC, 4, size=300),
        "uso6": uso6(PORT_A_MAC, REMOTE_MAC, 3, size=333),
    }.items():
        write(t, name, hdr + frame)
    partial = tcp4_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP, REMOTE_IP, 1, ACK | PSH, payload(200), partial=True)
    write(t, "needs-csum-tcp4", vnet(NEEDS_CSUM, csum_start=34, csum_offset=16) + partial)
    partial = udp6_frame(PORT_A_MAC, REMOTE_MAC, PORT_A_IP6, REMOTE_IP6, payload(77), partial=True)
    write(t, "needs-csum-udp6", vnet(NEEDS_CSUM, csum_start=54, csum_offset=6) + partial)
    write(t, "plain-arp", vnet() + arp(1, PORT_A_MAC, PORT_A_IP, b"\0" * 6, GATEWAY_IP))


def coalesce():
    t = "coalesce"

    def rec(control, frame):
        body = bytes([control]) + frame
        return struct.pack("<H", len(body)) + body

    tcp_run = [tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1 + i * 500, ACK | (PSH if i == 3 else 0), payload(500, i), ident=i)
               for i in range(4)]
    write(t, "tcp4-run-psh", b"\0" + b"".join(rec(1, f) for f in tcp_run))
    tcp6_run = [tcp6_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP6, PORT_A_IP6, 1 + i * 400, ACK, payload(400 if i < 3 else 100, i), options=TS_OPTIONS)
                for i in range(4)]
    write(t, "tcp6-run-short-last", b"\0" + b"".join(rec(2, f) for f in tcp6_run))
    udp_run = [udp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, payload(64, i), ident=i) for i in range(6)]
    write(t, "udp4-run", b"\0" + b"".join(rec(1, f) for f in udp_run))
    write(t, "udp4-run-no-uso", b"\x01" + b"".join(rec(1, f) for f in udp_run))
    udp6_run = [udp6_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP6, PORT_A_IP6, payload(100, i)) for i in range(3)]
    write(t, "udp6-run", b"\0" + b"".join(rec(3, f) for f in udp6_run))
    mixed = []
    for i in range(3):
        mixed.append(rec(1, tcp_run[i]))
        mixed.append(rec(1, udp_run[i]))
        mixed.append(rec(2, tcp_run[i]))
    write(t, "interleaved-flows-ports", b"\0" + b"".join(mixed))
    write(t, "interleaved-one-flow-slot", b"\x02" + b"".join(mixed))
    partial = [tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1 + i * 300, ACK, payload(300, i), partial=True)
               for i in range(3)]
    write(t, "tcp4-partial-checksums", b"\0" + rec(1, partial[0]) + rec(0x81, partial[1]) + rec(0x41, partial[2]))
    write(t, "arp-passes", b"\0" + rec(0, arp(1, REMOTE_MAC, REMOTE_IP, b"\0" * 6, PORT_A_IP)))


def decap():
    t = "decap"
    write(t, "arp", vxlan(42, arp(1, REMOTE_MAC, REMOTE_IP, b"\0" * 6, PORT_A_IP)))
    write(t, "tcp4", vxlan(42, tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, ACK, payload(100))))
    write(t, "tcp4-tagged", vxlan(7, tcp4_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP, 1, SYN, b"", vlan=9)))
    write(t, "udp6", vxlan(0xFFFFFF, udp6_frame(REMOTE_MAC, PORT_A_MAC, REMOTE_IP6, PORT_A_IP6, payload(30))))
    write(t, "icmp", vxlan(42, icmp_echo(REMOTE_MAC, PORT_A_MAC, REMOTE_IP, PORT_A_IP)))
    write(t, "reserved-bits", vxlan(42, arp(2, REMOTE_MAC, REMOTE_IP, PORT_A_MAC, PORT_A_IP), flags=0xFF, reserved=b"\xff\xff\xff", last=0xFF))
    write(t, "no-i-flag", vxlan(42, arp(1, REMOTE_MAC, REMOTE_IP, b"\0" * 6, PORT_A_IP), flags=0))


def control_request():
    t = "control_request"
    attachment = ('{"container_id":"c1","netns":"c1","ifname":"eth0","network":"default","vni":42,'
                  '"mac":"0a:58:0a:f4:01:02","address":"10.244.1.2/16","address6":"fd00:10:244:1::2/48",'
                  '"gateway":"10.244.1.1","mtu":1450}')
    traffic = '{"rx_frames":1,"rx_bytes":100,"tx_frames":2,"tx_bytes":200,"drops":0}'
    lines = {
        "attach-minimal": '{"op":"attach","netns":"c1"}',
        "attach-full": '{"op":"attach","netns":"/proc/1234/ns/net","network":"blue","ifname":"eth1",'
                       '"container_id":"abc","ip":"10.244.1.7","mac":"0a:58:0a:f4:01:07"}',
        "attach-null-fields": '{"op":"attach","netns":"c1","network":null,"ifname":null,"container_id":null,"ip":null,"mac":null}',
        "attach-ipv6": '{"op":"attach","netns":"pid:42","ip":"fd00:10:244:1::7"}',
        "attach-unknown-field": '{"op":"attach","nets":"x"}',
        "detach": '{"op":"detach","container_id":"c1","ifname":"eth0"}',
        "status": '{"op":"status"}',
        "ports": '{"op":"ports"}',
        "fdb": '{"op":"fdb"}',
        "peers": '{"op":"peers"}',
        "reload": '{"op":"reload"}',
        "reserve": '{"op":"reserve","network":"app","ip":"10.244.1.9","endpoint":"e1","mac":"02:42:0a:f4:01:09"}',
        "unreserve": '{"op":"unreserve","network":"app","address":"10.244.1.9"}',
        "plug-tap": '{"op":"plug_tap","endpoint":"e1","tap":"vswe1","sandbox":"/var/run/docker/netns/1"}',
        "unplug-tap": '{"op":"unplug_tap","endpoint":"e1"}',
        "reservations": '{"op":"reservations"}',
        "response-reserved": '{"ok":{"reserved":{"network":"app","vni":42,"address":"10.244.1.9/16",'
                             '"gateway":"10.244.1.1","mtu":1450,"mac":"0a:58:0a:f4:01:09","owner":"reserved-1",'
                             '"endpoint":"e1","tap":"vswe1","sandbox":"/var/run/docker/netns/1"}}}',
        "helper-reserve": '{"op":"helper_reserve","attach":{"netns":"c1","ifname":"eth0"},"netns_id":[4,4026532000],'
                   '"before":{"lo_was_up":false,"lo_addresses":["127.0.0.1/8"]}}',
        "plug": '{"op":"plug","offloads":99}',
        "response-helper-reserved": '{"ok":{"helper_reserved":{"attachment":' + attachment + ',"send_queues":true,'
                             '"queues":2,"offloads":true}}}',
        "response-error": '{"error":"no network is named \\"red\\""}',
        "response-detached": '{"ok":{"detached":false}}',
        "response-attached": '{"ok":{"attached":' + attachment + '}}',
        "response-reloaded": '{"ok":{"reloaded":"added network blue"}}',
        "response-ports": '{"ok":{"ports":[' + attachment[:-1] + ',"traffic":' + traffic + '}]}}',
        "response-fdb": '{"ok":{"fdb":[{"network":"default","vni":42,"mac":"0a:58:0a:f4:02:02",'
                        '"location":"peer host-b","is_static":false,"age_secs":3}]}}',
        "response-peers": '{"ok":{"peers":[{"name":"host-b","endpoint":"192.0.2.11:4789",'
                          '"networks":["default"],"macs":1,"traffic":' + traffic + '}]}}',
        "response-status": '{"ok":{"status":{"node":"host-a","endpoint":"[fd00::1]:4789","uptime_secs":5,'
                           '"store":"embedded","networks":[{"name":"default","vni":42,"subnet":"10.244.0.0/16",'
                           '"node_subnet":"10.244.1.0/24","gateway":"10.244.1.1","mtu":1450,"ports":1}],'
                           '"peers":1,"fdb_entries":3,"traffic":' + traffic + ',"drops":[["runt",2]],'
                           '"tap_write_errors":0,"udp_send_errors":0,"offload_errors":0,"workers":[' + traffic + ']}}}',
    }
    for name, line in lines.items():
        write(t, name, line.encode())


MINIMAL = '[node]\nname = "a"\naddress = "192.0.2.1"\n'
FULL = """[node]
name = "host-a"
address = "192.0.2.10"
port = 4789
state_dir = "/var/lib/vswitch"
control_socket = "/run/vswitch/vswitchd.sock"
source_ports = 8
workers = 2
offloads = true
metrics_address = "127.0.0.1:9489"

[[networks]]
name = "default"
vni = 42
subnet = "10.244.0.0/16"
node_prefix_len = 24
node_subnet = "10.244.1.0/24"
subnet6 = "fd00:10:244::/48"
mtu = 1450
address_hold_secs = 30

[[peers]]
name = "host-b"
address = "192.0.2.11"
port = 4789
networks = ["default"]

[store]
kind = "embedded"

[switch]
fdb_aging_secs = 300
fdb_max_entries = 65536
fdb_max_per_port = 1024
accept_unknown_peers = false
arp_suppression = true
"""
ETCD_V6 = """[node]
name = "host-a"
address = "fd00::1"
port = 8472

[[networks]]
name = "blue"
vni = 100
subnet = "10.10.0.0/16"
mtu = 1430

[[networks]]
name = "red"
vni = 101
subnet = "10.11.0.0/16"
node_prefix_len = 26

[[peers]]
name = "host-b"
address = "fd00::2"
networks = ["blue", "red"]

[store]
kind = "etcd"
endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
prefix = "/vswitch"
lease_ttl_secs = 30
"""
INTERFACE = '[node]\nname = "b"\ninterface = "eth1"\noffloads = false\n\n[switch]\naccept_unknown_peers = true\n'


def config():
    t = "config"
    for name, text in {
        "minimal": MINIMAL,
        "full": FULL,
        "etcd-ipv6": ETCD_V6,
        "interface": INTERFACE,
        "bad-vni": MINIMAL + '[[networks]]\nname = "x"\nvni = 16777216\n',
        "unknown-key": MINIMAL + 'colour = "blue"\n',
    }.items():
        write(t, name, text.encode())


POLICY_TOML = """[[policy]]
name = "db"
selector = { app = "db" }
priority = 10
[[policy.ingress]]
peers = [{ selector = { app = "web" } }, { cidr = "10.244.2.0/24" }, { cidr = "fd00::/64" }]
protocol = "tcp"
ports = [5432, "8000-8080"]
[[policy.ingress]]
protocol = "icmp"
action = "log"
[[policy.egress]]
protocol = "udp"
ports = [53]
action = "limit(1.5M)"
[[policy.egress]]
action = "deny"
"""
POLICY_JSON = (
    '{"policy": [{"name": "web", "selector": {"app": "web"}, "ingress": [{"peers": '
    '[{"cidr": "192.0.2.0/24"}], "protocol": "tcp", "ports": [80]}], "egress": '
    '[{"action": "allow"}]}]}'
)


def policy_file():
    t = "policy_file"
    for name, text in {
        "toml": b"\0" + POLICY_TOML.encode(),
        "json": b"\1" + POLICY_JSON.encode(),
        "json-list": b"\1[" + POLICY_JSON.encode()[12:-1] + b"]",
        "bad-port": b"\0" + POLICY_TOML.replace("5432", "70000").encode(),
        "host-bits": b"\0" + POLICY_TOML.replace("10.244.2.0/24", "10.244.2.1/24").encode(),
    }.items():
        write(t, name, text)


def docker_request():
    t = "docker_request"
    calls = {
        "activate": ("/Plugin.Activate", ""),
        "capabilities": ("/NetworkDriver.GetCapabilities", ""),
        "create-network": ("/NetworkDriver.CreateNetwork",
                           '{"NetworkID":"n1","Options":{"com.docker.network.enable_ipv6":false,'
                           '"com.docker.network.generic":{"vswitch.network":"app","vswitch.vni":"42"}},'
                           '"IPv4Data":[{"AddressSpace":"vswitch","Pool":"10.244.0.0/16","Gateway":"10.244.1.1/16",'
                           '"AuxAddresses":null}],"IPv6Data":[]}'),
        "delete-network": ("/NetworkDriver.DeleteNetwork", '{"NetworkID":"n1"}'),
        "create-endpoint": ("/NetworkDriver.CreateEndpoint",
                            '{"NetworkID":"n1","EndpointID":"0123456789abcdef","Interface":{"Address":"10.244.1.2/16",'
                            '"AddressIPv6":"","MacAddress":"02:42:0a:f4:01:02"},"Options":{}}'),
        "join": ("/NetworkDriver.Join",
                 '{"NetworkID":"n1","EndpointID":"0123456789abcdef","SandboxKey":"/var/run/docker/netns/1","Options":{}}'),
        "leave": ("/NetworkDriver.Leave", '{"NetworkID":"n1","EndpointID":"0123456789abcdef"}'),
        "delete-endpoint": ("/NetworkDriver.DeleteEndpoint", '{"NetworkID":"n1","EndpointID":"0123456789abcdef"}'),
        "oper-info": ("/NetworkDriver.EndpointOperInfo", '{"NetworkID":"n1","EndpointID":"0123456789abcdef"}'),
        "discover": ("/NetworkDriver.DiscoverNew", '{"DiscoveryType":1,"DiscoveryData":{}}'),
        "ipam-capabilities": ("/IpamDriver.GetCapabilities", ""),
        "address-spaces": ("/IpamDriver.GetDefaultAddressSpaces", ""),
        "request-pool": ("/IpamDriver.RequestPool",
                         '{"AddressSpace":"vswitch","Pool":"10.244.0.0/16","SubPool":"","Options":{},"V6":false}'),
        "request-pool-by-name": ("/IpamDriver.RequestPool",
                                 '{"AddressSpace":"vswitch","Pool":"","Options":{"vswitch.network":"app"},"V6":false}'),
        "release-pool": ("/IpamDriver.ReleasePool", '{"PoolID":"app"}'),
        "request-gateway": ("/IpamDriver.RequestAddress",
                            '{"PoolID":"app","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}'),
        "request-address": ("/IpamDriver.RequestAddress", '{"PoolID":"app","Address":"10.244.1.77","Options":{}}'),
        "release-address": ("/IpamDriver.ReleaseAddress", '{"PoolID":"app","Address":"10.244.1.77"}'),
    }
    for name, (path, body) in calls.items():
        write(t, name, (path + "\n" + body).encode())


if __name__ == "__main__":
    frame_from_port()
    datagram_from_peer()
    segment()
    coalesce()
    decap()
    control_request()
    docker_request()
    config()
    policy_file()
