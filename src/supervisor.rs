//! Exactly one worker per extension, whatever waagent does: `enable` may run many times, an update runs two
//! versions side by side for a moment, and a reboot leaves pid files behind. The worker holds an exclusive
//! `flock` on `worker.lock` for its whole life, so "is a worker running?" is answered by the kernel (a dead
//! process holds no lock), never by guessing from a pid. The pid file only says whom to signal.

use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};

use crate::host::Host;
use crate::keeper;
use crate::platform::keep_alive::{
    ENV_LAST_EXIT, ENV_RESTARTS, KeepAlive, Report, Request, StartOutcome, StopOutcome,
    Supervision,
};
use nix::unistd::Pid;

const LOCK_FILE: &str = "worker.lock";
const PID_FILE: &str = "worker.pid";

/// How long the worker keeps trying to take the lock before deciding that another worker holds it (a
/// concurrent probe by `enable`/`disable` holds it for microseconds only).
const ACQUIRE_PATIENCE: Duration = Duration::from_millis(500);
/// How long `enable` waits for a freshly spawned worker to report in.
const START_PATIENCE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(2);

/// Errors of process management.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The worker's state folder (its lock and pid) cannot be created or used.
    #[error("cannot use the worker's state folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The worker process could not be started.
    #[error("cannot start the worker {exe}: {source}")]
    Spawn {
        /// The executable started (this binary).
        exe: PathBuf,
        /// Why it could not be started.
        source: io::Error,
    },
    /// The file the worker's stdout and stderr go to could not be opened.
    #[error(
        "cannot open the worker's log file {path}: {source}; the worker was not started. Check that the log \
         folder (logFolder in HandlerEnvironment.json) exists and is writable"
    )]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// Why it cannot be opened.
        source: io::Error,
    },
    /// The worker exited before it reported in.
    #[error(
        "the worker exited right after start ({status}); its last words are in {stderr_log}, the rest in the log folder"
    )]
    DiedAtStart {
        /// How it exited (code or signal).
        status: String,
        /// Where its stderr went.
        stderr_log: PathBuf,
    },
    /// The worker runs but did not report in within the start patience.
    #[error("the worker (pid {pid}) did not report in within {waited:?}; see {stderr_log}")]
    StartTimeout {
        /// The worker's process id.
        pid: u32,
        /// How long `enable` waited.
        waited: Duration,
        /// Where its stderr went.
        stderr_log: PathBuf,
    },
    /// The worker survived SIGKILL (a process stuck in the kernel, or one in another pid namespace).
    #[error("the worker (pid {pid}) still holds its lock after SIGKILL")]
    Unkillable {
        /// The worker's process id.
        pid: u32,
    },
    /// Some process holds the worker lock but no pid was recorded (not a kvvm worker, or one killed at start).
    #[error(
        "a process holds the worker lock {lock} but never recorded its pid; find it with `fuser {lock}` and stop it"
    )]
    NoPid {
        /// The lock file.
        lock: PathBuf,
    },
}

impl SupervisorError {
    /// A short stable code for the status file and the log (`worker-spawn-failed`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            SupervisorError::DataDir { .. } => "worker-state-dir",
            SupervisorError::Spawn { .. } => "worker-spawn-failed",
            SupervisorError::LogFile { .. } => "worker-log-file",
            SupervisorError::DiedAtStart { .. } => "worker-died-at-start",
            SupervisorError::StartTimeout { .. } => "worker-start-timeout",
            SupervisorError::Unkillable { .. } => "worker-unkillable",
            SupervisorError::NoPid { .. } => "worker-no-pid",
        }
    }
}

/// Held by the running worker; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub(crate) struct WorkerLock {
    _file: File,
    pid_path: PathBuf,
}

impl Drop for WorkerLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.pid_path);
    }
}

/// Starts, finds and stops the worker through the lock and pid files in one state folder.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    dir: PathBuf,
}

impl Supervisor {
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_err(&self, source: io::Error) -> SupervisorError {
        SupervisorError::DataDir {
            path: self.dir.clone(),
            source,
        }
    }

    fn open_lock(&self) -> Result<File, SupervisorError> {
        crate::files::open_lock(&self.dir.join(LOCK_FILE)).map_err(|e| self.data_err(e))
    }

    fn read_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// For the worker itself: take the lock and record our pid, or `None` if another worker has it.
    pub(crate) fn acquire(&self) -> Result<Option<WorkerLock>, SupervisorError> {
        let Some(file) = crate::files::try_lock_for(&self.dir.join(LOCK_FILE), ACQUIRE_PATIENCE)
            .map_err(|e| self.data_err(e))?
        else {
            return Ok(None);
        };
        let pid_path = self.dir.join(PID_FILE);
        crate::handler::write_atomically(
            &pid_path,
            std::process::id().to_string().as_bytes(),
            0o644,
        )
        .map_err(|e| self.data_err(io::Error::other(e.to_string())))?;
        Ok(Some(WorkerLock {
            _file: file,
            pid_path,
        }))
    }

    fn wait_stopped(&self, patience: Duration) -> Result<bool, SupervisorError> {
        let deadline = Instant::now() + patience;
        loop {
            if self.state()? == Supervision::Stopped {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl KeepAlive for Supervisor {
    type Error = SupervisorError;

    fn new(dir: &Path) -> Supervisor {
        Supervisor {
            dir: dir.to_path_buf(),
        }
    }

    /// Whether a worker holds the lock now (and its pid, if it wrote one).
    fn state(&self) -> Result<Supervision, SupervisorError> {
        let file = self.open_lock()?;
        match file.try_lock() {
            Ok(()) => Ok(Supervision::Stopped),
            Err(TryLockError::WouldBlock) => Ok(Supervision::Running {
                pid: self.read_pid(),
            }),
            Err(TryLockError::Error(e)) => Err(self.data_err(e)),
        }
    }
    /// Starts `exe worker` detached from the caller (own session, stdio not inherited, cwd `/`), unless a
    /// worker already runs. Waits until the new worker holds the lock, so a worker that cannot start is an
    /// error here rather than a silent absence.
    fn start(
        &self,
        exe: &Path,
        extension_dir: &Path,
        stderr_log: &Path,
    ) -> Result<StartOutcome, SupervisorError> {
        if let Supervision::Running { pid } = self.state()? {
            return Ok(StartOutcome::AlreadyRunning { pid });
        }
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .map_err(|source| SupervisorError::LogFile {
                path: stderr_log.to_path_buf(),
                source,
            })?;
        let stdout = stderr
            .try_clone()
            .map_err(|source| SupervisorError::Spawn {
                exe: exe.to_path_buf(),
                source,
            })?;
        let mut command = Command::new(exe);
        command
            .arg("worker")
            .env("AZURE_GUEST_AGENT_EXTENSION_PATH", extension_dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
        let pid = child.id();
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if self.read_pid() == Some(pid) {
                return Ok(StartOutcome::Started { pid });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Lost a race with another enable? Then that one's worker is the single worker.
                if let Supervision::Running { pid } = self.state()? {
                    return Ok(StartOutcome::AlreadyRunning { pid });
                }
                return Err(SupervisorError::DiedAtStart {
                    status: status.to_string(),
                    stderr_log: stderr_log.to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                return Err(SupervisorError::StartTimeout {
                    pid,
                    waited: START_PATIENCE,
                    stderr_log: stderr_log.to_path_buf(),
                });
            }
            thread::sleep(POLL);
        }
    }
    /// Asks a running worker to re-read its settings (SIGHUP). Returns whether one was signalled.
    fn notify_reload(&self) -> Result<bool, SupervisorError> {
        match self.state()? {
            Supervision::Running { pid: Some(pid) } => Ok(signal(pid, Signal::SIGHUP)),
            _ => Ok(false),
        }
    }
    /// Stops the worker: SIGTERM to its process group, up to `grace` for it to let go of the lock, then SIGKILL.
    fn stop(&self, grace: Duration) -> Result<StopOutcome, SupervisorError> {
        let pid = match self.state()? {
            Supervision::Stopped => {
                let _ = fs::remove_file(self.dir.join(PID_FILE));
                return Ok(StopOutcome::NotRunning);
            }
            Supervision::Running { pid: None } => {
                // It holds the lock but has not written its pid yet: give it a moment.
                thread::sleep(Duration::from_millis(100));
                match self.state()? {
                    Supervision::Running { pid: Some(pid) } => pid,
                    Supervision::Stopped => return Ok(StopOutcome::NotRunning),
                    Supervision::Running { pid: None } => {
                        return Err(SupervisorError::NoPid {
                            lock: self.dir.join(LOCK_FILE),
                        });
                    }
                }
            }
            Supervision::Running { pid: Some(pid) } => pid,
        };
        signal_group(pid, Signal::SIGTERM);
        if self.wait_stopped(grace)? {
            return Ok(StopOutcome::Stopped { pid, forced: false });
        }
        signal_group(pid, Signal::SIGKILL);
        if self.wait_stopped(Duration::from_secs(5))? {
            let _ = fs::remove_file(self.dir.join(PID_FILE));
            return Ok(StopOutcome::Stopped { pid, forced: true });
        }
        Err(SupervisorError::Unkillable { pid })
    }

    fn remove(&self, grace: Duration) -> Result<StopOutcome, SupervisorError> {
        self.stop(grace)
    }

    fn keep_running(
        &self,
        exe: &Path,
        host: &Host,
        report: &dyn Report,
    ) -> Result<(), SupervisorError> {
        supervise(self, exe, host, report)
    }

    fn hold_poller_lock(dir: &Path) -> Result<Option<File>, SupervisorError> {
        acquire_poller_lock(dir)
    }

    fn forward_requests(mut on: impl FnMut(Request) + Send + 'static) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        thread::Builder::new().name("signals".into()).spawn(move || {
            for signal in signals.forever() {
                on(if signal == SIGHUP {
                    Request::Reload
                } else {
                    Request::Stop
                });
            }
        })?;
        Ok(())
    }
}

/// Sends `sig` to the process `pid`; whether it was delivered.
fn signal(pid: u32, sig: Signal) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => kill(Pid::from_raw(pid), sig).is_ok(),
        _ => false,
    }
}

/// The worker is a session leader, so its pid is also its process group: signal hooks it runs as well.
fn signal_group(pid: u32, sig: Signal) {
    let Ok(pgid) = i32::try_from(pid) else {
        return;
    };
    if pgid <= 1 || killpg(Pid::from_raw(pgid), sig).is_err() {
        signal(pid, sig);
    }
}

/// The poller's own lock (one poller, even if a supervisor was killed and its orphan is still exiting).
pub(crate) const POLLER_LOCK_FILE: &str = "poller.lock";
/// How long a new poller waits for an orphaned one to let go of [`POLLER_LOCK_FILE`].
const POLLER_PATIENCE: Duration = Duration::from_secs(10);

/// Wakes the supervisor on the signals it cares about, without polling: each handler sets its flag and writes
/// a byte to a socket pair the supervisor blocks on (with a timeout when it is waiting to restart).
struct Wake {
    rx: std::os::unix::net::UnixStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reload: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Wake {
    fn install() -> io::Result<Wake> {
        use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        let wake = Wake {
            rx,
            stop: Default::default(),
            reload: Default::default(),
        };
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, std::sync::Arc::clone(&wake.stop))?;
        }
        signal_hook::flag::register(SIGHUP, std::sync::Arc::clone(&wake.reload))?;
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGCHLD] {
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        Ok(wake)
    }

}

impl keeper::Wake for Wake {
    /// Blocks until a signal arrives or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        use std::io::Read;
        let _ = self
            .rx
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        let mut buf = [0u8; 64];
        let _ = (&self.rx).read(&mut buf);
    }

    fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take_reload(&self) -> bool {
        self.reload
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// How the poller ended, in words for the status and the log.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match Signal::try_from(sig) {
            Ok(Signal::SIGKILL) => " (SIGKILL: killed, e.g. by the kernel's out-of-memory killer)",
            Ok(Signal::SIGSEGV) => " (SIGSEGV: a crash)",
            Ok(Signal::SIGABRT) => " (SIGABRT: aborted, e.g. a panic)",
            Ok(Signal::SIGBUS) => " (SIGBUS: a crash)",
            Ok(Signal::SIGILL) => " (SIGILL: a crash)",
            Ok(Signal::SIGFPE) => " (SIGFPE: a crash)",
            Ok(Signal::SIGTERM) => " (SIGTERM: stopped by someone else)",
            _ => "",
        };
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        format!("was killed by signal {sig}{name}{core}")
    } else {
        match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => status.to_string(),
        }
    }
}

/// For the poller: take [`POLLER_LOCK_FILE`], waiting for an orphaned poller to finish exiting. `None` if
/// another poller keeps it.
fn acquire_poller_lock(dir: &Path) -> Result<Option<File>, SupervisorError> {
    crate::files::try_lock_for(&dir.join(POLLER_LOCK_FILE), POLLER_PATIENCE).map_err(|source| {
        SupervisorError::DataDir {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// `kvvm worker`: holds the worker lock and keeps one poller (`exe poller`) running until SIGTERM, by
/// [`keeper::keep`]'s rule. SIGHUP is passed on to the poller (new settings), or ends a wait to restart early.
/// The supervisor itself does nothing else, so it stays small and has nothing to crash on.
fn supervise(
    sup: &Supervisor,
    exe: &Path,
    host: &Host,
    report: &dyn Report,
) -> Result<(), SupervisorError> {
    let Some(_lock) = sup.acquire()? else {
        log::info!(
            "another worker already holds {}; exiting",
            sup.dir().display()
        );
        return Ok(());
    };
    // A writer killed mid-write (a SIGKILLed poller) leaves a temp file beside the file it replaced.
    crate::files::remove_stale_temp_files(sup.dir());
    // The supervisor waits most of its life: keep resident only the code it runs (see crate::residency).
    crate::residency::map_only_what_is_used();
    let wake = Wake::install().map_err(|e| sup.data_err(e))?;
    let spawn = |restarts: u32, last_exit: &str| spawn_poller(exe, host, restarts, last_exit);
    keeper::keep(
        &wake,
        spawn,
        host,
        report,
        crate::residency::map_only_what_is_used,
    );
    Ok(())
}

/// A poller child of the supervisor: signalled by pid, its exit read with `waitpid`.
struct Child(std::process::Child);

impl keeper::Poller for Child {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn ask(&mut self, request: Request) {
        signal(
            self.0.id(),
            match request {
                Request::Reload => Signal::SIGHUP,
                Request::Stop => Signal::SIGTERM,
            },
        );
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn exited(&mut self) -> io::Result<Option<String>> {
        Ok(self.0.try_wait()?.map(describe_exit))
    }

    /// From our shared stderr (the worker's stderr log), which the poller inherited.
    fn last_words(&self) -> Option<String> {
        let path = fs::read_link("/proc/self/fd/2").ok()?;
        keeper::last_words(&path, self.0.id())
    }
}

/// Starts `exe poller` for `host`, told its restart count and why the last one exited; it dies with the
/// supervisor (`PR_SET_PDEATHSIG`), so a poller never outlives the one process that could restart it.
fn spawn_poller(exe: &Path, host: &Host, restarts: u32, last_exit: &str) -> io::Result<Child> {
    let mut command = Command::new(exe);
    host.pass_on(&mut command);
    command
        .arg("poller")
        .env(ENV_RESTARTS, restarts.to_string())
        .env(ENV_LAST_EXIT, last_exit)
        .env(
            crate::residency::TUNABLES_VAR,
            crate::residency::poller_tunables(),
        )
        .current_dir("/")
        .stdin(Stdio::null());
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent, and the error is a
    // bare errno: nothing allocates between fork and exec (std passes only the errno to the parent anyway).
    unsafe {
        command.pre_exec(move || {
            // A poller must not outlive its supervisor (killed alone, it could not restart it).
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
                // The supervisor is gone.
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    command.spawn().map(Child)
}
