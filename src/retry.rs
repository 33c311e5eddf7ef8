//! The one retry schedule: exponential backoff from a first delay, capped, with optional
//! jitter. Every retry loop uses it with the caps and jitter it needs: job retries
//! (`queue::backoff`, stored in `jobs.run_at`), Cosmos DB calls (`sink::cosmos`), the
//! completer's writes through an outage (`worker::completer`), waiting for PostgreSQL at
//! startup (`db`).

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub first: Duration,
    /// No delay is longer (before jitter).
    pub max: Duration,
    /// Each delay is scaled by a random factor in `1 ± jitter` (0: exact).
    pub jitter: f64,
}

impl Backoff {
    /// Doubling from `first` up to `max`, no jitter.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            jitter: 0.0,
        }
    }

    pub const fn with_jitter(self, jitter: f64) -> Self {
        Backoff { jitter, ..self }
    }

    /// The delay before retry number `n` (1-based: the first retry waits `first`).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(40);
        let raw = self
            .first
            .saturating_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX))
            .min(self.max);
        if self.jitter == 0.0 {
            return raw;
        }
        let factor = rand::rng().random_range((1.0 - self.jitter)..=(1.0 + self.jitter));
        raw.mul_f64(factor)
    }

    /// The delays of successive retries, for a loop that keeps its own budget.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (1..).map(move |n| self.delay(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = b.delays().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1_000), Duration::from_millis(1000), "no overflow");
        let constant = Backoff::new(Duration::from_millis(500), Duration::from_millis(500));
        assert!(
            constant
                .delays()
                .take(5)
                .all(|d| d == Duration::from_millis(500))
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.2);
        let samples: Vec<u128> = (0..200).map(|_| b.delay(3).as_millis()).collect();
        assert!(
            samples.iter().all(|d| (3200..=4800).contains(d)),
            "{samples:?}"
        );
        assert!(samples.iter().any(|d| *d != samples[0]));
    }
}
