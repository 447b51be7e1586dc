//! The waagent side of the contract: where the extension lives, what `HandlerEnvironment.json` says, which
//! settings sequence number is current, and the status and heartbeat files waagent reads back. Everything here
//! follows the Linux guest agent's own rules (REFERENCE.md §1) so the portal shows what the worker really did.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The extension's full name, as waagent spells it in paths and status files.
pub const EXTENSION_NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";

/// How often, and how long apart, a half-written `HandlerEnvironment.json` is read again.
const ENV_READ_ATTEMPTS: u32 = 10;
const ENV_READ_PAUSE: Duration = Duration::from_millis(100);

/// waagent truncates status files above this size; we keep ours below it.
pub const MAX_STATUS_BYTES: usize = 128 * 1024;

/// Errors of the waagent layer: the extension directory, its environment file, settings files and status.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(
        "cannot find the extension directory: {detail}. waagent sets AZURE_GUEST_AGENT_EXTENSION_PATH; \
         when running by hand, run the binary from <extension dir>/bin/kvvm or set that variable"
    )]
    NoExtensionDir { detail: String },
    #[error(
        "cannot read {path}: {source}. waagent writes this file before running any command; \
         check that the extension directory is the one waagent unpacked"
    )]
    EnvironmentUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a valid HandlerEnvironment.json ({detail}); expected a JSON list whose first element \
         has a \"handlerEnvironment\" object with logFolder, configFolder, statusFolder and heartbeatFile"
    )]
    EnvironmentInvalid { path: PathBuf, detail: String },
    #[error(
        "ConfigSequenceNumber is {value:?}, which is not a whole number; waagent sets it to the number of the \
         settings file in {config_folder}"
    )]
    BadSequenceNumber {
        value: String,
        config_folder: PathBuf,
    },
    #[error(
        "no settings file in {config_folder}: waagent writes config/<n>.settings before enable; \
         redeploy the extension with its settings"
    )]
    NoSettingsFile { config_folder: PathBuf },
    #[error("cannot read settings file {path}: {source}")]
    SettingsUnreadable { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl HandlerError {
    /// A short fixed identifier for the status file and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            HandlerError::NoExtensionDir { .. } => "no-extension-dir",
            HandlerError::EnvironmentUnreadable { .. } => "handler-environment-unreadable",
            HandlerError::EnvironmentInvalid { .. } => "handler-environment-invalid",
            HandlerError::BadSequenceNumber { .. } => "bad-sequence-number",
            HandlerError::NoSettingsFile { .. } => "no-settings-file",
            HandlerError::SettingsUnreadable { .. } => "settings-unreadable",
            HandlerError::Write { .. } => "write-failed",
        }
    }
}

/// The folders waagent assigns to this extension (the `handlerEnvironment` object).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerEnvironment {
    pub log_folder: PathBuf,
    pub config_folder: PathBuf,
    pub status_folder: PathBuf,
    pub heartbeat_file: PathBuf,
    #[serde(default)]
    pub events_folder: Option<PathBuf>,
}

#[derive(Deserialize)]
struct EnvironmentEntry {
    #[serde(rename = "handlerEnvironment")]
    handler_environment: HandlerEnvironment,
}

impl HandlerEnvironment {
    /// Parses the text of `HandlerEnvironment.json`; unknown keys are ignored.
    pub fn parse(text: &str) -> Result<HandlerEnvironment, String> {
        let entries: Vec<EnvironmentEntry> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        entries
            .into_iter()
            .next()
            .map(|e| e.handler_environment)
            .ok_or_else(|| "the list is empty".to_string())
    }

    /// Reads `<dir>/HandlerEnvironment.json`, retrying briefly: waagent may be writing it while we read.
    pub fn load(extension_dir: &Path) -> Result<HandlerEnvironment, HandlerError> {
        let path = extension_dir.join("HandlerEnvironment.json");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match fs::read_to_string(&path) {
                Ok(text) => HandlerEnvironment::parse(&text).map_err(|detail| {
                    HandlerError::EnvironmentInvalid {
                        path: path.clone(),
                        detail,
                    }
                }),
                Err(source) => Err(HandlerError::EnvironmentUnreadable {
                    path: path.clone(),
                    source,
                }),
            };
            match outcome {
                Ok(env) => return Ok(env),
                Err(e) if attempt >= ENV_READ_ATTEMPTS => return Err(e),
                Err(_) => thread::sleep(ENV_READ_PAUSE),
            }
        }
    }
}

/// One installed copy of the extension: its directory and the folders waagent gave it.
#[derive(Debug, Clone)]
pub struct Extension {
    pub dir: PathBuf,
    pub env: HandlerEnvironment,
}

impl Extension {
    /// Finds the extension directory (`AZURE_GUEST_AGENT_EXTENSION_PATH`, else the package the running binary
    /// belongs to: `<dir>/bin/kvvm`) and loads its environment.
    pub fn locate() -> Result<Extension, HandlerError> {
        let dir = extension_dir()?;
        let env = HandlerEnvironment::load(&dir)?;
        Ok(Extension { dir, env })
    }

    /// Folder for the worker's lock, pid and state: beside the versioned extension directories, so that it is
    /// the same for every version (an update must find the old worker) and survives the old one's removal.
    pub fn data_dir(&self) -> PathBuf {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        parent.join(EXTENSION_NAME)
    }

    pub fn mrseq_path(&self) -> PathBuf {
        self.dir.join("mrseq")
    }

    pub fn settings_path(&self, seq: u64) -> PathBuf {
        self.env.config_folder.join(format!("{seq}.settings"))
    }

    pub fn status_path(&self, seq: u64) -> PathBuf {
        self.env.status_folder.join(format!("{seq}.status"))
    }

    /// The current sequence number: `ConfigSequenceNumber` if waagent set it, else the newest settings file.
    pub fn current_sequence(&self) -> Result<u64, HandlerError> {
        match std::env::var("ConfigSequenceNumber") {
            Ok(value) if !value.trim().is_empty() => {
                value
                    .trim()
                    .parse()
                    .map_err(|_| HandlerError::BadSequenceNumber {
                        value,
                        config_folder: self.env.config_folder.clone(),
                    })
            }
            _ => newest_settings(&self.env.config_folder)?.ok_or_else(|| {
                HandlerError::NoSettingsFile {
                    config_folder: self.env.config_folder.clone(),
                }
            }),
        }
    }

    /// The most recently processed sequence number (`mrseq`), if any.
    pub fn mrseq(&self) -> Option<u64> {
        fs::read_to_string(self.mrseq_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn write_mrseq(&self, seq: u64) -> Result<(), HandlerError> {
        write_atomically(&self.mrseq_path(), seq.to_string().as_bytes(), 0o644)
    }

    /// Reads `config/<seq>.settings` as text (an absent file reads as empty: "nothing configured").
    pub fn read_settings_text(&self, seq: u64) -> Result<String, HandlerError> {
        let path = self.settings_path(seq);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(HandlerError::SettingsUnreadable { path, source }),
        }
    }

    pub fn write_status(&self, seq: u64, status: &StatusReport) -> Result<(), HandlerError> {
        fs::create_dir_all(&self.env.status_folder).map_err(|source| HandlerError::Write {
            path: self.env.status_folder.clone(),
            source,
        })?;
        write_atomically(&self.status_path(seq), &status.to_json(), 0o644)
    }

    pub fn write_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), HandlerError> {
        write_atomically(&self.env.heartbeat_file, &heartbeat.to_json(), 0o644)
    }
}

fn extension_dir() -> Result<PathBuf, HandlerError> {
    if let Some(dir) =
        std::env::var_os("AZURE_GUEST_AGENT_EXTENSION_PATH").filter(|d| !d.is_empty())
    {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| HandlerError::NoExtensionDir {
        detail: format!("current_exe: {e}"),
    })?;
    // <dir>/bin/kvvm → <dir>
    exe.parent()
        .and_then(Path::parent)
        .filter(|dir| dir.join("HandlerManifest.json").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| HandlerError::NoExtensionDir {
            detail: format!(
                "{} is not inside an unpacked extension package",
                exe.display()
            ),
        })
}

/// The newest `<n>.settings` in a folder: most recently modified, highest number on a tie (waagent's rule).
pub fn newest_settings(config_folder: &Path) -> Result<Option<u64>, HandlerError> {
    let entries = match fs::read_dir(config_folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HandlerError::SettingsUnreadable {
                path: config_folder.to_path_buf(),
                source,
            });
        }
    };
    let mut best: Option<(std::time::SystemTime, u64)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".settings"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.is_none_or(|b| (modified, seq) > b) {
            best = Some((modified, seq));
        }
    }
    Ok(best.map(|(_, seq)| seq))
}

/// Writes a file the crash-safe way: a temp file beside it with its final mode, fsync, rename, fsync the folder.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), HandlerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| HandlerError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The status values waagent accepts, exactly as it spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Transitioning,
    Success,
    Warning,
    Error,
}

/// The operation a status file reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Install,
    Enable,
    Disable,
    Update,
    Uninstall,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Install => "Install",
            Operation::Enable => "Enable",
            Operation::Disable => "Disable",
            Operation::Update => "Update",
            Operation::Uninstall => "Uninstall",
        }
    }
}

/// One `substatus` entry: one per observed certificate, plus notes such as ignored settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubStatus {
    pub name: String,
    pub status: Status,
    pub code: i32,
    pub message: String,
}

/// A whole `status/<seq>.status` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub operation: Operation,
    pub status: Status,
    pub code: i32,
    pub message: String,
    pub substatus: Vec<SubStatus>,
}

#[derive(Serialize)]
struct FormattedMessage<'a> {
    lang: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct SubStatusJson<'a> {
    name: &'a str,
    status: Status,
    code: i32,
    #[serde(rename = "formattedMessage")]
    formatted_message: FormattedMessage<'a>,
}

#[derive(Serialize)]
struct StatusBodyJson<'a> {
    name: &'static str,
    operation: &'static str,
    status: Status,
    code: i32,
    #[serde(rename = "formattedMessage")]
    formatted_message: FormattedMessage<'a>,
    substatus: Vec<SubStatusJson<'a>>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    version: f64,
    #[serde(rename = "timestampUTC")]
    timestamp_utc: String,
    status: StatusBodyJson<'a>,
}

/// waagent's timestamp format: `2026-11-22T10:00:00Z`.
pub fn utc_timestamp(at: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

impl StatusReport {
    pub fn new(operation: Operation, status: Status, message: impl Into<String>) -> StatusReport {
        let code = if status == Status::Error { 1 } else { 0 };
        StatusReport {
            operation,
            status,
            code,
            message: message.into(),
            substatus: Vec::new(),
        }
    }

    /// The JSON waagent reads, kept under its 128 KiB limit by shortening messages if ever needed.
    pub fn to_json(&self) -> Vec<u8> {
        let mut limit = usize::MAX;
        loop {
            let doc = [StatusJson {
                version: 1.0,
                timestamp_utc: utc_timestamp(time::OffsetDateTime::now_utc()),
                status: StatusBodyJson {
                    name: EXTENSION_NAME,
                    operation: self.operation.as_str(),
                    status: self.status,
                    code: self.code,
                    formatted_message: FormattedMessage {
                        lang: "en-US",
                        message: clip_str(&self.message, limit),
                    },
                    substatus: self
                        .substatus
                        .iter()
                        .map(|s| SubStatusJson {
                            name: clip_str(&s.name, limit),
                            status: s.status,
                            code: s.code,
                            formatted_message: FormattedMessage {
                                lang: "en-US",
                                message: clip_str(&s.message, limit),
                            },
                        })
                        .collect(),
                },
            }];
            let bytes = serde_json::to_vec(&doc).expect("status serialises");
            if bytes.len() <= MAX_STATUS_BYTES || limit < 64 {
                return bytes;
            }
            limit = (bytes.len() / (self.substatus.len() * 2 + 1))
                .min(limit / 2)
                .max(32);
        }
    }
}

fn clip_str(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The heartbeat file waagent reads when `reportHeartbeat` is true; refreshed by the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub message: String,
}

impl Heartbeat {
    pub fn to_json(&self) -> Vec<u8> {
        let doc = serde_json::json!([{
            "version": 1.0,
            "heartbeat": {
                "status": "Ready",
                "code": 0,
                "formattedMessage": {"lang": "en-US", "message": self.message},
            }
        }]);
        serde_json::to_vec(&doc).expect("heartbeat serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_ignores_unknown_keys() {
        let text = r#"[{"name":"Microsoft.Azure.KeyVault.KeyVaultForLinux","version":1.0,"handlerEnvironment":{
            "logFolder":"/var/log/azure/x","configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h",
            "deploymentid":"d","rolename":"r","instance":"i","hostResolverAddress":"1.2.3.4"}}]"#;
        let env = HandlerEnvironment::parse(text).unwrap();
        assert_eq!(env.log_folder, PathBuf::from("/var/log/azure/x"));
        assert_eq!(env.events_folder, None);
    }

    #[test]
    fn a_half_written_environment_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("HandlerEnvironment.json");
        let full = r#"[{"handlerEnvironment":{"logFolder":"/l","configFolder":"/c","statusFolder":"/s","heartbeatFile":"/h"}}]"#;
        fs::write(&path, &full[..40]).unwrap();
        let writer = {
            let path = path.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(250));
                fs::write(&path, full).unwrap();
            })
        };
        let env = HandlerEnvironment::load(dir.path()).unwrap();
        writer.join().unwrap();
        assert_eq!(env.status_folder, PathBuf::from("/s"));
        // A file that never becomes valid is an error naming the file, after the retries.
        fs::write(&path, "[").unwrap();
        let err = HandlerEnvironment::load(dir.path()).unwrap_err();
        assert_eq!(err.reason(), "handler-environment-invalid");
        assert!(
            err.to_string()
                .contains("HandlerEnvironment.json is not a valid"),
            "{err}"
        );
    }

    #[test]
    fn environment_rejects_empty_list_and_garbage() {
        assert_eq!(
            HandlerEnvironment::parse("[]").unwrap_err(),
            "the list is empty"
        );
        assert!(HandlerEnvironment::parse("[{\"handlerEnv").is_err());
    }

    #[test]
    fn status_json_has_waagent_shape() {
        let mut report = StatusReport::new(Operation::Enable, Status::Warning, "m");
        report.substatus.push(SubStatus {
            name: "c".into(),
            status: Status::Error,
            code: 1,
            message: "x".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        let s = &v[0]["status"];
        assert_eq!(v[0]["version"], 1.0);
        assert_eq!(s["status"], "warning");
        assert_eq!(s["operation"], "Enable");
        assert_eq!(s["formattedMessage"]["lang"], "en-US");
        assert_eq!(s["substatus"][0]["status"], "error");
        assert_eq!(s["substatus"][0]["formattedMessage"]["message"], "x");
        let ts = v[0]["timestampUTC"].as_str().unwrap();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn oversized_status_is_clipped_under_waagent_limit() {
        let mut report = StatusReport::new(Operation::Enable, Status::Success, "m".repeat(200_000));
        for i in 0..50 {
            report.substatus.push(SubStatus {
                name: format!("c{i}"),
                status: Status::Success,
                code: 0,
                message: "é".repeat(10_000),
            });
        }
        let bytes = report.to_json();
        assert!(bytes.len() <= MAX_STATUS_BYTES, "{}", bytes.len());
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
    }

    #[test]
    fn newest_settings_prefers_mtime_then_number() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_settings(dir.path()).unwrap(), None);
        let t = std::time::SystemTime::now();
        for (seq, age) in [(1u64, 10u64), (2, 0), (10, 5), (3, 0)] {
            let p = dir.path().join(format!("{seq}.settings"));
            fs::write(&p, "").unwrap();
            let f = fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t - Duration::from_secs(age)).unwrap();
        }
        fs::write(dir.path().join("notes.txt"), "").unwrap();
        assert_eq!(newest_settings(dir.path()).unwrap(), Some(3));
    }
}
