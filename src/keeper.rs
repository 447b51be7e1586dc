//! The keeper's rule, written once for every platform: keep one poller running; restart one that ends while
//! nobody asked it to, after 1 s the first time and twice as long after each further exit in a row (at most
//! [`RESTART_MAX`]); kill and restart one whose heartbeat is older than [`STUCK_AFTER`]; pass new settings on;
//! stop when asked, or when the agent deleted the extension's folder without a command. How a poller is
//! started, asked and killed, and how the keeper is woken, is the platform's (Linux: signals, in
//! `crate::supervisor`; Windows: the service control manager's controls and the poller's stdin, in
//! `platform::windows`): each brings a [`Wake`] and a [`Poller`].

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::platform::keep_alive::{FAILURE_MARK, Report, Request};

/// How long the keeper waits before restarting a poller that exited abnormally the first time; each further
/// exit in a row doubles it, up to [`RESTART_MAX`].
pub(crate) const RESTART_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two restarts of a crash-looping poller.
pub(crate) const RESTART_MAX: Duration = Duration::from_secs(300);
/// A poller that ran this long before it exited was healthy: the next restart waits [`RESTART_FIRST`] again.
pub(crate) const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// A running poller whose heartbeat is older than this is stuck: it is killed and restarted (the agent would
/// call the handler unresponsive after 600 s).
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(300);
/// How often the keeper looks at its poller's heartbeat and at whether the extension is still installed.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(10);
/// How long the keeper gives its poller to exit after asking it to stop, before it kills it.
pub(crate) const POLLER_GRACE: Duration = Duration::from_secs(8);

/// What wakes the keeper: a request from whoever runs it (stop, new settings) or its poller's exit.
pub(crate) trait Wake {
    /// Blocks until something happens or `timeout` passes.
    fn wait(&self, timeout: Duration);
    /// Whether the keeper was asked to stop.
    fn stopping(&self) -> bool;
    /// Whether new settings were announced since the last call.
    fn take_reload(&self) -> bool;
}

/// A running poller, as the platform starts, asks and kills it.
pub(crate) trait Poller {
    /// Its process id.
    fn id(&self) -> u32;
    /// Hands it a request (it answers a stop by exiting).
    fn ask(&mut self, request: Request);
    /// Kills it at once.
    fn kill(&mut self);
    /// How it ended, in words for the status and the log, once it has; `None` while it runs.
    fn exited(&mut self) -> io::Result<Option<String>>;
    /// The reason it printed last on the keeper's stderr log before it failed, if any.
    fn last_words(&self) -> Option<String>;
}

/// Runs pollers, one at a time, started by `spawn(restarts, last_exit)`, until `wake` says stop or the
/// extension's folder is gone. `idle` runs before each long wait (Linux: drop the pages of code the keeper no
/// longer runs).
pub(crate) fn keep<P: Poller>(
    wake: &impl Wake,
    mut spawn: impl FnMut(u32, &str) -> io::Result<P>,
    host: &Host,
    report: &dyn Report,
    idle: fn(),
) {
    let mut restarts = 0u32;
    let mut last_exit = String::new();
    let mut backoff = RESTART_FIRST;
    while !wake.stopping() {
        let started = Instant::now();
        let why = match spawn(restarts, &last_exit) {
            Ok(mut poller) => {
                log::info!(
                    "poller started (pid {}){}",
                    poller.id(),
                    if restarts > 0 {
                        format!(", restart {restarts}")
                    } else {
                        String::new()
                    }
                );
                match watch(wake, &mut poller, host, started, idle) {
                    None => return,
                    Some(why) => why,
                }
            }
            Err(e) => format!("could not be started ({e})"),
        };
        if wake.stopping() {
            break;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = RESTART_FIRST;
        }
        restarts += 1;
        last_exit = why.clone();
        log::error!(
            "the poller {why}; restarting it in {} s (restart {restarts})",
            backoff.as_secs()
        );
        report.restarting(&why, restarts, backoff);
        let until = Instant::now() + backoff;
        while !wake.stopping() && Instant::now() < until && !wake.take_reload() {
            if !host.installed() {
                log::warn!("the extension directory is gone: stopping");
                return;
            }
            wake.wait(until.saturating_duration_since(Instant::now()));
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
    log::info!("worker stopping on request");
}

/// Waits for the poller to exit. `None` when it was stopped on request (the keeper is stopping), else why it
/// exited.
fn watch(
    wake: &impl Wake,
    poller: &mut impl Poller,
    host: &Host,
    started: Instant,
    idle: fn(),
) -> Option<String> {
    let heartbeat = host.heartbeat_file();
    let pid = poller.id();
    let mut killed_stuck = None;
    loop {
        if wake.take_reload() {
            poller.ask(Request::Reload);
        }
        let removed = !host.installed();
        if removed {
            log::warn!(
                "the extension directory is gone (the agent removed the extension without running disable or \
                 uninstall): stopping; installed certificates stay"
            );
        }
        if wake.stopping() || removed {
            poller.ask(Request::Stop);
            let deadline = Instant::now() + POLLER_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = poller.exited() {
                    return None;
                }
                wake.wait(Duration::from_millis(100));
            }
            poller.kill();
            return None;
        }
        match poller.exited() {
            Ok(Some(exit)) => {
                let mut why = killed_stuck.take().unwrap_or(exit);
                if let Some(words) = poller.last_words() {
                    why = format!("{why}: {words}");
                }
                return Some(why);
            }
            Ok(None) => {}
            Err(e) => return Some(format!("could not be waited for ({e})")),
        }
        let quiet = fs::metadata(&heartbeat)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if killed_stuck.is_none() && started.elapsed() > STUCK_AFTER && quiet > STUCK_AFTER {
            log::error!(
                "the poller (pid {pid}) wrote no heartbeat for {} s: killing it",
                quiet.as_secs()
            );
            killed_stuck = Some(format!(
                "stopped responding (no heartbeat for {} s) and was killed",
                quiet.as_secs()
            ));
            poller.kill();
        }
        idle();
        wake.wait(WATCH_EVERY);
    }
}

/// The last failure line the poller `pid` printed in the log `path` (the keeper's and its pollers' stderr), if
/// any: [`FAILURE_MARK`] and the pid, then the reason.
pub(crate) fn last_words(path: &Path, pid: u32) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let mark = format!("{FAILURE_MARK} (pid {pid}): ");
    String::from_utf8_lossy(&tail).lines().rev().find_map(|l| {
        l.split_once(mark.as_str())
            .map(|(_, rest)| rest.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_the_newest_failure_line_of_that_poller() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.stderr.log");
        fs::write(
            &log,
            format!(
                "{FAILURE_MARK} (pid 7): old reason\nnoise\n{FAILURE_MARK} (pid 8): another poller\n\
                 {FAILURE_MARK} (pid 7): new reason\n"
            ),
        )
        .unwrap();
        assert_eq!(last_words(&log, 7).as_deref(), Some("new reason"));
        assert_eq!(last_words(&log, 8).as_deref(), Some("another poller"));
        assert_eq!(last_words(&log, 9), None);
        assert_eq!(last_words(&dir.path().join("missing"), 7), None);
    }
}
