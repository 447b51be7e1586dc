//! The long-running worker that `enable` starts: it owns the status file and the heartbeat for as long as the
//! extension is enabled, and re-reads its settings when `enable` signals a new sequence number (SIGHUP). On
//! SIGTERM (from `disable`) it finishes what it is doing and exits, releasing the worker lock.

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::handler::HandlerError;
use crate::hook;
use crate::host::{Host, HostError, Loaded};
use crate::http::Stop;
use crate::identity::Identity;
use crate::logging::{self, Process};
use crate::schedule::{self, InitialSync, Offer, Pace, Queue};
use crate::settings::{Configured, ObservedCertificate, Settings};
use crate::state;
use crate::state::{CertStatus, CertificateState, InitialSyncState, StateError, WorkerState};
use crate::status::{self, Heartbeat, StatusReport, WorkerView};
use crate::supervisor::{self, SupervisorError};
use crate::sync::{Checked, Checks, Done, KnownOwned, SyncError, SyncOptions};
use crate::vault::VaultClient;

/// How often the heartbeat file is refreshed (waagent calls a handler unresponsive after 600 s).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

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
    /// The settings to run with cannot be read or are invalid.
    #[error("no usable settings: {0}")]
    Settings(#[from] HostError),
    /// The settings observe no certificate (for `kvvm sync --once`; a poller waits for new settings).
    #[error("nothing to watch: {reason}")]
    NoSettings {
        /// Why, as the settings layer says it.
        reason: String,
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
            WorkerError::Settings(e) => e.reason(),
            WorkerError::NoSettings { .. } => "no-settings",
            WorkerError::AnotherPoller { .. } => "another-poller",
            WorkerError::StateUnwritable { .. } => "state-unwritable",
        }
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

/// What the settings ask the worker to do.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per start or reload, moved a few times; boxing would only complicate every match"
)]
pub(crate) enum Watch {
    /// Keep these certificates installed.
    Certificates(Current),
    /// Nothing to watch (an empty settings file, or `{}` as the service's package ships it): the poller waits
    /// for new settings.
    Nothing {
        /// The settings' sequence number.
        seq: u64,
        /// Why there is nothing, as the settings layer says it.
        reason: String,
    },
}

/// What the poller and `kvvm sync --once` start from: the host and the settings the worker runs with.
#[derive(Debug)]
pub(crate) struct Start {
    /// Where this kvvm lives.
    pub host: Host,
    /// The settings, read and parsed once, at start; or why there are none. The poller reports that only once
    /// it holds its lock (another poller running is the better answer).
    pub watch: Result<Watch, WorkerError>,
}

/// The start-up the poller and `kvvm sync --once` share: find the host, read the settings the worker runs
/// with, and start `process`'s log (the poller's also goes to the Fluentd collector those settings name).
pub(crate) fn start(process: Process) -> Result<Start, HandlerError> {
    let host = Host::locate()?;
    let watch = load(&host);
    let forward = match &watch {
        Ok(Watch::Certificates(c)) => c.settings.logging.as_ref(),
        _ => None,
    };
    logging::start(&host, process, forward);
    Ok(Start { host, watch })
}

/// The settings the host names (the extension's `mrseq`, else its newest settings file; the service's file).
fn load(host: &Host) -> Result<Watch, WorkerError> {
    let Loaded { seq, configured } = host.settings()?;
    Ok(match configured {
        Configured::Settings(settings) => Watch::Certificates(Current { seq, settings }),
        Configured::Nothing { reason } => Watch::Nothing { seq, reason },
    })
}

/// What the worker recorded last, to carry over: nothing if no worker has run yet; a file that cannot be read
/// is logged, and the worker starts from the settings alone.
fn recorded(host: &Host) -> Option<WorkerState> {
    match WorkerState::load(&host.data_dir()) {
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

/// Hands SIGHUP, SIGTERM and SIGINT to the poller's channel, from a thread that sleeps in a blocking read until
/// one arrives. On SIGTERM/SIGINT it also raises `stop` (retry waits end at once) and, if the poller has not
/// exited [`STOP_GRACE`] later, exits the process once no file operation is in progress: SIGTERM is answered
/// within seconds even while a vault request hangs.
fn forward_signals(tx: mpsc::Sender<Event>, stop: Stop) -> Result<(), WorkerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| WorkerError::Signals { source })?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = tx.send(Event::Reload);
                    continue;
                }
                stop.request();
                let _ = tx.send(Event::Stop);
                thread::sleep(STOP_GRACE);
                let _no_file_operation = crate::store::quiesce();
                log::warn!(
                    "worker stopping on request with requests still in flight; they are abandoned (no file \
                     operation was interrupted)"
                );
                log::logger().flush();
                std::process::exit(0);
            }
        })
        .map_err(|source| WorkerError::Signals { source })?;
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
pub(crate) fn sync_once(host: &Host, current: &Current) -> Vec<CertificateState> {
    let mut certs = certificate_states(&current.settings, recorded(host).as_ref());
    let client = vault_client(&current.settings);
    let locks = crate::store::lock_folder(&host.data_dir());
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

/// The poller: certificates take turns in a [`Queue`], checks run in their own threads, the status is written
/// as each ends; it sleeps on one channel ([`Event`]) between the things it has to do.
struct Poller<'a> {
    host: &'a Host,
    current: Current,
    state: WorkerState,
    client: Result<Arc<VaultClient>, String>,
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
        stop: Stop,
        tx: mpsc::Sender<Event>,
        at_once: bool,
    ) -> Poller<'a> {
        let restarts = std::env::var(supervisor::ENV_RESTARTS)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let last_exit = std::env::var(supervisor::ENV_LAST_EXIT)
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
            certificates: certificate_states(&current.settings, recorded(host).as_ref()),
        };
        let client = vault_client(&current.settings);
        let checks = client.as_ref().ok().map(|c| {
            Checks::new(
                Arc::clone(c),
                sync_options(
                    &current.settings,
                    &crate::store::lock_folder(&host.data_dir()),
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
            &crate::store::lock_folder(&self.host.data_dir()),
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
                counters.record_error(observed[i].url.as_str(), "identity-setup");
                record_failure(
                    &mut certs[i],
                    &observed[i],
                    why,
                    Some("identity-setup"),
                    state::now(),
                );
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
                let _ = tx.send(Event::Hooks(run_hooks(changes)));
            }) {
            Ok(_) => self.hooks_running = true,
            Err(e) => log::error!("cannot start the post-install commands: {e}"),
        }
    }

    /// Records what a burst's post-install commands did.
    fn hooks_ran(&mut self, results: HookResults) {
        record_hooks(&mut self.state.certificates, &results);
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
        if self.busy_before && !busy {
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
        if (self.dirty && elapsed >= SAVE_AFTER) || elapsed >= HEARTBEAT_EVERY {
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

    /// Waits up to [`STOP_GRACE`] for the checks in flight to end, then records the state.
    fn finish(&mut self, events: &mpsc::Receiver<Event>) {
        let deadline = Instant::now() + STOP_GRACE;
        while self.in_flight() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Checked(done)) => self.finished(*done),
                Ok(Event::Hooks(results)) => self.hooks_ran(results),
                Ok(Event::Reload | Event::Stop) => {}
                Err(_) => break,
            }
        }
        let _no_file_operation = crate::store::quiesce();
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
    let Start { host, watch } = start;
    let host = &host;
    let data_dir = host.data_dir();
    let Some(_lock) = supervisor::acquire_poller_lock(&data_dir)? else {
        return Err(WorkerError::AnotherPoller { dir: data_dir });
    };
    limit_malloc_arenas();
    crate::residency::map_only_what_is_used();
    die_on_every_segfault();
    let stop = Stop::default();
    let (tx, events) = mpsc::channel();
    forward_signals(tx.clone(), stop.clone())?;
    let mut watch = watch?;
    let mut reloaded = false;
    loop {
        let current = match watch {
            Watch::Certificates(current) => current,
            Watch::Nothing { seq, reason } => match idle(host, seq, &reason, &events)? {
                Some(next) => {
                    watch = next;
                    reloaded = true;
                    continue;
                }
                None => return Ok(()),
            },
        };
        let mut poller = Poller::start(host, current, stop.clone(), tx.clone(), reloaded);
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

/// The supervisor's report while it restarts a crashed poller: the status of the current settings says
/// `error` with the exit reason, and the heartbeat says the worker is restarting (NotReady).
pub(crate) struct RestartReport<'a> {
    /// Where the worker lives.
    pub host: &'a Host,
}

impl supervisor::Report for RestartReport<'_> {
    fn restarting(&self, why: &str, restarts: u32, wait: Duration) {
        let detail = format!(
            "the poller {why}; it is restarted in {} s (restart {restarts} since the worker started). \
             Installed certificates stay in place. Details: kvvm.log and supervisor.log in {}",
            wait.as_secs(),
            self.host.log_folder().display()
        );
        if let Err(e) = status::write_heartbeat(
            self.host,
            &Heartbeat::Restarting {
                detail: detail.clone(),
            },
        ) {
            log::error!("{e}");
        }
        let Some(seq) = self.host.current_seq() else {
            return;
        };
        let message = format!("[worker-restarting] The kvvm worker is not polling: {detail}");
        crate::notify::ready(&message);
        let report = StatusReport::new(status::Operation::Enable, status::Status::Error, message);
        if let Err(e) = status::write(self.host, seq, &report) {
            log::error!("{e}");
        }
    }
}
