//! Traffic between containers, generated from inside their namespaces: ICMP echo for
//! reachability and round-trip time, bulk TCP for throughput, small UDP datagrams for packet rate.
//! Every loop is bounded in count and in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use netns::NetNs;
use socket2::{Domain, Protocol, Socket, Type};

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TrafficError {
    let what = what.into();
    move |source| TrafficError::Io { what, source }
}

/// Sends up to `count` ICMP echo requests from `from` to `to`, one every `interval`, and returns
/// the round-trip times of the replies that came back within `timeout` each.
pub fn ping(
    from: &NetNs,
    to: Ipv4Addr,
    count: u16,
    interval: Duration,
    timeout: Duration,
) -> Result<Vec<Duration>, TrafficError> {
    from.run(|| -> Result<Vec<Duration>, TrafficError> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(io_err("opening an ICMP socket"))?;
        // A raw socket speaks sendto/recvfrom like a datagram socket; std's safe wrappers fit.
        let socket: UdpSocket = socket.into();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(io_err("setting a timeout"))?;
        let ident = (std::process::id() as u16) ^ 0x5a5a;
        let mut rtts = Vec::new();
        let mut buf = [0u8; 1500];
        for seq in 0..count {
            let request = echo_request(ident, seq);
            let sent = Instant::now();
            socket
                .send_to(&request, SocketAddr::from((to, 0)))
                .map_err(io_err(format!("sending an echo request to {to}")))?;
            let deadline = sent + timeout;
            while Instant::now() < deadline {
                let Ok((n, source)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if source.ip() == IpAddr::V4(to) && is_echo_reply(&buf[..n], ident, seq) {
                    rtts.push(sent.elapsed());
                    break;
                }
            }
            if seq + 1 < count {
                std::thread::sleep(interval);
            }
        }
        Ok(rtts)
    })?
}

fn echo_request(ident: u16, seq: u16) -> [u8; 64] {
    let mut packet = [0u8; 64];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in packet[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = crate::wire::internet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

fn is_echo_reply(ip_packet: &[u8], ident: u16, seq: u16) -> bool {
    let Some(&first) = ip_packet.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    let Some(icmp) = ip_packet.get(header..header + 8) else {
        return false;
    };
    icmp[0] == 0 && icmp[4..6] == ident.to_be_bytes() && icmp[6..8] == seq.to_be_bytes()
}

/// Bulk TCP from `from` to `to` (a listener is opened in `to_ns`): `streams` connections sending
/// for `duration`. Returns the bits per second the receiver counted.
pub fn tcp_throughput(
    from: &NetNs,
    to_ns: &NetNs,
    to: Ipv4Addr,
    streams: usize,
    duration: Duration,
) -> Result<f64, TrafficError> {
    const PORT: u16 = 5201;
    let listener = to_ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))?
        .map_err(io_err("listening for TCP"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("configuring the listener"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, total) = mpsc::channel();
    let receiver = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || receive_streams(listener, streams, &stop, &counted))
    };
    let senders: Vec<_> = (0..streams)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let from = from.clone();
            std::thread::spawn(move || -> Result<(), TrafficError> {
                let stream = from
                    .run(|| {
                        TcpStream::connect_timeout(
                            &SocketAddr::from((to, PORT)),
                            Duration::from_secs(5),
                        )
                    })?
                    .map_err(io_err(format!("connecting to {to}:{PORT}")))?;
                send_until(stream, &stop);
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for sender in senders {
        if let Ok(Err(e)) = sender.join() {
            failure.get_or_insert(e);
        }
    }
    let _ = receiver.join();
    if let Some(e) = failure {
        return Err(e);
    }
    let (bytes, elapsed) = total.recv().unwrap_or((0, duration));
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-3))
}

fn send_until(mut stream: TcpStream, stop: &AtomicBool) {
    let chunk = vec![0x5au8; 128 * 1024];
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::Relaxed) {
        match stream.write(&chunk) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Accepts `streams` connections and counts what arrives between the first byte and the stop.
fn receive_streams(
    listener: TcpListener,
    streams: usize,
    stop: &AtomicBool,
    counted: &mpsc::Sender<(u64, Duration)>,
) {
    let mut connections = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(10);
    while connections.len() < streams && Instant::now() < give_up && !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                connections.push(stream);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let start = Instant::now();
    let readers: Vec<_> = connections
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut bytes = 0u64;
                let mut last = Instant::now();
                let hard_stop = Instant::now() + Duration::from_secs(600);
                while Instant::now() < hard_stop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            bytes += n as u64;
                            last = Instant::now();
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                (bytes, last)
            })
        })
        .collect();
    let mut total = 0;
    let mut end = start;
    for reader in readers {
        if let Ok((bytes, last)) = reader.join() {
            total += bytes;
            end = end.max(last);
        }
    }
    let _ = counted.send((total, end.saturating_duration_since(start)));
}

/// Packet rate: the result of [`udp_flood`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpRate {
    /// Datagrams the sender handed to its kernel.
    pub sent: u64,
    /// Datagrams the receiver got.
    pub received: u64,
    /// Received datagrams per second.
    pub delivered_pps: f64,
}

impl UdpRate {
    /// The share of sent datagrams that did not arrive.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }
}

/// Sends `payload`-byte UDP datagrams from `from` to `to` as fast as one thread can for
/// `duration`, and counts what `to_ns` receives.
pub fn udp_flood(
    from: &NetNs,
    to_ns: &NetNs,
    to: Ipv4Addr,
    payload: usize,
    duration: Duration,
) -> Result<UdpRate, TrafficError> {
    const PORT: u16 = 5202;
    let sink = to_ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)))?
        .map_err(io_err("binding the UDP sink"))?;
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io_err("configuring the UDP sink"))?;
    let source = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
        .map_err(io_err("binding the UDP source"))?;
    source
        .connect((IpAddr::V4(to), PORT))
        .map_err(io_err("connecting the UDP source"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut received = 0u64;
            let mut quiet_since: Option<Instant> = None;
            let hard_stop = Instant::now() + Duration::from_secs(600);
            while Instant::now() < hard_stop {
                match sink.recv(&mut buf) {
                    Ok(_) => {
                        received += 1;
                        quiet_since = None;
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        // Drained: nothing for 300 ms after the sender stopped.
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(300) {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            received
        })
    };
    let payload = vec![0x42u8; payload];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            if source.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().unwrap_or(0);
    Ok(UdpRate {
        sent,
        received,
        delivered_pps: received as f64 / elapsed.as_secs_f64(),
    })
}
