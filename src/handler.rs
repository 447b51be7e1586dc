//! The waagent side of the contract: where the extension lives, what `HandlerEnvironment.json` says, which
//! settings sequence number is current, and the status and heartbeat files waagent reads back. Everything here
//! follows the Linux guest agent's own rules (REFERENCE.md §1) so the portal shows what the worker really did.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde::Deserialize;

/// The extension's full name, as the guest agent spells it in paths and status files.
#[cfg(unix)]
pub(crate) const EXTENSION_NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
/// The extension's full name, as the guest agent spells it in paths and status files.
#[cfg(windows)]
pub(crate) const EXTENSION_NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForWindows";

/// On Windows the agent unpacks each version into `C:\Packages\Plugins\<Publisher>.<Type>\<version>\`; the
/// worker's state lives beside the versions, in this folder of `<Publisher>.<Type>`.
#[cfg(windows)]
const WINDOWS_STATE_FOLDER: &str = "State";

/// Whether `text` is a version as the agents write it: dot-separated numbers.
fn is_version(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// How often, and how long apart, a half-written `HandlerEnvironment.json` is read again.
const ENV_READ_ATTEMPTS: u32 = 10;
const ENV_READ_PAUSE: Duration = Duration::from_millis(100);

/// Errors of the waagent layer: the extension directory, its environment file, settings files and status.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Neither `AZURE_GUEST_AGENT_EXTENSION_PATH` nor the binary's own place names the extension directory.
    #[error(
        "cannot find the extension directory: {detail}. waagent sets AZURE_GUEST_AGENT_EXTENSION_PATH; \
         when running by hand, run the binary from <extension dir>/bin/kvvm or set that variable. (The \
         standalone service is not an extension: systemd runs it, `systemctl start kvvm`.)"
    )]
    NoExtensionDir {
        /// Why the binary's place does not do.
        detail: String,
    },
    /// `HandlerEnvironment.json` cannot be read.
    #[error(
        "cannot read {path}: {source}. waagent writes this file before running any command; \
         check that the extension directory is the one waagent unpacked"
    )]
    EnvironmentUnreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: io::Error,
    },
    /// `HandlerEnvironment.json` is not what waagent writes.
    #[error(
        "{path} is not a valid HandlerEnvironment.json ({detail}); expected a JSON list whose first element \
         has a \"handlerEnvironment\" object with logFolder, configFolder, statusFolder and heartbeatFile"
    )]
    EnvironmentInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `ConfigSequenceNumber` is set but not a number.
    #[error(
        "ConfigSequenceNumber is {value:?}, which is not a whole number; waagent sets it to the number of the \
         settings file in {config_folder}"
    )]
    BadSequenceNumber {
        /// Its value.
        value: String,
        /// Where the settings files are.
        config_folder: PathBuf,
    },
    /// No `ConfigSequenceNumber` and no settings file to take the number from.
    #[error(
        "no settings file in {config_folder}: waagent writes config/<n>.settings before enable; \
         redeploy the extension with its settings"
    )]
    NoSettingsFile {
        /// Where the settings files should be.
        config_folder: PathBuf,
    },
    /// A settings file, or the folder of them, cannot be read.
    #[error("cannot read settings file {path}: {source}")]
    SettingsUnreadable {
        /// The file or folder.
        path: PathBuf,
        /// What reading it said.
        source: io::Error,
    },
    /// A status, heartbeat, `mrseq` or state file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What writing it said.
        source: io::Error,
    },
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
    /// Where kvvm writes its logs.
    pub log_folder: PathBuf,
    /// Where waagent writes `<n>.settings`.
    pub config_folder: PathBuf,
    /// Where kvvm writes `<n>.status`.
    pub status_folder: PathBuf,
    /// The heartbeat file waagent reads (`reportHeartbeat`).
    pub heartbeat_file: PathBuf,
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
pub(crate) struct Extension {
    /// The versioned directory waagent unpacked the package to.
    pub dir: PathBuf,
    /// Its `HandlerEnvironment.json`.
    pub env: HandlerEnvironment,
}

impl Extension {
    /// Finds the extension directory (`AZURE_GUEST_AGENT_EXTENSION_PATH`, else the package the running binary
    /// belongs to: `<dir>/bin/kvvm`) and loads its environment.
    pub(crate) fn locate() -> Result<Extension, HandlerError> {
        let dir = extension_dir()?;
        let env = HandlerEnvironment::load(&dir)?;
        Ok(Extension { dir, env })
    }

    /// Whether this process runs as an extension: waagent set `AZURE_GUEST_AGENT_EXTENSION_PATH`, or the binary
    /// is inside an unpacked extension package (`<dir>/bin/kvvm-<arch>` beside `<dir>/HandlerManifest.json`).
    pub(crate) fn is_here() -> bool {
        extension_dir().is_ok()
    }

    /// The extension's name, `<Publisher>.<Type>`, from its directory (Linux: `<Publisher>.<Type>-<version>`;
    /// Windows: `<Publisher>.<Type>\<version>`): a package registered under another publisher (`make package
    /// PUBLISHER=…`) keeps its own state folder and status name. A directory not named that way (a hand-made
    /// one) has the default name.
    pub(crate) fn name(&self) -> String {
        self.agent_layout()
            .map_or_else(|| EXTENSION_NAME.to_string(), |(name, _)| name)
    }

    /// The extension's name and the folder holding its versions, when the directory is laid out as the agent
    /// lays it out.
    fn agent_layout(&self) -> Option<(String, PathBuf)> {
        let leaf = self.dir.file_name()?.to_str()?;
        if cfg!(windows) {
            let plugin = self.dir.parent()?;
            let name = plugin.file_name()?.to_str()?;
            (is_version(leaf) && name.contains('.'))
                .then(|| (name.to_string(), plugin.to_path_buf()))
        } else {
            let (name, version) = leaf.rsplit_once('-')?;
            let parent = self.dir.parent()?;
            (is_version(version) && name.contains('.'))
                .then(|| (name.to_string(), parent.to_path_buf()))
        }
    }

    /// The other versions of this extension the agent has unpacked beside this one (during an update, the old
    /// or the new one), by their folder names: Linux `<Publisher>.<Type>-<version>`, Windows `<version>`. None for
    /// a Windows directory not laid out as the agent lays it out.
    pub(crate) fn other_versions(&self) -> Vec<String> {
        let (parent, prefix) = if cfg!(windows) {
            match self.agent_layout() {
                Some((_, plugin)) => (plugin, String::new()),
                None => return Vec::new(),
            }
        } else {
            match self.dir.parent() {
                Some(parent) => (parent.to_path_buf(), format!("{}-", self.name())),
                None => return Vec::new(),
            }
        };
        let own = self.dir.file_name();
        let Ok(entries) = fs::read_dir(parent) else {
            return Vec::new();
        };
        let mut others: Vec<String> = entries
            .flatten()
            .filter(|e| Some(e.file_name().as_os_str()) != own && e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            // Windows: the version folders beside `State`; Linux: `<Publisher>.<Type>-…` beside the state folder.
            .filter(|folder| folder.starts_with(&prefix) && (!cfg!(windows) || is_version(folder)))
            .collect();
        others.sort();
        others
    }

    /// Folder for the worker's lock, pid and state: beside the versioned extension directories, so that it is
    /// the same for every version (an update must find the old worker) and survives the old one's removal.
    /// Linux: `<waagent dir>/<Publisher>.<Type>`; Windows: `<Publisher>.<Type>\State`; a hand-made directory:
    /// its parent's `<default name>`.
    pub(crate) fn data_dir(&self) -> PathBuf {
        #[cfg(windows)]
        if let Some((_, plugin)) = self.agent_layout() {
            return plugin.join(WINDOWS_STATE_FOLDER);
        }
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        parent.join(self.name())
    }

    /// The file recording the most recently processed sequence number.
    pub(crate) fn mrseq_path(&self) -> PathBuf {
        self.dir.join("mrseq")
    }

    /// `config/<seq>.settings`.
    pub(crate) fn settings_path(&self, seq: u64) -> PathBuf {
        self.env.config_folder.join(format!("{seq}.settings"))
    }

    /// `status/<seq>.status`.
    pub(crate) fn status_path(&self, seq: u64) -> PathBuf {
        self.env.status_folder.join(format!("{seq}.status"))
    }

    /// The current sequence number: `ConfigSequenceNumber` if waagent set it, else the newest settings file.
    pub(crate) fn current_sequence(&self) -> Result<u64, HandlerError> {
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
    pub(crate) fn mrseq(&self) -> Option<u64> {
        fs::read_to_string(self.mrseq_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records `seq` as the most recently processed sequence number.
    pub(crate) fn write_mrseq(&self, seq: u64) -> Result<(), HandlerError> {
        write_atomically(&self.mrseq_path(), seq.to_string().as_bytes(), 0o644)
    }

    /// Reads `config/<seq>.settings` as text (an absent file reads as empty: "nothing configured").
    pub(crate) fn read_settings_text(&self, seq: u64) -> Result<String, HandlerError> {
        let path = self.settings_path(seq);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(HandlerError::SettingsUnreadable { path, source }),
        }
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
    // Linux: <dir>/bin/kvvm → <dir>; Windows: <dir>\kvvm.exe → <dir>.
    let dir = if cfg!(windows) {
        exe.parent()
    } else {
        exe.parent().and_then(Path::parent)
    };
    dir.filter(|dir| dir.join("HandlerManifest.json").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| HandlerError::NoExtensionDir {
            detail: format!(
                "{} is not inside an unpacked extension package",
                exe.display()
            ),
        })
}

/// The newest `<n>.settings` in a folder: most recently modified, highest number on a tie (waagent's rule).
pub(crate) fn newest_settings(config_folder: &Path) -> Result<Option<u64>, HandlerError> {
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

/// Writes a waagent file (status, heartbeat, `mrseq`, state) the crash-safe way ([`crate::files::write_atomically`]:
/// a temp file beside it with its final mode, fsync, rename, fsync the folder).
pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), HandlerError> {
    crate::files::write_atomically(path, contents, mode).map_err(|source| HandlerError::Write {
        path: path.to_path_buf(),
        source,
    })
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
    #[cfg(unix)]
    fn the_name_comes_from_the_directory_waagent_made() {
        let env = HandlerEnvironment {
            log_folder: "/l".into(),
            config_folder: "/c".into(),
            status_folder: "/s".into(),
            heartbeat_file: "/h".into(),
        };
        let ext = |dir: &str| Extension {
            dir: PathBuf::from(dir),
            env: env.clone(),
        };
        for (dir, name, data) in [
            (
                "/var/lib/waagent/Microsoft.Azure.KeyVault.KeyVaultForLinux-3.1.2",
                "Microsoft.Azure.KeyVault.KeyVaultForLinux",
                "/var/lib/waagent/Microsoft.Azure.KeyVault.KeyVaultForLinux",
            ),
            (
                "/var/lib/waagent/Contoso.Security.KeyVaultForLinux-0.1.0",
                "Contoso.Security.KeyVaultForLinux",
                "/var/lib/waagent/Contoso.Security.KeyVaultForLinux",
            ),
            (
                "/tmp/unpacked",
                EXTENSION_NAME,
                "/tmp/Microsoft.Azure.KeyVault.KeyVaultForLinux",
            ),
            (
                "/tmp/my-kvvm-copy",
                EXTENSION_NAME,
                "/tmp/Microsoft.Azure.KeyVault.KeyVaultForLinux",
            ),
        ] {
            assert_eq!(ext(dir).name(), name, "{dir}");
            assert_eq!(ext(dir).data_dir(), PathBuf::from(data), "{dir}");
        }
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

    #[test]
    #[cfg(windows)]
    fn the_name_and_state_folder_come_from_the_folders_the_windows_agent_made() {
        let env = HandlerEnvironment {
            log_folder: "C:\\l".into(),
            config_folder: "C:\\c".into(),
            status_folder: "C:\\s".into(),
            heartbeat_file: "C:\\h".into(),
        };
        let ext = |dir: &str| Extension {
            dir: PathBuf::from(dir),
            env: env.clone(),
        };
        for (dir, name, data) in [
            (
                "C:\\Packages\\Plugins\\Microsoft.Azure.KeyVault.KeyVaultForWindows\\3.0.2",
                "Microsoft.Azure.KeyVault.KeyVaultForWindows",
                "C:\\Packages\\Plugins\\Microsoft.Azure.KeyVault.KeyVaultForWindows\\State",
            ),
            (
                "C:\\Packages\\Plugins\\Contoso.Security.KeyVaultForWindows\\0.1.0",
                "Contoso.Security.KeyVaultForWindows",
                "C:\\Packages\\Plugins\\Contoso.Security.KeyVaultForWindows\\State",
            ),
            (
                "C:\\temp\\unpacked",
                EXTENSION_NAME,
                "C:\\temp\\Microsoft.Azure.KeyVault.KeyVaultForWindows",
            ),
        ] {
            assert_eq!(ext(dir).name(), name, "{dir}");
            assert_eq!(ext(dir).data_dir(), PathBuf::from(data), "{dir}");
        }
    }
}
