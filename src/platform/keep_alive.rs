//! Seam (b): how the worker is kept alive. `commands` starts, reloads, stops and asks about the worker only
//! through [`KeepAlive`]; the poller takes its own lock and reads what its keeper tells it through the names
//! here. Linux: the `setsid` supervisor (`crate::supervisor`), which systemd runs in the foreground for the
//! service. Windows: the Windows service `kvvm` (`platform::windows`). Both restart the poller by the rule
//! in `crate::keeper`.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use crate::host::Host;

/// Whether a worker is running, as [`KeepAlive::state`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Supervision {
    /// A worker runs (its pid, when it could be read).
    Running { pid: Option<u32> },
    /// None runs.
    Stopped,
}

/// What [`KeepAlive::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartOutcome {
    /// A worker was running already.
    AlreadyRunning { pid: Option<u32> },
    /// A worker was started.
    Started { pid: u32 },
}

/// What [`KeepAlive::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// No worker was running.
    NotRunning,
    /// The worker stopped (`forced`: it had to be killed after the grace period).
    Stopped { pid: u32, forced: bool },
}

/// What the keeper reports while it restarts a poller.
pub(crate) trait Report {
    /// The poller exited abnormally (`why`) and is restarted in `wait` (restart number `restarts`).
    fn restarting(&self, why: &str, restarts: u32, wait: Duration);
}

/// Environment the keeper passes to the poller it starts: restarts so far, and why the last one exited.
pub(crate) const ENV_RESTARTS: &str = "KVVM_RESTARTS";
/// See [`ENV_RESTARTS`].
pub(crate) const ENV_LAST_EXIT: &str = "KVVM_LAST_EXIT";
/// The file in the host's log folder that the worker's pollers print to (their last words on a failure).
pub(crate) const STDERR_LOG: &str = "worker.stderr.log";
/// The words a poller prints on stderr when it fails, which the keeper quotes in the status.
pub const FAILURE_MARK: &str = "kvvm poller failed";

/// What a keeper asks of the poller it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// The settings changed: read them again.
    Reload,
    /// Stop (the worker is being stopped, or the machine shuts down).
    Stop,
}

/// Keeps exactly one worker (a keeper and its poller) running per host, whatever runs the commands.
pub(crate) trait KeepAlive: Sized {
    /// Why the worker could not be started, stopped or asked.
    type Error: std::error::Error;

    /// The keeper of the worker whose state (locks, pid) lives in `dir`.
    fn new(dir: &Path) -> Self;

    /// Whether a worker runs.
    fn state(&self) -> Result<Supervision, Self::Error>;

    /// Starts the worker (`exe worker`, from `cwd`, its stderr to `stderr_log`) unless one runs.
    fn start(&self, exe: &Path, cwd: &Path, stderr_log: &Path)
    -> Result<StartOutcome, Self::Error>;

    /// Tells a running worker that its settings changed; `false` if none runs.
    fn notify_reload(&self) -> Result<bool, Self::Error>;

    /// Stops the worker, killing it if it has not stopped after `grace`.
    fn stop(&self, grace: Duration) -> Result<StopOutcome, Self::Error>;

    /// Stops the worker for good: also removes what would start it again (Windows: its service, which would
    /// start at boot). Linux's supervisor leaves nothing behind, so there this is [`KeepAlive::stop`].
    fn remove(&self, grace: Duration) -> Result<StopOutcome, Self::Error>;

    /// The keeper's own work, in the foreground: one poller (`exe poller`), restarted whenever it ends, until
    /// told to stop. Returns at once if another keeper runs for the same host.
    fn keep_running(&self, exe: &Path, host: &Host, report: &dyn Report)
    -> Result<(), Self::Error>;

    /// For the poller: its own lock in `dir` (one poller, even while an orphaned one is still exiting);
    /// `None` if another poller keeps it.
    fn hold_poller_lock(dir: &Path) -> Result<Option<File>, Self::Error>;

    /// For the poller: hands each [`Request`] its keeper makes to `on`, from a thread of its own that waits for
    /// them (Linux: SIGHUP is [`Request::Reload`], SIGTERM and SIGINT [`Request::Stop`]).
    fn forward_requests(on: impl FnMut(Request) + Send + 'static) -> std::io::Result<()>;
}
