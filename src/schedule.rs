//! When the worker polls, and what the overall status says. Polls are spread by jitter so a scale set whose
//! machines start together does not hit the vault in the same second: the first poll waits a random
//! `[0, min(interval / 10, 30 s)]`, and every later interval is stretched or shrunk by up to 10 %. With
//! `requireInitialSync`, failed certificates are retried with growing waits (5 s, 10 s, 15 s, … capped at the
//! polling interval) for up to 25 attempts before the status turns to `error`.

use std::time::Duration;

/// Attempts of the initial sync before it is reported as failed (the original extension's number).
pub(crate) const INITIAL_SYNC_ATTEMPTS: u32 = 25;
/// Fraction of the interval by which each poll is moved, either way.
pub(crate) const JITTER_FRACTION: f64 = 0.10;
/// The longest first-poll delay.
pub(crate) const MAX_FIRST_DELAY: Duration = Duration::from_secs(30);
const INITIAL_SYNC_STEP: Duration = Duration::from_secs(5);

/// A source of uniform numbers in `[0, 1)`, passed in so tests can pin it.
pub(crate) trait Uniform {
    fn next(&mut self) -> f64;
}

impl Uniform for fastrand::Rng {
    fn next(&mut self) -> f64 {
        self.f64()
    }
}

/// Delay before the first poll after the worker starts.
pub(crate) fn first_delay(interval: Duration, rng: &mut impl Uniform) -> Duration {
    (interval / 10).min(MAX_FIRST_DELAY).mul_f64(rng.next())
}

/// Delay between two polls: the interval, ± 10 %.
pub(crate) fn next_delay(interval: Duration, rng: &mut impl Uniform) -> Duration {
    interval.mul_f64(1.0 - JITTER_FRACTION + 2.0 * JITTER_FRACTION * rng.next())
}

/// Wait after the `attempt`-th (1-based) failed initial-sync attempt.
pub(crate) fn initial_sync_retry(attempt: u32, interval: Duration) -> Duration {
    (INITIAL_SYNC_STEP * attempt.max(1)).min(interval)
}

/// Where the initial sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitialSync {
    /// Not required, or done.
    Done,
    /// Still trying: attempts made so far.
    Trying { attempts: u32 },
    /// Gave up after `INITIAL_SYNC_ATTEMPTS`; polling goes on normally.
    Failed,
}

impl InitialSync {
    pub(crate) fn start(required: bool) -> InitialSync {
        if required {
            InitialSync::Trying { attempts: 0 }
        } else {
            InitialSync::Done
        }
    }

    /// After a check: `all_installed` says whether every certificate is installed now, `attempts` how many
    /// times in a row the most-tried certificate that is not installed has failed.
    pub(crate) fn after(self, all_installed: bool, attempts: u32) -> InitialSync {
        match self {
            _ if all_installed => InitialSync::Done,
            InitialSync::Trying { .. } if attempts >= INITIAL_SYNC_ATTEMPTS => InitialSync::Failed,
            InitialSync::Trying { .. } => InitialSync::Trying { attempts },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Uniform for Fixed {
        fn next(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn jitter_bounds() {
        let hour = Duration::from_secs(3600);
        assert_eq!(first_delay(hour, &mut Fixed(0.0)), Duration::ZERO);
        assert_eq!(first_delay(hour, &mut Fixed(0.5)), Duration::from_secs(15));
        assert_eq!(
            first_delay(Duration::from_secs(60), &mut Fixed(0.5)),
            Duration::from_secs(3)
        );
        assert_eq!(next_delay(hour, &mut Fixed(0.0)), Duration::from_secs(3240));
        assert_eq!(next_delay(hour, &mut Fixed(0.5)), hour);
        assert!(next_delay(hour, &mut Fixed(0.999_999)) <= Duration::from_secs(3960));
        let mut rng = fastrand::Rng::with_seed(7);
        let spread: Vec<Duration> = (0..100).map(|_| first_delay(hour, &mut rng)).collect();
        assert!(
            spread.iter().any(|d| *d < Duration::from_secs(10))
                && spread.iter().any(|d| *d > Duration::from_secs(20))
        );
    }

    #[test]
    fn initial_sync_gives_up_after_25_attempts_with_growing_waits() {
        let hour = Duration::from_secs(3600);
        assert_eq!(initial_sync_retry(1, hour), Duration::from_secs(5));
        assert_eq!(initial_sync_retry(3, hour), Duration::from_secs(15));
        assert_eq!(
            initial_sync_retry(24, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        let mut s = InitialSync::start(true);
        for attempt in 1..25 {
            s = s.after(false, attempt);
            assert_eq!(s, InitialSync::Trying { attempts: attempt });
        }
        assert_eq!(s.after(false, 25), InitialSync::Failed);
        assert_eq!(InitialSync::Failed.after(false, 30), InitialSync::Failed);
        assert_eq!(InitialSync::Failed.after(true, 0), InitialSync::Done);
        assert_eq!(InitialSync::start(false), InitialSync::Done);
    }
}
