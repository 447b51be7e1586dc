//! Windows' keep-alive: the worker is the Windows service `kvvm` (the agent's commands live in its job object
//! and may be killed with it; only the service control manager starts a process at boot and restarts one that
//! crashed). `enable` creates and starts the service ([`super::service`]), which runs `kvvm.exe worker`: this
//! keeper, which answers the service control manager (Stop and Shutdown → stop, ParamChange → new settings)
//! and keeps one `kvvm.exe poller` child running by the same rule as Linux's supervisor ([`crate::keeper`]).
//! The keeper tells its poller what it wants in lines on the poller's stdin (`reload`, `stop`); the end of
//! that input (a keeper that is gone, killed or crashed) is a stop too, so a poller never outlives its keeper.
//! Run from a console instead of by the service control manager, the keeper runs in the foreground until
//! Ctrl+C.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::windows::io::{AsHandle, AsRawHandle};
use std::os::windows::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_dispatcher;

use super::process::unmap_unused_code;
use super::service::{ServiceError, WindowsService};
use crate::host::Host;
use crate::keeper;
use crate::platform::keep_alive::{
    ENV_LAST_EXIT, ENV_RESTARTS, KeepAlive, Report, Request, STDERR_LOG, StartOutcome, StopOutcome,
    Supervision,
};

/// The worker's service: what `sc.exe query kvvm` shows.
pub(crate) const SERVICE: &str = "kvvm";
/// How the Services console lists it.
pub(crate) const DISPLAY_NAME: &str = "kvvm (Azure Key Vault certificates)";
/// The keeper's lock (one keeper per state folder, service or console).
const LOCK_FILE: &str = "worker.lock";
/// The poller's own lock (one poller, even while one whose keeper was killed is still exiting).
const POLLER_LOCK_FILE: &str = "poller.lock";
/// How long a keeper tries for [`LOCK_FILE`] before deciding that another keeper runs.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);
/// How long a new poller waits for an orphaned one to let go of [`POLLER_LOCK_FILE`].
const POLLER_PATIENCE: Duration = Duration::from_secs(10);
/// `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT`: the process was not started by the service control manager.
const NOT_A_SERVICE: i32 = 1063;
/// How long the service control manager is told a stop may take: the poller's grace and a little more.
const STOP_HINT: Duration = Duration::from_secs(10);
/// `DETACHED_PROCESS`: the poller gets no console (its output goes to a file, and its keeper, not Ctrl+C,
/// tells it to stop).
const DETACHED_PROCESS: u32 = 0x0000_0008;

/// Why the worker could not be started, stopped or asked, or could not run.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The service control manager refused a request, or the service did not start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The worker's state folder (its locks) cannot be created or used.
    #[error("cannot use the worker's state folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// This executable could not be found, to be run as the service or the poller.
    #[error("cannot start the worker {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The service is the kvvm VM Application's (see `vmapp`): one kvvm per machine.
    #[error(
        "the Windows service {SERVICE} runs {exe}, the kvvm VM Application's: it already keeps certificates on \
         this machine. One kvvm per machine: remove the VM Application from the VM (`kvvm.exe vmapp remove`), or \
         remove this extension"
    )]
    Taken {
        /// What the service runs.
        exe: PathBuf,
    },
    /// The service could not talk to the service control manager.
    #[error(
        "the worker cannot answer the service control manager: {source}; run it as the Windows service {SERVICE} \
         (enable creates it) or from a console"
    )]
    Dispatcher {
        /// What the service control manager said.
        source: windows_service::Error,
    },
}

impl KeeperError {
    /// A short stable code for the status file and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            KeeperError::Service(e) => e.reason(),
            KeeperError::DataDir { .. } => "worker-state-dir",
            KeeperError::Spawn { .. } => "worker-spawn-failed",
            KeeperError::Dispatcher { .. } => "service-dispatcher",
            KeeperError::Taken { .. } => "service-taken",
        }
    }
}

/// The worker's Windows service and the state folder its locks are in.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    dir: PathBuf,
    service: WindowsService,
}

impl Keeper {
    /// [`KeeperError::Taken`] when the service is the kvvm VM Application's (`kvvm.exe vmapp`): the extension
    /// and the application are one service each would own, so neither touches the other's.
    fn not_the_application(&self) -> Result<(), KeeperError> {
        match self.service.executable()? {
            Some(exe) if super::vmapp::is_ours(&exe) => Err(KeeperError::Taken { exe }),
            _ => Ok(()),
        }
    }

    fn data_err(&self, source: io::Error) -> KeeperError {
        KeeperError::DataDir {
            path: self.dir.clone(),
            source,
        }
    }
}

impl KeepAlive for Keeper {
    type Error = KeeperError;

    fn new(dir: &Path) -> Keeper {
        Keeper {
            dir: dir.to_path_buf(),
            service: WindowsService::new(SERVICE),
        }
    }

    fn state(&self) -> Result<Supervision, KeeperError> {
        Ok(self.service.state()?)
    }

    /// Creates or updates the service to run `exe worker` and starts it. The service finds the extension from
    /// its executable's folder, and writes the pollers' output to the log folder itself.
    fn start(
        &self,
        exe: &Path,
        _extension_dir: &Path,
        _stderr_log: &Path,
    ) -> Result<StartOutcome, KeeperError> {
        self.not_the_application()?;
        Ok(self
            .service
            .start(DISPLAY_NAME, exe, &[OsString::from("worker")])?)
    }

    fn notify_reload(&self) -> Result<bool, KeeperError> {
        self.not_the_application()?;
        Ok(self.service.notify_reload()?)
    }

    /// Stops the service, unless it is the VM Application's (the extension then has no worker to stop).
    fn stop(&self, grace: Duration) -> Result<StopOutcome, KeeperError> {
        if self.not_the_application().is_err() {
            log::warn!("the Windows service {SERVICE} is the kvvm VM Application's: left alone");
            return Ok(StopOutcome::NotRunning);
        }
        Ok(self.service.stop(grace)?)
    }

    /// Stops the service and deletes it (unless it is the VM Application's); what it installed stays.
    fn remove(&self, grace: Duration) -> Result<StopOutcome, KeeperError> {
        if self.not_the_application().is_err() {
            return self.stop(grace);
        }
        let outcome = self.service.stop(grace)?;
        if self.service.remove(grace)? {
            log::info!("the Windows service {SERVICE} was deleted");
        }
        Ok(outcome)
    }

    fn keep_running(
        &self,
        exe: &Path,
        host: &Host,
        report: &dyn Report,
    ) -> Result<(), KeeperError> {
        let Some(_lock) = crate::files::try_lock_for(&self.dir.join(LOCK_FILE), LOCK_PATIENCE)
            .map_err(|e| self.data_err(e))?
        else {
            log::info!(
                "another worker already holds {}; exiting",
                self.dir.display()
            );
            return Ok(());
        };
        // A writer killed mid-write (a killed poller) leaves a temp file beside the file it replaced.
        crate::files::remove_stale_temp_files(&self.dir);
        // A service has no stderr: a panic (which aborts, and the service control manager restarts the
        // service) would leave no trace but in the log.
        let report_panic = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic| {
            log::error!("the worker failed: {panic}");
            log::logger().flush();
            report_panic(panic);
        }));
        let wake = Events::connect()?;
        let stderr_log = host.log_folder().join(STDERR_LOG);
        let exits = wake.sender();
        let spawn = |restarts: u32, last_exit: &str| {
            spawn_poller(exe, host, restarts, last_exit, &stderr_log, exits.clone())
        };
        keeper::keep(&wake, spawn, host, report, unmap_unused_code);
        wake.stopped();
        Ok(())
    }

    fn hold_poller_lock(dir: &Path) -> Result<Option<File>, KeeperError> {
        crate::files::try_lock_for(&dir.join(POLLER_LOCK_FILE), POLLER_PATIENCE).map_err(|source| {
            KeeperError::DataDir {
                path: dir.to_path_buf(),
                source,
            }
        })
    }

    /// Reads the keeper's request lines from stdin: `reload`, `stop`; the end of stdin is a stop.
    fn forward_requests(mut on: impl FnMut(Request) + Send + 'static) -> io::Result<()> {
        thread::Builder::new()
            .name("requests".into())
            .spawn(move || {
                for line in io::stdin().lock().lines() {
                    match line.as_deref().map(str::trim) {
                        Ok("reload") => on(Request::Reload),
                        Ok("stop") | Err(_) => break,
                        Ok(other) => {
                            log::warn!("unknown request from the keeper ignored: {other:?}")
                        }
                    }
                }
                on(Request::Stop);
            })?;
        Ok(())
    }
}

/// What wakes the keeper.
#[derive(Debug)]
enum Event {
    /// The service control manager (or Ctrl+C) asked for this.
    Control(Request),
    /// The service control manager started the service: its status handle.
    Started(ServiceStatusHandle),
    /// The dispatcher could not start, or ended.
    Dispatcher(windows_service::Result<()>),
    /// A poller exited.
    Exited,
}

/// Where the control handler (a callback the service control manager calls, with no state of ours) and Ctrl+C
/// send their events: the running keeper's channel.
static EVENTS: Mutex<Option<mpsc::Sender<Event>>> = Mutex::new(None);

fn send(event: Event) {
    let tx = EVENTS.lock().ok().and_then(|tx| tx.clone());
    if let Some(tx) = tx {
        let _ = tx.send(event);
    }
}

windows_service::define_windows_service!(ffi_service_main, service_main);

/// Called by the service control manager on a thread of its own: registers the control handler, says the
/// service runs, and hands its status handle to the keeper.
fn service_main(_arguments: Vec<OsString>) {
    let handler = |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            send(Event::Control(Request::Stop));
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            send(Event::Control(Request::Reload));
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    match service_control_handler::register(SERVICE, handler) {
        Ok(handle) => {
            set_status(handle, ServiceState::Running);
            send(Event::Started(handle));
        }
        Err(e) => send(Event::Dispatcher(Err(e))),
    }
}

fn set_status(handle: ServiceStatusHandle, state: ServiceState) {
    let status = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::PARAM_CHANGE
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: ServiceExitCode::Win32(0),
        checkpoint: 0,
        wait_hint: if state == ServiceState::StopPending {
            STOP_HINT
        } else {
            Duration::ZERO
        },
        process_id: None,
    };
    if let Err(e) = handle.set_service_status(status) {
        log::warn!("cannot report the service's state {state:?}: {e}");
    }
}

/// The keeper's [`keeper::Wake`]: one channel for the service control manager's controls and the pollers'
/// exits.
struct Events {
    rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    /// `None` in the foreground (run from a console).
    service: Option<ServiceStatusHandle>,
    stop: Cell<bool>,
    reload: Cell<bool>,
}

impl Events {
    /// Connects to the service control manager (the dispatcher blocks a thread of its own for the service's
    /// life), or, when the process was not started as a service, listens for Ctrl+C.
    fn connect() -> Result<Events, KeeperError> {
        let (tx, rx) = mpsc::channel();
        *EVENTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        thread::Builder::new()
            .name("dispatcher".into())
            .spawn(|| {
                send(Event::Dispatcher(service_dispatcher::start(
                    SERVICE,
                    ffi_service_main,
                )))
            })
            .map_err(|source| KeeperError::Dispatcher {
                source: windows_service::Error::Winapi(source),
            })?;
        let mut events = Events {
            rx,
            tx,
            service: None,
            stop: Cell::new(false),
            reload: Cell::new(false),
        };
        loop {
            match events.rx.recv() {
                Ok(Event::Started(handle)) => {
                    log::info!("running as the Windows service {SERVICE}");
                    events.service = Some(handle);
                    return Ok(events);
                }
                Ok(Event::Dispatcher(Err(windows_service::Error::Winapi(e))))
                    if e.raw_os_error() == Some(NOT_A_SERVICE) =>
                {
                    log::info!("not started as a service: running in the foreground until Ctrl+C");
                    on_ctrl_c();
                    return Ok(events);
                }
                Ok(Event::Dispatcher(Err(source))) => {
                    return Err(KeeperError::Dispatcher { source });
                }
                Ok(event) => events.note(event),
                Err(_) => unreachable!("the keeper holds a sender of its own channel"),
            }
        }
    }

    /// A sender for the pollers' exit watchers.
    fn sender(&self) -> mpsc::Sender<Event> {
        self.tx.clone()
    }

    fn note(&self, event: Event) {
        match event {
            Event::Control(Request::Stop) => {
                if !self.stop.replace(true)
                    && let Some(handle) = self.service
                {
                    set_status(handle, ServiceState::StopPending);
                }
            }
            Event::Control(Request::Reload) => self.reload.set(true),
            Event::Exited | Event::Started(_) | Event::Dispatcher(_) => {}
        }
    }

    /// Tells the service control manager that the service stopped (it then ends the dispatcher).
    fn stopped(&self) {
        if let Some(handle) = self.service {
            set_status(handle, ServiceState::Stopped);
        }
    }
}

impl keeper::Wake for Events {
    fn wait(&self, timeout: Duration) {
        if let Ok(event) = self.rx.recv_timeout(timeout) {
            self.note(event);
        }
        while let Ok(event) = self.rx.try_recv() {
            self.note(event);
        }
    }

    fn stopping(&self) -> bool {
        while let Ok(event) = self.rx.try_recv() {
            self.note(event);
        }
        self.stop.get()
    }

    fn take_reload(&self) -> bool {
        self.reload.replace(false)
    }
}

/// Ctrl+C and Ctrl+Break (and the console closing) stop a keeper run from a console.
fn on_ctrl_c() {
    use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
    unsafe extern "system" fn handler(_ctrl: u32) -> i32 {
        send(Event::Control(Request::Stop));
        1
    }
    // SAFETY: the handler only sends on a channel; it stays registered for the process's life.
    if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
        log::warn!("cannot listen for Ctrl+C: {}", io::Error::last_os_error());
    }
}

/// A poller child of the keeper: asked through its stdin, its exit watched by a thread of its own.
struct Child {
    child: std::process::Child,
    stderr_log: PathBuf,
}

impl keeper::Poller for Child {
    fn id(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, request: Request) {
        let line = match request {
            Request::Reload => "reload\n",
            Request::Stop => "stop\n",
        };
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush());
        }
        if request == Request::Stop {
            // The end of its stdin stops it too, should the line not get through.
            self.child.stdin = None;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> io::Result<Option<String>> {
        Ok(self.child.try_wait()?.map(describe_exit))
    }

    fn last_words(&self) -> Option<String> {
        keeper::last_words(&self.stderr_log, self.child.id())
    }
}

/// Starts `exe poller` for `host`, its output appended to `stderr_log`, and a thread that sends
/// [`Event::Exited`] on `exits` when it ends.
fn spawn_poller(
    exe: &Path,
    host: &Host,
    restarts: u32,
    last_exit: &str,
    stderr_log: &Path,
    exits: mpsc::Sender<Event>,
) -> io::Result<Child> {
    use windows_sys::Win32::System::Threading::{INFINITE, WaitForSingleObject};
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)?;
    let mut command = Command::new(exe);
    host.pass_on(&mut command);
    command
        .arg("poller")
        .env(ENV_RESTARTS, restarts.to_string())
        .env(ENV_LAST_EXIT, last_exit)
        .stdin(Stdio::piped())
        .stdout(stderr.try_clone()?)
        .stderr(stderr)
        .creation_flags(DETACHED_PROCESS);
    if let Some(dir) = exe.parent() {
        command.current_dir(dir);
    }
    let child = command.spawn()?;
    let handle = child.as_handle().try_clone_to_owned()?;
    thread::Builder::new()
        .name("poller-exit".into())
        .spawn(move || {
            // SAFETY: the handle is our own duplicate, open until this thread drops it.
            unsafe { WaitForSingleObject(handle.as_raw_handle(), INFINITE) };
            let _ = exits.send(Event::Exited);
        })?;
    Ok(Child {
        child,
        stderr_log: stderr_log.to_path_buf(),
    })
}

/// How a poller ended, in words for the status and the log: its exit code, and what the NTSTATUS codes of a
/// crash mean.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    let Some(code) = status.code() else {
        return status.to_string();
    };
    let unsigned = code as u32;
    let meaning = match unsigned {
        0xC000_0005 => " (an access violation: a crash)",
        0xC000_00FD => " (a stack overflow)",
        0xC000_0409 => " (a fail-fast exit: e.g. a panic, which aborts)",
        0xC000_001D => " (an illegal instruction: a crash)",
        0xC000_0017 => " (out of memory)",
        _ => "",
    };
    if unsigned >= 0xC000_0000 {
        format!("exited with code {unsigned:#010X}{meaning}")
    } else {
        format!("exited with code {code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::windows::process::ExitStatusExt;

    #[test]
    fn a_crash_is_named_and_an_exit_code_is_given_as_it_is() {
        let crash = std::process::ExitStatus::from_raw(0xC000_0005);
        assert_eq!(
            describe_exit(crash),
            "exited with code 0xC0000005 (an access violation: a crash)"
        );
        let abort = std::process::ExitStatus::from_raw(0xC000_0409);
        assert!(
            describe_exit(abort).contains("a panic"),
            "{}",
            describe_exit(abort)
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3)),
            "exited with code 3"
        );
    }

    #[test]
    fn a_second_keeper_of_the_same_folder_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let held = crate::files::try_lock_for(&dir.path().join(LOCK_FILE), Duration::ZERO)
            .unwrap()
            .unwrap();
        let keeper = Keeper::new(dir.path());
        let host = Host::Service(crate::host::Service::from_env());
        struct Silent;
        impl Report for Silent {
            fn restarting(&self, _: &str, _: u32, _: Duration) {}
        }
        // Returns at once, without connecting to the service control manager or starting a poller.
        keeper
            .keep_running(Path::new(r"C:\nowhere\kvvm.exe"), &host, &Silent)
            .unwrap();
        drop(held);
    }
}
