//! Logs go to the folder waagent assigns (`logFolder`), rotated by size so a VM never fills its disk with them.
//! Log lines name certificates, versions and hosts — never tokens or key material (those types redact their
//! `Debug` output, and nothing formats their contents).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

use crate::fluentd::{FluentdConfig, FluentdLogger};
use crate::handler::Extension;
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
    fn target(self, ext: &Extension) -> LogTarget {
        LogTarget {
            folder: ext.env.log_folder.clone(),
            file_name: match self {
                Process::Handler => "handler.log",
                Process::Supervisor => "supervisor.log",
                Process::Poller => "kvvm.log",
                Process::Sync => "kvvm-sync.log",
            },
            stderr: self == Process::Sync,
        }
    }
}

/// Where the logs go.
#[derive(Debug, Clone)]
struct LogTarget {
    /// The folder of the log file (waagent's `logFolder`).
    folder: PathBuf,
    /// The log file's name in it.
    file_name: &'static str,
    /// Also print to stderr (`kvvm sync --once`, run by hand; never the detached worker).
    stderr: bool,
}

/// Starts `process`'s log in the extension's `logFolder`; the poller's also goes to the Fluentd collector of
/// `forward` (its `loggingSettings`, which apply from its start: a change restarts the worker). Every kvvm
/// process that logs begins here, right after [`Extension::locate`].
pub(crate) fn start(ext: &Extension, process: Process, forward: Option<&LoggingSettings>) {
    let level = LevelFilter::Info;
    let fluentd = forward.filter(|_| process == Process::Poller).map(|l| {
        let config = FluentdConfig {
            host: l.endpoint_host.clone(),
            port: l.endpoint_port,
            tag: l.service_name.clone(),
        };
        Box::new(FluentdLogger::start(config, level)) as Box<dyn SharedLogger>
    });
    init(&process.target(ext), level, fluentd);
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
    if target.stderr || !file_ok {
        loggers.push(TermLogger::new(
            level,
            config,
            TerminalMode::Stderr,
            ColorChoice::Never,
        ));
    }
    loggers.extend(extra);
    let _ = CombinedLogger::init(loggers);
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
    use std::os::unix::fs::DirBuilderExt;
    let folder = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(folder)?;
    // Probe writability first: FileRotate panics rather than returning errors on a bad folder.
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let file = FileRotate::new(
        path,
        AppendCount::new(ROTATED_FILES),
        ContentLimit::BytesSurpassed(limit),
        Compression::None,
        None,
    );
    Ok(WholeLines {
        inner: file,
        pending: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
