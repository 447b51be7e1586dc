//! The five waagent verbs. Each returns the one-line message waagent captures from stdout and, where waagent
//! reads one, writes the status file. `enable` returns in milliseconds: the work happens in the worker.

use std::path::PathBuf;
use std::time::Duration;

use crate::handler::{Extension, HandlerError};
use crate::settings::{self, Configured, SettingsError};
use crate::status::{self, Heartbeat, Operation, Status, StatusReport};
use crate::supervisor::{StartOutcome, StopOutcome, Supervisor, SupervisorError, WorkerState};

/// How long `disable` gives the worker to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Errors a verb reports to waagent (exit code 1, message on stdout and in the status file).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("invalid settings in {path}: {source}.{kept}")]
    Settings {
        path: PathBuf,
        source: Box<SettingsError>,
        kept: String,
    },
}

impl CommandError {
    pub fn reason(&self) -> &'static str {
        match self {
            CommandError::Handler(e) => e.reason(),
            CommandError::Supervisor(e) => e.reason(),
            CommandError::Settings { source, .. } => source.reason(),
        }
    }
}

/// The verbs waagent runs (HandlerManifest.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Install,
    Enable,
    Disable,
    Update,
    Uninstall,
}

impl Verb {
    pub fn parse(word: &str) -> Option<Verb> {
        Some(match word {
            "install" => Verb::Install,
            "enable" => Verb::Enable,
            "disable" => Verb::Disable,
            "update" => Verb::Update,
            "uninstall" => Verb::Uninstall,
            _ => return None,
        })
    }

    pub fn operation(self) -> Operation {
        match self {
            Verb::Install => Operation::Install,
            Verb::Enable => Operation::Enable,
            Verb::Disable => Operation::Disable,
            Verb::Update => Operation::Update,
            Verb::Uninstall => Operation::Uninstall,
        }
    }
}

pub fn run(verb: Verb, ext: &Extension) -> Result<String, CommandError> {
    match verb {
        Verb::Install => install(ext),
        Verb::Enable => enable(ext),
        Verb::Disable => disable(ext),
        Verb::Update => update(ext),
        Verb::Uninstall => uninstall(ext),
    }
}

fn supervisor(ext: &Extension) -> Supervisor {
    Supervisor::new(ext.data_dir())
}

/// Writes the status of the sequence number waagent passed (`ConfigSequenceNumber`, else the newest settings
/// file), which is the file it reads for this command; nothing when there is neither.
fn report(ext: &Extension, operation: Operation, message: &str) -> Result<(), CommandError> {
    if let Ok(seq) = ext.current_sequence() {
        status::write(
            ext,
            seq,
            &StatusReport::new(operation, Status::Success, message),
        )?;
    }
    Ok(())
}

/// After `disable` and `uninstall` no worker runs: the heartbeat, whose status waagent reports as the
/// handler's, must not keep saying Ready.
fn heartbeat_stopped(ext: &Extension, message: &str) -> Result<(), CommandError> {
    status::write_heartbeat(
        ext,
        &Heartbeat::Stopped {
            detail: message.to_string(),
        },
    )?;
    Ok(())
}

fn install(ext: &Extension) -> Result<String, CommandError> {
    let state = supervisor(ext).state()?;
    log::info!(
        "install: extension at {}, worker {:?}",
        ext.dir.display(),
        state
    );
    let message = format!(
        "kvvm {} installed in {}",
        env!("CARGO_PKG_VERSION"),
        ext.dir.display()
    );
    report(ext, Operation::Install, &message)?;
    Ok(message)
}

fn update(ext: &Extension) -> Result<String, CommandError> {
    let from =
        std::env::var("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION").unwrap_or_else(|_| "?".into());
    // Certificates, the worker lock and its state live outside the versioned directory: nothing to migrate.
    let _ = supervisor(ext).state()?;
    log::info!(
        "update: from version {from} to {}",
        env!("CARGO_PKG_VERSION")
    );
    let message = format!("kvvm updated from {from} to {}", env!("CARGO_PKG_VERSION"));
    report(ext, Operation::Update, &message)?;
    Ok(message)
}

fn enable(ext: &Extension) -> Result<String, CommandError> {
    let seq = ext.current_sequence()?;
    let text = ext.read_settings_text(seq)?;
    let sup = supervisor(ext);
    let parsed = match settings::parse_settings_file(&text) {
        Ok(parsed) => parsed,
        Err(source) => {
            let kept = match (sup.state()?, ext.mrseq()) {
                (WorkerState::Running { .. }, Some(old)) if old != seq => {
                    format!(
                        " The worker keeps running with the previous settings ({old}.settings)."
                    )
                }
                _ => String::new(),
            };
            let err = CommandError::Settings {
                path: ext.settings_path(seq),
                source: Box::new(source),
                kept,
            };
            status::write(
                ext,
                seq,
                &StatusReport::new(Operation::Enable, Status::Error, err.to_string()),
            )?;
            return Err(err);
        }
    };
    let settings = match parsed {
        Configured::Nothing { reason } => {
            let stopped = sup.stop(STOP_GRACE)?;
            ext.write_mrseq(seq)?;
            let message = format!(
                "Nothing to watch: {reason} ({}). Add secretsManagementSettings.observedCertificates to the \
                 extension's settings.{}",
                ext.settings_path(seq).display(),
                match stopped {
                    StopOutcome::Stopped { .. } =>
                        " The worker was stopped; installed certificates are kept.",
                    StopOutcome::NotRunning => "",
                }
            );
            status::write(
                ext,
                seq,
                &StatusReport::new(Operation::Enable, Status::Warning, message.clone()),
            )?;
            log::warn!("{message}");
            return Ok(message);
        }
        Configured::Settings(settings) => settings,
    };
    for warning in &settings.warnings {
        log::warn!("settings {seq}: {warning}");
    }
    let mut state = sup.state()?;
    if let (WorkerState::Running { pid }, Some(done)) = (state, ext.mrseq())
        && done == seq
    {
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        return Ok(format!(
            "settings {seq} already applied; worker {pid} is running"
        ));
    }
    // The log sinks are set up when the worker starts: a loggingSettings change needs a fresh worker.
    let previous_logging = ext
        .mrseq()
        .and_then(|old| ext.read_settings_text(old).ok())
        .and_then(|text| match settings::parse_settings_file(&text) {
            Ok(Configured::Settings(old)) => Some(old.logging),
            _ => None,
        });
    if matches!(state, WorkerState::Running { .. })
        && previous_logging.is_some_and(|old| old != settings.logging)
    {
        sup.stop(STOP_GRACE)?;
        state = WorkerState::Stopped;
        log::info!("loggingSettings changed: restarting the worker");
    }
    ext.write_mrseq(seq)?;
    let starting = StatusReport::new(
        Operation::Enable,
        Status::Transitioning,
        format!(
            "Applying settings {seq}: {} observed certificate(s)",
            settings.observed_certificates.len()
        ),
    );
    status::write(ext, seq, &starting)?;
    let message = match state {
        WorkerState::Running { pid } if sup.notify_reload()? => {
            format!(
                "settings {seq} handed to the running worker (pid {})",
                pid.unwrap_or(0)
            )
        }
        _ => {
            let exe = std::env::current_exe().map_err(|source| SupervisorError::Spawn {
                exe: PathBuf::from("/proc/self/exe"),
                source,
            })?;
            let stderr_log = ext.env.log_folder.join("worker.stderr.log");
            match sup.start(&exe, &ext.dir, &stderr_log)? {
                StartOutcome::Started { pid } => {
                    format!("worker started (pid {pid}) with settings {seq}")
                }
                StartOutcome::AlreadyRunning { pid } => {
                    sup.notify_reload()?;
                    format!(
                        "settings {seq} handed to the running worker (pid {})",
                        pid.unwrap_or(0)
                    )
                }
            }
        }
    };
    log::info!("enable: {message}");
    Ok(message)
}

fn disable(ext: &Extension) -> Result<String, CommandError> {
    let outcome = supervisor(ext).stop(STOP_GRACE)?;
    let message = match outcome {
        StopOutcome::NotRunning => "disabled; no worker was running".to_string(),
        StopOutcome::Stopped { pid, forced: false } => format!("disabled; worker {pid} stopped"),
        StopOutcome::Stopped { pid, forced: true } => {
            format!("disabled; worker {pid} did not stop within {STOP_GRACE:?} and was killed")
        }
    };
    report(ext, Operation::Disable, &message)?;
    heartbeat_stopped(ext, &message)?;
    log::info!("{message}");
    Ok(message)
}

fn uninstall(ext: &Extension) -> Result<String, CommandError> {
    let outcome = supervisor(ext).stop(STOP_GRACE)?;
    // During an update the old version's uninstall runs while the new version's directory exists: the new
    // version needs the state folder. Only the uninstall that leaves no version behind removes it.
    let data_dir = ext.data_dir();
    let own = ext.dir.file_name();
    let prefix = format!("{}-", crate::handler::EXTENSION_NAME);
    let others: Vec<String> = ext
        .dir
        .parent()
        .and_then(|parent| std::fs::read_dir(parent).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| Some(e.file_name().as_os_str()) != own && e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    let state = if !others.is_empty() {
        log::info!(
            "uninstall: keeping {} for {}",
            data_dir.display(),
            others.join(", ")
        );
        String::new()
    } else {
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => format!(
                "; no other version is installed, so kvvm's state folder {} was removed",
                data_dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                log::warn!("uninstall: cannot remove {}: {e}", data_dir.display());
                format!(
                    "; kvvm's state folder {} could not be removed ({e}): remove it by hand",
                    data_dir.display()
                )
            }
        }
    };
    let message = format!(
        "uninstalled{}{state}; installed certificates are left in place",
        match outcome {
            StopOutcome::NotRunning => String::new(),
            StopOutcome::Stopped { pid, .. } => format!(" (worker {pid} stopped)"),
        }
    );
    report(ext, Operation::Uninstall, &message)?;
    heartbeat_stopped(ext, &message)?;
    log::info!("{message}");
    Ok(message)
}
