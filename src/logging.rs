//! Logs go to the folder waagent assigns (`logFolder`), or the service's (`/var/log/kvvm`), rotated by size so a
//! VM never fills its disk with them. Under systemd (the service) every line also goes to the journal, through
//! stderr with its syslog priority (`<3>` … `<7>`), so `journalctl -u kvvm -p warning` works. Log lines name
//! certificates, versions and hosts — never tokens or key material (those types redact their `Debug` output, and
//! nothing formats their contents).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

use crate::fluentd::{FluentdConfig, FluentdLogger};
use crate::host::Host;
use crate::settings::LoggingSettings;

/// Size at which a log file is rotated.
pub(crate) const ROTATE_BYTES: usize = 1024 * 1024;
/// How many rotated files are kept beside the live one.
pub(crate) const ROTATED_FILES: usize = 5;

/// The kvvm processes that log, each to its own file in `logFolder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Process {
    /// A waagent verb: `handler.log`.
    Handler,
    /// The supervisor (`kvvm worker`): `supervisor.log`.
    Supervisor,
    /// The poller: `kvvm.log`, and the Fluentd collector of its `loggingSettings`.
    Poller,
    /// `kvvm sync --once` in the foreground: `kvvm-sync.log`, and stderr for the operator watching it.
    Sync,
}

impl Process {
    /// Where its logs go.
    fn target(self, host: &Host) -> LogTarget {
        // The service's processes run under systemd, which keeps their stderr in the journal; the extension's
        // worker writes its stderr to a file that only holds a failing poller's last words.
        let stderr = match (self, host) {
            (Process::Sync, _) => Stderr::Plain,
            (_, Host::Service(_)) if std::env::var_os("JOURNAL_STREAM").is_some() => {
                Stderr::Journal
            }
            (Process::Supervisor | Process::Poller, Host::Service(_)) => Stderr::Plain,
            _ => Stderr::None,
        };
        LogTarget {
            folder: host.log_folder().to_path_buf(),
            file_name: match self {
                Process::Handler => "handler.log",
                Process::Supervisor => "supervisor.log",
                Process::Poller => "kvvm.log",
                Process::Sync => "kvvm-sync.log",
            },
            stderr,
        }
    }
}

/// What goes to stderr besides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// Nothing.
    None,
    /// Every line, as a terminal shows it (`kvvm sync --once`, `kvvm service` run by hand).
    Plain,
    /// Every line with its syslog priority, for the journal (`JOURNAL_STREAM` is set).
    Journal,
}

/// Where the logs go.
#[derive(Debug, Clone)]
struct LogTarget {
    /// The folder of the log file (waagent's `logFolder`).
    folder: PathBuf,
    /// The log file's name in it.
    file_name: &'static str,
    /// Also to stderr.
    stderr: Stderr,
}

/// Starts `process`'s log in the host's log folder; the poller's also goes to the Fluentd collector of
/// `forward` (its `loggingSettings`, which apply from its start: a change restarts the worker). Every kvvm
/// process that logs begins here, right after [`Host::locate`].
pub(crate) fn start(host: &Host, process: Process, forward: Option<&LoggingSettings>) {
    let level = LevelFilter::Info;
    let fluentd = forward.filter(|_| process == Process::Poller).map(|l| {
        let config = FluentdConfig {
            host: l.endpoint_host.clone(),
            port: l.endpoint_port,
            tag: l.service_name.clone(),
        };
        Box::new(FluentdLogger::start(config, level)) as Box<dyn SharedLogger>
    });
    init(&process.target(host), level, fluentd);
}

/// Sets up the global logger. A log folder that cannot be created is reported on stderr and logging continues
/// there: losing the log must never stop the extension from working.
fn init(target: &LogTarget, level: LevelFilter, extra: Option<Box<dyn SharedLogger>>) {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = Vec::new();
    let path = target.folder.join(target.file_name);
    let file_ok = match open_rotating(&path, ROTATE_BYTES) {
        Ok(writer) => {
            loggers.push(WriteLogger::new(level, config.clone(), writer));
            true
        }
        Err(e) => {
            eprintln!(
                "kvvm: cannot write logs to {}: {e}; logging to stderr only",
                path.display()
            );
            false
        }
    };
    match (target.stderr, file_ok) {
        (Stderr::Journal, _) => loggers.push(Box::new(JournalLogger { level })),
        (Stderr::Plain, _) | (Stderr::None, false) => loggers.push(TermLogger::new(
            level,
            config,
            TerminalMode::Stderr,
            ColorChoice::Never,
        )),
        (Stderr::None, true) => {}
    }
    loggers.extend(extra);
    let _ = CombinedLogger::init(loggers);
}

/// Lines for the journal: systemd reads a leading `<N>` on each stderr line as its syslog priority (`SyslogLevelPrefix`,
/// on by default) and adds the time itself.
struct JournalLogger {
    level: LevelFilter,
}

impl JournalLogger {
    fn priority(level: log::Level) -> u8 {
        match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        }
    }

    /// One record as one line: a message's own line breaks would start lines without a priority.
    fn line(record: &log::Record<'_>) -> String {
        let text = record.args().to_string().replace('\n', " ");
        format!("<{}>{text}\n", Self::priority(record.level()))
    }
}

impl log::Log for JournalLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            use std::io::Write as _;
            // One write per line, so lines of two threads never interleave.
            let _ = io::stderr().lock().write_all(Self::line(record).as_bytes());
        }
    }

    fn flush(&self) {}
}

impl SharedLogger for JournalLogger {
    fn level(&self) -> LevelFilter {
        self.level
    }

    fn config(&self) -> Option<&simplelog::Config> {
        None
    }

    fn as_log(self: Box<Self>) -> Box<dyn log::Log> {
        self
    }
}

/// Hands complete lines to the rotating file in one `write` each: simplelog writes a record in several pieces,
/// and a rotation between two pieces would split the line across two files.
struct WholeLines<W: io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: io::Write> io::Write for WholeLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            let rest = self.pending.split_off(end + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.inner.write_all(&lines)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn open_rotating(path: &Path, limit: usize) -> io::Result<impl io::Write + Send + 'static> {
    crate::files::create_folder(path.parent().unwrap_or(Path::new(".")), 0o755)?;
    Ok(WholeLines {
        inner: Rotating::open(path, limit as u64, ROTATED_FILES)?,
        pending: Vec::new(),
    })
}

/// A log file rotated by size: once it holds `limit` bytes or more, the next write first renames it to
/// `<name>.1` (`.1` to `.2`, …, the oldest of `keep` dropped) and starts a new one. (Hand-written rather than
/// the `file-rotate` crate, which brings chrono and a deflate implementation that kvvm never uses: 40 KiB of
/// each build, against the package's 3 MiB budget.)
struct Rotating {
    path: PathBuf,
    limit: u64,
    keep: usize,
    file: fs::File,
    len: u64,
}

impl Rotating {
    fn open(path: &Path, limit: u64, keep: usize) -> io::Result<Rotating> {
        let file = Self::append(path)?;
        let len = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_path_buf(),
            limit,
            keep,
            file,
            len,
        })
    }

    fn append(path: &Path) -> io::Result<fs::File> {
        fs::OpenOptions::new().create(true).append(true).open(path)
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            match fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.numbered(1))?;
        self.file = Self::append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl io::Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len >= self.limit {
            // A log that cannot rotate goes on growing rather than losing lines.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn journal_lines_carry_the_syslog_priority_and_stay_one_line() {
        let line = |level, text: &str| {
            JournalLogger::line(
                &log::Record::builder()
                    .level(level)
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        assert_eq!(line(log::Level::Error, "bad"), "<3>bad\n");
        assert_eq!(line(log::Level::Warn, "hm"), "<4>hm\n");
        assert_eq!(line(log::Level::Info, "a\nb"), "<6>a b\n");
        assert_eq!(line(log::Level::Debug, "d"), "<7>d\n");
    }

    #[test]
    fn rotates_by_size_keeping_whole_lines_and_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/kvvm.log");
        let mut w = open_rotating(&path, 1000).unwrap();
        for i in 0..200 {
            writeln!(w, "line {i:04} {}", "x".repeat(40)).unwrap();
        }
        w.flush().unwrap();
        let mut names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "kvvm.log",
                "kvvm.log.1",
                "kvvm.log.2",
                "kvvm.log.3",
                "kvvm.log.4",
                "kvvm.log.5"
            ]
        );
        for name in &names {
            let text = fs::read_to_string(path.parent().unwrap().join(name)).unwrap();
            assert!(text.len() < 1100, "{name}: {}", text.len());
            assert!(
                text.lines()
                    .all(|l| l.starts_with("line ") && l.len() == 50),
                "{name} has a split line"
            );
        }
        // The newest lines are in the live file.
        assert!(fs::read_to_string(&path).unwrap().contains("line 0199"));
    }
}
