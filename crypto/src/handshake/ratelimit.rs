//! Token buckets that bound how many handshake messages per second reach Diffie-Hellman: one per
//! source IP address and one for the whole node. Over the limit, messages are dropped and
//! counted, never answered, so a flood neither burns CPU nor draws replies.

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// Handshake messages per second one source IP address may have processed.
pub const PER_SOURCE_RATE: u32 = 50;
/// Handshake messages one source may have processed in a burst after being quiet.
pub const PER_SOURCE_BURST: u32 = 10;
/// Handshake messages per second the node processes in total.
pub const GLOBAL_RATE: u32 = 500;
/// Handshake messages the node processes in a burst after being quiet.
pub const GLOBAL_BURST: u32 = 100;
/// Sources tracked at once; past this, idle (full) buckets are forgotten, and if none is idle
/// new sources share the global bucket only.
pub const MAX_SOURCES: usize = 4096;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket in integer arithmetic: tokens are counted in nanoseconds of refill time, so
/// refilling never rounds away a fraction of a token.
#[derive(Debug, Clone)]
struct Bucket {
    /// Refill time banked, capped at `burst * cost`.
    banked: u128,
    last: Instant,
}

impl Bucket {
    fn full(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            banked: cost(rate) * u128::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, rate: u32, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.banked = (self.banked + elapsed).min(cost(rate) * u128::from(burst));
        self.last = self.last.max(now);
        debug_assert!(self.banked <= cost(rate) * u128::from(burst));
    }

    fn has_token(&self, rate: u32) -> bool {
        self.banked >= cost(rate)
    }

    fn take(&mut self, rate: u32) {
        self.banked -= cost(rate);
    }

    fn is_full(&self, rate: u32, burst: u32) -> bool {
        self.banked >= cost(rate) * u128::from(burst)
    }
}

/// Nanoseconds of refill per token.
fn cost(rate: u32) -> u128 {
    NANOS_PER_SEC / u128::from(rate.max(1))
}

/// The per-source and global buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            global: Bucket::full(GLOBAL_RATE, GLOBAL_BURST, now),
            sources: HashMap::new(),
        }
    }

    /// Takes one token from `source`'s bucket and one from the global bucket, or neither.
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        self.global.refill(GLOBAL_RATE, GLOBAL_BURST, now);
        if !self.global.has_token(GLOBAL_RATE) {
            return false;
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.forget_idle(now);
        }
        if self.sources.len() < MAX_SOURCES || self.sources.contains_key(&source) {
            let bucket = self
                .sources
                .entry(source)
                .or_insert_with(|| Bucket::full(PER_SOURCE_RATE, PER_SOURCE_BURST, now));
            bucket.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
            if !bucket.has_token(PER_SOURCE_RATE) {
                return false;
            }
            bucket.take(PER_SOURCE_RATE);
        }
        self.global.take(GLOBAL_RATE);
        true
    }

    /// When the next message from a source that is out of tokens may pass, at the latest.
    #[cfg(test)]
    pub(crate) fn refill_period() -> Duration {
        Duration::from_nanos(u64::try_from(cost(PER_SOURCE_RATE)).unwrap_or(u64::MAX))
    }

    fn forget_idle(&mut self, now: Instant) {
        self.sources.retain(|_, bucket| {
            bucket.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
            !bucket.is_full(PER_SOURCE_RATE, PER_SOURCE_BURST)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn one_source_gets_burst_then_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0);
        let mut passed = 0u32;
        // 10 s of 10,000 messages per second from one source.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            if rl.allow(ip(1), now) {
                passed += 1;
            }
        }
        let most = PER_SOURCE_BURST + PER_SOURCE_RATE * 10;
        assert!(passed <= most, "{passed} > {most}");
        assert!(passed >= most - 2, "{passed} far below {most}");
        assert!(RateLimiter::refill_period() == Duration::from_millis(20));
    }

    #[test]
    fn global_bucket_bounds_many_sources() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0);
        let mut passed = 0u32;
        // 2 s of spoofed sources, each new, 100,000 messages per second.
        for i in 0..200_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 10);
            if rl.allow(ip(i), now) {
                passed += 1;
            }
        }
        let most = GLOBAL_BURST + GLOBAL_RATE * 2;
        assert!(passed <= most, "{passed} > {most}");
        assert!(rl.sources.len() <= MAX_SOURCES);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut rl = RateLimiter::new(t0);
        for _ in 0..PER_SOURCE_BURST {
            assert!(rl.allow(ip(1), t0));
        }
        assert!(!rl.allow(ip(1), t0 - Duration::from_secs(5)));
        assert!(!rl.allow(ip(1), t0));
        assert!(rl.allow(ip(1), t0 + Duration::from_millis(20)));
    }
}
