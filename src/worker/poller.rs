//! The poller: certificates take turns in a `Queue`, checks run on their threads, the status is written as each
//! ends, and between those it sleeps on one channel ([`Event`]), never on a tick.

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::post_install::{self, Change, HookResults};
use super::{
    Current, HEARTBEAT_EVERY, Start, Watch, WorkerError, certificate_states, check_ended, known,
    load, recorded, sync_options, vault_client,
};
use crate::host::Host;
use crate::http::Stop;
use crate::platform::keep_alive::{self, KeepAlive, Request};
use crate::platform::process::{
    die_on_every_segfault, give_back_memory, limit_malloc_arenas, unmap_unused_code,
};
use crate::platform::{CertificateDestination, Destination, Keeper};
use crate::schedule::{self, InitialSync, Offer, Pace, Queue};
use crate::settings::Settings;
use crate::state::{self, CertStatus, CertificateState, InitialSyncState, LogSinks, WorkerState};
use crate::status::{self, Heartbeat, StatusReport, WorkerView};
use crate::sync::{Checks, Done, SyncError};
use crate::vault::VaultClient;

/// After SIGTERM, how long the checks in progress may take to wind down (retry waits end at once; a request
/// the vault is slow to answer does not) before its requests are abandoned.
pub(crate) const WIND_DOWN: Duration = Duration::from_secs(2);

/// Everything that wakes the poller, on its one channel: it sleeps until one of these arrives or the next
/// thing it has to do is due (a check, a save, the heartbeat), never on a tick.
#[derive(Debug)]
enum Event {
    /// A check ended (boxed: a check's result is large beside the other events).
    Checked(Box<Done>),
    /// The post-install commands of a burst ran.
    Hooks(HookResults),
    /// SIGHUP: `enable` wrote new settings.
    Reload,
    /// SIGTERM or SIGINT: `disable` (or the supervisor) asks the poller to stop.
    Stop,
}

impl From<Done> for Event {
    fn from(done: Done) -> Event {
        Event::Checked(Box::new(done))
    }
}

/// Hands the keeper's requests (Linux: SIGHUP, SIGTERM, SIGINT) to the poller's channel. On a stop it also raises
/// `stop` (retry waits end at once) and, if the poller has not exited [`WIND_DOWN`] later, exits the process
/// once no install is in progress: a stop is answered within seconds even while a vault request hangs.
fn forward_requests(tx: mpsc::Sender<Event>, stop: Stop) -> Result<(), WorkerError> {
    Keeper::forward_requests(move |request| match request {
        Request::Reload => {
            let _ = tx.send(Event::Reload);
        }
        Request::Stop => {
            stop.request();
            let _ = tx.send(Event::Stop);
            thread::sleep(WIND_DOWN);
            let _no_install = Destination::quiesce();
            log::warn!(
                "worker stopping on request with requests still in flight; they are abandoned (no file \
                 operation was interrupted)"
            );
            log::logger().flush();
            std::process::exit(0);
        }
    })
    .map_err(|source| WorkerError::Signals { source })
}

/// How soon after a check ends the status file shows it (checks that end together share one write).
const SAVE_AFTER: Duration = Duration::from_millis(500);
/// How long post-install commands wait for more certificates of the same burst to finish installing, so one
/// command runs once for all of them.
const HOOK_GATHER: Duration = Duration::from_secs(5);

/// The poller: certificates take turns in a [`Queue`], checks run in their own threads, the status is written
/// as each ends; it sleeps on one channel ([`Event`]) between the things it has to do.
struct Poller<'a> {
    host: &'a Host,
    current: Current,
    state: WorkerState,
    client: Result<Arc<VaultClient>, SyncError>,
    checks: Option<Checks<Event>>,
    /// Where the checks, the post-install commands and the signal thread report.
    tx: mpsc::Sender<Event>,
    queue: Queue,
    generation: u64,
    sync: InitialSync,
    rng: fastrand::Rng,
    stop: Stop,
    changes: Vec<Change>,
    first_change: Option<Instant>,
    /// The post-install commands of a burst are running.
    hooks_running: bool,
    dirty: bool,
    saved: Instant,
    busy_before: bool,
    /// The last pace logged as behind (so the log says it once, and again when it recovers).
    behind: bool,
    /// What `metricsFile` shows.
    counters: crate::metrics::Counters,
}

/// How soon a poller that could not start a check thread tries again.
const RETRY_START: Duration = Duration::from_secs(1);

impl<'a> Poller<'a> {
    /// A poller for `current`. Its first checks wait a random part of the interval (a scale set that boots
    /// together does not poll in step), unless `at_once` (settings a reload brought, which the user wants
    /// applied now).
    fn start(
        host: &'a Host,
        current: Current,
        log_sinks: &LogSinks,
        stop: Stop,
        tx: mpsc::Sender<Event>,
        at_once: bool,
    ) -> Poller<'a> {
        let restarts = std::env::var(keep_alive::ENV_RESTARTS)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let last_exit = std::env::var(keep_alive::ENV_LAST_EXIT)
            .ok()
            .filter(|s| !s.is_empty());
        let mut rng = fastrand::Rng::new();
        let first = if at_once {
            Instant::now()
        } else {
            Instant::now() + schedule::first_delay(current.settings.polling_interval, &mut rng)
        };
        let state = WorkerState {
            seq: current.seq,
            pid: std::process::id(),
            updated: state::now(),
            restarts,
            last_exit,
            polling: None,
            initial_sync: None,
            log_sinks: Some(log_sinks.clone()),
            certificates: certificate_states(&current.settings, recorded(host).as_ref()),
        };
        let client = vault_client(&current.settings);
        let checks = client.as_ref().ok().map(|c| {
            Checks::new(
                Arc::clone(c),
                sync_options(
                    &current.settings,
                    &Destination::lock_folder(&host.data_dir()),
                ),
                stop.clone(),
                tx.clone(),
            )
        });
        log::info!(
            "poller started (pid {}) with {}: {} observed certificate(s), first checks in {} ms",
            std::process::id(),
            host.settings_label(current.seq),
            current.settings.observed_certificates.len(),
            first.saturating_duration_since(Instant::now()).as_millis()
        );
        Poller {
            queue: queue_for(&state.certificates, first, &current.settings),
            sync: InitialSync::start(current.settings.require_initial_sync),
            host,
            current,
            state,
            client,
            checks,
            tx,
            generation: 0,
            rng,
            stop,
            changes: Vec::new(),
            first_change: None,
            hooks_running: false,
            dirty: true,
            saved: Instant::now(),
            busy_before: false,
            behind: false,
            counters: crate::metrics::Counters::default(),
        }
    }

    /// New settings (SIGHUP: `enable`, or `systemctl reload kvvm`): they apply now, every certificate is due at
    /// once. Settings that observe nothing are handed back (the poller then waits for others); invalid ones
    /// are logged, and the running ones stay.
    fn reload(&mut self) -> Option<Watch> {
        let next = match load(self.host) {
            Ok(Watch::Certificates(next)) => next,
            Ok(nothing @ Watch::Nothing { .. }) => return Some(nothing),
            Err(e) => {
                log::error!(
                    "keeping {}: {e}",
                    self.host.settings_label(self.current.seq)
                );
                return None;
            }
        };
        log::info!(
            "reloaded {} (was {})",
            self.host.settings_label(next.seq),
            self.host.settings_label(self.current.seq)
        );
        let auth_changed = (&next.settings.msi_endpoint, &next.settings.msi_identity)
            != (
                &self.current.settings.msi_endpoint,
                &self.current.settings.msi_identity,
            );
        self.current = next;
        if auth_changed {
            if let Ok(old) = &self.client {
                self.counters.retire(old);
            }
            self.client = vault_client(&self.current.settings);
        }
        let options = sync_options(
            &self.current.settings,
            &Destination::lock_folder(&self.host.data_dir()),
        );
        self.checks = match (&self.client, self.checks.take()) {
            (Ok(client), Some(mut checks)) => {
                self.generation = checks.new_generation(Arc::clone(client), options);
                Some(checks)
            }
            (Ok(client), None) => {
                self.generation = 0;
                Some(Checks::new(
                    Arc::clone(client),
                    options,
                    self.stop.clone(),
                    self.tx.clone(),
                ))
            }
            // Every certificate fails with the client's error (see `dispatch`); checks in flight are dropped.
            (Err(_), _) => None,
        };
        self.state.seq = self.current.seq;
        self.state.certificates = certificate_states(&self.current.settings, Some(&self.state));
        self.queue = queue_for(
            &self.state.certificates,
            Instant::now(),
            &self.current.settings,
        );
        self.state.polling = None;
        self.sync = InitialSync::start(self.current.settings.require_initial_sync);
        // The new settings' status is written before any check, which may take a while against an unreachable
        // vault.
        self.save();
        None
    }

    /// Starts the checks that are due, in turn order, as far as the limits allow (see [`Queue`]).
    fn dispatch(&mut self) {
        let now = Instant::now();
        self.queue.advance(now, &mut self.rng);
        let observed = &self.current.settings.observed_certificates;
        let expiry_warning_days = self.current.settings.expiry_warning_days;
        let (checks, client, certs, counters) = (
            &mut self.checks,
            &self.client,
            &mut self.state.certificates,
            &mut self.counters,
        );
        let mut failed = false;
        self.queue.offer(now, |i| match (checks.as_mut(), client) {
            (Some(checks), Ok(_)) => checks.try_start(i, &observed[i], known(&certs[i])),
            (_, Err(why)) => {
                counters.record(observed[i].url.as_str(), Err(why));
                check_ended(&mut certs[i], &observed[i], Err(why), expiry_warning_days);
                failed = true;
                Offer::Settled
            }
            (None, Ok(_)) => Offer::Full,
        });
        self.dirty |= failed;
    }

    /// Records one finished check and sets its certificate's next check.
    fn finished(&mut self, done: Done) {
        if let Some(checks) = &mut self.checks {
            checks.ended(&done);
        }
        if done.generation != self.generation {
            log::debug!(
                "{}: a check started under the previous settings ended",
                done.url
            );
            return;
        }
        let i = done.index;
        let cert = &self.current.settings.observed_certificates[i];
        let state = &mut self.state.certificates[i];
        let change = check_ended(
            state,
            cert,
            done.result.as_ref(),
            self.current.settings.expiry_warning_days,
        );
        self.counters.record(&done.url, done.result.as_ref());
        if let Some(change) = change {
            self.first_change.get_or_insert_with(Instant::now);
            self.changes.push(change);
        }
        let failures = state.failures;
        let certs = &self.state.certificates;
        let installed =
            |c: &CertificateState| matches!(c.status, CertStatus::Installed | CertStatus::Warning);
        let attempts = certs
            .iter()
            .filter(|c| !installed(c))
            .map(|c| c.failures)
            .max()
            .unwrap_or(0);
        let was_trying = matches!(self.sync, InitialSync::Trying { .. });
        self.sync = self.sync.after(certs.iter().all(installed), attempts);
        let interval = self.current.settings.polling_interval;
        // Healthy certificates wait for the next beat; while the initial sync is not done, a failing one is
        // retried on its own, sooner.
        let retry = match self.sync {
            InitialSync::Trying { .. } if failures > 0 => {
                Some(Instant::now() + schedule::initial_sync_retry(failures, interval))
            }
            _ => None,
        };
        self.queue.ended(i, retry);
        if was_trying && failures > 0 {
            let next = retry.map_or(self.queue.next_beat(), |r| r.min(self.queue.next_beat()));
            log::info!(
                "initial sync: {} failed {failures} time(s); next try in {} s",
                done.url,
                next.saturating_duration_since(Instant::now()).as_secs()
            );
        }
        self.dirty = true;
    }

    /// Starts the post-install commands of the changes gathered, once their burst is over (no check in flight,
    /// or [`HOOK_GATHER`] after its first install) and the previous burst's have ended.
    fn hooks(&mut self) {
        if self.hooks_running {
            return;
        }
        let Some(first) = self.first_change else {
            return;
        };
        if self.in_flight() > 0 && first.elapsed() < HOOK_GATHER {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        self.first_change = None;
        let tx = self.tx.clone();
        match thread::Builder::new()
            .name("post-install".into())
            .spawn(move || {
                let _ = tx.send(Event::Hooks(post_install::run(changes)));
            }) {
            Ok(_) => self.hooks_running = true,
            Err(e) => log::error!("cannot start the post-install commands: {e}"),
        }
    }

    /// Records what a burst's post-install commands did.
    fn hooks_ran(&mut self, results: HookResults) {
        post_install::record(&mut self.state.certificates, &results);
        self.hooks_running = false;
        self.dirty = true;
    }

    fn in_flight(&self) -> usize {
        self.checks.as_ref().map_or(0, |c| c.in_flight())
    }

    /// How long the poller may sleep before it has something to do: the next certificate due, the status
    /// save a finished check asked for, the heartbeat, a burst's post-install commands, the end of a vault's
    /// warm-up while certificates wait for it. Checks that end wake it through the channel.
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        let save = if self.dirty {
            SAVE_AFTER
        } else {
            HEARTBEAT_EVERY
        };
        let mut at = (self.saved + save).min(self.queue.next_due());
        if self.queue.waiting() > 0 {
            match &self.checks {
                Some(checks) if checks.in_flight() > 0 => {
                    if let Some(end) = checks.warm_up_ends() {
                        at = at.min(end);
                    }
                }
                // Due certificates wait, yet nothing runs: a thread could not be started.
                _ => at = at.min(now + RETRY_START),
            }
        }
        if let Some(first) = self.first_change.filter(|_| !self.hooks_running) {
            at = at.min(first + HOOK_GATHER);
        }
        at.saturating_duration_since(now)
    }

    /// Heartbeat, state file and status file when something changed (at most every [`SAVE_AFTER`]) or the
    /// heartbeat is due; the threads, connections and memory a burst of checks used are given back when it is
    /// over.
    fn tend(&mut self) {
        let busy = self.in_flight() > 0;
        let burst_ended = self.busy_before && !busy;
        if burst_ended {
            let next = self
                .queue
                .next_due()
                .saturating_duration_since(Instant::now());
            if next > crate::http::MAX_IDLE_AGE {
                // The vault will have closed them by the next check.
                if let Ok(client) = &self.client {
                    client.release_connections();
                }
            }
            // Their stacks would stay resident through the wait; a burst starts its few threads again.
            if let Some(checks) = &self.checks {
                checks.release();
            }
        }
        self.busy_before = busy;
        let elapsed = self.saved.elapsed();
        // A burst that has ended has nothing more to gather into the save: save (and give back its memory) now,
        // not up to SAVE_AFTER into the wait.
        if (self.dirty && (elapsed >= SAVE_AFTER || burst_ended)) || elapsed >= HEARTBEAT_EVERY {
            self.save();
            // Once per wait: after the save that follows a burst (a burst always leaves something to save),
            // and after each heartbeat. Dropping pages more often only faults them in again.
            if !busy {
                give_back_memory();
            }
        }
    }

    /// The pace of the passes, logged when it falls behind the interval and when it catches up again.
    fn pace(&mut self) -> Pace {
        let pace = self.queue.pace(Instant::now());
        let behind = pace.behind();
        if behind != self.behind {
            self.behind = behind;
            match pace.warning() {
                Some(warning) => log::warn!("{warning}"),
                None => log::info!(
                    "polling keeps up with the interval again: the last pass took {:.1} s (interval {} s)",
                    pace.pass_s().unwrap_or_default(),
                    pace.interval_s
                ),
            }
        }
        pace
    }

    /// Heartbeat, state file and status file, in that order: a status that says the worker runs implies a
    /// heartbeat is there.
    fn save(&mut self) {
        if let Err(e) = self.try_save() {
            log::error!("{e}");
        }
    }

    fn try_save(&mut self) -> Result<(), crate::handler::HandlerError> {
        self.dirty = false;
        self.saved = Instant::now();
        status::write_heartbeat(
            self.host,
            &Heartbeat::Running {
                settings: self.host.settings_label(self.current.seq),
            },
        )?;
        let pace = self.pace();
        self.state.polling = Some(pace);
        self.state.initial_sync = Some(match self.sync {
            InitialSync::Done if !self.current.settings.require_initial_sync => {
                InitialSyncState::NotRequired
            }
            InitialSync::Done => InitialSyncState::Done,
            InitialSync::Trying { .. } => InitialSyncState::Trying,
            InitialSync::Failed => InitialSyncState::Failed,
        });
        self.state.updated = state::now();
        self.state.save(&self.host.data_dir())?;
        let settings = self.host.settings_label(self.current.seq);
        let report = status::worker_report(&WorkerView {
            settings: &settings,
            pid: std::process::id(),
            polling_interval_s: self.current.settings.polling_interval.as_secs(),
            settings_warnings: &self.current.settings.warnings,
            sync: self.sync,
            pace: Some(&pace),
            certificates: &self.state.certificates,
            restarts: self
                .state
                .last_exit
                .as_deref()
                .map(|why| (self.state.restarts, why)),
        });
        if let Some(path) = &self.current.settings.metrics_file {
            let snapshot = crate::metrics::Snapshot {
                observed: &self.current.settings.observed_certificates,
                states: &self.state.certificates,
                counters: &self.counters,
                client: self.client.as_deref().ok(),
                restarts: self.state.restarts,
                pace: Some(&pace),
            };
            let text = crate::metrics::render(&snapshot);
            crate::metrics::update(path, &text, &mut self.counters);
        }
        crate::notify::ready(&report.message);
        status::write(self.host, self.current.seq, &report)
    }

    /// Waits up to [`WIND_DOWN`] for the checks in flight to end, then records the state.
    fn finish(&mut self, events: &mpsc::Receiver<Event>) {
        let deadline = Instant::now() + WIND_DOWN;
        while self.in_flight() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Checked(done)) => self.finished(*done),
                Ok(Event::Hooks(results)) => self.hooks_ran(results),
                Ok(Event::Reload | Event::Stop) => {}
                Err(_) => break,
            }
        }
        let _no_file_operation = Destination::quiesce();
        self.save();
        log::info!("worker stopping on request");
    }
}

/// The turns of `certs` (in settings order), the never checked first, every one due at `first`.
fn queue_for(certs: &[CertificateState], first: Instant, settings: &Settings) -> Queue {
    let last_checked: Vec<Option<OffsetDateTime>> = certs.iter().map(|c| c.last_check).collect();
    Queue::new(&last_checked, first, settings.polling_interval)
}

/// Runs the poller until SIGTERM (`kvvm poller`, started by the supervisor), from its [`start`]. With nothing to
/// watch it waits for new settings (SIGHUP) instead, keeping its heartbeat and status current.
pub(crate) fn run(start: Start) -> Result<(), WorkerError> {
    let Start {
        host,
        watch,
        log_sinks,
    } = start;
    let host = &host;
    let data_dir = host.data_dir();
    let Some(_lock) = Keeper::hold_poller_lock(&data_dir)? else {
        return Err(WorkerError::AnotherPoller { dir: data_dir });
    };
    limit_malloc_arenas();
    unmap_unused_code();
    die_on_every_segfault();
    let stop = Stop::default();
    let (tx, events) = mpsc::channel();
    forward_requests(tx.clone(), stop.clone())?;
    let mut watch = watch?;
    let mut reloaded = false;
    loop {
        let current = match watch {
            Watch::Certificates(current) => current,
            Watch::Nothing { seq, reason } => {
                match idle(host, seq, &reason, &log_sinks, &events)? {
                    Some(next) => {
                        watch = next;
                        reloaded = true;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
        };
        let mut poller = Poller::start(
            host,
            current,
            &log_sinks,
            stop.clone(),
            tx.clone(),
            reloaded,
        );
        poller
            .try_save()
            .map_err(|e| WorkerError::StateUnwritable {
                detail: e.to_string(),
            })?;
        watch = loop {
            poller.dispatch();
            poller.hooks();
            poller.tend();
            match events.recv_timeout(poller.next_wake()) {
                Ok(Event::Checked(done)) => poller.finished(*done),
                Ok(Event::Hooks(results)) => poller.hooks_ran(results),
                Ok(Event::Reload) => {
                    if let Some(nothing) = poller.reload() {
                        poller.finish(&events);
                        break nothing;
                    }
                }
                Ok(Event::Stop) => {
                    poller.finish(&events);
                    return Ok(());
                }
                Err(_) => {}
            }
        };
    }
}

/// The poller with nothing to watch: it keeps the heartbeat, `state.json` and the status current (a warning
/// that says what to add, and where) until new settings arrive (SIGHUP: returns them) or SIGTERM (`None`).
fn idle(
    host: &Host,
    seq: u64,
    reason: &str,
    log_sinks: &LogSinks,
    events: &mpsc::Receiver<Event>,
) -> Result<Option<Watch>, WorkerError> {
    let mut seq = seq;
    let mut reason = reason.to_string();
    log::warn!(
        "nothing to watch in {}: {reason}. {}",
        host.settings_label(seq),
        host.settings_hint()
    );
    loop {
        let message = format!(
            "Nothing to watch: {reason} ({}). {}; installed certificates are kept.",
            host.settings_label(seq),
            host.settings_hint()
        );
        let state = WorkerState {
            seq,
            pid: std::process::id(),
            updated: state::now(),
            restarts: 0,
            last_exit: None,
            polling: None,
            initial_sync: None,
            log_sinks: Some(log_sinks.clone()),
            certificates: Vec::new(),
        };
        let saved = status::write_heartbeat(
            host,
            &Heartbeat::Running {
                settings: host.settings_label(seq),
            },
        )
        .and_then(|()| state.save(&host.data_dir()))
        .and_then(|()| {
            status::write(
                host,
                seq,
                &StatusReport::new(
                    status::Operation::Enable,
                    status::Status::Warning,
                    message.clone(),
                ),
            )
        });
        if let Err(e) = saved {
            log::error!("{e}");
        }
        crate::notify::ready(&message);
        give_back_memory();
        match events.recv_timeout(HEARTBEAT_EVERY) {
            Ok(Event::Reload) => match load(host) {
                Ok(Watch::Nothing {
                    seq: new_seq,
                    reason: why,
                }) => {
                    (seq, reason) = (new_seq, why);
                    log::warn!(
                        "still nothing to watch in {}: {reason}",
                        host.settings_label(seq)
                    );
                }
                Ok(watch) => {
                    log::info!("new settings: leaving the wait for certificates to watch");
                    return Ok(Some(watch));
                }
                Err(e) => log::error!("new settings not applied: {e}"),
            },
            Ok(Event::Stop) => {
                log::info!("worker stopping on request");
                return Ok(None);
            }
            Ok(Event::Checked(_) | Event::Hooks(_)) | Err(_) => {}
        }
    }
}
