//! Rate limits shared by every worker: a lock-free token bucket, the bytes-and-packets limiter
//! built on it for ports and `limit(rate)` rules, and the limiter that keeps a deny log from
//! flooding.
//!
//! [`SharedBucket`] is a token bucket kept as one `AtomicU64` (the generic cell rate algorithm):
//! the "theoretical arrival time" `tat` by which everything passed so far would have drained at
//! the rate. A take of `n` tokens costs `n / rate` seconds (rounded up, in nanoseconds); it
//! passes when `max(tat, now) + cost <= now + burst / rate` and moves `tat` there with one
//! compare-and-swap. No torn state between a token count and a refill time, no lock, and over any
//! interval of `t` seconds at most `rate * t + burst` tokens pass, whatever number of threads
//! take (proved in the comments of [`SharedBucket::take`], checked by property tests). Time is a
//! parameter: an [`Instant`] mapped to nanoseconds since the bucket's creation.
//!
//! A take larger than the whole burst (a 64 KB super-frame on a port whose burst is one MTU)
//! passes when the bucket is full and leaves it in debt, so the long-run rate still holds and
//! the bound becomes `rate * t + max(burst, largest take)`.

use core::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::model::Direction;
use super::rate::BitRate;

const NANOS: u128 = 1_000_000_000;

/// A lock-free token bucket on a caller clock, for takers on any number of threads. Starts full.
#[derive(Debug)]
pub struct SharedBucket {
    origin: Instant,
    /// Nanoseconds since `origin` by which all taken tokens will have drained.
    tat: AtomicU64,
    /// Units per second (bits for byte buckets).
    rate: u64,
    /// Units per token (8 for bytes at a bit rate, 1 otherwise).
    scale: u64,
    /// The burst in nanoseconds of rate (rounded down).
    tau: u64,
    burst: u64,
}

impl SharedBucket {
    /// A full bucket of `burst` tokens (at least 1), refilled at `rate / scale` tokens a second
    /// (`rate` at least 1): `scale` 8 with `rate` in bits/s gives a bucket of bytes.
    pub fn new(rate: u64, scale: u64, burst: u64, now: Instant) -> Self {
        let (rate, scale, burst) = (rate.max(1), scale.max(1), burst.max(1));
        let tau = u128::from(burst) * u128::from(scale) * NANOS / u128::from(rate);
        SharedBucket {
            origin: now,
            tat: AtomicU64::new(0),
            rate,
            scale,
            tau: u64::try_from(tau).unwrap_or(u64::MAX / 4),
            burst,
        }
    }

    /// The burst, in tokens.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX / 4)
    }

    /// What `n` tokens cost in nanoseconds, rounded up (never in the takers' favour).
    fn cost(&self, n: u64) -> u64 {
        let units = u128::from(n) * u128::from(self.scale) * NANOS;
        let cost = units.div_ceil(u128::from(self.rate));
        u64::try_from(cost)
            .unwrap_or(u64::MAX / 4)
            .min(u64::MAX / 4)
    }

    /// Takes `n` tokens at `now` if the bucket holds them; false (and nothing taken) if not.
    pub fn take(&self, now: Instant, n: u64) -> bool {
        let now = self.nanos(now);
        let cost = self.cost(n);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            // Invariant: `tat` only grows by the costs of what passed (refunds take back what
            // did not), starting at 0, so sum(costs passed) <= tat. Every store below is at most
            // `now + max(tau, cost)` for the taker's own `now`, hence
            // passed * scale / rate <= latest now + max(tau, largest cost).
            let base = tat.max(now);
            let next = base.saturating_add(cost);
            let fits = next <= now.saturating_add(self.tau);
            let oversize_on_full = cost > self.tau && base <= now;
            if !fits && !oversize_on_full {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    /// Gives back `n` tokens taken by a successful [`take`](Self::take) whose frame did not
    /// pass after all.
    pub fn refund(&self, n: u64) {
        let cost = self.cost(n);
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(cost))
            });
    }

    /// How long from `now` until a take of `n` tokens would pass (zero if it would now).
    pub fn wait(&self, now: Instant, n: u64) -> Duration {
        let now = self.nanos(now);
        let tat = self.tat.load(Ordering::Relaxed).max(now);
        let cost = self.cost(n);
        let need = if cost > self.tau {
            tat
        } else {
            (tat + cost).saturating_sub(self.tau)
        };
        Duration::from_nanos(need.saturating_sub(now))
    }
}

/// A packets-per-second limit beside a bit rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketLimit {
    /// Packets per second, at least 1.
    pub rate: u64,
    /// Packets that may pass at once, at least 1.
    pub burst: u64,
}

/// A rate limit as configured: `{ rate = "100M", burst = 15000, packets = { rate = 10000,
/// burst = 64 } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Bits per second, with SI suffixes.
    pub rate: BitRate,
    /// Bytes that may pass at once; at least one MTU.
    pub burst: u64,
    /// An optional packets-per-second limit as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<PacketLimit>,
}

/// The QoS of one port, as configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortQosSpec {
    /// Traffic into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<LimitSpec>,
    /// Traffic out of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<LimitSpec>,
}

/// Why a rate limit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QosError {
    /// The byte burst is smaller than one MTU: a full-size frame could never pass.
    #[error("{direction}.burst: {burst} bytes is less than one MTU ({mtu})")]
    BurstBelowMtu {
        /// Which limit.
        direction: Direction,
        /// The burst given.
        burst: u64,
        /// The MTU it must hold.
        mtu: u64,
    },
    /// A packet limit with a zero rate or burst.
    #[error("{direction}.packets: rate and burst must be at least 1")]
    ZeroPackets {
        /// Which limit.
        direction: Direction,
    },
}

/// A bytes bucket with an optional packets bucket: a frame passes when both have room, and
/// takes from neither when one refuses. Counts what it drops.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: SharedBucket,
    packets: Option<SharedBucket>,
    dropped_frames: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl RateLimiter {
    /// A limiter of `rate` with `burst` bytes (at least 1) and an optional packet limit.
    pub fn new(rate: BitRate, burst: u64, packets: Option<PacketLimit>, now: Instant) -> Self {
        RateLimiter {
            bytes: SharedBucket::new(rate.bits_per_sec(), 8, burst, now),
            packets: packets.map(|p| SharedBucket::new(p.rate, 1, p.burst, now)),
            dropped_frames: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Checks `spec` against the MTU and builds the limiter.
    pub fn from_spec(
        spec: &LimitSpec,
        direction: Direction,
        mtu: u64,
        now: Instant,
    ) -> Result<Self, QosError> {
        if spec.burst < mtu {
            return Err(QosError::BurstBelowMtu {
                direction,
                burst: spec.burst,
                mtu,
            });
        }
        if spec.packets.is_some_and(|p| p.rate == 0 || p.burst == 0) {
            return Err(QosError::ZeroPackets { direction });
        }
        Ok(Self::new(spec.rate, spec.burst, spec.packets, now))
    }

    /// Admits a frame of `bytes` bytes on the wire that counts as `packets` packets (a
    /// super-frame: its whole size, its number of segments). False: drop it (counted here).
    pub fn admit(&self, now: Instant, bytes: u64, packets: u64) -> bool {
        if let Some(p) = &self.packets
            && !p.take(now, packets)
        {
            return self.count_drop(bytes);
        }
        if !self.bytes.take(now, bytes) {
            if let Some(p) = &self.packets {
                p.refund(packets);
            }
            return self.count_drop(bytes);
        }
        true
    }

    fn count_drop(&self, bytes: u64) -> bool {
        self.dropped_frames.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        false
    }

    /// Frames and bytes dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_frames.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }

    /// How long from `now` until a frame of `bytes` bytes would pass.
    pub fn wait(&self, now: Instant, bytes: u64) -> Duration {
        let w = self.bytes.wait(now, bytes);
        self.packets.as_ref().map_or(w, |p| w.max(p.wait(now, 1)))
    }
}

/// The QoS state of one port, shared (in an `Arc`) by every worker that carries its flows.
#[derive(Debug, Default)]
pub struct PortQos {
    /// Limit on traffic into the container.
    pub ingress: Option<RateLimiter>,
    /// Limit on traffic out of the container.
    pub egress: Option<RateLimiter>,
}

impl PortQos {
    /// Builds a port's limiters from its configuration; bursts must hold one `mtu` frame.
    pub fn from_spec(spec: &PortQosSpec, mtu: u64, now: Instant) -> Result<Self, QosError> {
        let build = |s: &Option<LimitSpec>, d| {
            s.as_ref()
                .map(|s| RateLimiter::from_spec(s, d, mtu, now))
                .transpose()
        };
        Ok(PortQos {
            ingress: build(&spec.ingress, Direction::Ingress)?,
            egress: build(&spec.egress, Direction::Egress)?,
        })
    }

    /// Admits a frame in `direction` (seen from the container); true when no limit is set.
    #[inline]
    pub fn admit(&self, direction: Direction, now: Instant, bytes: u64, packets: u64) -> bool {
        let limiter = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        limiter
            .as_ref()
            .is_none_or(|l| l.admit(now, bytes, packets))
    }
}

/// Keeps a log from flooding: at most `rate` lines a second after a burst, and a count of the
/// lines left out, reported with the next line that is let through.
#[derive(Debug)]
pub struct LogLimiter {
    bucket: SharedBucket,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter of `per_sec` lines a second, `burst` at once.
    pub fn new(per_sec: u64, burst: u64, now: Instant) -> Self {
        LogLimiter {
            bucket: SharedBucket::new(per_sec, 1, burst, now),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, and say that `n` lines were left out since the last one. `None`:
    /// stay quiet (counted).
    pub fn check(&self, now: Instant) -> Option<u64> {
        if self.bucket.take(now, 1) {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bytes_at_a_bit_rate() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1 MB/s, burst 1500 bytes.
        let b = SharedBucket::new(8_000_000, 8, 1500, t0);
        assert!(b.take(t0, 1500));
        assert!(!b.take(t0, 1));
        assert_eq!(b.wait(t0, 1000), ms(1));
        assert!(!b.take(t0 + Duration::from_micros(999), 1000));
        assert!(b.take(t0 + ms(1), 1000));
        // A long pause refills to the burst only.
        let later = t0 + Duration::from_secs(10);
        assert!(b.take(later, 1500));
        assert!(!b.take(later, 1));
    }

    #[test]
    fn oversize_takes_pass_on_a_full_bucket_and_leave_debt() {
        let t0 = Instant::now();
        let b = SharedBucket::new(8_000_000, 8, 1500, t0);
        assert!(b.take(t0, 65_000));
        // 65 ms of debt: nothing until it is paid, less the burst (1.5 ms).
        assert!(!b.take(t0 + ms(63), 100));
        assert!(b.take(t0 + ms(65), 1000));
    }

    #[test]
    fn limiter_takes_both_or_neither() {
        let t0 = Instant::now();
        let rate = "8M".parse().unwrap();
        let l = RateLimiter::new(
            rate,
            3000,
            Some(PacketLimit {
                rate: 1000,
                burst: 2,
            }),
            t0,
        );
        assert!(l.admit(t0, 1000, 1));
        assert!(l.admit(t0, 1000, 1));
        // Packets exhausted: refused, bytes untouched.
        assert!(!l.admit(t0, 1000, 1));
        let t1 = t0 + ms(1);
        // One packet token back; the bytes bucket refuses 5000 so the packet is refunded.
        assert!(!l.admit(t1, 5000, 1));
        assert!(l.admit(t1, 1000, 1));
        assert_eq!(l.dropped(), (2, 6000));
    }

    #[test]
    fn port_qos_checks_the_burst_against_the_mtu() {
        let t0 = Instant::now();
        let spec: PortQosSpec =
            toml::from_str("[egress]\nrate = \"100M\"\nburst = 1000\n").unwrap();
        assert_eq!(
            PortQos::from_spec(&spec, 1500, t0).unwrap_err().to_string(),
            "egress.burst: 1000 bytes is less than one MTU (1500)"
        );
        let spec: PortQosSpec = toml::from_str(
            "[ingress]\nrate = \"1.5G\"\nburst = 15000\npackets = { rate = 100000, burst = 64 }\n",
        )
        .unwrap();
        let q = PortQos::from_spec(&spec, 1500, t0).unwrap();
        assert!(q.egress.is_none() && q.admit(Direction::Egress, t0, 1 << 20, 1));
        assert!(q.admit(Direction::Ingress, t0, 15000, 1));
        assert!(!q.admit(Direction::Ingress, t0, 1500, 1));
    }

    #[test]
    fn log_limiter_reports_what_it_left_out() {
        let t0 = Instant::now();
        let l = LogLimiter::new(1, 2, t0);
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.check(t0), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(1)), Some(1000));
    }

    proptest! {
        /// Takes no larger than the burst: at most rate x time + burst passes.
        #[test]
        fn never_more_than_rate_times_time_plus_burst(
            rate in 1_000u64..10_000_000_000,
            burst in 1u64..100_000,
            steps in prop::collection::vec((0u64..2_000_000, 1u64..100_000), 1..400),
        ) {
            let t0 = Instant::now();
            let b = SharedBucket::new(rate, 8, burst, t0);
            let (mut now, mut passed) = (t0, 0u128);
            for (gap, n) in steps {
                now += Duration::from_nanos(gap);
                let n = n.min(burst);
                if b.take(now, n) {
                    passed += u128::from(n);
                }
            }
            let allowed = (now - t0).as_nanos() * u128::from(rate) / 8 / NANOS + u128::from(burst);
            prop_assert!(passed <= allowed, "{passed} > {allowed}");
        }

        /// Any takes, oversize ones included, and refunds of some: rate x time + max(burst, take).
        #[test]
        fn oversize_and_refunds_keep_the_bound(
            rate in 1u64..1_000_000,
            burst in 1u64..1000,
            steps in prop::collection::vec((0u64..5_000_000, 1u64..5000, any::<bool>()), 1..300),
        ) {
            let t0 = Instant::now();
            let b = SharedBucket::new(rate, 1, burst, t0);
            let (mut now, mut passed, mut largest) = (t0, 0u128, burst);
            for (gap, n, refund) in steps {
                now += Duration::from_nanos(gap);
                if b.take(now, n) {
                    if refund {
                        b.refund(n);
                    } else {
                        passed += u128::from(n);
                        largest = largest.max(n);
                    }
                }
            }
            let allowed = (now - t0).as_nanos() * u128::from(rate) / NANOS + u128::from(largest);
            prop_assert!(passed <= allowed, "{passed} > {allowed}");
        }
    }

    /// Four threads share a bucket and a virtual clock they all advance: together they never
    /// pass more than rate x time + burst, and they do use the rate.
    #[test]
    fn concurrent_takers_share_one_rate() {
        let t0 = Instant::now();
        let rate = 1_000_000u64; // tokens/s: 1 per microsecond
        let burst = 500u64;
        let bucket = Arc::new(SharedBucket::new(rate, 1, burst, t0));
        let clock = Arc::new(AtomicU64::new(0));
        let passed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|i| {
                let (bucket, clock, passed) = (bucket.clone(), clock.clone(), passed.clone());
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i;
                    for _ in 0..200_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let now = clock.fetch_add(x % 3, Ordering::Relaxed);
                        let n = 1 + x % 16;
                        if bucket.take(t0 + Duration::from_micros(now), n) {
                            passed.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed_us = clock.load(Ordering::Relaxed);
        let passed = passed.load(Ordering::Relaxed);
        assert!(
            passed <= elapsed_us + burst,
            "{passed} > {elapsed_us} + {burst}"
        );
        assert!(
            passed * 10 >= elapsed_us * 9,
            "{passed} well under {elapsed_us}"
        );
    }
}
