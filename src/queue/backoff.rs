//! Retry backoff: exponential with jitter; the delay is stored in `jobs.run_at`.

use rand::RngExt;

use crate::configuration::RetrySettings;

/// Exponential backoff with jitter; the resulting delay is stored in `jobs.run_at`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
    pub jitter: f64,
}

impl Backoff {
    pub fn from_settings(s: &RetrySettings) -> Self {
        Backoff {
            base_ms: s.backoff_base_ms,
            max_ms: s.backoff_max_ms,
            jitter: s.jitter,
        }
    }

    /// The delay before retrying after failed attempt number `attempt` (1-based).
    pub fn delay_ms(&self, attempt: i32) -> u64 {
        let exp = attempt.saturating_sub(1).clamp(0, 40) as u32;
        let raw = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        if self.jitter == 0.0 {
            return raw;
        }
        let factor = rand::rng().random_range((1.0 - self.jitter)..=(1.0 + self.jitter));
        ((raw as f64) * factor).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1000,
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=6).map(|a| b.delay_ms(a)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let b = Backoff {
            base_ms: 1000,
            max_ms: 60_000,
            jitter: 0.2,
        };
        let samples: Vec<u64> = (0..200).map(|_| b.delay_ms(3)).collect();
        assert!(samples.iter().all(|d| (3200..=4800).contains(d)));
        assert!(samples.iter().any(|d| *d != samples[0]));
    }
}
