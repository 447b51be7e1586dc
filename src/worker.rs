//! The long-running worker that `enable` starts: it owns the status file and the heartbeat for as long as the
//! extension is enabled, and re-reads its settings when `enable` signals a new sequence number (SIGHUP). On
//! SIGTERM (from `disable`) it finishes what it is doing and exits, releasing the worker lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::handler::{Extension, HandlerError};
use crate::hook;
use crate::http::Stop;
use crate::identity::Identity;
use crate::logging::{self, Process};
use crate::schedule::{self, InitialSync};
use crate::settings::{self, Configured, ObservedCertificate, Settings};
use crate::state;
use crate::state::{CertStatus, CertificateState, StateError, WorkerState};
use crate::status::{self, Heartbeat, StatusReport, WorkerView};
use crate::supervisor::{self, SupervisorError};
use crate::sync::{Checked, Checks, Done, KnownOwned, SyncError, SyncOptions};
use crate::vault::VaultClient;

/// How often the heartbeat file is refreshed (waagent calls a handler unresponsive after 600 s).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);
/// How quickly the worker notices a signal.
const TICK: Duration = Duration::from_millis(100);

/// Errors that end the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The extension or its environment cannot be found.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The poller lock cannot be taken.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A signal handler cannot be installed.
    #[error("cannot install a signal handler: {source}")]
    Signals {
        /// Why the handler could not be installed.
        source: std::io::Error,
    },
    /// The settings to run with cannot be read or are invalid, or there is nothing to watch.
    #[error("no usable settings: {detail}")]
    NoSettings {
        /// What is wrong with them, as the settings layer says it.
        detail: String,
    },
    /// Another poller holds the poller lock.
    #[error("another poller holds its lock in {dir}; this one exits")]
    AnotherPoller {
        /// The extension's data folder, where the lock is.
        dir: std::path::PathBuf,
    },
    /// The state folder or status file cannot be written at start.
    #[error("cannot record the worker's state: {detail}")]
    StateUnwritable {
        /// The write error.
        detail: String,
    },
}

impl WorkerError {
    /// A short stable code for the status file and the exit report (`no-settings`, `another-poller`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Handler(e) => e.reason(),
            WorkerError::Supervisor(e) => e.reason(),
            WorkerError::Signals { .. } => "signal-handler",
            WorkerError::NoSettings { .. } => "no-settings",
            WorkerError::AnotherPoller { .. } => "another-poller",
            WorkerError::StateUnwritable { .. } => "state-unwritable",
        }
    }
}

/// Flags raised by signal handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signals {
    pub stop: Arc<AtomicBool>,
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals, WorkerError> {
        let signals = Signals::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&signals.stop))
                .map_err(|source| WorkerError::Signals { source })?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&signals.reload))
            .map_err(|source| WorkerError::Signals { source })?;
        Ok(signals)
    }
}

/// The settings the worker runs with, and which sequence number they came from.
#[derive(Debug)]
pub(crate) struct Current {
    /// The settings file's sequence number.
    pub seq: u64,
    /// What it says.
    pub settings: Settings,
}

/// What the poller and `kvvm sync --once` start from: the extension and the settings the worker runs with.
#[derive(Debug)]
pub(crate) struct Start {
    /// The extension.
    pub ext: Extension,
    /// The settings, read and parsed once, at start; or why there are none. The poller reports that only once
    /// it holds its lock (another poller running is the better answer).
    pub current: Result<Current, WorkerError>,
}

/// The start-up the poller and `kvvm sync --once` share: find the extension, read the settings the worker runs
/// with, and start `process`'s log (the poller's also goes to the Fluentd collector those settings name).
pub(crate) fn start(process: Process) -> Result<Start, HandlerError> {
    let ext = Extension::locate()?;
    let current = load(&ext);
    let forward = current
        .as_ref()
        .ok()
        .and_then(|c| c.settings.logging.as_ref());
    logging::start(&ext, process, forward);
    Ok(Start { ext, current })
}

/// The settings of `mrseq`, else of the newest settings file.
fn load(ext: &Extension) -> Result<Current, WorkerError> {
    let seq = match ext.mrseq() {
        Some(seq) => seq,
        None => ext
            .current_sequence()
            .map_err(|e| WorkerError::NoSettings {
                detail: e.to_string(),
            })?,
    };
    let text = ext
        .read_settings_text(seq)
        .map_err(|e| WorkerError::NoSettings {
            detail: e.to_string(),
        })?;
    match settings::parse_settings_file(&text) {
        Ok(Configured::Settings(settings)) => Ok(Current { seq, settings }),
        Ok(Configured::Nothing { reason }) => Err(WorkerError::NoSettings { detail: reason }),
        Err(e) => Err(WorkerError::NoSettings {
            detail: format!("settings {seq}: {e}"),
        }),
    }
}

/// What the worker recorded last, to carry over: nothing if no worker has run yet; a file that cannot be read
/// is logged, and the worker starts from the settings alone.
fn recorded(ext: &Extension) -> Option<WorkerState> {
    match WorkerState::load(&ext.data_dir()) {
        Ok(state) => Some(state),
        Err(StateError::Missing { .. }) => None,
        Err(e) => {
            log::warn!("{e}; starting from the settings alone");
            None
        }
    }
}

/// The certificates the settings observe, carrying over what is known of each from `previous`.
pub fn certificate_states(
    settings: &Settings,
    previous: Option<&WorkerState>,
) -> Vec<CertificateState> {
    settings
        .observed_certificates
        .iter()
        .map(|c| {
            let url = c.url.as_str();
            previous
                .and_then(|p| p.certificate(url))
                .cloned()
                .unwrap_or_else(|| {
                    CertificateState::pending(url, c.store_location.join(c.link_name.as_str()))
                })
        })
        .collect()
}

/// The vault client for `settings`, or why there is none (every certificate then fails with that reason).
fn vault_client(settings: &Settings) -> Result<Arc<VaultClient>, String> {
    let identity = Identity::for_user(
        settings.msi_endpoint.as_ref(),
        settings.msi_identity.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    VaultClient::new(Arc::new(identity))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn record_failure(
    state: &mut CertificateState,
    cert: &ObservedCertificate,
    why: &str,
    reason: Option<&str>,
    now: OffsetDateTime,
) {
    state.last_check = Some(now);
    state.reason = reason.map(str::to_string);
    state.status = CertStatus::Failed;
    state.failures += 1;
    state.last_error = Some(why.to_string());
    log::error!("{}: {why}", cert.url);
}

/// Records one certificate's result and logs it.
fn record(
    state: &mut CertificateState,
    cert: &ObservedCertificate,
    result: &Result<Checked, SyncError>,
    now: OffsetDateTime,
    expiry_warning_days: u32,
) {
    let name = cert.secret.to_string();
    match result {
        Err(SyncError::Stopped) => {}
        Err(e @ SyncError::NotACertificate { .. }) => {
            state.last_check = Some(now);
            state.status = CertStatus::Warning;
            state.failures = 0;
            state.last_error = None;
            state.reason = Some(e.reason().to_string());
            state.note = Some(e.to_string());
            log::warn!("{name}: {e}");
        }
        Err(e) => {
            let kept = match &state.version {
                Some(v) => format!(" (version {v} stays installed)"),
                None => String::new(),
            };
            record_failure(state, cert, &format!("{e}{kept}"), Some(e.reason()), now);
            // The message already has the "(version … stays installed)" hint; keep last_error without it.
            state.last_error = Some(e.to_string());
        }
        Ok(c) => {
            state.last_check = Some(now);
            state.last_success = Some(now);
            if c.changed {
                state.last_change = Some(now);
                state.hook = None;
                log::info!(
                    "{name}: installed version {} as {} (link {}{})",
                    c.version,
                    c.file.display(),
                    c.link.display(),
                    c.serial
                        .as_ref()
                        .map(|s| format!(", serial {s}"))
                        .unwrap_or_default()
                );
            } else {
                log::debug!("{name}: version {} is current", c.version);
            }
            for removed in &c.removed {
                log::info!("{name}: removed old version file {}", removed.display());
            }
            state.version = Some(c.version.clone());
            state.file = Some(c.file.clone());
            state.link = c.link.clone();
            if let Some(t) = c.not_after {
                state.not_after = Some(t);
            }
            state.failures = 0;
            state.last_error = None;
            state.reason = None;
            let mut notes = Vec::new();
            if let Some(w) = &c.validity_warning {
                notes.push(w.clone());
                state.reason = Some("certificate-not-valid-now".into());
            }
            if let Some(w) = expiry_warning(state.not_after, now, expiry_warning_days) {
                log::warn!("{name}: {w}");
                notes.push(w);
                state
                    .reason
                    .get_or_insert_with(|| "certificate-expiring".into());
            }
            state.status = if notes.is_empty() {
                CertStatus::Installed
            } else {
                CertStatus::Warning
            };
            state.note = (!notes.is_empty()).then(|| notes.join(" "));
        }
    }
}

/// The expiry alarm: the installed (and newest) version expires within `days` days, or has expired.
pub(crate) fn expiry_warning(
    not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
    days: u32,
) -> Option<String> {
    if days == 0 {
        return None;
    }
    let not_after = not_after?;
    let left = not_after - now;
    if left > time::Duration::days(i64::from(days)) {
        return None;
    }
    let when = if left.is_negative() {
        format!("expired on {}", status::utc_timestamp(not_after))
    } else {
        format!(
            "expires on {} (in {} day(s))",
            status::utc_timestamp(not_after),
            left.whole_days()
        )
    };
    Some(format!(
        "the installed certificate {when} and the vault has no newer version: Key Vault's automatic renewal \
         may be failing (check the certificate's lifetime action and issuer), or renew it by hand"
    ))
}

/// After SIGTERM, how long the poll in progress may take to wind down (retry waits end at once; a request
/// the vault is slow to answer does not) before its requests are abandoned.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

/// Exits the process [`STOP_GRACE`] after SIGTERM/SIGINT if the main loop has not returned by then, once no
/// install is in progress: SIGTERM is answered within seconds even while a vault request hangs. The thread
/// sleeps in a blocking read until a signal arrives (no polling).
fn watch_for_stop() -> Result<(), WorkerError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|source| WorkerError::Signals { source })?;
    thread::spawn(move || {
        if signals.forever().next().is_none() {
            return;
        }
        thread::sleep(STOP_GRACE);
        let _no_file_operation = crate::store::quiesce();
        log::warn!(
            "worker stopping on request with requests still in flight; they are abandoned (no file operation was \
             interrupted)"
        );
        log::logger().flush();
        std::process::exit(0);
    });
    Ok(())
}

/// The worker sleeps most of its life: one malloc arena (instead of one per thread that ever ran a check)
/// keeps its resident memory small.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning and is thread-safe; called before the checks' threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // A fixed threshold (glibc's default 128 KiB, which otherwise grows to the largest block freed): the
        // big buffers of a cycle (the trust store read, the state file) are mapped and unmapped, not left
        // scattered in the heap between small blocks that outlive them.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Rust's runtime handles SIGSEGV and SIGBUS to report stack overflows, and lets a signal that is not a fault
/// of its own (one sent with `kill`, say) pass without effect the first time. A poller that gets one must end,
/// so that its supervisor restarts it and reports why, rather than run on in a state nobody can vouch for; a
/// stack overflow is then reported as SIGSEGV.
fn die_on_every_segfault() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: the default disposition runs no handler of ours, so nothing can run in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Before the worker waits: returns the memory a cycle or a save freed to the system, and unmaps the code they
/// ran (see crate::residency).
fn give_back_memory() {
    crate::residency::map_only_what_is_used();
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How soon after a check ends the status file shows it (checks that end together share one write).
const SAVE_AFTER: Duration = Duration::from_millis(500);
/// How long post-install commands wait for more certificates of the same burst to finish installing, so one
/// command runs once for all of them.
const HOOK_GATHER: Duration = Duration::from_secs(5);

fn sync_options(settings: &Settings, lock_dir: &std::path::Path) -> SyncOptions {
    SyncOptions {
        acl_enabled: settings.acl_enabled,
        retained_versions: settings.retained_versions,
        lock_dir: lock_dir.to_path_buf(),
    }
}

fn known(state: &CertificateState) -> KnownOwned {
    KnownOwned {
        version: state.version.clone(),
        has_not_after: state.not_after.is_some(),
    }
}

/// A certificate's own clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    due: Instant,
    busy: bool,
}

/// A certificate whose new version was installed, waiting for its post-install command.
struct Change {
    hook: hook::Hook,
    installed: hook::Installed,
}

/// What a batch of post-install commands did: per command, the certificates it ran for, its summary, success.
type HookResults = Vec<(Vec<String>, String, bool)>;

/// Runs each distinct command once for the certificates in `changes`.
fn run_hooks(changes: Vec<Change>) -> HookResults {
    let plan = hook::plan(changes.iter().map(|c| (&c.hook, c.installed.clone())));
    plan.into_iter()
        .map(|(command, installed)| {
            let (ok, summary) = match hook::run(&command, &installed) {
                Ok(run) => (run.success(), run.summary(&command)),
                Err(e) => (false, e.to_string()),
            };
            if ok {
                log::info!("{summary}");
            } else {
                log::error!("{summary}");
            }
            (installed.into_iter().map(|i| i.url).collect(), summary, ok)
        })
        .collect()
}

/// Records what the post-install commands did in the certificates they ran for.
fn record_hooks(certs: &mut [CertificateState], results: &HookResults) {
    for (urls, summary, ok) in results {
        for url in urls {
            if let Some(state) = certs.iter_mut().find(|c| &c.url == url) {
                state.hook = Some(summary.clone());
                if !ok {
                    state.status = CertStatus::Warning;
                    state
                        .reason
                        .get_or_insert_with(|| "post-install-failed".into());
                    let note = match state.note.take() {
                        Some(n) => format!("{n} {summary}"),
                        None => summary.clone(),
                    };
                    state.note = Some(note);
                }
            }
        }
    }
}

/// The post-install command of a check that installed a new version, if it has one.
fn change_of(cert: &ObservedCertificate, result: &Result<Checked, SyncError>) -> Option<Change> {
    match (result, &cert.post_install) {
        (Ok(c), Some(h)) if c.changed => Some(Change {
            hook: h.clone(),
            installed: hook::Installed {
                url: cert.url.to_string(),
                link: c.link.clone(),
                file: c.file.clone(),
                version: c.version.clone(),
                dir: c.folder.clone(),
            },
        }),
        _ => None,
    }
}

/// `kvvm sync --once`: checks every certificate of `current` once, from what the worker recorded, and returns
/// their records in settings order. The worker's status and state files are left to the worker.
pub(crate) fn sync_once(ext: &Extension, current: &Current) -> Vec<CertificateState> {
    let mut certs = certificate_states(&current.settings, recorded(ext).as_ref());
    let client = vault_client(&current.settings);
    let locks = crate::store::lock_folder(&ext.data_dir());
    poll_once(
        &client,
        &current.settings,
        &mut certs,
        &locks,
        &Stop::default(),
    );
    certs
}

/// Checks every certificate of `settings` once, all at once within the limits of [`Checks`], records the
/// results in `certs` (same order) and runs the post-install commands of those that changed.
fn poll_once(
    client: &Result<Arc<VaultClient>, String>,
    settings: &Settings,
    certs: &mut [CertificateState],
    lock_dir: &std::path::Path,
    stop: &Stop,
) {
    let observed = &settings.observed_certificates;
    let client = match client {
        Ok(client) => Arc::clone(client),
        Err(why) => {
            let now = state::now();
            for (state, cert) in certs.iter_mut().zip(observed) {
                record_failure(state, cert, why, Some("identity-setup"), now);
            }
            return;
        }
    };
    let known: Vec<KnownOwned> = certs.iter().map(known).collect();
    let results = crate::sync::check_all(
        client,
        observed,
        &known,
        sync_options(settings, lock_dir),
        stop,
    );
    let mut changes = Vec::new();
    for ((state, cert), result) in certs.iter_mut().zip(observed).zip(&results) {
        record(
            state,
            cert,
            result,
            state::now(),
            settings.expiry_warning_days,
        );
        changes.extend(change_of(cert, result));
    }
    record_hooks(certs, &run_hooks(changes));
}

/// The poller: one clock per certificate, checks in their own threads, the status written as each ends.
struct Poller<'a> {
    ext: &'a Extension,
    current: Current,
    state: WorkerState,
    client: Result<Arc<VaultClient>, String>,
    checks: Option<Checks>,
    clocks: Vec<Clock>,
    /// When every certificate not in flight is next due.
    next_beat: Instant,
    generation: u64,
    sync: InitialSync,
    rng: fastrand::Rng,
    stop: Stop,
    changes: Vec<Change>,
    first_change: Option<Instant>,
    hooks: Option<mpsc::Receiver<HookResults>>,
    dirty: bool,
    saved: Instant,
    busy_before: bool,
    /// What `metricsFile` shows.
    counters: crate::metrics::Counters,
}

impl<'a> Poller<'a> {
    fn start(ext: &'a Extension, current: Current, stop: Stop) -> Poller<'a> {
        let restarts = std::env::var(supervisor::ENV_RESTARTS)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let last_exit = std::env::var(supervisor::ENV_LAST_EXIT)
            .ok()
            .filter(|s| !s.is_empty());
        let mut rng = fastrand::Rng::new();
        let first =
            Instant::now() + schedule::first_delay(current.settings.polling_interval, &mut rng);
        let state = WorkerState {
            seq: current.seq,
            pid: std::process::id(),
            updated: state::now(),
            restarts,
            last_exit,
            certificates: certificate_states(&current.settings, recorded(ext).as_ref()),
        };
        let client = vault_client(&current.settings);
        let checks = client.as_ref().ok().map(|c| {
            Checks::new(
                Arc::clone(c),
                sync_options(
                    &current.settings,
                    &crate::store::lock_folder(&ext.data_dir()),
                ),
                stop.clone(),
            )
        });
        log::info!(
            "poller started (pid {}) with settings {}: {} observed certificate(s), first checks in {} ms",
            std::process::id(),
            current.seq,
            current.settings.observed_certificates.len(),
            first.saturating_duration_since(Instant::now()).as_millis()
        );
        Poller {
            clocks: vec![
                Clock {
                    due: first,
                    busy: false
                };
                state.certificates.len()
            ],
            next_beat: first,
            sync: InitialSync::start(current.settings.require_initial_sync),
            ext,
            current,
            state,
            client,
            checks,
            generation: 0,
            rng,
            stop,
            changes: Vec::new(),
            first_change: None,
            hooks: None,
            dirty: true,
            saved: Instant::now(),
            busy_before: false,
            counters: crate::metrics::Counters::default(),
        }
    }

    /// New settings from `enable` (SIGHUP): they apply now, every certificate is due at once.
    fn reload(&mut self) {
        let next = match load(self.ext) {
            Ok(next) => next,
            Err(e) => {
                log::error!("keeping settings {}: {e}", self.current.seq);
                return;
            }
        };
        log::info!("reloaded settings {} (was {})", next.seq, self.current.seq);
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
            &crate::store::lock_folder(&self.ext.data_dir()),
        );
        self.checks = match (&self.client, self.checks.take()) {
            (Ok(client), Some(mut checks)) => {
                self.generation = checks.new_generation(Arc::clone(client), options);
                Some(checks)
            }
            (Ok(client), None) => {
                self.generation = 0;
                Some(Checks::new(Arc::clone(client), options, self.stop.clone()))
            }
            // Every certificate fails with the client's error (see `dispatch`); checks in flight are dropped.
            (Err(_), _) => None,
        };
        self.state.seq = self.current.seq;
        self.state.certificates = certificate_states(&self.current.settings, Some(&self.state));
        self.clocks = vec![
            Clock {
                due: Instant::now(),
                busy: false
            };
            self.state.certificates.len()
        ];
        self.next_beat = Instant::now();
        self.sync = InitialSync::start(self.current.settings.require_initial_sync);
        // The new settings' status is written before any check, which may take a while against an unreachable
        // vault.
        self.save();
    }

    /// Starts the checks that are due and allowed. At each beat (one polling interval, ±10 %, after the last)
    /// every certificate whose check is not in flight becomes due; one still in flight is skipped.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if now >= self.next_beat {
            for clock in self.clocks.iter_mut().filter(|c| !c.busy) {
                clock.due = clock.due.min(now);
            }
            self.next_beat =
                now + schedule::next_delay(self.current.settings.polling_interval, &mut self.rng);
        }
        let observed = &self.current.settings.observed_certificates;
        for (i, clock) in self.clocks.iter_mut().enumerate() {
            if clock.busy || clock.due > now {
                continue;
            }
            match (&mut self.checks, &self.client) {
                (Some(checks), Ok(_)) => {
                    if checks.try_start(i, &observed[i], known(&self.state.certificates[i])) {
                        clock.busy = true;
                    }
                }
                (_, Err(why)) => {
                    self.counters
                        .record_error(observed[i].url.as_str(), "identity-setup");
                    record_failure(
                        &mut self.state.certificates[i],
                        &observed[i],
                        why,
                        Some("identity-setup"),
                        state::now(),
                    );
                    clock.due = self.next_beat;
                    self.dirty = true;
                }
                (None, Ok(_)) => {}
            }
        }
    }

    /// Records one finished check and sets its certificate's next check.
    fn finished(&mut self, done: Done) {
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
        record(
            state,
            cert,
            &done.result,
            state::now(),
            self.current.settings.expiry_warning_days,
        );
        self.counters.record(&done.url, &done.result);
        if let Some(change) = change_of(cert, &done.result) {
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
        let due = match self.sync {
            InitialSync::Trying { .. } if failures > 0 => (Instant::now()
                + schedule::initial_sync_retry(failures, interval))
            .min(self.next_beat),
            _ => self.next_beat,
        };
        if was_trying && failures > 0 {
            log::info!(
                "initial sync: {} failed {failures} time(s); next try in {} s",
                done.url,
                due.saturating_duration_since(Instant::now()).as_secs()
            );
        }
        self.clocks[i] = Clock { due, busy: false };
        self.dirty = true;
    }

    /// Starts the post-install commands of the changes gathered, once their burst is over; records what ran.
    fn hooks(&mut self) {
        if let Some(rx) = &self.hooks {
            match rx.try_recv() {
                Ok(results) => {
                    record_hooks(&mut self.state.certificates, &results);
                    self.hooks = None;
                    self.dirty = true;
                }
                Err(mpsc::TryRecvError::Disconnected) => self.hooks = None,
                Err(mpsc::TryRecvError::Empty) => return,
            }
        }
        let Some(first) = self.first_change else {
            return;
        };
        let busy = self.clocks.iter().any(|c| c.busy);
        if busy && first.elapsed() < HOOK_GATHER {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        self.first_change = None;
        let (tx, rx) = mpsc::channel();
        match thread::Builder::new()
            .name("post-install".into())
            .spawn(move || {
                let _ = tx.send(run_hooks(changes));
            }) {
            Ok(_) => self.hooks = Some(rx),
            Err(e) => log::error!("cannot start the post-install commands: {e}"),
        }
    }

    /// When the loop must next look at the clocks or the files.
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        let due = self
            .clocks
            .iter()
            .filter(|c| !c.busy)
            .map(|c| c.due.saturating_duration_since(now))
            .min()
            .unwrap_or(HEARTBEAT_EVERY);
        let save = if self.dirty {
            (self.saved + SAVE_AFTER).saturating_duration_since(now)
        } else {
            (self.saved + HEARTBEAT_EVERY).saturating_duration_since(now)
        };
        due.min(save).min(TICK)
    }

    /// Heartbeat, state file and status file when something changed (at most every [`SAVE_AFTER`]) or the
    /// heartbeat is due; the connections and memory a burst of checks used are given back when it is over.
    fn tend(&mut self) {
        let busy = self.checks.as_ref().is_some_and(|c| c.in_flight() > 0);
        if self.busy_before && !busy {
            let next = self
                .clocks
                .iter()
                .map(|c| c.due.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or_default();
            if next > crate::http::MAX_IDLE_AGE {
                // The vault will have closed them by the next check.
                if let Ok(client) = &self.client {
                    client.release_connections();
                }
            }
            give_back_memory();
        }
        self.busy_before = busy;
        let elapsed = self.saved.elapsed();
        if (self.dirty && elapsed >= SAVE_AFTER) || elapsed >= HEARTBEAT_EVERY {
            self.save();
            if !busy {
                give_back_memory();
            }
        }
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
            self.ext,
            &Heartbeat::Running {
                seq: self.current.seq,
            },
        )?;
        self.state.updated = state::now();
        self.state.save(&self.ext.data_dir())?;
        let report = status::worker_report(&WorkerView {
            seq: self.current.seq,
            pid: std::process::id(),
            polling_interval_s: self.current.settings.polling_interval.as_secs(),
            settings_warnings: &self.current.settings.warnings,
            sync: self.sync,
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
            };
            let text = crate::metrics::render(&snapshot);
            crate::metrics::update(path, &text, &mut self.counters);
        }
        status::write(self.ext, self.current.seq, &report)
    }

    /// Waits up to [`STOP_GRACE`] for the checks in flight to end, then records the state.
    fn finish(&mut self) {
        let deadline = Instant::now() + STOP_GRACE;
        while let Some(checks) = &mut self.checks {
            if checks.in_flight() == 0 || Instant::now() >= deadline {
                break;
            }
            if let Some(done) = checks.next(TICK) {
                self.finished(done);
            }
        }
        let _no_file_operation = crate::store::quiesce();
        self.save();
        log::info!("worker stopping on request");
    }
}

/// Runs the poller until SIGTERM (`kvvm poller`, started by the supervisor), from its [`start`].
pub(crate) fn run(start: Start) -> Result<(), WorkerError> {
    let Start { ext, current } = start;
    let ext = &ext;
    let data_dir = ext.data_dir();
    let Some(_lock) = supervisor::acquire_poller_lock(&data_dir)? else {
        return Err(WorkerError::AnotherPoller { dir: data_dir });
    };
    limit_malloc_arenas();
    crate::residency::map_only_what_is_used();
    die_on_every_segfault();
    let signals = Signals::install()?;
    let stop = Stop::from_flag(Arc::clone(&signals.stop));
    watch_for_stop()?;
    let mut poller = Poller::start(ext, current?, stop.clone());
    poller
        .try_save()
        .map_err(|e| WorkerError::StateUnwritable {
            detail: e.to_string(),
        })?;
    loop {
        if signals.reload.swap(false, Ordering::Relaxed) {
            poller.reload();
        }
        if stop.requested() {
            poller.finish();
            return Ok(());
        }
        poller.dispatch();
        poller.hooks();
        let wait = poller.next_wake();
        match poller.checks.as_mut().and_then(|c| c.next(wait)) {
            Some(done) => poller.finished(done),
            None if poller.checks.is_none() => thread::sleep(wait),
            None => {}
        }
        poller.tend();
    }
}

/// The supervisor's report while it restarts a crashed poller: the status of the current settings says
/// `error` with the exit reason, and the heartbeat says the worker is restarting (NotReady).
pub(crate) struct RestartReport<'a> {
    /// The extension.
    pub ext: &'a Extension,
}

impl supervisor::Report for RestartReport<'_> {
    fn restarting(&self, why: &str, restarts: u32, wait: Duration) {
        let detail = format!(
            "the poller {why}; it is restarted in {} s (restart {restarts} since the worker started). \
             Installed certificates stay in place. Details: kvvm.log and supervisor.log in {}",
            wait.as_secs(),
            self.ext.env.log_folder.display()
        );
        if let Err(e) = status::write_heartbeat(
            self.ext,
            &Heartbeat::Restarting {
                detail: detail.clone(),
            },
        ) {
            log::error!("{e}");
        }
        let Some(seq) = self
            .ext
            .mrseq()
            .or_else(|| self.ext.current_sequence().ok())
        else {
            return;
        };
        let report = StatusReport::new(
            status::Operation::Enable,
            status::Status::Error,
            format!("[worker-restarting] The kvvm worker is not polling: {detail}"),
        );
        if let Err(e) = status::write(self.ext, seq, &report) {
            log::error!("{e}");
        }
    }
}
