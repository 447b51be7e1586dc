//! The long-running worker that `enable` starts: it owns the status file and the heartbeat for as long as the
//! extension is enabled, and re-reads its settings when `enable` signals a new sequence number (SIGHUP). On
//! SIGTERM (from `disable`) it finishes what it is doing and exits, releasing the worker lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::handler::{Extension, Heartbeat, Operation, Status, StatusReport, SubStatus};
use crate::hook;
use crate::http::Stop;
use crate::identity::Identity;
use crate::schedule::{self, InitialSync};
use crate::settings::{self, Configured, ObservedCertificate, Settings};
use crate::state::{CertStatus, CertificateState, WorkerState};
use crate::supervisor::{Supervisor, SupervisorError};
use crate::sync::{self, Checked, Known, SyncError, SyncOptions};
use crate::vault::VaultClient;

/// How often the heartbeat file is refreshed (waagent calls a handler unresponsive after 600 s).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);
/// How quickly the worker notices a signal.
const TICK: Duration = Duration::from_millis(100);

/// Errors that end the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("cannot install a signal handler: {source}")]
    Signals { source: std::io::Error },
    #[error("no usable settings: {detail}")]
    NoSettings { detail: String },
}

impl WorkerError {
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Supervisor(e) => e.reason(),
            WorkerError::Signals { .. } => "signal-handler",
            WorkerError::NoSettings { .. } => "no-settings",
        }
    }
}

/// Flags raised by signal handlers.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    pub stop: Arc<AtomicBool>,
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Signals, WorkerError> {
        let signals = Signals::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&signals.stop))
                .map_err(|source| WorkerError::Signals { source })?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&signals.reload))
            .map_err(|source| WorkerError::Signals { source })?;
        Ok(signals)
    }

    /// Sleeps up to `how_long`, returning early when a stop or reload is requested.
    pub fn sleep(&self, how_long: Duration) {
        let deadline = Instant::now() + how_long;
        while !self.stop.load(Ordering::Relaxed) && !self.reload.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            thread::sleep(TICK.min(deadline - now));
        }
    }
}

/// The settings the worker runs with, and which sequence number they came from.
struct Current {
    seq: u64,
    settings: Settings,
}

/// The `loggingSettings` of the settings the worker will start with, if any.
pub fn logging_settings(ext: &Extension) -> Option<crate::settings::LoggingSettings> {
    load(ext).ok()?.settings.logging
}

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

/// The sequence number and settings the worker runs with (those of `mrseq`, else the newest settings file).
pub fn current_settings(ext: &Extension) -> Result<(u64, Settings), WorkerError> {
    load(ext).map(|c| (c.seq, c.settings))
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
                    CertificateState::pending(url, c.store_location.join(&c.link_name))
                })
        })
        .collect()
}

fn report(current: &Current, sync: InitialSync, state: &WorkerState) -> StatusReport {
    let s = &current.settings;
    let (overall, summary) = schedule::overall(sync, &state.certificates);
    let mut status = StatusReport::new(
        Operation::Enable,
        overall,
        format!(
            "{summary}. kvvm {} worker (pid {}) is running with settings {}: {} observed certificate(s), polling \
             every {} s",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            current.seq,
            s.observed_certificates.len(),
            s.polling_interval.as_secs()
        ),
    );
    if !s.warnings.is_empty() {
        status.substatus.push(SubStatus {
            name: "settings".into(),
            status: Status::Warning,
            code: 0,
            message: s.warnings.join(" "),
        });
    }
    status
        .substatus
        .extend(state.certificates.iter().map(CertificateState::substatus));
    status
}

/// The vault client for `settings`, or why there is none (every certificate then fails with that reason).
pub fn vault_client(settings: &Settings) -> Result<Arc<VaultClient>, String> {
    let identity = Identity::new(
        settings.msi_endpoint.as_ref(),
        settings.msi_client_id.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    VaultClient::new(Arc::new(identity))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Everything one poll cycle changed, ready to be recorded.
pub struct CycleOutcome {
    /// Per certificate, in settings order.
    pub results: Vec<Result<Checked, SyncError>>,
}

/// Runs one cycle over the certificates of `settings`, records the results in `certs` (same order), runs the
/// post-install commands of the certificates that changed, and logs one line per event.
pub fn poll_once(
    client: &Result<Arc<VaultClient>, String>,
    settings: &Settings,
    certs: &mut [CertificateState],
    lock_dir: &std::path::Path,
    stop: &Stop,
) -> CycleOutcome {
    let options = SyncOptions {
        acl_enabled: settings.acl_enabled,
        retained_versions: settings.retained_versions,
        lock_dir,
    };
    let observed = &settings.observed_certificates;
    let results: Vec<Result<Checked, SyncError>> = match client {
        Ok(client) => {
            let known: Vec<Known<'_>> = certs
                .iter()
                .map(|c| Known {
                    version: c.version.as_deref(),
                    has_not_after: c.not_after.is_some(),
                })
                .collect();
            sync::cycle(client, observed, &known, options, stop)
        }
        Err(why) => {
            for (state, cert) in certs.iter_mut().zip(observed) {
                record_failure(state, cert, why, now_text());
            }
            return CycleOutcome {
                results: Vec::new(),
            };
        }
    };
    let now = OffsetDateTime::now_utc();
    for ((state, cert), result) in certs.iter_mut().zip(observed).zip(&results) {
        record(state, cert, result, now, settings.expiry_warning_days);
    }
    run_hooks(observed, certs, &results);
    CycleOutcome { results }
}

fn now_text() -> String {
    crate::handler::utc_timestamp(OffsetDateTime::now_utc())
}

fn rfc3339(t: OffsetDateTime) -> String {
    crate::handler::utc_timestamp(t)
}

fn record_failure(
    state: &mut CertificateState,
    cert: &ObservedCertificate,
    why: &str,
    now: String,
) {
    state.last_check = Some(now);
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
    let name = format!("{}/{}", cert.vault_name, cert.secret_name);
    match result {
        Err(SyncError::Stopped) => {}
        Err(e @ SyncError::NotACertificate { .. }) => {
            state.last_check = Some(rfc3339(now));
            state.status = CertStatus::Warning;
            state.failures = 0;
            state.last_error = None;
            state.note = Some(e.to_string());
            log::warn!("{name}: {e}");
        }
        Err(e) => {
            let kept = match &state.version {
                Some(v) => format!(" (version {v} stays installed)"),
                None => String::new(),
            };
            record_failure(state, cert, &format!("{e}{kept}"), rfc3339(now));
            // The message already has the "(version … stays installed)" hint; keep last_error without it.
            state.last_error = Some(e.to_string());
        }
        Ok(c) => {
            state.last_check = Some(rfc3339(now));
            if c.changed {
                state.last_change = Some(rfc3339(now));
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
                state.not_after = Some(rfc3339(t));
            }
            state.failures = 0;
            state.last_error = None;
            let mut notes = Vec::new();
            if let Some(w) = &c.validity_warning {
                notes.push(w.clone());
            }
            if let Some(w) = expiry_warning(state.not_after.as_deref(), now, expiry_warning_days) {
                log::warn!("{name}: {w}");
                notes.push(w);
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
pub fn expiry_warning(not_after: Option<&str>, now: OffsetDateTime, days: u32) -> Option<String> {
    if days == 0 {
        return None;
    }
    let not_after =
        OffsetDateTime::parse(not_after?, &time::format_description::well_known::Rfc3339).ok()?;
    let left = not_after - now;
    if left > time::Duration::days(i64::from(days)) {
        return None;
    }
    let when = if left.is_negative() {
        format!("expired on {}", rfc3339(not_after))
    } else {
        format!(
            "expires on {} (in {} day(s))",
            rfc3339(not_after),
            left.whole_days()
        )
    };
    Some(format!(
        "the installed certificate {when} and the vault has no newer version: Key Vault's automatic renewal \
         may be failing (check the certificate's lifetime action and issuer), or renew it by hand"
    ))
}

/// Runs each distinct post-install command once for the certificates whose new version was installed.
fn run_hooks(
    observed: &[ObservedCertificate],
    certs: &mut [CertificateState],
    results: &[Result<Checked, SyncError>],
) {
    let changes = observed.iter().zip(results).filter_map(|(cert, result)| {
        match (result, &cert.post_install) {
            (Ok(c), Some(h)) if c.changed => Some((
                h,
                hook::Installed {
                    url: cert.url.to_string(),
                    link: c.link.clone(),
                    file: c.file.clone(),
                    version: c.version.clone(),
                },
            )),
            _ => None,
        }
    });
    for (command, installed) in hook::plan(changes) {
        let (ok, summary) = match hook::run(&command, &installed) {
            Ok(run) => (run.success(), run.summary(&command)),
            Err(e) => (false, e.to_string()),
        };
        if ok {
            log::info!("{summary}");
        } else {
            log::error!("{summary}");
        }
        for done in &installed {
            if let Some(state) = certs.iter_mut().find(|c| c.url == done.url) {
                state.hook = Some(summary.clone());
                if !ok {
                    state.status = CertStatus::Warning;
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

/// After SIGTERM, how long the poll in progress may take to wind down (retry waits end at once; a request
/// the vault is slow to answer does not) before its requests are abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

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
    // SAFETY: mallopt only changes allocator tuning; called before the worker starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the memory a cycle freed to the system before the worker sleeps until the next one.
fn give_back_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the worker until SIGTERM. Returns at once if another worker already holds the lock.
pub fn run(ext: &Extension) -> Result<(), WorkerError> {
    let supervisor = Supervisor::new(ext.data_dir());
    let Some(_lock) = supervisor.acquire()? else {
        log::info!(
            "another worker already holds {}; exiting",
            supervisor.dir().display()
        );
        return Ok(());
    };
    limit_malloc_arenas();
    let signals = Signals::install()?;
    let stop = Stop::from_flag(Arc::clone(&signals.stop));
    watch_for_stop()?;
    let mut current = load(ext)?;
    let data_dir = ext.data_dir();
    let mut state = WorkerState {
        seq: current.seq,
        pid: std::process::id(),
        updated: String::new(),
        certificates: certificate_states(&current.settings, WorkerState::load(&data_dir).as_ref()),
    };
    let mut client = vault_client(&current.settings);
    let mut sync = InitialSync::start(current.settings.require_initial_sync);
    let mut rng = fastrand::Rng::new();
    let mut next_poll =
        Instant::now() + schedule::first_delay(current.settings.polling_interval, &mut rng);
    log::info!(
        "worker started (pid {}) with settings {}: {} observed certificate(s), first poll in {} ms",
        std::process::id(),
        current.seq,
        current.settings.observed_certificates.len(),
        next_poll
            .saturating_duration_since(Instant::now())
            .as_millis()
    );
    loop {
        if signals.reload.swap(false, Ordering::Relaxed) {
            match load(ext) {
                Ok(next) => {
                    log::info!("reloaded settings {} (was {})", next.seq, current.seq);
                    let auth_changed = (&next.settings.msi_endpoint, &next.settings.msi_client_id)
                        != (
                            &current.settings.msi_endpoint,
                            &current.settings.msi_client_id,
                        );
                    current = next;
                    if auth_changed {
                        client = vault_client(&current.settings);
                    }
                    state.seq = current.seq;
                    state.certificates = certificate_states(&current.settings, Some(&state));
                    sync = InitialSync::start(current.settings.require_initial_sync);
                    // New settings take effect now, not at the next interval; their status is written before the
                    // poll, which may take a while against an unreachable vault.
                    next_poll = Instant::now();
                    save(ext, &current, sync, &mut state);
                }
                Err(e) => log::error!("keeping settings {}: {e}", current.seq),
            }
        }
        if Instant::now() >= next_poll {
            poll_once(
                &client,
                &current.settings,
                &mut state.certificates,
                &crate::store::lock_folder(&data_dir),
                &stop,
            );
            give_back_memory();
            if stop.requested() {
                save(ext, &current, sync, &mut state);
                log::info!("worker stopping on request");
                return Ok(());
            }
            let all_installed = state
                .certificates
                .iter()
                .all(|c| matches!(c.status, CertStatus::Installed | CertStatus::Warning));
            sync = sync.after_attempt(all_installed);
            let interval = current.settings.polling_interval;
            let wait = match sync {
                InitialSync::Trying { attempts } => {
                    schedule::initial_sync_retry(attempts, interval)
                }
                _ => schedule::next_delay(interval, &mut rng),
            };
            if let InitialSync::Trying { attempts } = sync {
                log::info!(
                    "initial sync: attempt {attempts} left certificates missing; next try in {} s",
                    wait.as_secs()
                );
            }
            if wait > crate::http::MAX_IDLE_AGE {
                // The vault will have closed them by the next poll.
                if let Ok(client) = &client {
                    client.release_connections();
                }
            }
            next_poll = Instant::now() + wait;
        }
        save(ext, &current, sync, &mut state);
        signals.sleep(HEARTBEAT_EVERY.min(next_poll.saturating_duration_since(Instant::now())));
        if stop.requested() {
            log::info!("worker stopping on request");
            return Ok(());
        }
    }
}

/// Heartbeat, state file and status file, in that order: a status that says the worker runs implies a
/// heartbeat is there.
fn save(ext: &Extension, current: &Current, sync: InitialSync, state: &mut WorkerState) {
    let beat = Heartbeat {
        message: format!("kvvm worker running with settings {}", current.seq),
    };
    if let Err(e) = ext.write_heartbeat(&beat) {
        log::error!("{e}");
    }
    state.updated = crate::handler::utc_timestamp(OffsetDateTime::now_utc());
    if let Err(e) = state.save(&ext.data_dir()) {
        log::error!("{e}");
    }
    if let Err(e) = ext.write_status(current.seq, &report(current, sync, state)) {
        log::error!("{e}");
    }
}
