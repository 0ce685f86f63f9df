//! The underlay: one socket receiving VXLAN on the configured port, and a small pool of sockets
//! bound to ephemeral ports that send it, picked by the inner flow's hash so that underlay ECMP
//! spreads flows (RFC 7348 §5: the source port is derived from the inner frame).
//!
//! Receives are batched (recvmmsg, UDP GRO); sends are batched per socket and destination into
//! UDP GSO super-datagrams of equal-sized segments, and the batches of one socket that share a
//! segment size (a flood to every peer, say) leave together in one sendmmsg.
//!
//! Every datapath worker has an underlay of its own. Their receive sockets share the VXLAN port
//! through `SO_REUSEPORT`, whose hash of the source address and port keeps each flow on one
//! worker (a VTEP picks the source port from the inner flow).

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload a GSO batch may carry.
const MAX_BATCH_BYTES: usize = 65_000;
/// Batches kept open at once; more destinations in one round flush the oldest.
const OPEN_BATCHES: usize = 16;
/// Socket buffer sizes: deep enough to ride out a scheduling hiccup at line rate.
const SOCKET_BUFFER: usize = 8 << 20;

/// A socket and the offload state quinn-udp keeps for it.
struct Endpoint {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl Endpoint {
    fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_cloexec(true)?;
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Buffer sizes are best effort: the kernel caps them at net.core.[rw]mem_max.
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        Ok(Self { socket, state })
    }

    fn send(&self, destination: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (segment < contents.len()).then_some(segment),
            src_ip: None,
        };
        self.state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
    }
}

/// Datagrams for one destination, back to back in one buffer, all `segment` bytes long but the
/// last: the shape one UDP GSO send takes.
struct Batch {
    socket: usize,
    destination: SocketAddr,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing more may follow it.
    closed: bool,
    bytes: Vec<u8>,
}

/// What a flush did, for the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushStats {
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams the kernel refused (buffer full, no route, too big).
    pub failed: u64,
    /// System calls made.
    pub syscalls: u64,
}

/// The receive socket and the send pool.
pub struct Underlay {
    receiver: Endpoint,
    senders: Vec<Endpoint>,
    max_segments: usize,
    open: Vec<Batch>,
    spare: Vec<Vec<u8>>,
    stats: FlushStats,
}

impl Underlay {
    /// Binds the receive socket on `local` and `source_ports` send sockets on ephemeral ports of
    /// the same address. With `shared`, the receive socket joins the `SO_REUSEPORT` group of
    /// the other workers' sockets on the same address.
    pub fn bind(local: SocketAddr, source_ports: usize, shared: bool) -> io::Result<Self> {
        let receiver = Endpoint::bind(local, shared)?;
        let senders = (0..source_ports.max(1))
            .map(|_| Endpoint::bind(SocketAddr::new(local.ip(), 0), false))
            .collect::<io::Result<Vec<_>>>()?;
        let max_segments = senders
            .iter()
            .map(|s| s.state.max_gso_segments())
            .min()
            .unwrap_or(1)
            .clamp(1, 64);
        Ok(Self {
            receiver,
            senders,
            max_segments,
            open: Vec::with_capacity(OPEN_BATCHES),
            spare: Vec::new(),
            stats: FlushStats::default(),
        })
    }

    /// The receive socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.receiver.socket.local_addr()
    }

    /// The source ports the pool sends from.
    pub fn source_ports(&self) -> Vec<u16> {
        self.senders
            .iter()
            .filter_map(|s| s.socket.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// The file descriptor to wait on for received datagrams.
    pub fn receiver_fd(&self) -> std::os::fd::RawFd {
        self.receiver.socket.as_raw_fd()
    }

    /// Receives a batch of datagrams (each buffer may hold several of `stride` bytes).
    pub fn recv(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.receiver
            .state
            .recv(UdpSockRef::from(&self.receiver.socket), bufs, meta)
    }

    /// Queues `header ++ payload` for `destination`, from the pool socket `flow_hash` selects.
    /// Nothing is sent until a batch fills or [`Underlay::flush`] runs.
    pub fn queue(
        &mut self,
        destination: SocketAddr,
        flow_hash: u32,
        header: &[u8],
        payload: &[u8],
    ) {
        self.queue_with_room(destination, flow_hash, header, payload, 0);
    }

    /// Queues `header ++ payload ++ room` zero bytes for `destination` and returns the queued
    /// datagram, to finish in place (sealing writes its header over `header` and its tag into
    /// the room).
    pub fn queue_with_room(
        &mut self,
        destination: SocketAddr,
        flow_hash: u32,
        header: &[u8],
        payload: &[u8],
        room: usize,
    ) -> &mut [u8] {
        let len = header.len() + payload.len() + room;
        let socket = flow_hash as usize % self.senders.len();
        let fits = |b: &Batch| {
            b.socket == socket
                && b.destination == destination
                && !b.closed
                && len <= b.segment
                && b.count < self.max_segments
                && b.bytes.len() + len <= MAX_BATCH_BYTES
        };
        let index = match self.open.iter().position(fits) {
            Some(index) => index,
            None => {
                if let Some(i) = self
                    .open
                    .iter()
                    .position(|b| b.socket == socket && b.destination == destination)
                {
                    self.flush_one(i);
                } else if self.open.len() >= OPEN_BATCHES {
                    self.flush_one(0);
                }
                let mut bytes = self.spare.pop().unwrap_or_default();
                bytes.clear();
                bytes.reserve(MAX_BATCH_BYTES);
                self.open.push(Batch {
                    socket,
                    destination,
                    segment: len,
                    count: 0,
                    closed: false,
                    bytes,
                });
                self.open.len() - 1
            }
        };
        let batch = &mut self.open[index];
        let start = batch.bytes.len();
        batch.bytes.extend_from_slice(header);
        batch.bytes.extend_from_slice(payload);
        batch.bytes.resize(start + len, 0);
        batch.count += 1;
        batch.closed = len < batch.segment;
        &mut batch.bytes[start..]
    }

    /// Sends every queued batch: those of one socket with one segment size in a single
    /// sendmmsg, any other alone.
    pub fn flush(&mut self) -> FlushStats {
        while let Some(first) = self.open.first() {
            let (socket, segment) = (first.socket, first.segment);
            let together = self
                .open
                .iter()
                .filter(|b| b.socket == socket && b.segment == segment)
                .count();
            if together == 1 {
                self.flush_one(0);
                continue;
            }
            let (group, rest): (Vec<Batch>, Vec<Batch>) = std::mem::take(&mut self.open)
                .into_iter()
                .partition(|b| b.socket == socket && b.segment == segment);
            self.open = rest;
            self.send_together(socket, segment, &group);
            self.spare.extend(group.into_iter().map(|b| b.bytes));
        }
        std::mem::take(&mut self.stats)
    }

    /// One sendmmsg of several batches with the same segment size from one socket; what the
    /// kernel did not take is sent batch by batch.
    fn send_together(&mut self, socket: usize, segment: usize, batches: &[Batch]) {
        let iovs: Vec<[IoSlice<'_>; 1]> =
            batches.iter().map(|b| [IoSlice::new(&b.bytes)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = batches
            .iter()
            .map(|b| Some(SockaddrStorage::from(b.destination)))
            .collect();
        let sent = match u16::try_from(segment) {
            Ok(gso) => {
                let cmsgs = [ControlMessage::UdpGsoSegments(&gso)];
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                    batches.len(),
                    Some(nix::cmsg_space!(u16)),
                );
                let fd = self.senders[socket].socket.as_raw_fd();
                self.stats.syscalls += 1;
                sendmmsg(fd, &mut headers, &iovs, &addrs, cmsgs, MsgFlags::empty())
                    .map_or(0, |results| results.count())
            }
            Err(_) => 0,
        };
        for batch in &batches[..sent.min(batches.len())] {
            self.stats.sent += batch.count as u64;
        }
        for batch in batches.iter().skip(sent) {
            self.send_batch(batch);
        }
    }

    /// Sends datagrams of `stride` bytes laid back to back in `bytes` (the last may be
    /// shorter), such as a segmented super-frame behind its VXLAN headers, to `destination`:
    /// after whatever is queued for it on the same socket, in as few GSO sends as allowed.
    ///
    /// One contiguous buffer per send: the kernel copies a gather list of each segment's
    /// headers and payload at several times the cost of copying the bytes themselves.
    pub fn send_train(
        &mut self,
        destination: SocketAddr,
        flow_hash: u32,
        bytes: &[u8],
        stride: usize,
    ) {
        let socket = self.flushed_socket(destination, flow_hash);
        let stride = stride.max(1);
        let per_send = self.max_segments.min(MAX_BATCH_BYTES / stride).max(1) * stride;
        for chunk in bytes.chunks(per_send) {
            let count = chunk.len().div_ceil(stride);
            self.send_now(socket, destination, chunk, stride, count);
        }
    }

    /// The pool socket `flow_hash` selects, once what is queued on it for `destination` has
    /// been sent (so that nothing overtakes it).
    fn flushed_socket(&mut self, destination: SocketAddr, flow_hash: u32) -> usize {
        let socket = flow_hash as usize % self.senders.len();
        while let Some(i) = self
            .open
            .iter()
            .position(|b| b.socket == socket && b.destination == destination)
        {
            self.flush_one(i);
        }
        socket
    }

    fn flush_one(&mut self, index: usize) {
        let batch = self.open.remove(index);
        self.send_batch(&batch);
        self.spare.push(batch.bytes);
    }

    fn send_batch(&mut self, batch: &Batch) {
        self.send_now(
            batch.socket,
            batch.destination,
            &batch.bytes,
            batch.segment,
            batch.count,
        );
    }

    /// One GSO send of `count` datagrams, or one send per datagram if the path refuses GSO.
    fn send_now(
        &mut self,
        socket: usize,
        destination: SocketAddr,
        bytes: &[u8],
        segment: usize,
        count: usize,
    ) {
        let sender = &self.senders[socket];
        self.stats.syscalls += 1;
        match sender.send(destination, bytes, segment) {
            Ok(()) => self.stats.sent += count as u64,
            Err(e) if count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                for datagram in bytes.chunks(segment) {
                    self.stats.syscalls += 1;
                    match sender.send(destination, datagram, datagram.len()) {
                        Ok(()) => self.stats.sent += 1,
                        Err(_) => self.stats.failed += 1,
                    }
                }
                self.max_segments = 1;
            }
            Err(_) => self.stats.failed += count as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn receive_all(sink: &UdpSocket, expect: usize) -> Vec<Vec<u8>> {
        sink.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while got.len() < expect && Instant::now() < deadline {
            if let Ok(n) = sink.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }

    /// A VXLAN header for VNI 42.
    const HEADER: [u8; 8] = [8, 0, 0, 0, 0, 0, 42, 0];

    /// A receiving socket on loopback, its address, and an underlay sending from loopback.
    fn sink_and_underlay() -> (UdpSocket, SocketAddr, Underlay) {
        let sink = UdpSocket::bind(loopback()).unwrap();
        let dest = sink.local_addr().unwrap();
        (sink, dest, Underlay::bind(loopback(), 1, false).unwrap())
    }

    #[test]
    fn batches_are_split_into_the_original_datagrams() {
        let (sink, dest, mut underlay) = sink_and_underlay();
        let header = HEADER;
        for i in 0..10u8 {
            underlay.queue(dest, 7, &header, &[i; 100]);
        }
        underlay.queue(dest, 7, &header, &[99; 10]);
        underlay.queue(dest, 7, &header, &[98; 100]);
        let stats = underlay.flush();
        assert_eq!(stats.sent, 12);
        assert!(stats.syscalls <= 3, "{stats:?}");
        let got = receive_all(&sink, 12);
        assert_eq!(got.len(), 12);
        for (i, d) in got.iter().take(10).enumerate() {
            assert_eq!(&d[..8], &header);
            assert_eq!(&d[8..], &[i as u8; 100]);
        }
        assert_eq!(&got[10][8..], &[99; 10]);
        assert_eq!(&got[11][8..], &[98; 100]);
    }

    #[test]
    fn batches_for_several_destinations_leave_in_one_call() {
        let sinks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind(loopback()).unwrap())
            .collect();
        let mut underlay = Underlay::bind(loopback(), 1, false).unwrap();
        let header = [8u8, 0, 0, 0, 0, 0, 42, 0];
        // A flood: one frame to every destination, then a run of three to each.
        for (i, sink) in sinks.iter().enumerate() {
            underlay.queue(sink.local_addr().unwrap(), 1, &header, &[i as u8; 100]);
        }
        let stats = underlay.flush();
        assert_eq!((stats.sent, stats.syscalls), (3, 1), "{stats:?}");
        // Runs of three: two destinations of one size together, the third size alone.
        for (i, sink) in sinks.iter().enumerate() {
            let len = if i == 2 { 30 } else { 100 };
            for n in 0..3u8 {
                underlay.queue(sink.local_addr().unwrap(), 1, &header, &vec![n; len]);
            }
        }
        let stats = underlay.flush();
        assert_eq!((stats.sent, stats.syscalls), (9, 2), "{stats:?}");
        for (i, sink) in sinks.iter().enumerate() {
            let got = receive_all(sink, 4);
            assert_eq!(got.len(), 4);
            assert_eq!(got[0][8..], [i as u8; 100]);
            let len = if i == 2 { 30 } else { 100 };
            for n in 0..3u8 {
                assert_eq!(got[1 + n as usize][8..], vec![n; len]);
            }
        }
    }

    #[test]
    fn trains_follow_what_was_queued_and_arrive_whole() {
        use crate::offload::fixtures::{self, ACK, Spec};
        use crate::offload::{Segments, segment};
        let (sink, dest, mut underlay) = sink_and_underlay();
        let header = HEADER;
        // 70 segments with a short last one: more than one GSO send.
        let data = fixtures::payload(70 * 900 - 123);
        let (hdr, frame) = fixtures::tso(&Spec::default(), 1, ACK, &data, 900);
        let mut train = Segments::with_headroom(header.len());
        segment(&hdr, &frame, &mut train).unwrap();
        train.fill_headroom(&header);
        let stride = train.uniform_len().unwrap() + header.len();
        underlay.queue(dest, 3, &header, &[1; 40]);
        underlay.send_train(dest, 3, train.as_bytes(), stride);
        let stats = underlay.flush();
        assert_eq!(stats.sent, 71);
        assert_eq!(stats.syscalls, 3);
        let got = receive_all(&sink, 71);
        assert_eq!(got.len(), 71);
        assert_eq!(got[0][8..], [1; 40]);
        for (datagram, seg) in got[1..].iter().zip(train.iter()) {
            assert_eq!(&datagram[..8], &header);
            assert_eq!(&datagram[8..], seg);
        }
    }

    #[test]
    fn flow_hash_picks_the_source_port() {
        let sink = UdpSocket::bind(loopback()).unwrap();
        let dest = sink.local_addr().unwrap();
        let mut underlay = Underlay::bind(loopback(), 4, false).unwrap();
        let ports = underlay.source_ports();
        assert_eq!(ports.len(), 4);
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        for hash in 0..8u32 {
            underlay.queue(dest, hash, &[0; 8], &[1; 20]);
            underlay.flush();
            let (_, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(from.port(), ports[hash as usize % 4]);
        }
    }
}
