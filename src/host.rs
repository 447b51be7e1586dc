//! Where a kvvm worker lives. As an Azure VM extension, waagent gives it an extension directory,
//! `HandlerEnvironment.json` and `config/<n>.settings`, and runs its verbs; as the standalone service
//! (`kvvm.service`, from the .deb/.rpm packages or a VM Application), it has one settings file and two folders of
//! its own, and systemd runs it. The worker, the supervisor, the status and the logs ask the [`Host`] for their
//! paths and settings, so no other module knows which of the two it is.
//!
//! Which one a command is in is decided once, by where the binary runs from: waagent's variable
//! `AZURE_GUEST_AGENT_EXTENSION_PATH`, or a binary inside an unpacked extension package (`<dir>/bin/kvvm`), is the
//! extension; anything else (`/usr/bin/kvvm`) is the service.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::handler::{Extension, HandlerError};
use crate::platform::paths::SERVICE_RELOAD;
use crate::settings::{self, Configured, SettingsError};

pub use crate::platform::paths::{SERVICE_LOG_DIR, SERVICE_SETTINGS, SERVICE_STATE_DIR};
/// The variables that move the service's files (`kvvm service` passes them on to its poller).
pub(crate) const ENV_SETTINGS: &str = "KVVM_SETTINGS";
/// See [`ENV_SETTINGS`].
pub(crate) const ENV_STATE_DIR: &str = "KVVM_STATE_DIR";
/// See [`ENV_SETTINGS`].
pub(crate) const ENV_LOG_DIR: &str = "KVVM_LOG_DIR";
/// The name the service's status file gives itself (the extension's is waagent's `<Publisher>.<Type>`).
pub(crate) const SERVICE_NAME: &str = "kvvm";

/// Why the settings to run with cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The extension's folders or settings files.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The service's settings file is missing.
    #[error(
        "the settings file {path} does not exist: put the extension's public settings there (the JSON given to \
         the extension as `settings`, e.g. {{\"secretsManagementSettings\": {{\"observedCertificates\": \
         [\"https://myvault.vault.azure.net/secrets/mycert\"]}}}}), then run `{reload}`",
        reload = SERVICE_RELOAD
    )]
    NoSettingsFile {
        /// The file.
        path: PathBuf,
    },
    /// The service's settings file cannot be read.
    #[error("cannot read the settings file {path}: {source}")]
    SettingsUnreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The settings are invalid.
    #[error("invalid settings in {path}: {source}")]
    Invalid {
        /// The settings file.
        path: PathBuf,
        /// What is wrong with them.
        source: Box<SettingsError>,
    },
}

impl HostError {
    /// A short fixed identifier for the status file and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            HostError::Handler(e) => e.reason(),
            HostError::NoSettingsFile { .. } => "no-settings-file",
            HostError::SettingsUnreadable { .. } => "settings-unreadable",
            HostError::Invalid { source, .. } => source.reason(),
        }
    }
}

/// The standalone service's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The settings: the extension's public settings JSON (or a whole waagent settings file).
    pub settings_file: PathBuf,
    /// Locks, `state.json`, `status.json`, `heartbeat.json`, the store locks.
    pub state_dir: PathBuf,
    /// `supervisor.log`, `kvvm.log` (the journal gets the same lines).
    pub log_dir: PathBuf,
}

impl Service {
    /// The service's files as `KVVM_SETTINGS`, `KVVM_STATE_DIR` and `KVVM_LOG_DIR` say, else the defaults.
    pub fn from_env() -> Service {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Service {
            settings_file: var(ENV_SETTINGS, SERVICE_SETTINGS),
            state_dir: var(ENV_STATE_DIR, SERVICE_STATE_DIR),
            log_dir: var(ENV_LOG_DIR, SERVICE_LOG_DIR),
        }
    }

    /// The settings file's modification time in nanoseconds since 1970 (0 when it cannot be read): which
    /// version of the file a worker runs with.
    pub(crate) fn settings_generation(&self) -> u64 {
        std::fs::metadata(&self.settings_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .unwrap_or(0)
    }

    /// The variables that give a child process (the poller) these files.
    fn env(&self) -> [(&'static str, OsString); 3] {
        [
            (ENV_SETTINGS, self.settings_file.clone().into_os_string()),
            (ENV_STATE_DIR, self.state_dir.clone().into_os_string()),
            (ENV_LOG_DIR, self.log_dir.clone().into_os_string()),
        ]
    }
}

/// The settings a worker runs with, where they came from, and what they ask for.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// Which settings these are: the extension's sequence number; for the service, its settings file's
    /// modification time (nanoseconds since 1970), so `kvvm wait` can tell whether the worker has taken up the
    /// file as it is now.
    pub seq: u64,
    /// What they ask for.
    pub configured: Configured,
}

/// Where this kvvm lives.
#[derive(Debug, Clone)]
pub(crate) enum Host {
    /// An Azure VM extension, run by waagent.
    Extension(Extension),
    /// The standalone service, run by systemd.
    Service(Service),
}

impl Host {
    /// The host this command runs in (see the module documentation).
    pub(crate) fn locate() -> Result<Host, HandlerError> {
        if Extension::is_here() {
            Extension::locate().map(Host::Extension)
        } else {
            Ok(Host::Service(Service::from_env()))
        }
    }

    /// kvvm's state folder: `worker.lock`, `poller.lock`, `state.json`, `store-locks/`.
    pub(crate) fn data_dir(&self) -> PathBuf {
        match self {
            Host::Extension(ext) => ext.data_dir(),
            Host::Service(s) => s.state_dir.clone(),
        }
    }

    /// Where the log files go.
    pub(crate) fn log_folder(&self) -> &Path {
        match self {
            Host::Extension(ext) => &ext.env.log_folder,
            Host::Service(s) => &s.log_dir,
        }
    }

    /// The heartbeat file (waagent reads it; the supervisor watches its age).
    pub(crate) fn heartbeat_file(&self) -> PathBuf {
        match self {
            Host::Extension(ext) => ext.env.heartbeat_file.clone(),
            Host::Service(s) => s.state_dir.join("heartbeat.json"),
        }
    }

    /// The status file of settings `seq` (waagent's `status/<seq>.status`; the service's `status.json`).
    pub(crate) fn status_path(&self, seq: u64) -> PathBuf {
        match self {
            Host::Extension(ext) => ext.status_path(seq),
            Host::Service(s) => s.state_dir.join("status.json"),
        }
    }

    /// The name the status file reports under.
    pub(crate) fn name(&self) -> String {
        match self {
            Host::Extension(ext) => ext.name(),
            Host::Service(_) => SERVICE_NAME.to_string(),
        }
    }

    /// The settings to run with: the extension's `mrseq` (else the newest settings file), or the service's file.
    pub(crate) fn settings(&self) -> Result<Loaded, HostError> {
        match self {
            Host::Extension(ext) => {
                let seq = match ext.mrseq() {
                    Some(seq) => seq,
                    None => ext.current_sequence()?,
                };
                let text = ext.read_settings_text(seq)?;
                let configured =
                    settings::parse_settings_file(&text).map_err(|e| HostError::Invalid {
                        path: ext.settings_path(seq),
                        source: Box::new(e),
                    })?;
                Ok(Loaded { seq, configured })
            }
            Host::Service(s) => Ok(Loaded {
                seq: s.settings_generation(),
                configured: read_service_settings(&s.settings_file)?,
            }),
        }
    }

    /// Which settings a worker should be running with now (see [`Loaded::seq`]); `None` when the extension has
    /// none yet.
    pub(crate) fn wanted_seq(&self) -> Option<u64> {
        match self {
            Host::Extension(ext) => ext.mrseq(),
            Host::Service(s) => Some(s.settings_generation()),
        }
    }

    /// How messages name settings `seq`: `settings 3`, or `settings /etc/kvvm/settings.json`.
    pub(crate) fn settings_label(&self, seq: u64) -> String {
        match self {
            Host::Extension(_) => format!("settings {seq}"),
            Host::Service(s) => format!("settings {}", s.settings_file.display()),
        }
    }

    /// The sequence number whose status a supervisor reports on while it restarts the poller.
    pub(crate) fn current_seq(&self) -> Option<u64> {
        match self {
            Host::Extension(ext) => ext.mrseq().or_else(|| ext.current_sequence().ok()),
            Host::Service(s) => Some(s.settings_generation()),
        }
    }

    /// Gives a kvvm process started from this one (the worker, the poller) the same host.
    pub(crate) fn pass_on(&self, command: &mut Command) {
        match self {
            Host::Extension(ext) => {
                command.env("AZURE_GUEST_AGENT_EXTENSION_PATH", &ext.dir);
            }
            Host::Service(s) => {
                command.envs(s.env());
            }
        }
    }

    /// Whether the host is still there: waagent may delete an extension directory without running a command
    /// (the worker then stops). The service is there as long as it runs.
    pub(crate) fn installed(&self) -> bool {
        match self {
            Host::Extension(ext) => ext.dir.join("HandlerManifest.json").exists(),
            Host::Service(_) => true,
        }
    }

    /// What to say about fixing the settings: which file, and how the worker learns of the change.
    pub(crate) fn settings_hint(&self) -> String {
        match self {
            Host::Extension(_) => {
                "Add secretsManagementSettings.observedCertificates to the extension's settings"
                    .to_string()
            }
            Host::Service(s) => format!(
                "Put the extension's public settings (secretsManagementSettings.observedCertificates, …) in {} and \
                 run `{SERVICE_RELOAD}`",
                s.settings_file.display()
            ),
        }
    }
}

/// Reads the service's settings file: the public settings object (what users give KeyVaultForLinux as
/// `settings`), or a whole waagent settings file (`{"runtimeSettings": [...]}`) copied from a VM. An empty file,
/// `null` or `{}` is nothing to watch (the package ships `{}`), not an error.
pub(crate) fn read_service_settings(path: &Path) -> Result<Configured, HostError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => HostError::NoSettingsFile {
            path: path.to_path_buf(),
        },
        _ => HostError::SettingsUnreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse_service_settings(&text).map_err(|source| HostError::Invalid {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The text of a service settings file: the public settings object (what users give KeyVaultForLinux as
/// `settings`), or a whole waagent settings file (`{"runtimeSettings": [...]}`) copied from a VM. An empty file,
/// `null` or `{}` is nothing to watch (the package ships `{}`), not an error.
pub fn parse_service_settings(text: &str) -> Result<Configured, SettingsError> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    let nothing = |why: &str| Configured::Nothing {
        reason: why.to_string(),
    };
    match body {
        "" => return Ok(nothing("the settings file is empty")),
        "null" => return Ok(nothing("the settings file holds null")),
        _ => {}
    }
    let value: serde_json::Value = match serde_json::from_str(body) {
        Ok(value) => value,
        // The waagent parser words a syntax error with its line and column.
        Err(_) => return settings::parse_settings_file(body),
    };
    match &value {
        serde_json::Value::Object(map) if map.is_empty() => {
            Ok(nothing("the settings file holds no settings yet ({})"))
        }
        serde_json::Value::Object(map)
            if map
                .keys()
                .any(|k| k.eq_ignore_ascii_case("runtimeSettings")) =>
        {
            settings::parse_settings_file(body)
        }
        _ => settings::parse_public_settings(&value).map(Configured::Settings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_settings_are_public_settings_or_a_whole_settings_file() {
        let public = r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/web"]}}"#;
        let wrapped = format!(
            r#"{{"runtimeSettings": [{{"handlerSettings": {{"publicSettings": {public}}}}}]}}"#
        );
        for text in [public.to_string(), wrapped, format!("\u{feff}{public}\n")] {
            match parse_service_settings(&text) {
                Ok(Configured::Settings(s)) => {
                    assert_eq!(s.observed_certificates.len(), 1, "{text}");
                    assert_eq!(s.observed_certificates[0].secret.name, "web");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        for (text, why) in [
            ("", "empty"),
            ("  \n", "empty"),
            ("null", "null"),
            ("{}", "no settings yet"),
        ] {
            match parse_service_settings(text) {
                Ok(Configured::Nothing { reason }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_service_settings_name_the_setting_as_the_extension_does() {
        let e = parse_service_settings(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/certificates/web"]}}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("secretsManagementSettings.observedCertificates[0]"),
            "{e}"
        );
        let e = parse_service_settings("{\"secretsManagementSettings\": ").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn a_missing_settings_file_says_where_to_put_it_and_how_to_apply_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let e = read_service_settings(&path).unwrap_err();
        assert_eq!(e.reason(), "no-settings-file");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(SERVICE_RELOAD), "{text}");
    }
}
