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
    #[error("cannot use the worker's state folder {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot start the worker {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error(
        "the worker exited right after start ({status}); its last words are in {stderr_log}, the rest in the log folder"
    )]
    DiedAtStart { status: String, stderr_log: PathBuf },
    #[error("the worker (pid {pid}) did not report in within {waited:?}; see {stderr_log}")]
    StartTimeout {
        pid: u32,
        waited: Duration,
        stderr_log: PathBuf,
    },
    #[error("the worker (pid {pid}) still holds its lock after SIGKILL")]
    Unkillable { pid: u32 },
    #[error(
        "a process holds the worker lock {lock} but never recorded its pid; find it with `fuser {lock}` and stop it"
    )]
    NoPid { lock: PathBuf },
}

impl SupervisorError {
    pub fn reason(&self) -> &'static str {
        match self {
            SupervisorError::DataDir { .. } => "worker-state-dir",
            SupervisorError::Spawn { .. } => "worker-spawn-failed",
            SupervisorError::DiedAtStart { .. } => "worker-died-at-start",
            SupervisorError::StartTimeout { .. } => "worker-start-timeout",
            SupervisorError::Unkillable { .. } => "worker-unkillable",
            SupervisorError::NoPid { .. } => "worker-no-pid",
        }
    }
}

/// What `state` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Running { pid: Option<u32> },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    AlreadyRunning { pid: Option<u32> },
    Started { pid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    NotRunning,
    Stopped { pid: u32, forced: bool },
}

/// Held by the running worker; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct WorkerLock {
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
pub struct Supervisor {
    dir: PathBuf,
}

impl Supervisor {
    pub fn new(dir: impl Into<PathBuf>) -> Supervisor {
        Supervisor { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_err(&self, source: io::Error) -> SupervisorError {
        SupervisorError::DataDir {
            path: self.dir.clone(),
            source,
        }
    }

    fn open_lock(&self) -> Result<File, SupervisorError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.data_err(e))?;
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(LOCK_FILE))
            .map_err(|e| self.data_err(e))
    }

    fn read_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether a worker holds the lock now (and its pid, if it wrote one).
    pub fn state(&self) -> Result<WorkerState, SupervisorError> {
        let file = self.open_lock()?;
        match file.try_lock() {
            Ok(()) => Ok(WorkerState::Stopped),
            Err(TryLockError::WouldBlock) => Ok(WorkerState::Running {
                pid: self.read_pid(),
            }),
            Err(TryLockError::Error(e)) => Err(self.data_err(e)),
        }
    }

    /// For the worker itself: take the lock and record our pid, or `None` if another worker has it.
    pub fn acquire(&self) -> Result<Option<WorkerLock>, SupervisorError> {
        let file = self.open_lock()?;
        let deadline = Instant::now() + ACQUIRE_PATIENCE;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(POLL * 5)
                }
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(self.data_err(e)),
            }
        }
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

    /// Starts `exe worker` detached from the caller (own session, stdio not inherited, cwd `/`), unless a
    /// worker already runs. Waits until the new worker holds the lock, so a worker that cannot start is an
    /// error here rather than a silent absence.
    pub fn start(
        &self,
        exe: &Path,
        extension_dir: &Path,
        stderr_log: &Path,
    ) -> Result<StartOutcome, SupervisorError> {
        if let WorkerState::Running { pid } = self.state()? {
            return Ok(StartOutcome::AlreadyRunning { pid });
        }
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .map_err(|source| SupervisorError::Spawn {
                exe: stderr_log.to_path_buf(),
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
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
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
                if let WorkerState::Running { pid } = self.state()? {
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
    pub fn notify_reload(&self) -> Result<bool, SupervisorError> {
        match self.state()? {
            WorkerState::Running { pid: Some(pid) } => Ok(signal(pid, libc::SIGHUP)),
            _ => Ok(false),
        }
    }

    /// Stops the worker: SIGTERM to its process group, up to `grace` for it to let go of the lock, then SIGKILL.
    pub fn stop(&self, grace: Duration) -> Result<StopOutcome, SupervisorError> {
        let pid = match self.state()? {
            WorkerState::Stopped => {
                let _ = fs::remove_file(self.dir.join(PID_FILE));
                return Ok(StopOutcome::NotRunning);
            }
            WorkerState::Running { pid: None } => {
                // It holds the lock but has not written its pid yet: give it a moment.
                thread::sleep(Duration::from_millis(100));
                match self.state()? {
                    WorkerState::Running { pid: Some(pid) } => pid,
                    WorkerState::Stopped => return Ok(StopOutcome::NotRunning),
                    WorkerState::Running { pid: None } => {
                        return Err(SupervisorError::Unkillable { pid: 0 });
                    }
                }
            }
            WorkerState::Running { pid: Some(pid) } => pid,
        };
        signal_group(pid, libc::SIGTERM);
        if self.wait_stopped(grace)? {
            return Ok(StopOutcome::Stopped { pid, forced: false });
        }
        signal_group(pid, libc::SIGKILL);
        if self.wait_stopped(Duration::from_secs(5))? {
            let _ = fs::remove_file(self.dir.join(PID_FILE));
            return Ok(StopOutcome::Stopped { pid, forced: true });
        }
        Err(SupervisorError::Unkillable { pid })
    }

    fn wait_stopped(&self, patience: Duration) -> Result<bool, SupervisorError> {
        let deadline = Instant::now() + patience;
        loop {
            if self.state()? == WorkerState::Stopped {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions.
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// The worker is a session leader, so its pid is also its process group: signal hooks it runs as well.
fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: as above.
    if pgid <= 1 || unsafe { libc::kill(-pgid, sig) } != 0 {
        signal(pid, sig);
    }
}
