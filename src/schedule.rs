//! When the worker polls, in which order, and what the overall status says. Polls are spread by jitter so a
//! scale set whose machines start together does not hit the vault in the same second: the first poll waits a
//! random `[0, min(interval / 10, 30 s)]`, and every later interval is stretched or shrunk by up to 10 %. With
//! `requireInitialSync`, failed certificates are retried with growing waits (5 s, 10 s, 15 s, … capped at the
//! polling interval) for up to 25 attempts before the status turns to `error`.
//!
//! [`Queue`] decides which certificate's check starts next: the one that has waited longest. Every beat (one
//! polling interval) makes every certificate due that is not being checked; due certificates wait in the order
//! they became due, and among those that became due together, the one whose last check started longest ago
//! (or that was never checked, per the state the worker recorded) goes first. So when a pass over all
//! certificates takes longer than the interval — a slow or throttling vault, many certificates — no certificate
//! is checked twice while another due one waits, and each is checked at least once every
//! ⌈pass ÷ interval⌉ + 1 beats, whatever the order of the settings. [`Pace`] says how long the last pass took,
//! so the status can say when polling cannot keep up.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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

/// Where one certificate's check stands in the [`Queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Not due before `due`.
    Waiting,
    /// Due, in the ready line.
    Ready,
    /// Its check is running.
    Running,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    turn: Turn,
    /// When it is (or became) due.
    due: Instant,
    /// Rank of its last start: lower started longer ago (0: never checked).
    served: u64,
    /// Made due by the beat whose pass is being measured, and not started yet.
    in_pass: bool,
}

/// What [`Queue::offer`]'s caller did with a ready certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Its check started (report the end with [`Queue::ended`]).
    Started,
    /// It was dealt with at once, no check to wait for (e.g. failed for want of a vault client); it is due
    /// again at the next beat.
    Settled,
    /// Not now (its vault has no free connection): it keeps its place, and later ones are offered.
    NoRoom,
    /// Nothing more can start now: it and every later one keep their places.
    Full,
}

/// How long a pass over every certificate takes, against the polling interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pace {
    /// The polling interval (`pollingIntervalInS`), in seconds.
    pub interval_s: u64,
    /// The observed certificates.
    pub certificates: usize,
    /// The last finished pass: from a beat until the last certificate it made due got its turn (its check
    /// started), in milliseconds. `None` until a pass has finished.
    pub last_pass_ms: Option<u64>,
    /// The pass under way has already taken this long (milliseconds), when that is longer than the interval.
    pub overdue_ms: Option<u64>,
}

impl Pace {
    /// The reason code of the warning that a pass takes longer than the polling interval.
    pub(crate) const REASON: &'static str = "polling-behind";

    /// Whether polling falls behind: a pass takes longer than the interval.
    pub fn behind(&self) -> bool {
        let limit = self.interval_s.saturating_mul(1000);
        self.last_pass_ms.is_some_and(|p| p > limit) || self.overdue_ms.is_some()
    }

    /// The longest pass known, in seconds: the last one, or the one under way.
    pub fn pass_s(&self) -> Option<f64> {
        let ms = match (self.last_pass_ms, self.overdue_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        ms.map(|ms| ms as f64 / 1000.0)
    }

    /// The warning for the status and the log when polling cannot keep up, naming the measured pass, the
    /// interval and what to change; `None` when it keeps up.
    pub fn warning(&self) -> Option<String> {
        if !self.behind() {
            return None;
        }
        let pass = self.pass_s().unwrap_or_default();
        let interval = self.interval_s as f64;
        let suggested = (pass * 1.5).ceil().max(interval + 1.0) as u64;
        let state = if self.overdue_ms.is_some() {
            "the pass under way has taken"
        } else {
            "the last pass took"
        };
        Some(format!(
            "polling cannot keep up: one pass over the {} certificate(s) needs longer than pollingIntervalInS \
             ({} s) — {state} {pass:.1} s until every certificate had its turn — so each certificate is \
             checked about every {:.0} s, not every {} s (none is skipped: they take turns, the longest waiting \
             first). Raise pollingIntervalInS to at least {suggested}, observe fewer certificates per vault (each \
             vault is checked over at most {} connections), or find out why the vault answers slowly (throttling \
             shows as code 429 in the log and in kvvm_vault_requests_total)",
            self.certificates,
            self.interval_s,
            pass.max(interval),
            self.interval_s,
            crate::http::CONNECTIONS_PER_HOST,
        ))
    }
}

/// The measurement of one pass: from the beat that opened it.
#[derive(Debug, Clone, Copy)]
struct Pass {
    began: Instant,
    /// Certificates of the pass not started yet.
    left: usize,
}

/// The certificates' turns: which check starts next (the one that waited longest), when the next one is due,
/// and how long passes take. Every method takes the time, so tests pin it.
#[derive(Debug)]
pub(crate) struct Queue {
    slots: Vec<Slot>,
    /// Due certificates, in the order they take turns.
    ready: VecDeque<usize>,
    next_beat: Instant,
    interval: Duration,
    /// Rank given to the next start.
    served: u64,
    pass: Option<Pass>,
    last_pass: Option<Duration>,
}

impl Queue {
    /// A queue for certificates last checked at `last_checked` (from the state the worker recorded; `None`:
    /// never), every one due at `first`, then every `interval` (± jitter).
    pub(crate) fn new(
        last_checked: &[Option<OffsetDateTime>],
        first: Instant,
        interval: Duration,
    ) -> Queue {
        // Never checked first, then the longest ago; ties keep settings order.
        let mut order: Vec<usize> = (0..last_checked.len()).collect();
        order.sort_unstable_by_key(|&i| (last_checked[i], i));
        let mut slots = vec![
            Slot {
                turn: Turn::Waiting,
                due: first,
                served: 0,
                in_pass: false,
            };
            last_checked.len()
        ];
        for (rank, &i) in order.iter().enumerate() {
            slots[i].served = if last_checked[i].is_some() {
                rank as u64 + 1
            } else {
                0
            };
        }
        Queue {
            served: slots.len() as u64 + 1,
            slots,
            ready: VecDeque::new(),
            next_beat: first,
            interval,
            pass: None,
            last_pass: None,
        }
    }

    /// Moves time to `now`: at a beat (its time has come) every certificate that is not being checked becomes
    /// due, and the next beat is set one interval (± jitter from `rng`) later; every certificate whose time has
    /// come joins the ready line, behind those already in it.
    pub(crate) fn advance(&mut self, now: Instant, rng: &mut impl Uniform) {
        if now >= self.next_beat {
            let mut opened = match self.pass {
                Some(_) => None,
                None => Some(Pass {
                    began: now,
                    left: 0,
                }),
            };
            for slot in &mut self.slots {
                if slot.turn == Turn::Running {
                    continue;
                }
                slot.due = slot.due.min(now);
                if let Some(pass) = &mut opened
                    && !slot.in_pass
                {
                    slot.in_pass = true;
                    pass.left += 1;
                }
            }
            if let Some(pass) = opened.filter(|p| p.left > 0) {
                self.pass = Some(pass);
            }
            self.next_beat = now + next_delay(self.interval, rng);
        }
        let mut joining: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].turn == Turn::Waiting && self.slots[i].due <= now)
            .collect();
        joining.sort_unstable_by_key(|&i| (self.slots[i].due, self.slots[i].served, i));
        for i in joining {
            self.slots[i].turn = Turn::Ready;
            self.ready.push_back(i);
        }
    }

    /// Offers the ready certificates to `start` in turn order, until it answers [`Offer::Full`].
    pub(crate) fn offer(&mut self, now: Instant, mut start: impl FnMut(usize) -> Offer) {
        let mut kept = VecDeque::with_capacity(self.ready.len());
        while let Some(i) = self.ready.pop_front() {
            match start(i) {
                Offer::Started => self.took_turn(i, now, Turn::Running),
                Offer::Settled => {
                    self.took_turn(i, now, Turn::Waiting);
                    self.slots[i].due = self.next_beat;
                }
                Offer::NoRoom => kept.push_back(i),
                Offer::Full => {
                    kept.push_back(i);
                    kept.append(&mut self.ready);
                }
            }
        }
        self.ready = kept;
    }

    fn took_turn(&mut self, i: usize, now: Instant, turn: Turn) {
        let slot = &mut self.slots[i];
        slot.turn = turn;
        slot.served = self.served;
        self.served += 1;
        if std::mem::take(&mut slot.in_pass)
            && let Some(pass) = &mut self.pass
        {
            pass.left -= 1;
            if pass.left == 0 {
                self.last_pass = Some(now.saturating_duration_since(pass.began));
                self.pass = None;
            }
        }
    }

    /// Certificate `i`'s check ended: it is due again at `retry` (the initial sync's ladder), or else at the
    /// next beat.
    pub(crate) fn ended(&mut self, i: usize, retry: Option<Instant>) {
        let slot = &mut self.slots[i];
        if slot.turn != Turn::Running {
            return;
        }
        slot.turn = Turn::Waiting;
        slot.due = retry.map_or(self.next_beat, |r| r.min(self.next_beat));
    }

    /// When the next certificate becomes due by the clock (a beat, or an earlier retry); certificates already
    /// in the ready line wait for room, not for the clock.
    pub(crate) fn next_due(&self) -> Instant {
        self.slots
            .iter()
            .filter(|s| s.turn == Turn::Waiting)
            .map(|s| s.due)
            .min()
            .unwrap_or(self.next_beat)
            .min(self.next_beat)
    }

    /// When the next beat makes every certificate due.
    pub(crate) fn next_beat(&self) -> Instant {
        self.next_beat
    }

    /// Due certificates waiting for room.
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len()
    }

    /// How passes compare with the interval, at `now`.
    pub(crate) fn pace(&self, now: Instant) -> Pace {
        let overdue = self
            .pass
            .map(|p| now.saturating_duration_since(p.began))
            .filter(|d| *d > self.interval);
        Pace {
            interval_s: self.interval.as_secs(),
            certificates: self.slots.len(),
            last_pass_ms: self.last_pass.map(millis),
            overdue_ms: overdue.map(millis),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

    /// Drives a [`Queue`] the way the poller does, in simulated time: `slots` checks at once, each taking
    /// `took(i)`, for `until`. Returns the start times of each certificate's checks, and the queue.
    fn simulate(
        last_checked: &[Option<OffsetDateTime>],
        interval: Duration,
        slots: usize,
        took: impl Fn(usize) -> Duration,
        until: Duration,
    ) -> (Vec<Vec<Duration>>, Queue) {
        let base = Instant::now();
        let mut queue = Queue::new(last_checked, base, interval);
        let mut starts = vec![Vec::new(); last_checked.len()];
        // (end, index) of the checks running.
        let mut running: Vec<(Instant, usize)> = Vec::new();
        let mut now = base;
        let mut rng = Fixed(0.5);
        while now <= base + until {
            running.sort();
            while let Some(&(end, i)) = running.first() {
                if end > now {
                    break;
                }
                running.remove(0);
                queue.ended(i, None);
            }
            queue.advance(now, &mut rng);
            queue.offer(now, |i| {
                if running.len() >= slots {
                    return Offer::Full;
                }
                running.push((now + took(i), i));
                starts[i].push(now - base);
                Offer::Started
            });
            let next_end = running.iter().map(|r| r.0).min();
            let next = next_end.map_or(queue.next_due(), |e| e.min(queue.next_due()));
            now = next.max(now + Duration::from_millis(1));
        }
        (starts, queue)
    }

    #[test]
    fn when_a_pass_outlasts_the_interval_every_certificate_still_takes_its_turn() {
        // 40 certificates, 4 at once, 1.5 s each: a pass takes 15 s against a 5 s interval.
        let interval = Duration::from_secs(5);
        let (starts, queue) = simulate(
            &[None; 40],
            interval,
            4,
            |_| Duration::from_millis(1500),
            Duration::from_secs(120),
        );
        // Nobody goes twice before everybody went once.
        let mut all: Vec<(Duration, usize)> = starts
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.iter().map(move |t| (*t, i)))
            .collect();
        all.sort();
        let first: std::collections::HashSet<usize> = all[..40].iter().map(|x| x.1).collect();
        assert_eq!(
            first.len(),
            40,
            "a certificate went twice in the first 40 turns"
        );
        // Each is checked at least once every ⌈pass ÷ interval⌉ + 1 beats (here ⌈15 / 5⌉ + 1 = 4 beats).
        let bound = interval * 4;
        for (i, s) in starts.iter().enumerate() {
            assert!(
                s.len() >= 6,
                "certificate {i} checked only {} times",
                s.len()
            );
            assert!(
                s[0] < bound,
                "certificate {i} first checked after {:?}",
                s[0]
            );
            for w in s.windows(2) {
                assert!(
                    w[1] - w[0] <= bound,
                    "certificate {i} waited {:?}",
                    w[1] - w[0]
                );
            }
        }
        // The status can say so: a pass took about 15 s (the last turn starts 13.5 s after the beat).
        let pace = queue.pace(Instant::now() + Duration::from_secs(120));
        assert!(pace.behind(), "{pace:?}");
        let pass = pace.pass_s().unwrap();
        assert!((13.0..=16.0).contains(&pass), "{pace:?}");
        let warning = pace.warning().unwrap();
        assert!(warning.contains("pollingIntervalInS (5 s)"), "{warning}");
        assert!(warning.contains(&format!("{pass:.1} s")), "{warning}");
        assert!(warning.contains("at least 21"), "{warning}");
    }

    #[test]
    fn turns_are_shared_evenly_when_the_queue_never_empties() {
        // The same load as above: every certificate gets as many turns as any other, give or take one.
        let (starts, _) = simulate(
            &[None; 40],
            Duration::from_secs(5),
            4,
            |_| Duration::from_millis(1500),
            Duration::from_secs(60),
        );
        assert!(starts.iter().all(|s| !s.is_empty()));
        let most = starts.iter().map(Vec::len).max().unwrap();
        let least = starts.iter().map(Vec::len).min().unwrap();
        assert!(most - least <= 1, "turns spread {least}..{most}");
    }

    #[test]
    fn a_quick_pass_keeps_up_and_says_nothing() {
        let (starts, queue) = simulate(
            &[None; 20],
            Duration::from_secs(5),
            4,
            |_| Duration::from_millis(100),
            Duration::from_secs(30),
        );
        // One check per certificate per beat (beats at 0, 5, …, 30 s), each 5 s after the last.
        for s in &starts {
            assert!(s.len() >= 6, "{starts:?}");
            assert!(
                s.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(5)),
                "{starts:?}"
            );
        }
        let pace = queue.pace(Instant::now());
        assert!(!pace.behind(), "{pace:?}");
        assert!(pace.last_pass_ms.unwrap() < 1000, "{pace:?}");
        assert_eq!(pace.warning(), None);
    }

    #[test]
    fn after_a_restart_never_checked_certificates_go_first_then_the_longest_waiting() {
        let t = |s: i64| Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s));
        // Settings order: checked at 30 s, never, checked at 10 s, never, checked at 20 s.
        let recorded = [t(30), None, t(10), None, t(20)];
        let (starts, _) = simulate(
            &recorded,
            Duration::from_secs(3600),
            1,
            |_| Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let mut order: Vec<(Duration, usize)> =
            starts.iter().enumerate().map(|(i, s)| (s[0], i)).collect();
        order.sort();
        let order: Vec<usize> = order.into_iter().map(|x| x.1).collect();
        assert_eq!(order, [1, 3, 2, 4, 0]);
    }

    #[test]
    fn a_certificate_without_room_keeps_its_place_and_later_ones_go_ahead() {
        let base = Instant::now();
        let mut queue = Queue::new(&[None; 4], base, Duration::from_secs(60));
        queue.advance(base, &mut Fixed(0.5));
        let mut offered = Vec::new();
        // 0 has no room (its vault is busy), 1 starts, 2 fills the last slot, 3 is not offered.
        queue.offer(base, |i| {
            offered.push(i);
            match i {
                0 => Offer::NoRoom,
                1 => Offer::Started,
                _ => Offer::Full,
            }
        });
        assert_eq!(offered, [0, 1, 2]);
        assert_eq!(queue.waiting(), 3);
        // Next time 0 is offered first again, and one settled at once is due at the next beat.
        let mut offered = Vec::new();
        queue.offer(base, |i| {
            offered.push(i);
            Offer::Settled
        });
        assert_eq!(offered, [0, 2, 3]);
        assert_eq!(queue.waiting(), 0);
        assert_eq!(queue.next_due(), base + Duration::from_secs(60));
        // The pass ends when the last of its certificates had its turn; the running one is no longer due.
        queue.ended(1, Some(base + Duration::from_secs(5)));
        assert_eq!(queue.next_due(), base + Duration::from_secs(5));
        assert_eq!(queue.pace(base).last_pass_ms, Some(0));
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
