//! A token bucket on a caller-supplied clock: `rate` tokens a second, at most `burst` saved up.
//!
//! Integer arithmetic in nanoseconds, no clock reads: [`TokenBucket::take`] is given `now`, so
//! tests step a virtual clock instead of sleeping.

use std::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens held, in billionths of a token, so that refills of less than one token add up.
    nano_tokens: u128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` tokens a second, holding at most `burst` (at least 1).
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate,
            burst,
            nano_tokens: u128::from(burst) * NANOS_PER_SEC,
            last: None,
        }
    }

    /// Takes `n` tokens at `now` if the bucket holds them; false (and nothing taken) if not.
    pub fn take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        let want = u128::from(n) * NANOS_PER_SEC;
        if self.nano_tokens < want {
            return false;
        }
        self.nano_tokens -= want;
        true
    }

    fn refill(&mut self, now: Instant) {
        let cap = u128::from(self.burst) * NANOS_PER_SEC;
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let added = elapsed.saturating_mul(u128::from(self.rate));
            self.nano_tokens = self.nano_tokens.saturating_add(added).min(cap);
        }
        if self.last.is_none_or(|last| now > last) {
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10);
        assert!((0..10).all(|_| b.take(t0, 1)));
        assert!(!b.take(t0, 1));
        assert!(!b.take(t0 + Duration::from_millis(9), 1));
        assert!(b.take(t0 + Duration::from_millis(10), 1));
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later, 10));
        assert!(!b.take(later, 1));
        // Asking for more than there is takes nothing.
        let a_bit = later + Duration::from_millis(50);
        assert!(!b.take(a_bit, 6));
        assert!(b.take(a_bit, 5));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.take(t0, 1));
        assert!(!b.take(t0 - Duration::from_secs(5), 1));
        assert!(!b.take(t0, 1));
    }

    proptest! {
        /// Over any sequence of takes, what passes is at most rate x elapsed + burst.
        #[test]
        fn never_more_than_rate_times_time_plus_burst(
            rate in 1u64..100_000,
            burst in 1u64..1000,
            steps in prop::collection::vec((0u64..5_000_000, 1u64..50), 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst);
            let (mut now, mut passed) = (t0, 0u128);
            for (gap_ns, n) in steps {
                now += Duration::from_nanos(gap_ns);
                if b.take(now, n) {
                    passed += u128::from(n);
                }
            }
            let elapsed = (now - t0).as_nanos();
            let allowed = elapsed * u128::from(rate) / NANOS_PER_SEC + u128::from(burst);
            prop_assert!(passed <= allowed, "{passed} > {allowed}");
        }
    }
}
