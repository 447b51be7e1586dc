//! Seam (b) on Windows, its first half: the worker is a Windows service, and this is how kvvm manages it through
//! the service control manager (the `windows-service` crate): create it or bring its command line up to date,
//! with recovery actions that restart a crashed worker with back-off as the Linux supervisor does; start it; tell
//! it that its settings changed (`SERVICE_CONTROL_PARAMCHANGE`, what `sc.exe control <name> paramchange` sends);
//! stop it (killing its process if it has not stopped within the grace period); delete it. Only the service
//! control manager restarts a crashed process and starts it at boot, and a service does not live in the guest
//! agent's job object, so a command the agent runs can never take the worker down with it.
//!
//! The service's own side (the dispatcher, and the requests it hands the poller) comes with `kvvm.exe`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use crate::platform::keep_alive::{StartOutcome, StopOutcome, Supervision};

/// How long a restart waits after each crash in a row (the service control manager's recovery actions; the
/// last one repeats): 1 s, then 30 s, then 300 s, the Linux supervisor's first and longest waits.
pub(crate) const RECOVERY: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(30),
    Duration::from_secs(300),
];
/// A worker that ran this long without crashing starts the recovery ladder again at its first step (the
/// Linux supervisor's healthy run).
pub(crate) const RECOVERY_RESET: Duration = Duration::from_secs(600);
/// How long [`WindowsService::start`] waits for the service to report that it runs.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How often a wait for the service's state looks again.
const POLL: Duration = Duration::from_millis(100);
/// `ERROR_SERVICE_DOES_NOT_EXIST`.
const NO_SUCH_SERVICE: i32 = 1060;
/// `ERROR_INVALID_LEVEL`: the service manager does not know a configuration setting.
const INVALID_LEVEL: i32 = 124;
/// `ERROR_SERVICE_NOT_ACTIVE`.
const NOT_ACTIVE: i32 = 1062;

/// Why the service could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service control manager refused a request.
    #[error(
        "cannot {action} the Windows service {service}: {source}; kvvm's extension commands run as SYSTEM (the \
         guest agent runs them so): run it as SYSTEM or an administrator"
    )]
    Manager {
        /// What was asked (`create`, `start`, `stop`, …).
        action: &'static str,
        /// The service's name.
        service: String,
        /// What the service control manager said.
        source: windows_service::Error,
    },
    /// The service did not report that it runs in time.
    #[error(
        "the Windows service {service} did not start within {} s (its state is {state}); its log is in the \
         extension's log folder",
        START_PATIENCE.as_secs()
    )]
    NotStarted {
        /// The service's name.
        service: String,
        /// The state it was left in.
        state: String,
    },
}

impl ServiceError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceError::Manager { .. } => "service-manager",
            ServiceError::NotStarted { .. } => "service-not-started",
        }
    }
}

/// A Windows service of kvvm's, by name.
#[derive(Debug, Clone)]
pub(crate) struct WindowsService {
    name: String,
}

/// Whether `e` is the service control manager saying that the service does not exist.
fn no_such_service(e: &windows_service::Error) -> bool {
    matches!(e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(NO_SUCH_SERVICE))
}

fn running(state: ServiceState) -> bool {
    !matches!(state, ServiceState::Stopped | ServiceState::StopPending)
}

impl WindowsService {
    /// The service named `name`.
    pub(crate) fn new(name: &str) -> WindowsService {
        WindowsService {
            name: name.to_string(),
        }
    }

    fn err(
        &self,
        action: &'static str,
    ) -> impl FnOnce(windows_service::Error) -> ServiceError + '_ {
        move |source| ServiceError::Manager {
            action,
            service: self.name.clone(),
            source,
        }
    }

    fn manager(&self, access: ServiceManagerAccess) -> Result<ServiceManager, ServiceError> {
        ServiceManager::local_computer(None::<&str>, access)
            .map_err(self.err("connect to the manager of"))
    }

    /// The service, or `None` when it does not exist.
    fn open(
        &self,
        access: ServiceAccess,
    ) -> Result<Option<windows_service::service::Service>, ServiceError> {
        match self
            .manager(ServiceManagerAccess::CONNECT)?
            .open_service(&self.name, access)
        {
            Ok(service) => Ok(Some(service)),
            Err(e) if no_such_service(&e) => Ok(None),
            Err(e) => Err(self.err("open")(e)),
        }
    }

    /// Whether the service runs (or is starting), with its process id; a service that does not exist is stopped.
    pub(crate) fn state(&self) -> Result<Supervision, ServiceError> {
        let Some(service) = self.open(ServiceAccess::QUERY_STATUS)? else {
            return Ok(Supervision::Stopped);
        };
        let status = service.query_status().map_err(self.err("query"))?;
        Ok(if running(status.current_state) {
            Supervision::Running {
                pid: status.process_id,
            }
        } else {
            Supervision::Stopped
        })
    }

    /// Creates the service (`exe` with `arguments`, started at boot, as LocalSystem) or brings an existing one's
    /// command line up to date, sets its recovery actions ([`RECOVERY`], also when the worker exits with an
    /// error rather than crashing), and starts it unless it runs.
    pub(crate) fn start(
        &self,
        display_name: &str,
        exe: &Path,
        arguments: &[OsString],
    ) -> Result<StartOutcome, ServiceError> {
        let info = ServiceInfo {
            name: OsString::from(&self.name),
            display_name: OsString::from(display_name),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.to_path_buf(),
            launch_arguments: arguments.to_vec(),
            dependencies: Vec::new(),
            account_name: None,
            account_password: None,
        };
        let access = ServiceAccess::QUERY_STATUS
            | ServiceAccess::START
            | ServiceAccess::CHANGE_CONFIG
            | ServiceAccess::QUERY_CONFIG;
        let service = match self.open(access)? {
            Some(service) => {
                service.change_config(&info).map_err(self.err("update"))?;
                service
            }
            None => self
                .manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?
                .create_service(&info, access)
                .map_err(self.err("create"))?,
        };
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(RECOVERY_RESET),
                reboot_msg: None,
                command: None,
                actions: Some(
                    RECOVERY
                        .iter()
                        .map(|&delay| ServiceAction {
                            action_type: ServiceActionType::Restart,
                            delay,
                        })
                        .collect(),
                ),
            })
            .map_err(self.err("set the recovery actions of"))?;
        // Recovery also when the worker exits with an error rather than crashing (Windows Vista and later; a
        // service manager without the setting, such as Wine's, restarts crashed workers only).
        match service.set_failure_actions_on_non_crash_failures(true) {
            Ok(()) => {}
            Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(INVALID_LEVEL) => {
                log::warn!(
                    "the service manager cannot restart {} after an exit with an error (only after a crash): \
                     it lacks SERVICE_CONFIG_FAILURE_ACTIONS_FLAG",
                    self.name
                );
            }
            Err(e) => return Err(self.err("set the recovery-on-error flag of")(e)),
        }
        let status = service.query_status().map_err(self.err("query"))?;
        if running(status.current_state) {
            return Ok(StartOutcome::AlreadyRunning {
                pid: status.process_id,
            });
        }
        service.start(&[] as &[&OsStr]).map_err(self.err("start"))?;
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let status = service.query_status().map_err(self.err("query"))?;
            match (status.current_state, status.process_id) {
                (ServiceState::Running, Some(pid)) => return Ok(StartOutcome::Started { pid }),
                (state, _) if Instant::now() >= deadline || state == ServiceState::Stopped => {
                    return Err(ServiceError::NotStarted {
                        service: self.name.clone(),
                        state: format!("{state:?}"),
                    });
                }
                _ => thread::sleep(POLL),
            }
        }
    }

    /// Tells the running service that its settings changed; `false` when it does not run.
    pub(crate) fn notify_reload(&self) -> Result<bool, ServiceError> {
        use windows_sys::Win32::System::Services::{
            ControlService, SERVICE_CONTROL_PARAMCHANGE, SERVICE_STATUS,
        };
        let Some(service) =
            self.open(ServiceAccess::QUERY_STATUS | ServiceAccess::PAUSE_CONTINUE)?
        else {
            return Ok(false);
        };
        if !running(
            service
                .query_status()
                .map_err(self.err("query"))?
                .current_state,
        ) {
            return Ok(false);
        }
        // SAFETY: a zeroed SERVICE_STATUS is valid for the call to fill in; the handle is live while `service` is.
        let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
        // windows-service sends only user-defined codes; PARAMCHANGE is the standard one (and what sc.exe sends).
        // SAFETY: as above.
        let sent = unsafe {
            ControlService(
                service.raw_handle(),
                SERVICE_CONTROL_PARAMCHANGE,
                &mut status,
            )
        };
        if sent == 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(NOT_ACTIVE) {
                return Ok(false);
            }
            return Err(self.err("send new settings to")(
                windows_service::Error::Winapi(e),
            ));
        }
        Ok(true)
    }

    /// Stops the service and waits for it; kills its process if it has not stopped after `grace`.
    pub(crate) fn stop(&self, grace: Duration) -> Result<StopOutcome, ServiceError> {
        let Some(service) = self.open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)? else {
            return Ok(StopOutcome::NotRunning);
        };
        let status = service.query_status().map_err(self.err("query"))?;
        if !running(status.current_state) {
            return Ok(StopOutcome::NotRunning);
        }
        let pid = status.process_id.unwrap_or(0);
        match service.stop() {
            Ok(_) => {}
            Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(NOT_ACTIVE) => {
                return Ok(StopOutcome::NotRunning);
            }
            Err(e) => return Err(self.err("stop")(e)),
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if service
                .query_status()
                .map_err(self.err("query"))?
                .current_state
                == ServiceState::Stopped
            {
                return Ok(StopOutcome::Stopped { pid, forced: false });
            }
            thread::sleep(POLL);
        }
        kill(pid);
        Ok(StopOutcome::Stopped { pid, forced: true })
    }

    /// Stops and deletes the service; whether there was one. What it installed stays.
    pub(crate) fn remove(&self, grace: Duration) -> Result<bool, ServiceError> {
        self.stop(grace)?;
        let Some(service) = self.open(ServiceAccess::DELETE)? else {
            return Ok(false);
        };
        service.delete().map_err(self.err("delete"))?;
        Ok(true)
    }

    /// The command line the service runs: its executable (quoted when its path has a space), then its
    /// arguments (`None`: no such service).
    pub(crate) fn command_line(&self) -> Result<Option<String>, ServiceError> {
        let Some(service) = self.open(ServiceAccess::QUERY_CONFIG)? else {
            return Ok(None);
        };
        let config = service.query_config().map_err(self.err("query"))?;
        Ok(Some(config.executable_path.to_string_lossy().into_owned()))
    }

    /// The executable the service runs (`None`: no such service).
    pub(crate) fn executable(&self) -> Result<Option<PathBuf>, ServiceError> {
        Ok(self.command_line()?.map(|line| executable_of(&line)))
    }
}

/// The executable of a service's command line: the quoted first word, else everything up to `.exe` (how the
/// service control manager reads an unquoted path with spaces), else the first word.
pub(crate) fn executable_of(command_line: &str) -> PathBuf {
    let line = command_line.trim_start();
    if let Some(quoted) = line.strip_prefix('"') {
        return PathBuf::from(quoted.split('"').next().unwrap_or_default());
    }
    let end = line
        .to_ascii_lowercase()
        .find(".exe")
        .map(|i| i + ".exe".len())
        .or_else(|| line.find(' '))
        .unwrap_or(line.len());
    PathBuf::from(&line[..end])
}

/// Ends the process `pid` (a service that did not stop in its grace period).
fn kill(pid: u32) {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: the handle is checked and closed once.
    unsafe {
        let process = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !process.is_null() {
            TerminateProcess(process, 1);
            CloseHandle(process);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Under Wine (scripts/windows.sh), whose service control manager creates, starts, controls and deletes
    //! services as Windows' does, with a minimal service of the tests' own (scripts/windows/test-service.c: it
    //! records each PARAMCHANGE it is sent in the file its argument names).

    use super::*;
    use std::path::PathBuf;

    /// The test service's executable (`None`: not run through scripts/windows.sh).
    fn test_service() -> Option<PathBuf> {
        match std::env::var("KVVM_WINDOWS_TEST_SERVICE") {
            Ok(exe) => Some(PathBuf::from(exe)),
            Err(_) => {
                eprintln!(
                    "skipped: KVVM_WINDOWS_TEST_SERVICE is not set (run scripts/windows.sh test)"
                );
                None
            }
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(POLL);
        }
    }

    #[test]
    fn the_executable_is_read_from_a_command_line_as_the_service_control_manager_reads_it() {
        for (line, exe) in [
            (
                r#""C:\Program Files\kvvm\0.1.0\kvvm.exe" service --settings C:\ProgramData\kvvm\settings.json"#,
                r"C:\Program Files\kvvm\0.1.0\kvvm.exe",
            ),
            (
                r"C:\Packages\Plugins\Microsoft.Azure.KeyVault.KeyVaultForWindows\3.0\kvvm.exe worker",
                r"C:\Packages\Plugins\Microsoft.Azure.KeyVault.KeyVaultForWindows\3.0\kvvm.exe",
            ),
            (r"C:\Program Files\x\X.EXE -k", r"C:\Program Files\x\X.EXE"),
            (r"C:\tools\svc run", r"C:\tools\svc"),
            (r#""C:\a b\c.exe""#, r"C:\a b\c.exe"),
        ] {
            assert_eq!(executable_of(line), PathBuf::from(exe), "{line}");
        }
    }

    #[test]
    fn a_service_is_created_started_reloaded_stopped_and_deleted() {
        let Some(exe) = test_service() else { return };
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("controls.txt");
        let name = format!("kvvm-test-{:08x}", fastrand::u32(..));
        let service = WindowsService::new(&name);
        // Removed however the test ends: Wine's prefix keeps services, and display names are unique.
        struct Remove<'a>(&'a WindowsService);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = self.0.remove(Duration::from_secs(5));
            }
        }
        let _remove = Remove(&service);
        assert_eq!(service.state().unwrap(), Supervision::Stopped);
        assert_eq!(
            service.stop(Duration::from_secs(5)).unwrap(),
            StopOutcome::NotRunning
        );
        assert!(!service.notify_reload().unwrap());

        let args = [record.clone().into_os_string()];
        let StartOutcome::Started { pid } = service.start(&name, &exe, &args).unwrap() else {
            panic!("not started");
        };
        assert_eq!(
            service.state().unwrap(),
            Supervision::Running { pid: Some(pid) }
        );
        assert_eq!(
            service.start(&name, &exe, &args).unwrap(),
            StartOutcome::AlreadyRunning { pid: Some(pid) }
        );

        // The recovery actions, as the service control manager holds them. Wine's accepts them but cannot be
        // asked for them (ERROR_INVALID_LEVEL), nor for the recovery-on-error flag: docs/windows/verify.ps1 checks
        // both on a real VM (`sc.exe qfailure`, `sc.exe qfailureflag`).
        let opened = service.open(ServiceAccess::QUERY_CONFIG).unwrap().unwrap();
        let unknown_level = |e: &windows_service::Error| matches!(e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(INVALID_LEVEL));
        match opened.get_failure_actions() {
            Ok(actions) => {
                assert_eq!(
                    actions.reset_period,
                    ServiceFailureResetPeriod::After(RECOVERY_RESET)
                );
                let delays: Vec<Duration> = actions
                    .actions
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        assert_eq!(a.action_type, ServiceActionType::Restart);
                        a.delay
                    })
                    .collect();
                assert_eq!(delays, RECOVERY.to_vec());
            }
            Err(e) if unknown_level(&e) => {
                eprintln!(
                    "this service manager cannot report recovery actions (Wine): not checked here"
                )
            }
            Err(e) => panic!("{e}"),
        }
        match opened.get_failure_actions_on_non_crash_failures() {
            Ok(flag) => assert!(flag),
            Err(e) if unknown_level(&e) => {}
            Err(e) => panic!("{e}"),
        }
        drop(opened);
        assert_eq!(service.executable().unwrap(), Some(exe.clone()));
        let line = service.command_line().unwrap().unwrap();
        assert_eq!(
            line,
            format!("{} {}", exe.display(), record.display()),
            "the executable, then its arguments"
        );

        assert!(service.notify_reload().unwrap());
        wait_for("the service to record PARAMCHANGE", || {
            std::fs::read_to_string(&record).is_ok_and(|t| t.contains("paramchange"))
        });

        assert_eq!(
            service.stop(Duration::from_secs(10)).unwrap(),
            StopOutcome::Stopped { pid, forced: false }
        );
        assert_eq!(service.state().unwrap(), Supervision::Stopped);
        assert!(!service.notify_reload().unwrap());

        assert!(service.remove(Duration::from_secs(10)).unwrap());
        assert_eq!(service.state().unwrap(), Supervision::Stopped);
        assert_eq!(service.executable().unwrap(), None);
        assert!(!service.remove(Duration::from_secs(10)).unwrap());
    }
}
