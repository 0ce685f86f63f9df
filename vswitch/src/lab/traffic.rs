//! Traffic between containers, generated from inside their namespaces: ICMP echo for
//! reachability and round-trip time, bulk TCP for throughput, small UDP datagrams for packet rate
//! (unpaced or paced floods, and the RFC 2544 throughput search over them). Every loop is
//! bounded in count and in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// A paced flood was asked for a rate that is not a positive number of datagrams per second.
    #[error("offered rate {0} is not a positive number of datagrams per second")]
    InvalidRate(f64),
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

/// Packet rate: the result of one [`udp_flood`] trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpRate {
    /// Datagrams the sender handed to its kernel.
    pub sent: u64,
    /// Datagrams of this trial the receiver got.
    pub received: u64,
    /// Sent datagrams per second: the rate actually offered.
    pub offered_pps: f64,
    /// Received datagrams per second.
    pub delivered_pps: f64,
}

impl UdpRate {
    fn new(sent: u64, received: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-3);
        UdpRate {
            sent,
            received,
            offered_pps: sent as f64 / seconds,
            delivered_pps: received as f64 / seconds,
        }
    }

    /// The share of sent datagrams that did not arrive.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received.min(self.sent) as f64 / self.sent as f64
        }
    }
}

/// Longest a single trial may last, whatever the caller asks.
const MAX_TRIAL: Duration = Duration::from_secs(600);

/// Asked of the sink socket; the kernel caps it at `net.core.rmem_max`. A deep receive queue
/// keeps a briefly descheduled receiver from counting as loss on the path.
const SINK_BUFFER: usize = 4 << 20;

/// Sends `payload`-byte UDP datagrams from `from` to `to` for `duration` and counts what `to_ns`
/// receives.
///
/// `rate` is the offered rate in datagrams per second: datagrams leave in small bursts on a
/// sub-millisecond tick with the sender asleep in between, never more than [`MAX_BURST`] back
/// to back. `None` sends as fast as one thread can. Only datagrams tagged with this trial are
/// counted, so late arrivals from an earlier trial do not inflate the count.
pub fn udp_flood(
    from: &NetNs,
    to_ns: &NetNs,
    to: Ipv4Addr,
    payload: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<UdpRate, TrafficError> {
    const PORT: u16 = 5202;
    let mut pacer = match rate {
        None => None,
        Some(pps) if pps.is_finite() && pps > 0.0 => Some(Pacer::new(pps)),
        Some(pps) => return Err(TrafficError::InvalidRate(pps)),
    };
    let duration = duration.min(MAX_TRIAL);
    let sink = to_ns
        .run(|| -> io::Result<UdpSocket> {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_recv_buffer_size(SINK_BUFFER)?;
            socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
            Ok(socket.into())
        })?
        .map_err(io_err("binding the UDP sink"))?;
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io_err("configuring the UDP sink"))?;
    let source = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
        .map_err(io_err("binding the UDP source"))?;
    source
        .connect((IpAddr::V4(to), PORT))
        .map_err(io_err("connecting the UDP source"))?;
    let tag = trial_tag();
    let tag_len = payload.min(tag.len());
    let mut datagram = vec![0x42u8; payload];
    datagram[..tag_len].copy_from_slice(&tag[..tag_len]);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut received = 0u64;
            let mut quiet_since: Option<Instant> = None;
            let hard_stop = Instant::now() + MAX_TRIAL + Duration::from_secs(5);
            while Instant::now() < hard_stop {
                match sink.recv(&mut buf) {
                    Ok(n) => {
                        if n == payload && buf[..tag_len] == tag[..tag_len] {
                            received += 1;
                        }
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
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let burst = pacer.as_mut().map_or(64, |p| p.due(elapsed));
        for _ in 0..burst {
            if source.send(&datagram).is_ok() {
                sent += 1;
            }
        }
        if let Some(p) = &pacer {
            std::thread::sleep(p.tick);
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().unwrap_or(0);
    Ok(UdpRate::new(sent, received, elapsed))
}

/// Eight bytes that differ from one trial to the next in this process and across processes.
fn trial_tag() -> [u8; 8] {
    static TRIALS: AtomicU64 = AtomicU64::new(0);
    let trial = TRIALS.fetch_add(1, Ordering::Relaxed);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (clock ^ trial.rotate_right(8) ^ (u64::from(std::process::id()) << 40)).to_be_bytes()
}

/// Most datagrams a paced sender sends back to back: half of a 500-deep TAP ring, so a burst
/// alone never overflows the ring of a switch that keeps up on average.
pub const MAX_BURST: u64 = 250;

/// The schedule of a paced flood: how many datagrams are due at each tick.
#[derive(Debug)]
struct Pacer {
    pps: f64,
    /// Sleep between bursts: long enough not to spin, short enough that a burst at the offered
    /// rate stays near [`Pacer::BURST`].
    tick: Duration,
    scheduled: u64,
    /// Datagrams the sender fell too far behind to send and gave up on.
    skipped: u64,
}

impl Pacer {
    const BURST: f64 = 64.0;
    const MIN_TICK: Duration = Duration::from_micros(200);
    const MAX_TICK: Duration = Duration::from_millis(1);

    /// `pps` must be positive and finite.
    fn new(pps: f64) -> Self {
        let tick =
            (Self::BURST / pps).clamp(Self::MIN_TICK.as_secs_f64(), Self::MAX_TICK.as_secs_f64());
        Pacer {
            pps,
            tick: Duration::try_from_secs_f64(tick).unwrap_or(Self::MAX_TICK),
            scheduled: 0,
            skipped: 0,
        }
    }

    /// Datagrams to send now, `elapsed` after the start: those the rate calls for since the last
    /// call, missed ticks included, up to [`MAX_BURST`]. A backlog beyond that (a long stall of
    /// the sender) is dropped from the schedule rather than sent later in one flood.
    fn due(&mut self, elapsed: Duration) -> u64 {
        // Float-to-integer `as` saturates; the product is finite and non-negative.
        let target = (self.pps * elapsed.as_secs_f64()) as u64;
        let behind = target.saturating_sub(self.scheduled + self.skipped);
        let burst = behind.min(MAX_BURST);
        self.skipped += behind - burst;
        self.scheduled += burst;
        burst
    }
}

/// RFC 2544 throughput of a UDP path: the result of [`udp_throughput`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpThroughput {
    /// The loss tolerance the search held to.
    pub max_loss: f64,
    /// The trial that set the throughput: the highest offered rate whose loss stayed below
    /// `max_loss` (the unpaced trial when it already did). `None` when no trial did.
    pub best: Option<UdpRate>,
    /// The rate asked of the paced sender in that trial; `None` when the unpaced trial set it.
    pub target_pps: Option<f64>,
    /// The unpaced trial: the sender's ceiling and what the path delivered under it.
    pub unpaced: UdpRate,
    /// Trials run, the unpaced one included.
    pub trials: u32,
}

impl UdpThroughput {
    /// Datagrams per second delivered at the throughput rate; zero when no trial passed.
    pub fn delivered_pps(&self) -> f64 {
        self.best.map_or(0.0, |b| b.delivered_pps)
    }

    /// Datagrams per second offered at the throughput rate; zero when no trial passed.
    pub fn offered_pps(&self) -> f64 {
        self.best.map_or(0.0, |b| b.offered_pps)
    }
}

/// Paced trials the search runs after the unpaced one: a resolution of 1/256 of the sender's
/// ceiling.
const SEARCH_TRIALS: u32 = 8;

/// The search stops early once the bracket is narrower than this share of the passing rate.
const SEARCH_PRECISION: f64 = 0.01;

/// The RFC 2544 throughput for `payload`-byte UDP from `from` to `to`: the highest offered rate
/// that `to_ns` receives with loss below `max_loss` (a share: 0.01 is 1%).
///
/// A lone unpaced flood measures the sender as much as the path: a sender that pays for the
/// whole path synchronously limits itself and loses nothing, one that only fills a queue
/// overruns it. So the search first runs an unpaced trial for `duration`; when its loss is
/// already below `max_loss`, that is the answer. Otherwise it bisects between zero and the
/// unpaced trial's offered rate with up to eight paced trials of `duration / 2` each (at least
/// half a second, at most `duration`), so the whole takes at most about `5 * duration` plus a
/// fraction of a second per trial to drain.
pub fn udp_throughput(
    from: &NetNs,
    to_ns: &NetNs,
    to: Ipv4Addr,
    payload: usize,
    duration: Duration,
    max_loss: f64,
) -> Result<UdpThroughput, TrafficError> {
    let paced = (duration / 2).max(duration.min(Duration::from_millis(500)));
    search_throughput(max_loss, SEARCH_TRIALS, |rate| match rate {
        None => udp_flood(from, to_ns, to, payload, duration, None),
        Some(pps) => udp_flood(from, to_ns, to, payload, paced, Some(pps)),
    })
}

/// The search behind [`udp_throughput`], over `trial(rate)` (`None`: unpaced) so it runs without
/// sockets. Runs at most `1 + max_trials` trials.
fn search_throughput<E>(
    max_loss: f64,
    max_trials: u32,
    mut trial: impl FnMut(Option<f64>) -> Result<UdpRate, E>,
) -> Result<UdpThroughput, E> {
    let passes = |rate: &UdpRate| rate.received > 0 && rate.loss() < max_loss;
    let unpaced = trial(None)?;
    let mut found = UdpThroughput {
        max_loss,
        best: None,
        target_pps: None,
        unpaced,
        trials: 1,
    };
    if passes(&unpaced) {
        found.best = Some(unpaced);
        return Ok(found);
    }
    let (mut low, mut high) = (0.0, unpaced.offered_pps);
    for _ in 0..max_trials {
        if high <= 0.0 || high - low <= low * SEARCH_PRECISION {
            break;
        }
        let rate = (low + high) / 2.0;
        let result = trial(Some(rate))?;
        found.trials += 1;
        if passes(&result) {
            low = rate;
            found.best = Some(result);
            found.target_pps = Some(rate);
        } else {
            high = rate;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that forwards up to `capacity` datagrams per second, driven for one second by a
    /// sender whose ceiling is `ceiling`.
    fn path(capacity: f64, ceiling: f64) -> impl FnMut(Option<f64>) -> Result<UdpRate, ()> {
        move |rate| {
            let offered = rate.unwrap_or(ceiling).min(ceiling);
            let sent = offered as u64;
            let received = sent.min(capacity as u64);
            Ok(UdpRate::new(sent, received, Duration::from_secs(1)))
        }
    }

    #[test]
    fn unpaced_trial_below_tolerance_is_the_answer() {
        let found = search_throughput(0.01, 8, path(100_000.0, 63_000.0)).unwrap();
        assert_eq!(found.trials, 1);
        assert_eq!(found.best, Some(found.unpaced));
        assert_eq!(found.target_pps, None);
        assert_eq!(found.delivered_pps(), 63_000.0);
    }

    #[test]
    fn bisection_finds_the_capacity_within_its_resolution() {
        let found = search_throughput(0.01, 8, path(62_000.0, 400_000.0)).unwrap();
        assert_eq!(found.trials, 9);
        assert!(found.unpaced.loss() > 0.8);
        let best = found.best.unwrap();
        assert!(best.loss() < 0.01);
        // Never above what passes with <1% loss, never more than one step (400k / 256) below.
        assert!(best.offered_pps < 62_000.0 / 0.99);
        assert!(best.offered_pps > 62_000.0 - 400_000.0 / 256.0);
        assert_eq!(found.delivered_pps(), best.delivered_pps);
    }

    #[test]
    fn search_stops_once_the_bracket_is_narrow() {
        let found = search_throughput(0.01, 100, path(62_000.0, 400_000.0)).unwrap();
        let best = found.best.unwrap();
        assert!(found.trials < 20);
        assert!(best.offered_pps > 62_000.0 * 0.98);
    }

    #[test]
    fn a_path_that_delivers_nothing_has_no_throughput() {
        let found = search_throughput(0.01, 8, path(0.0, 400_000.0)).unwrap();
        assert_eq!(found.trials, 9);
        assert_eq!(found.best, None);
        assert_eq!(found.delivered_pps(), 0.0);
    }

    #[test]
    fn a_sender_that_sent_nothing_ends_the_search() {
        let found = search_throughput(0.01, 8, path(62_000.0, 0.0)).unwrap();
        assert_eq!(found.trials, 1);
        assert_eq!(found.best, None);
    }

    #[test]
    fn a_failed_trial_ends_the_search_with_its_error() {
        let mut calls = 0;
        let result = search_throughput(0.01, 8, |rate| {
            calls += 1;
            if calls == 3 {
                return Err("socket gone");
            }
            let sent = rate.unwrap_or(400_000.0) as u64;
            Ok(UdpRate::new(sent, sent / 10, Duration::from_secs(1)))
        });
        assert_eq!(result, Err("socket gone"));
        assert_eq!(calls, 3);
    }

    #[test]
    fn loss_is_a_share_of_what_was_sent() {
        let second = Duration::from_secs(1);
        assert_eq!(UdpRate::new(0, 0, second).loss(), 0.0);
        assert_eq!(UdpRate::new(100, 75, second).loss(), 0.25);
        assert_eq!(UdpRate::new(100, 120, second).loss(), 0.0);
    }

    #[test]
    fn pacer_spreads_the_rate_over_ticks() {
        for pps in [1_000.0, 62_000.0, 400_000.0] {
            let mut pacer = Pacer::new(pps);
            assert!((Pacer::MIN_TICK..=Pacer::MAX_TICK).contains(&pacer.tick));
            let mut elapsed = Duration::ZERO;
            let mut total = 0;
            while elapsed < Duration::from_secs(1) {
                elapsed += pacer.tick;
                let burst = pacer.due(elapsed);
                // One more than a tick's worth at most: the schedule is rounded down each tick.
                assert!(burst as f64 <= (pps * pacer.tick.as_secs_f64()).ceil() + 1.0);
                total += burst;
            }
            assert!((total as f64 - pps).abs() <= pps * 0.01, "{pps}: {total}");
        }
    }

    #[test]
    fn pacer_catches_up_on_late_ticks_in_bounded_bursts() {
        let mut pacer = Pacer::new(100_000.0);
        assert_eq!(pacer.due(Duration::from_millis(1)), 100);
        // A tick 1 ms late: the missed datagrams go out with this one.
        assert_eq!(pacer.due(Duration::from_millis(3)), 200);
        // A 50 ms stall: one bounded burst, the rest is given up.
        assert_eq!(pacer.due(Duration::from_millis(53)), MAX_BURST);
        assert_eq!(pacer.due(Duration::from_millis(54)), 100);
        assert_eq!(pacer.scheduled + pacer.skipped, 5_400);
    }
}
