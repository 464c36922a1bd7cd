//! The agent's reconnection delays: doubling, capped, jittered.

use rand::Rng;
use std::time::Duration;

/// Reconnection delays of an agent (public for the benchmarks, whose
/// simulated agents must storm a restarted server as real ones do).
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(250);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::MIN.min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Self::MIN.min(self.max);
    }

    /// Jittered to 50-100% of the step so a server restart is not met by
    /// every agent at the same instant.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// For refusals an operator must fix: slow, but not giving up.
    pub(crate) fn slow(&self) -> Duration {
        self.max
            .min(Duration::from_secs(10))
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}
