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

/// Size at which a log file is rotated, and how many rotated files are kept.
pub const ROTATE_BYTES: usize = 1024 * 1024;
pub const ROTATED_FILES: usize = 5;

/// Where the logs go.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub folder: PathBuf,
    pub file_name: &'static str,
    /// Also print to stderr (handler verbs: waagent captures it; never the detached worker).
    pub stderr: bool,
}

/// Sets up the global logger. A log folder that cannot be created is reported on stderr and logging continues
/// there: losing the log must never stop the extension from working.
pub fn init(target: &LogTarget, level: LevelFilter) -> Option<PathBuf> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = Vec::new();
    let path = target.folder.join(target.file_name);
    let file_ok = match open_rotating(&path) {
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
    let _ = CombinedLogger::init(loggers);
    file_ok.then_some(path)
}

fn open_rotating(path: &Path) -> io::Result<FileRotate<AppendCount>> {
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
    Ok(FileRotate::new(
        path,
        AppendCount::new(ROTATED_FILES),
        ContentLimit::BytesSurpassed(ROTATE_BYTES),
        Compression::None,
        None,
    ))
}
