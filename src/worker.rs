//! The long-running worker that `enable` starts: it owns the status file and the heartbeat for as long as the
//! extension is enabled, and re-reads its settings when `enable` signals a new sequence number (SIGHUP). On
//! SIGTERM (from `disable`) it finishes what it is doing and exits, releasing the worker lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::handler::{Extension, Heartbeat, Operation, Status, StatusReport, SubStatus};
use crate::settings::{self, Configured, Settings};
use crate::state::{CertificateState, WorkerState};
use crate::supervisor::{Supervisor, SupervisorError};

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

/// The certificates the settings observe, carrying over what is known of each from `previous`.
fn certificate_states(
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

fn report(current: &Current, state: &WorkerState) -> StatusReport {
    let s = &current.settings;
    let mut status = StatusReport::new(
        Operation::Enable,
        Status::Success,
        format!(
            "kvvm {} worker (pid {}) is running with settings {}: {} observed certificate(s), polling every {} s",
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
    let signals = Signals::install()?;
    let mut current = load(ext)?;
    let data_dir = ext.data_dir();
    let mut state = WorkerState {
        seq: current.seq,
        pid: std::process::id(),
        updated: String::new(),
        certificates: certificate_states(&current.settings, WorkerState::load(&data_dir).as_ref()),
    };
    log::info!(
        "worker started (pid {}) with settings {}: {} observed certificate(s)",
        std::process::id(),
        current.seq,
        current.settings.observed_certificates.len()
    );
    loop {
        if signals.reload.swap(false, Ordering::Relaxed) {
            match load(ext) {
                Ok(next) => {
                    log::info!("reloaded settings {} (was {})", next.seq, current.seq);
                    current = next;
                    state.seq = current.seq;
                    state.certificates = certificate_states(&current.settings, Some(&state));
                }
                Err(e) => log::error!("keeping settings {}: {e}", current.seq),
            }
        }
        // Heartbeat first: a status that says the worker runs implies a heartbeat is there.
        let beat = Heartbeat {
            message: format!("kvvm worker running with settings {}", current.seq),
        };
        if let Err(e) = ext.write_heartbeat(&beat) {
            log::error!("{e}");
        }
        state.updated = crate::handler::utc_timestamp(time::OffsetDateTime::now_utc());
        if let Err(e) = state.save(&data_dir) {
            log::error!("{e}");
        }
        if let Err(e) = ext.write_status(current.seq, &report(&current, &state)) {
            log::error!("{e}");
        }
        signals.sleep(HEARTBEAT_EVERY);
        if signals.stop.load(Ordering::Relaxed) {
            log::info!("worker stopping on request");
            return Ok(());
        }
    }
}
