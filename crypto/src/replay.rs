//! Replay protection: a sliding window over received counters.
//!
//! The window is a ring of 64-bit words in the manner of RFC 6479: advancing clears whole words,
//! so the cost per packet is constant and a far jump ahead costs at most one pass over the ring.
//! One word more than the window needs is kept so that exactly [`ReplayWindow::SIZE`] counters
//! below the highest accepted one are always tracked.
//!
//! [`SharedReplay`] holds one window per lane (sending worker of the peer) behind a mutex per
//! lane, for receiving threads that share a session.

use core::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::Error;
use crate::session::{MAX_LANES, lane_of};

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (ReplayWindow::SIZE / WORD_BITS) as usize + 1;

/// Which counters of one sending key were accepted, as far back as [`SIZE`](Self::SIZE).
///
/// Call [`check`](Self::check) before decrypting (a cheap reject of duplicates and stale
/// packets) and [`commit`](Self::commit) only after the packet authenticated. A counter `c` is
/// accepted when it was not accepted before and `c > highest - SIZE`, where `highest` is the
/// largest accepted counter; any counter is accepted by a fresh window. Counter 0 and `u64::MAX`
/// are ordinary counters.
#[derive(Clone)]
pub struct ReplayWindow {
    bits: [u64; WORDS],
    highest: Option<u64>,
}

impl ReplayWindow {
    /// How many counters, ending at the highest accepted one, the window remembers.
    pub const SIZE: u64 = 8192;

    /// An empty window: nothing accepted yet.
    pub fn new() -> Self {
        Self {
            bits: [0; WORDS],
            highest: None,
        }
    }

    /// The highest counter accepted so far.
    pub fn last(&self) -> Option<u64> {
        self.highest
    }

    /// Whether a packet with `counter` may still be accepted. Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), Error> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= Self::SIZE {
            return Err(Error::TooOld { counter });
        }
        let (word, bit) = position(counter);
        if self.bits[word] & bit != 0 {
            Err(Error::Replayed { counter })
        } else {
            Ok(())
        }
    }

    /// Records `counter` as accepted, after its packet authenticated. Checks again first, so of
    /// two packets with the same counter that both passed [`check`](Self::check) only one is
    /// committed; the other gets the error and must be dropped.
    pub fn commit(&mut self, counter: u64) -> Result<(), Error> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                let from = highest / WORD_BITS;
                let to = counter / WORD_BITS;
                if to - from >= WORDS as u64 {
                    self.bits = [0; WORDS];
                } else {
                    for block in from + 1..=to {
                        self.bits[word_index(block)] = 0;
                    }
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (word, bit) = position(counter);
        self.bits[word] |= bit;
        Ok(())
    }
}

fn word_index(block: u64) -> usize {
    (block % WORDS as u64) as usize
}

fn position(counter: u64) -> (usize, u64) {
    (word_index(counter / WORD_BITS), 1 << (counter % WORD_BITS))
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.highest)
            .finish_non_exhaustive()
    }
}

/// The replay state of one session's incoming packets, shared by every receiving thread: one
/// [`ReplayWindow`] per lane (the counter's top 8 bits, one per sending worker of the peer),
/// each behind its own mutex, created on first use.
///
/// [`check`](Self::check) before decrypting and [`commit`](Self::commit) after, from any thread;
/// the lock is held only for each of the two calls. A packet that passed `check` on two threads
/// at once is committed by one; the other gets [`Error::Replayed`] from `commit` and must be
/// dropped. Lanes are independent: a jump ahead in one does not age out another.
///
/// Why a mutex and not a lock-free bitmap: uncontended, the lock and lane lookup add about
/// 27 ns per packet, under 2% of opening a 1450-byte packet (see the crate docs), and a flow
/// (one sending worker of the peer) arrives on one receiving worker, so one lane's lock is
/// rarely contended.
pub struct SharedReplay {
    lanes: Box<[OnceLock<Box<Mutex<ReplayWindow>>>]>,
}

impl SharedReplay {
    /// Empty windows for every lane.
    pub fn new() -> Self {
        Self {
            lanes: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
        }
    }

    fn lane(&self, counter: u64) -> &Mutex<ReplayWindow> {
        self.lanes[usize::from(lane_of(counter))]
            .get_or_init(|| Box::new(Mutex::new(ReplayWindow::new())))
    }

    /// [`ReplayWindow::check`] on the counter's lane.
    pub fn check(&self, counter: u64) -> Result<(), Error> {
        self.lane(counter)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(counter)
    }

    /// [`ReplayWindow::commit`] on the counter's lane.
    pub fn commit(&self, counter: u64) -> Result<(), Error> {
        self.lane(counter)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commit(counter)
    }
}

impl Default for SharedReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SharedReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.lanes.iter().filter(|l| l.get().is_some()).count();
        f.debug_struct("SharedReplay")
            .field("lanes_in_use", &used)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const SIZE: u64 = ReplayWindow::SIZE;

    fn accept(w: &mut ReplayWindow, counter: u64) {
        assert_eq!(w.check(counter), Ok(()), "check {counter}");
        assert_eq!(w.commit(counter), Ok(()), "commit {counter}");
    }

    #[test]
    fn fresh_window_accepts_anything_once() {
        for first in [0, 1, 63, 64, SIZE, u64::MAX - 1, u64::MAX] {
            let mut w = ReplayWindow::new();
            assert_eq!(w.last(), None);
            accept(&mut w, first);
            assert_eq!(w.last(), Some(first));
            assert_eq!(w.check(first), Err(Error::Replayed { counter: first }));
            assert_eq!(w.commit(first), Err(Error::Replayed { counter: first }));
        }
    }

    #[test]
    fn duplicates_in_order_are_rejected() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            accept(&mut w, c);
            assert_eq!(w.check(c), Err(Error::Replayed { counter: c }));
        }
    }

    #[test]
    fn reordering_within_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        let top = SIZE + 3000;
        accept(&mut w, top);
        let lowest = top - SIZE + 1;
        for c in (lowest..top).rev().step_by(7) {
            accept(&mut w, c);
        }
        for c in (lowest..top).rev().step_by(7) {
            assert_eq!(w.check(c), Err(Error::Replayed { counter: c }));
        }
        assert_eq!(w.check(lowest + 1), Ok(()));
        assert_eq!(
            w.check(lowest - 1),
            Err(Error::TooOld {
                counter: lowest - 1
            })
        );
    }

    #[test]
    fn window_edge_is_exact() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10_000);
        assert_eq!(w.check(10_000 - SIZE + 1), Ok(()));
        assert_eq!(
            w.check(10_000 - SIZE),
            Err(Error::TooOld {
                counter: 10_000 - SIZE
            })
        );
        assert_eq!(w.check(0), Err(Error::TooOld { counter: 0 }));
        accept(&mut w, 10_000 - SIZE + 1);
        accept(&mut w, 10_001);
        assert_eq!(
            w.check(10_000 - SIZE + 1),
            Err(Error::TooOld {
                counter: 10_000 - SIZE + 1
            })
        );
    }

    #[test]
    fn big_jumps_forget_the_old_window() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            accept(&mut w, c);
        }
        accept(&mut w, 1_000_000);
        assert_eq!(w.check(99), Err(Error::TooOld { counter: 99 }));
        for c in (1_000_000 - SIZE + 1..1_000_000).step_by(13) {
            accept(&mut w, c);
        }
        accept(&mut w, u64::MAX - 5);
        assert_eq!(
            w.check(1_000_000),
            Err(Error::TooOld { counter: 1_000_000 })
        );
        accept(&mut w, u64::MAX);
        accept(&mut w, u64::MAX - 1);
        for c in [u64::MAX, u64::MAX - 1, u64::MAX - 5] {
            assert_eq!(w.check(c), Err(Error::Replayed { counter: c }));
        }
        accept(&mut w, u64::MAX - SIZE + 1);
        assert_eq!(
            w.check(u64::MAX - SIZE),
            Err(Error::TooOld {
                counter: u64::MAX - SIZE
            })
        );
    }

    #[test]
    fn jumps_of_every_size_around_a_word_clear_stale_bits() {
        for start in [0u64, 1, 63, 64, 65, SIZE - 1, SIZE, SIZE + 63, SIZE + 64] {
            for jump in [
                1,
                2,
                63,
                64,
                65,
                SIZE - 1,
                SIZE,
                SIZE + 1,
                SIZE + 64,
                SIZE + 65,
            ] {
                let mut w = ReplayWindow::new();
                for c in start.saturating_sub(SIZE - 1)..=start {
                    accept(&mut w, c);
                }
                let top = start + jump;
                accept(&mut w, top);
                for c in top.saturating_sub(SIZE - 1)..top {
                    let want = if c <= start {
                        Err(Error::Replayed { counter: c })
                    } else {
                        Ok(())
                    };
                    assert_eq!(w.check(c), want, "start {start} jump {jump} c {c}");
                }
            }
        }
    }

    #[test]
    fn window_is_at_least_8192() {
        const { assert!(SIZE >= 8192) };
        let mut w = ReplayWindow::new();
        accept(&mut w, SIZE - 1);
        accept(&mut w, 0);
        assert_eq!(w.check(0), Err(Error::Replayed { counter: 0 }));
        accept(&mut w, SIZE);
        assert_eq!(w.check(0), Err(Error::TooOld { counter: 0 }));
    }

    #[test]
    fn shared_lanes_are_independent() {
        let shared = SharedReplay::new();
        let lane = |l: u64, c: u64| (l << crate::LANE_BITS) | c;
        for l in [0, 1, 255] {
            assert_eq!(shared.check(lane(l, 5)), Ok(()));
            assert_eq!(shared.commit(lane(l, 5)), Ok(()));
        }
        // A far jump in lane 1 leaves lanes 0 and 255 where they were.
        assert_eq!(shared.commit(lane(1, 1 << 40)), Ok(()));
        assert_eq!(
            shared.check(lane(1, 5)),
            Err(Error::TooOld {
                counter: lane(1, 5)
            })
        );
        assert_eq!(shared.check(lane(0, 4)), Ok(()));
        assert_eq!(shared.check(lane(255, 6)), Ok(()));
        for l in [0, 255] {
            let c = lane(l, 5);
            assert_eq!(shared.check(c), Err(Error::Replayed { counter: c }));
        }
        // The top of lane 0 and the bottom of lane 1 are neighbours in number only.
        assert_eq!(shared.commit(lane(0, (1 << crate::LANE_BITS) - 1)), Ok(()));
        assert_eq!(
            shared.check(lane(0, 4)),
            Err(Error::TooOld {
                counter: lane(0, 4)
            })
        );
        assert_eq!(shared.check(lane(1, (1 << 40) - 1)), Ok(()));
    }

    #[test]
    fn shared_commit_accepts_each_counter_once_across_threads() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let shared = Arc::new(SharedReplay::new());
        let accepted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let shared = Arc::clone(&shared);
                let accepted = Arc::clone(&accepted);
                std::thread::spawn(move || {
                    // Every thread sees every packet of two lanes, as with duplicated datagrams.
                    for c in 0..20_000u64 {
                        for counter in [c, (1 << crate::LANE_BITS) | c] {
                            if shared.check(counter).is_ok() && shared.commit(counter).is_ok() {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 40_000);
    }

    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        highest: Option<u64>,
    }

    impl Model {
        fn check(&self, c: u64) -> Result<(), Error> {
            if self.highest.is_some_and(|h| c <= h && h - c >= SIZE) {
                return Err(Error::TooOld { counter: c });
            }
            if self.seen.contains(&c) {
                return Err(Error::Replayed { counter: c });
            }
            Ok(())
        }

        fn commit(&mut self, c: u64) -> Result<(), Error> {
            self.check(c)?;
            self.seen.insert(c);
            self.highest = self.highest.max(Some(c));
            Ok(())
        }
    }

    fn pick(model: &Model, kind: u8, raw: u64) -> u64 {
        let near = raw % (3 * SIZE);
        let highest = model.highest.unwrap_or(0);
        match kind % 6 {
            0 => raw,
            1 => highest.saturating_add(near % 200),
            2 => highest.saturating_sub(near),
            3 => highest.saturating_add(near),
            4 => u64::MAX - near,
            _ => near,
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Checked, then failed authentication: never committed.
        Forged,
        /// Checked, authenticated, committed.
        Authentic,
        /// Committed without a prior check, as when two copies raced past `check`.
        CommitOnly,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![1 => Just(Step::Forged), 4 => Just(Step::Authentic), 1 => Just(Step::CommitOnly)]
    }

    proptest! {
        #[test]
        fn matches_set_model(
            ops in proptest::collection::vec((any::<u8>(), any::<u64>(), step()), 1..600)
        ) {
            let mut window = ReplayWindow::new();
            let mut model = Model::default();
            for (kind, raw, step) in ops {
                let c = pick(&model, kind, raw);
                let want = model.check(c);
                prop_assert_eq!(window.check(c), want, "check {}", c);
                match step {
                    Step::Forged => {}
                    Step::Authentic if want.is_err() => {}
                    Step::Authentic | Step::CommitOnly => {
                        prop_assert_eq!(window.commit(c), model.commit(c), "commit {}", c);
                    }
                }
                prop_assert_eq!(window.last(), model.highest);
            }
        }
    }
}
