//! Admission of agent registrations under load (see [`Gate`]).

/// Admission of registrations: at most `size` at once, and a burst
/// beyond that waits here a while (a refusal costs the agent a new TLS
/// handshake, and the server one too). One still refused is told when to
/// come back (Retry-After), each a slot after the last at the rate
/// registrations are finishing, so a fleet reconnecting at once queues at
/// its agents, spread over the time the server needs, not in waves.
pub struct Gate {
    permits: tokio::sync::Semaphore,
    wait: std::time::Duration,
    slots: std::sync::Mutex<Slots>,
}

struct Slots {
    /// When the last refused registration was told to come back.
    next: std::time::Instant,
    last_done: std::time::Instant,
    /// Time between two registrations finishing (moving average).
    every: std::time::Duration,
    refused: u64,
}

/// A registration in progress; its end is counted.
pub struct Pass<'a> {
    gate: &'a Gate,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Gate {
    /// `size` at once; a burst waits up to `wait` (under the agents' 10 s
    /// connect timeout) before it is refused.
    pub fn new(size: usize, wait: std::time::Duration) -> Self {
        let now = std::time::Instant::now();
        Self {
            permits: tokio::sync::Semaphore::new(size.max(1)),
            wait,
            slots: std::sync::Mutex::new(Slots {
                next: now,
                last_done: now,
                every: std::time::Duration::from_millis(5),
                refused: 0,
            }),
        }
    }

    /// A pass, or how long to wait before trying again.
    pub async fn enter(&self) -> Result<Pass<'_>, std::time::Duration> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(Pass {
                gate: self,
                _permit: p,
            }),
            _ => {
                let now = std::time::Instant::now();
                let mut s = self.slots.lock().expect("gate lock");
                s.next = s.next.max(now) + s.every;
                // Past the agents' longest backoff the estimate is worth
                // little; they come back and are placed again.
                let wait = (s.next - now).min(std::time::Duration::from_secs(30));
                s.refused += 1;
                if s.refused.is_power_of_two() {
                    tracing::info!(
                        refused = s.refused,
                        finishing_every_us = s.every.as_micros() as u64,
                        retry_after_s = wait.as_secs(),
                        "registrations refused for load"
                    );
                }
                Err(wait)
            }
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let now = std::time::Instant::now();
        let mut s = self.gate.slots.lock().expect("gate lock");
        // Idle gaps say nothing about the rate under load.
        let gap = (now - s.last_done).min(std::time::Duration::from_millis(100));
        s.last_done = now;
        s.every = (s.every * 31 + gap) / 32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_gate_waits_then_gives_each_refusal_a_later_slot() {
        let gate = Gate::new(1, Duration::from_millis(50));
        let first = gate.enter().await.expect("a free gate admits");
        // Refused together: each is placed after the one before.
        let (a, b) = tokio::join!(gate.enter(), gate.enter());
        let (a, b) = (a.err().expect("full: refused"), b.err().expect("full"));
        let (a, b) = (a.min(b), a.max(b));
        assert!(
            b >= a + Duration::from_millis(4),
            "each refusal comes back later: {a:?} then {b:?}"
        );
        assert!(b <= Duration::from_secs(30));
        drop(first);
        assert!(
            gate.enter().await.is_ok(),
            "a finished registration frees its place"
        );
    }

    #[tokio::test]
    async fn a_burst_within_the_wait_is_admitted_not_refused() {
        let gate = Arc::new(Gate::new(1, Duration::from_secs(5)));
        let first = gate.enter().await.unwrap();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.enter().await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        assert!(
            waiter.await.unwrap(),
            "the waiting registration got the freed place"
        );
    }
}
