//! Whether this process's settlements are worth sending as tails, judged
//! by how often what was chained behind them was refused because another
//! append reached the stream in between.
//!
//! A chained append lands only if nothing at all reached the stream after
//! its tail (`Nats-Expected-Last-Msg-Id`). With other processes appending
//! (replicas of the proxy or of ingest), one often does in the time a
//! client takes to read an answer and send its next request, and the
//! refused append is sent again: a round trip to nats-server more than
//! waiting for the settlement's acknowledgement would have cost, where a
//! chained append that lands saves only what of that round trip the
//! client's turnaround did not already cover. With a turnaround of about
//! half a round trip (a client on the same machine), chaining stops paying
//! at about a third refused. `tollgate-bench replicas` (`bench/README.md`,
//! nineteenth pass), chaining every settlement against none, three runs:
//! two gates, 18–19 % refused, +5 to +12 % calls/s; three gates, 26–36 %
//! refused, +2 to −16 %; four gates, 35–51 % refused, +1 to −26 %. This
//! VM's noise (±20 % between runs) allows no finer threshold.
//!
//! So the share refused is kept as a moving average over chained appends
//! (each answer weighs 1/64), and settlements are sent as tails only while
//! it is under [`LIMIT_PERCENT`]. Past it, one settlement in
//! [`PROBE_EVERY`] is still sent as one. The average moves only when an
//! append is chained behind such a probe, so it comes back under the limit
//! after a landed probe or two from just past it (a few dozen
//! settlements), after about 33 from half refused and 77 from all (some
//! 2,500 settlements), the longer if the account's next call does not
//! follow its probe closely enough to be chained.

use std::sync::atomic::{AtomicU32, Ordering};

/// The average in fixed point: `ONE` is every chained append refused.
const ONE: u32 = 1 << 16;
/// Each outcome weighs 1/64 of the average: with 1/16, a process seeing
/// 19 % refused (two gates in `tollgate-bench replicas`) was past a limit of
/// 25 % more often than not, by chance alone.
const WEIGHT_SHIFT: u32 = 6;
/// Settlements are tails while less than this share of chained appends is refused.
pub const LIMIT_PERCENT: u32 = 30;
/// Past the limit, one settlement in this many is still sent as a tail.
pub const PROBE_EVERY: u32 = 32;

#[derive(Default)]
pub struct Interference {
    /// The share refused, a moving average (fixed point, see [`ONE`]).
    refused: AtomicU32,
    /// Settlements asked about past the limit, probes included (a running
    /// count: it wraps, and 2³² is a multiple of [`PROBE_EVERY`]).
    held_back: AtomicU32,
}

impl Interference {
    /// A chained append's answer: refused because another append came
    /// between it and its tail, or stored.
    pub fn record(&self, refused: bool) {
        let step = |average: u32| {
            let kept = average - (average >> WEIGHT_SHIFT);
            Some(if refused {
                kept + (ONE >> WEIGHT_SHIFT)
            } else {
                kept
            })
        };
        // `step` always returns `Some`: the update cannot fail.
        let _ = self
            .refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
    }

    /// Whether the next settlement may be sent as a tail.
    pub fn allows_tail(&self) -> bool {
        if self.under_limit() {
            return true;
        }
        self.held_back.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
    }

    fn under_limit(&self) -> bool {
        u64::from(self.refused.load(Ordering::Relaxed)) * 100
            < u64::from(ONE) * u64::from(LIMIT_PERCENT)
    }

    /// The share refused, in percent (rounded down).
    pub fn percent_refused(&self) -> u32 {
        // At most `ONE` (2^16): times 100 fits.
        self.refused.load(Ordering::Relaxed) * 100 / ONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_stream_keeps_tails() {
        let i = Interference::default();
        for _ in 0..1000 {
            i.record(false);
            assert!(i.allows_tail());
        }
        assert_eq!(i.percent_refused(), 0);
    }

    /// Refusals in a row until tails stop.
    fn refusals_to_stop(i: &Interference) -> usize {
        let mut n = 0;
        while i.under_limit() {
            i.record(true);
            n += 1;
        }
        n
    }

    #[test]
    fn refusals_in_a_row_stop_tails_but_for_probes() {
        let i = Interference::default();
        i.record(true);
        assert_eq!(i.percent_refused(), 1, "1/64 of the average");
        assert!(i.allows_tail(), "under the limit");
        let n = 1 + refusals_to_stop(&i);
        // 1 - (63/64)^n first reaches 30 % at n = 23.
        assert_eq!(n, 23);
        assert_eq!(i.percent_refused(), LIMIT_PERCENT);
        let allowed: Vec<bool> = (0..PROBE_EVERY * 3).map(|_| i.allows_tail()).collect();
        let probes: Vec<usize> = allowed
            .iter()
            .enumerate()
            .filter_map(|(n, &a)| a.then_some(n))
            .collect();
        let every = PROBE_EVERY as usize;
        assert_eq!(probes, vec![every - 1, 2 * every - 1, 3 * every - 1]);
    }

    #[test]
    fn the_average_follows_the_share_refused() {
        let i = Interference::default();
        // One in two refused, for long enough to forget the start.
        for n in 0..4000 {
            i.record(n % 2 == 0);
        }
        let p = i.percent_refused();
        assert!((45..=55).contains(&p), "{p} %");
        assert_eq!(refusals_to_stop(&i), 0);
        let tails = (0..PROBE_EVERY * 10).filter(|_| i.allows_tail()).count();
        assert_eq!(tails, 10, "only the probes");
        // The other processes go quiet: each probe lands, and after a few
        // of them every settlement is a tail again.
        let mut settlements = 0;
        loop {
            settlements += 1;
            assert!(settlements < 10_000, "tails never came back");
            if i.allows_tail() {
                if i.under_limit() {
                    break;
                }
                i.record(false);
            }
        }
        // From 50 % to 30 %, (63/64)^k ≤ 0.6 takes k = 33 probes.
        let probes = settlements / PROBE_EVERY as usize;
        assert!((30..=34).contains(&probes), "{probes} probes");
        assert!((0..100).all(|_| i.allows_tail()));
    }

    #[test]
    fn the_average_stays_in_range() {
        let i = Interference::default();
        for _ in 0..10_000 {
            i.record(true);
        }
        let p = i.percent_refused();
        assert!((99..=100).contains(&p), "{p} %");
        for _ in 0..10_000 {
            i.record(false);
        }
        assert_eq!(i.percent_refused(), 0);
    }
}
