//! Upstream's `flowcontrol.Backoff` for one key (a container's restarts,
//! a pod's pulls of one image): the first failure is retried at once, the
//! next after 10 s, doubling to 5 min; a key quiet for 10 min starts over.

use std::time::{Duration, Instant};

pub const START: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Clone)]
pub struct Backoff {
    delay: Duration,
    /// When the last failure that was retried happened.
    last: Option<Instant>,
}

impl Backoff {
    /// Whether `failed` comes too long after the last failure to count.
    fn expired(&self, failed: Instant) -> bool {
        self.last
            .is_none_or(|l| failed.saturating_duration_since(l) > 2 * MAX)
    }

    /// How long a retry of the failure at `failed` must still wait at
    /// `now`; `None` when it may go (upstream's `IsInBackOffSince`).
    pub fn wait(&self, failed: Instant, now: Instant) -> Option<Duration> {
        if self.expired(failed) {
            return None;
        }
        let since = now.saturating_duration_since(failed);
        (since < self.delay).then(|| self.delay - since)
    }

    /// The failure at `failed` is retried now: the next waits longer
    /// (upstream's `Next`).
    pub fn next(&mut self, failed: Instant) {
        self.delay = if self.expired(failed) || self.delay.is_zero() {
            START
        } else {
            (self.delay * 2).min(MAX)
        };
        self.last = Some(failed);
    }

    /// Whether a retry must wait at `now` after the last failure
    /// (upstream's `IsInBackOffSinceUpdate`).
    pub fn waiting(&self, now: Instant) -> bool {
        self.last.is_some_and(|l| self.wait(l, now).is_some())
    }

    /// The current wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

/// A duration as Go prints one (`10s`, `1m20s`, `5m0s`), for messages
/// that quote upstream's.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let ms = d.subsec_millis();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, 0) if ms > 0 => format!("{ms}ms"),
        (0, 0, sec) if ms == 0 => format!("{sec}s"),
        (0, 0, sec) => {
            let frac = format!("{ms:03}");
            format!("{sec}.{}s", frac.trim_end_matches('0'))
        }
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_goes_at_once_then_10s_doubling_to_5m() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Backoff::default();
        // First crash: restarted at once.
        assert_eq!(b.wait(t0, t0), None);
        b.next(t0);
        // Second crash 1 s later: waits 10 s from it.
        let t1 = t0 + s(1);
        assert_eq!(b.wait(t1, t1 + s(3)), Some(s(7)));
        assert_eq!(b.wait(t1, t1 + s(10)), None);
        b.next(t1);
        let mut failed = t1 + s(11);
        let mut waits = vec![];
        for _ in 0..6 {
            waits.push(b.wait(failed, failed).unwrap().as_secs());
            b.next(failed);
            failed += s(1);
        }
        assert_eq!(waits, [20, 40, 80, 160, 300, 300]);
        // A failure 10 min after the last one starts over, at once.
        let late = failed + s(601);
        assert_eq!(b.wait(late, late), None);
        b.next(late);
        assert_eq!(b.delay(), s(10));
        assert!(b.waiting(late + s(9)) && !b.waiting(late + s(10)));
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let s = Duration::from_secs;
        assert_eq!(go_duration(s(10)), "10s");
        assert_eq!(go_duration(s(80)), "1m20s");
        assert_eq!(go_duration(s(300)), "5m0s");
        assert_eq!(go_duration(s(3725)), "1h2m5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(523)), "523ms");
    }
}
