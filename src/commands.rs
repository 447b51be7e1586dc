//! Every `kvvm` command, from its start to its result; `main.rs` only parses the command line and reports.
//! The five waagent verbs each return the one-line message waagent captures from stdout and, where waagent
//! reads one, write the status file; `enable` returns in milliseconds: the work happens in the worker, the
//! supervisor (`kvvm worker`) that keeps one poller (`kvvm poller`) running. The standalone service runs the
//! same supervisor in the foreground (`kvvm service`, systemd's `ExecStart`). `kvvm status`, `kvvm sync --once`,
//! `kvvm check-settings` and `kvvm wait` are for an operator, a pipeline or an install script, wherever kvvm
//! runs (see crate::host).

use std::path::PathBuf;
use std::time::Duration;

use crate::handler::{Extension, HandlerError};
use crate::host::{Host, HostError, Service};
use crate::logging::{self, Process};
use crate::platform::keep_alive::{self, KeepAlive, StartOutcome, StopOutcome, Supervision};
use crate::platform::{KeepAliveError, Keeper};
use crate::report;
use crate::settings::{self, Configured, SettingsError};
use crate::state::{self, CertStatus, LogSinks, StateError, WorkerState};
use crate::status::{self, Heartbeat, Operation, Status, StatusReport};
use crate::worker::{self, WorkerError};

/// How long `disable` gives the worker to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Errors a command reports (exit code 1): a verb on stdout and in the status file, the others on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The extension, its environment, a settings file or a status file.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// Starting, stopping or signalling the worker.
    #[error(transparent)]
    Supervisor(#[from] KeepAliveError),
    /// The settings `enable` was given are invalid; `kept` says whether a worker goes on with older ones.
    #[error("invalid settings in {path}: {source}.{kept}")]
    Settings {
        /// The settings file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<SettingsError>,
        /// Empty, or a sentence saying the running worker keeps the previous settings.
        kept: String,
    },
    /// `kvvm sync --once` has no settings to run with.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// `kvvm status` cannot load what the worker recorded; `hint` is the fix when there is one.
    #[error("{source}{hint}")]
    State {
        /// Why.
        source: StateError,
        /// Empty, or how to run the command so that it can (as root).
        hint: String,
    },
    /// The service's settings cannot be read or are invalid (`kvvm service` then exits 78: systemd does not
    /// restart it until they are fixed).
    #[error(transparent)]
    ServiceSettings(#[from] HostError),
    /// A folder of the service cannot be created.
    #[error("cannot create the service's folder {path}: {source}")]
    ServiceFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A VM Application action (`kvvm vmapp`) failed.
    #[error(transparent)]
    VmApp(#[from] crate::platform::vmapp::VmAppError),
    /// `kvvm wait` gave up: the worker is not ready (`detail` says where it stands).
    #[error("{detail}")]
    NotReady {
        /// Where the worker stands, and why it is not ready.
        detail: String,
    },
}

impl CommandError {
    /// A short fixed identifier for the status file and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandError::Handler(e) => e.reason(),
            CommandError::Supervisor(e) => e.reason(),
            CommandError::Settings { source, .. } => source.reason(),
            CommandError::Worker(e) => e.reason(),
            CommandError::State { source, .. } => source.reason(),
            CommandError::ServiceSettings(e) => e.reason(),
            CommandError::ServiceFolder { .. } => "service-folder",
            CommandError::VmApp(e) => e.reason(),
            CommandError::NotReady { .. } => "not-ready",
        }
    }
}

/// What an operator's command prints on stdout, and whether it then exits 1 (something needs attention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The text, with its final newline.
    pub text: String,
    /// A certificate failed or needs attention, or no worker runs (`status --json`).
    pub attention: bool,
}

/// The verbs waagent runs (HandlerManifest.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `handler install`.
    Install,
    /// `handler enable`: (re)start the worker with the newest settings.
    Enable,
    /// `handler disable`: stop the worker.
    Disable,
    /// `handler update`, run by the new version during an update.
    Update,
    /// `handler uninstall`.
    Uninstall,
}

impl Verb {
    /// The verb named `word`, as waagent passes it.
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
}

/// `kvvm <verb>`: finds the extension, starts `handler.log` and runs `verb`; the message waagent captures.
pub fn verb(verb: Verb) -> Result<String, CommandError> {
    let ext = Extension::locate()?;
    let host = Host::Extension(ext.clone());
    logging::start(&host, Process::Handler, None);
    run(verb, &host, &ext)
}

/// Runs `verb` for the extension `ext` (whose host is `host`).
fn run(verb: Verb, host: &Host, ext: &Extension) -> Result<String, CommandError> {
    match verb {
        Verb::Install => install(host, ext),
        Verb::Enable => enable(host, ext),
        Verb::Disable => disable(host, ext),
        Verb::Update => update(host, ext),
        Verb::Uninstall => uninstall(host, ext),
    }
}

fn supervisor(ext: &Extension) -> Keeper {
    Keeper::new(&ext.data_dir())
}

/// This binary, which `enable` starts as the worker and the worker as the poller.
fn own_executable() -> Result<PathBuf, KeepAliveError> {
    std::env::current_exe().map_err(|source| KeepAliveError::Spawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })
}

/// Writes the status of the sequence number waagent passed (`ConfigSequenceNumber`, else the newest settings
/// file), which is the file it reads for this command; nothing when there is neither.
fn report(
    host: &Host,
    ext: &Extension,
    operation: Operation,
    message: &str,
) -> Result<(), CommandError> {
    if let Ok(seq) = ext.current_sequence() {
        status::write(
            host,
            seq,
            &StatusReport::new(operation, Status::Success, message),
        )?;
    }
    Ok(())
}

/// After `disable` and `uninstall` no worker runs: the heartbeat, whose status waagent reports as the
/// handler's, must not keep saying Ready.
fn heartbeat_stopped(host: &Host, message: &str) -> Result<(), CommandError> {
    status::write_heartbeat(
        host,
        &Heartbeat::Stopped {
            detail: message.to_string(),
        },
    )?;
    Ok(())
}

fn install(host: &Host, ext: &Extension) -> Result<String, CommandError> {
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
    report(host, ext, Operation::Install, &message)?;
    Ok(message)
}

fn update(host: &Host, ext: &Extension) -> Result<String, CommandError> {
    let from =
        std::env::var("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION").unwrap_or_else(|_| "?".into());
    // Certificates, the worker lock and its state live outside the versioned directory: nothing to migrate.
    let _ = supervisor(ext).state()?;
    log::info!(
        "update: from version {from} to {}",
        env!("CARGO_PKG_VERSION")
    );
    let message = format!("kvvm updated from {from} to {}", env!("CARGO_PKG_VERSION"));
    report(host, ext, Operation::Update, &message)?;
    Ok(message)
}

fn enable(host: &Host, ext: &Extension) -> Result<String, CommandError> {
    let seq = ext.current_sequence()?;
    let text = ext.read_settings_text(seq)?;
    let sup = supervisor(ext);
    let parsed = match settings::parse_settings_file(&text) {
        Ok(parsed) => parsed,
        Err(source) => {
            let kept = match (sup.state()?, ext.mrseq()) {
                (Supervision::Running { .. }, Some(old)) if old != seq => {
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
                host,
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
                host,
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
    if let (Supervision::Running { pid }, Some(done)) = (state, ext.mrseq())
        && done == seq
    {
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        return Ok(format!(
            "settings {seq} already applied; worker {pid} is running"
        ));
    }
    // The log sinks are set up when the worker starts (it records which): other loggingSettings need a fresh
    // worker. A worker that has recorded none yet (just started, or an older kvvm) is taken to have none.
    let running_sinks = WorkerState::load(&ext.data_dir())
        .ok()
        .and_then(|recorded| recorded.log_sinks)
        .unwrap_or(LogSinks { fluentd: None });
    if matches!(state, Supervision::Running { .. })
        && running_sinks != LogSinks::of(settings.logging.as_ref())
    {
        sup.stop(STOP_GRACE)?;
        state = Supervision::Stopped;
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
    status::write(host, seq, &starting)?;
    let message = match state {
        Supervision::Running { pid } if sup.notify_reload()? => {
            format!(
                "settings {seq} handed to the running worker (pid {})",
                pid.unwrap_or(0)
            )
        }
        _ => {
            let exe = own_executable()?;
            let stderr_log = ext.env.log_folder.join(keep_alive::STDERR_LOG);
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

fn disable(host: &Host, ext: &Extension) -> Result<String, CommandError> {
    let outcome = supervisor(ext).stop(STOP_GRACE)?;
    let message = match outcome {
        StopOutcome::NotRunning => "disabled; no worker was running".to_string(),
        StopOutcome::Stopped { pid, forced: false } => format!("disabled; worker {pid} stopped"),
        StopOutcome::Stopped { pid, forced: true } => {
            format!("disabled; worker {pid} did not stop within {STOP_GRACE:?} and was killed")
        }
    };
    report(host, ext, Operation::Disable, &message)?;
    heartbeat_stopped(host, &message)?;
    log::info!("{message}");
    Ok(message)
}

fn uninstall(host: &Host, ext: &Extension) -> Result<String, CommandError> {
    // During an update the old version's uninstall runs while the new version's directory exists: the new
    // version needs the state folder (and, on Windows, finds the service its enable updates). Only the
    // uninstall that leaves no version behind removes them.
    let data_dir = ext.data_dir();
    let others = ext.other_versions();
    let outcome = if others.is_empty() {
        supervisor(ext).remove(STOP_GRACE)?
    } else {
        supervisor(ext).stop(STOP_GRACE)?
    };
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
    report(host, ext, Operation::Uninstall, &message)?;
    heartbeat_stopped(host, &message)?;
    log::info!("{message}");
    Ok(message)
}

/// `kvvm worker`: the supervisor `enable` starts. It holds the worker lock and keeps one poller running.
pub fn supervise() -> Result<(), CommandError> {
    let host = Host::locate()?;
    logging::start(&host, Process::Supervisor, None);
    keep_one_poller(&host)
}

/// The supervisor's work, wherever it runs: one poller, restarted whenever it ends.
fn keep_one_poller(host: &Host) -> Result<(), CommandError> {
    let exe = own_executable()?;
    let report = status::RestartReport { host };
    Keeper::new(&host.data_dir()).keep_running(&exe, host, &report)?;
    Ok(())
}

/// `kvvm service`: the standalone service (systemd's `ExecStart` in `kvvm.service`), the supervisor in the
/// foreground with `files` (its settings file, state and log folders). Settings that cannot be read or are
/// invalid end it at once with [`CommandError::ServiceSettings`] (exit 78, which the unit does not restart);
/// settings that observe nothing leave it waiting for `systemctl reload kvvm`.
pub fn service(files: Service) -> Result<(), CommandError> {
    for (dir, mode) in [(&files.state_dir, 0o700), (&files.log_dir, 0o755)] {
        crate::files::create_folder(dir, mode).map_err(|source| CommandError::ServiceFolder {
            path: dir.clone(),
            source,
        })?;
    }
    let host = Host::Service(files.clone());
    logging::start(&host, Process::Supervisor, None);
    if let Err(e) = host.settings() {
        log::error!("not starting: {e}");
        return Err(e.into());
    }
    log::info!(
        "kvvm {} service starting: settings {}, state {}, logs {}",
        env!("CARGO_PKG_VERSION"),
        files.settings_file.display(),
        files.state_dir.display(),
        files.log_dir.display()
    );
    keep_one_poller(&host)
}

/// How often `kvvm wait` looks at the worker's record.
const WAIT_EVERY: Duration = Duration::from_millis(500);

/// `kvvm wait [--timeout SECONDS]`: for install scripts (the VM Application's, cloud-init's). Waits until a
/// worker runs and — when its settings have `requireInitialSync` — every certificate is installed; then one line
/// on where it stands. [`CommandError::NotReady`] when the initial sync failed (after its attempts), when there
/// is nothing to watch, or when `timeout` passes first (saying where it stood).
pub fn wait(timeout: Duration) -> Result<Output, CommandError> {
    wait_on(&Host::locate()?, timeout)
}

fn wait_on(host: &Host, timeout: Duration) -> Result<Output, CommandError> {
    let supervisor = Keeper::new(&host.data_dir());
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match readiness(host, &supervisor) {
            Readiness::Ready(text) => {
                return Ok(Output {
                    text: format!("{text}\n"),
                    attention: false,
                });
            }
            Readiness::Never(detail) => return Err(CommandError::NotReady { detail }),
            Readiness::NotYet(detail) if std::time::Instant::now() >= deadline => {
                return Err(CommandError::NotReady {
                    detail: format!("not ready within {} s: {detail}", timeout.as_secs()),
                });
            }
            Readiness::NotYet(_) => std::thread::sleep(WAIT_EVERY),
        }
    }
}

/// A manage action of the Windows VM Application (`kvvm.exe vmapp …`, see `platform::windows::vmapp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAppAction {
    /// `install CONFIG`: the application's first version on the machine.
    Install(PathBuf),
    /// `update CONFIG`: a new version, or a new configuration.
    Update(PathBuf),
    /// `remove`.
    Remove,
}

/// `kvvm vmapp install|update CONFIG | remove`: the Windows VM Application's manage actions, for the service's
/// files ([`Service::from_env`]; the VM Application manager is an extension itself, so its
/// `AZURE_GUEST_AGENT_EXTENSION_PATH` must not make this one). Each step done is given to `say` as it is done;
/// install and update then wait (at most `timeout`) until the service is ready, as `kvvm wait` does.
pub fn vmapp(
    action: VmAppAction,
    timeout: Duration,
    mut say: impl FnMut(&str),
) -> Result<Output, CommandError> {
    let files = Service::from_env();
    let config = match &action {
        VmAppAction::Install(config) | VmAppAction::Update(config) => config,
        VmAppAction::Remove => {
            for line in crate::platform::vmapp::remove(&files)? {
                say(&line);
            }
            return Ok(Output {
                text: String::new(),
                attention: false,
            });
        }
    };
    for line in crate::platform::vmapp::install(config, &files)? {
        say(&line);
    }
    say(&format!(
        "waiting for the service (at most {} s)",
        timeout.as_secs()
    ));
    wait_on(&Host::Service(files), timeout)
}

/// Where a worker stands for [`wait`].
enum Readiness {
    Ready(String),
    NotYet(String),
    Never(String),
}

fn readiness(host: &Host, supervisor: &Keeper) -> Readiness {
    match supervisor.state() {
        Ok(Supervision::Running { .. }) => {}
        Ok(Supervision::Stopped) => return Readiness::NotYet("no worker runs yet".into()),
        Err(e) => return Readiness::NotYet(e.to_string()),
    }
    let recorded = match state::WorkerState::load(&host.data_dir()) {
        Ok(recorded) => recorded,
        Err(e) => return Readiness::NotYet(e.to_string()),
    };
    // What it recorded must be for the settings as they are now (an install script writes them, then reloads).
    if let Some(wanted) = host.wanted_seq()
        && wanted != recorded.seq
    {
        return Readiness::NotYet(format!(
            "the worker has not taken up the current {} yet (a new settings file needs `{}`)",
            host.settings_label(wanted),
            crate::platform::paths::SERVICE_RELOAD
        ));
    }
    // A poller that is being restarted, or has not saved yet, is not there to vouch for its record.
    if !crate::files::process_runs(recorded.pid) {
        return Readiness::NotYet(format!(
            "the poller (pid {}) that recorded the state is not running",
            recorded.pid
        ));
    }
    let total = recorded.certificates.len();
    let installed = recorded
        .certificates
        .iter()
        .filter(|c| matches!(c.status, CertStatus::Installed | CertStatus::Warning))
        .count();
    let failing: Vec<String> = recorded
        .certificates
        .iter()
        .filter(|c| c.status == CertStatus::Failed)
        .map(|c| {
            format!(
                "{} ([{}] {})",
                c.url,
                c.reason.as_deref().unwrap_or("failed"),
                c.last_error.as_deref().unwrap_or("no detail")
            )
        })
        .collect();
    let standing = format!("{installed} of {total} certificate(s) installed");
    let failing_text = if failing.is_empty() {
        String::new()
    } else {
        format!("; failing: {}", failing.join("; "))
    };
    match recorded.initial_sync {
        None if total == 0 => Readiness::Never(format!(
            "the worker has nothing to watch. {}",
            host.settings_hint()
        )),
        None => Readiness::NotYet("the poller has not recorded its first status yet".into()),
        Some(state::InitialSyncState::Trying) => {
            Readiness::NotYet(format!("initial sync: {standing}{failing_text}"))
        }
        Some(state::InitialSyncState::Failed) => Readiness::Never(format!(
            "the initial sync failed: {standing}{failing_text} (polling goes on; `kvvm status` has the details)"
        )),
        Some(state::InitialSyncState::Done) => {
            Readiness::Ready(format!("ready: initial sync done, {standing}"))
        }
        Some(state::InitialSyncState::NotRequired) => Readiness::Ready(format!(
            "ready: the worker runs (requireInitialSync is off); {standing}{failing_text}"
        )),
    }
}

/// `kvvm check-settings [FILE]`: validates a settings file without running anything, with the messages `enable`
/// and the service give: the extension's public settings JSON (what `az vm extension set --settings` takes),
/// or a whole waagent settings file. `FILE` defaults to the service's settings file.
pub fn check_settings(file: Option<PathBuf>) -> Result<Output, CommandError> {
    let path = file.unwrap_or_else(|| Service::from_env().settings_file);
    let configured = crate::host::read_service_settings(&path)?;
    let text = match configured {
        Configured::Nothing { reason } => format!(
            "{}: valid, but nothing to watch: {reason}; a worker with these settings waits for others\n",
            path.display()
        ),
        Configured::Settings(settings) => {
            let mut text = format!(
                "{}: valid: {} observed certificate(s), polling every {} s\n",
                path.display(),
                settings.observed_certificates.len(),
                settings.polling_interval.as_secs()
            );
            for warning in &settings.warnings {
                text.push_str(&format!("warning: {warning}\n"));
            }
            text
        }
    };
    Ok(Output {
        text,
        attention: false,
    })
}

/// `kvvm poller`: polls the vaults and installs certificates, until SIGTERM.
pub fn poller() -> Result<(), WorkerError> {
    worker::run(worker::start(Process::Poller)?)
}

/// `kvvm status`: what the worker recorded about each certificate, for an operator on the VM; with `json` the
/// documented JSON document for scripts, with `attention` when anything needs attention.
pub fn status(json: bool) -> Result<Output, CommandError> {
    let host = Host::locate()?;
    let recorded = state::WorkerState::load(&host.data_dir()).map_err(|source| {
        let hint = match source {
            StateError::RootOnly { .. } => format!(
                ": run `sudo {} status`",
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "kvvm".into())
            ),
            _ => String::new(),
        };
        CommandError::State { source, hint }
    })?;
    let running = Keeper::new(&host.data_dir()).state();
    if json {
        let supervision = running.as_ref().copied().map_err(ToString::to_string);
        let (document, attention) = report::json(&recorded, &supervision);
        return Ok(Output {
            text: format!("{document}\n"),
            attention,
        });
    }
    let worker = match running {
        Ok(Supervision::Running { pid }) => pid,
        _ => None,
    };
    let mut text = report::text(&recorded, worker, &host.settings_label(recorded.seq));
    if let Ok(Supervision::Stopped) = running {
        text.push_str(
            "\n(the worker is not running: this is what it recorded last; run enable to start it)\n",
        );
    }
    Ok(Output {
        text,
        attention: false,
    })
}

/// `kvvm sync --once`: one full poll cycle in the foreground, started the way the poller starts, with the
/// extension's current settings; one line per certificate, `attention` if any failed. The worker's status and
/// state files are left to the worker.
pub fn sync_once() -> Result<Output, CommandError> {
    let start = worker::start(Process::Sync)?;
    let current = match start.watch? {
        worker::Watch::Certificates(current) => current,
        worker::Watch::Nothing { reason, .. } => {
            return Err(WorkerError::NoSettings { reason }.into());
        }
    };
    let certs = worker::sync_once(&start.host, &current);
    let mut text = format!(
        "settings {}: {} observed certificate(s)\n",
        current.seq,
        certs.len()
    );
    let mut attention = false;
    for c in &certs {
        let line = match c.status {
            CertStatus::Failed => {
                attention = true;
                format!(
                    "FAILED  {}: {}",
                    c.url,
                    c.last_error.as_deref().unwrap_or("unknown error")
                )
            }
            status => format!(
                "{:<7} {} version {} -> {}{}",
                if status == CertStatus::Warning {
                    "WARNING"
                } else {
                    "OK"
                },
                c.url,
                c.version.as_deref().unwrap_or("-"),
                c.link.display(),
                c.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        };
        text.push_str(&line);
        text.push('\n');
    }
    Ok(Output { text, attention })
}
