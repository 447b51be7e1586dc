//! What the worker knows about each observed certificate: installed version, paths, expiry, last check, last
//! error. It is the single source for the status file's substatus entries and for `kvvm status`, and it is
//! saved (world-readable, no secrets in it) in the worker's state folder so an operator can read it without
//! root-only surprises.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

use crate::handler::{HandlerError, write_atomically};
use crate::schedule::Pace;
use crate::settings::{LoggingSettings, ObservedCertificate};
use crate::sync::{Checked, SyncError};

/// File name of the saved state, in the worker's state folder.
pub(crate) const STATE_FILE: &str = "state.json";

/// Why the saved state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No worker has saved its state yet (the extension was never enabled, or the state folder was removed).
    #[error("no worker has recorded anything yet ({path} is missing): is the extension enabled?")]
    Missing {
        /// The state file.
        path: PathBuf,
    },
    /// The file is there but this user may not read it (waagent's folders belong to root).
    #[error("{path} is readable by root only (waagent's folders are private)")]
    RootOnly {
        /// The state file.
        path: PathBuf,
    },
    /// The file is there but reading it failed.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The state file.
        path: PathBuf,
        /// What reading it said.
        source: io::Error,
    },
    /// The file holds something that is not a worker state (truncated, edited, another program's).
    #[error("{path} is not a worker state file ({source})")]
    NotState {
        /// The state file.
        path: PathBuf,
        /// Where and why the JSON does not match.
        source: serde_json::Error,
    },
}

impl StateError {
    /// A short fixed identifier for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Missing { .. } => "state-missing",
            StateError::RootOnly { .. } => "state-root-only",
            StateError::Unreadable { .. } => "state-unreadable",
            StateError::NotState { .. } => "state-invalid",
        }
    }
}

/// Where one certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// Not checked yet.
    Pending,
    /// The newest version is installed.
    Installed,
    /// Installed, but something needs attention (expiring soon, expired, a plain secret ignored).
    Warning,
    /// The last check failed (what was installed before is still in place).
    Failed,
}

/// The record of one observed certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateState {
    /// The observed URL, as in the settings.
    pub url: String,
    /// Where it stands.
    pub status: CertStatus,
    /// The installed version.
    pub version: Option<String>,
    /// The installed version's file.
    pub file: Option<PathBuf>,
    /// The link applications use.
    pub link: PathBuf,
    /// The installed leaf's notAfter.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// When the last check ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
    /// When a new version was last installed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_change: Option<OffsetDateTime>,
    /// When a check last succeeded (the newest version is installed), for the metrics and `status --json`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    /// Why the last check failed.
    pub last_error: Option<String>,
    /// The fixed reason code of the last error or warning (e.g. `vault-forbidden`), for the status file.
    #[serde(default)]
    pub reason: Option<String>,
    /// Failed checks in a row.
    pub failures: u32,
    /// A warning that is not an error (e.g. expiry soon), shown in the substatus.
    pub note: Option<String>,
    /// How the post-install command last ran for this certificate (exit code and output tail).
    #[serde(default)]
    pub hook: Option<String>,
    /// The file (Windows: the certificate, by thumbprint) of the version the installed one replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<PathBuf>,
    /// What the destination said of the installed version (Windows: its chain's root is not trusted here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
}

/// `at` as waagent writes timestamps (RFC 3339, UTC, whole seconds): the status file, `state.json`, `kvvm
/// status`.
pub(crate) fn utc_timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .truncate_to_second()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, to the second (the precision the status file and `state.json` show).
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

impl CertificateState {
    /// A certificate not checked yet.
    pub fn pending(url: &str, link: PathBuf) -> CertificateState {
        CertificateState {
            url: url.to_string(),
            status: CertStatus::Pending,
            version: None,
            file: None,
            link,
            not_after: None,
            last_check: None,
            last_change: None,
            last_success: None,
            last_error: None,
            reason: None,
            failures: 0,
            note: None,
            hook: None,
            replaced: None,
            remark: None,
        }
    }

    /// Records how one check of `cert` ended, at `now`, and logs it: the one place where a certificate's
    /// record changes with a check (the poller and `kvvm sync --once` both call it). A check cut short because
    /// the worker stops changes nothing.
    pub(crate) fn record(
        &mut self,
        cert: &ObservedCertificate,
        result: Result<&Checked, &SyncError>,
        now: OffsetDateTime,
        expiry_warning_days: u32,
    ) {
        let name = cert.secret.to_string();
        match result {
            Err(SyncError::Stopped) => {}
            Err(e @ SyncError::NotACertificate { .. }) => {
                self.last_check = Some(now);
                self.status = CertStatus::Warning;
                self.failures = 0;
                self.last_error = None;
                self.reason = Some(e.reason().to_string());
                self.note = Some(e.to_string());
                log::warn!("{name}: {e}");
            }
            Err(e) => {
                let kept = match &self.version {
                    Some(v) => format!(" (version {v} stays installed)"),
                    None => String::new(),
                };
                self.record_failure(cert.url.as_str(), &format!("{e}{kept}"), e.reason(), now);
                // The log line has the "(version … stays installed)" hint; last_error keeps the error alone.
                self.last_error = Some(e.to_string());
            }
            Ok(c) => self.record_success(&name, c, now, expiry_warning_days),
        }
    }

    fn record_success(
        &mut self,
        name: &str,
        c: &Checked,
        now: OffsetDateTime,
        expiry_warning_days: u32,
    ) {
        self.last_check = Some(now);
        self.last_success = Some(now);
        if c.changed {
            self.last_change = Some(now);
            self.hook = None;
            if let Some(old) = self.file.take().filter(|old| *old != c.file) {
                self.replaced = Some(old);
            }
            self.remark = c.remark.clone();
            log::info!(
                "{name}: installed version {} as {} (link {}{})",
                c.version,
                c.file.display(),
                c.link.display(),
                c.serial
                    .as_ref()
                    .map(|s| format!(", serial {s}"))
                    .unwrap_or_default()
            );
        } else {
            log::debug!("{name}: version {} is current", c.version);
            // A check that did something to the version in place (Windows: its key's access brought up to date)
            // says so; one that found it current says nothing, and what the install said stays.
            if c.remark.is_some() {
                self.remark = c.remark.clone();
            }
        }
        for removed in &c.removed {
            log::info!("{name}: removed old version file {}", removed.display());
        }
        self.version = Some(c.version.clone());
        self.file = Some(c.file.clone());
        self.link = c.link.clone();
        if let Some(t) = c.not_after {
            self.not_after = Some(t);
        }
        self.failures = 0;
        self.last_error = None;
        self.reason = None;
        let mut notes = Vec::new();
        if let Some(w) = &c.validity_warning {
            notes.push(w.clone());
            self.reason = Some("certificate-not-valid-now".into());
        }
        if let Some(w) = expiry_warning(self.not_after, now, expiry_warning_days) {
            log::warn!("{name}: {w}");
            notes.push(w);
            self.reason
                .get_or_insert_with(|| "certificate-expiring".into());
        }
        self.status = if notes.is_empty() {
            CertStatus::Installed
        } else {
            CertStatus::Warning
        };
        self.note = (!notes.is_empty()).then(|| notes.join(" "));
    }

    /// Records a check of the certificate at `url` that failed for `why` (reason code `reason`), and logs it.
    fn record_failure(&mut self, url: &str, why: &str, reason: &str, now: OffsetDateTime) {
        self.last_check = Some(now);
        self.reason = Some(reason.to_string());
        self.status = CertStatus::Failed;
        self.failures += 1;
        self.last_error = Some(why.to_string());
        log::error!("{url}: {why}");
    }

    /// Records how the post-install command ran for this certificate (`summary`: exit code and output tail); a
    /// failure makes it a warning.
    pub(crate) fn post_install_ran(&mut self, summary: &str, ok: bool) {
        self.hook = Some(summary.to_string());
        if !ok {
            self.status = CertStatus::Warning;
            self.reason
                .get_or_insert_with(|| "post-install-failed".into());
            self.note = Some(match self.note.take() {
                Some(n) => format!("{n} {summary}"),
                None => summary.to_string(),
            });
        }
    }

    /// A few words on where it stands.
    pub fn summary(&self) -> &'static str {
        match self.status {
            CertStatus::Pending => "not checked yet",
            CertStatus::Installed => "installed",
            CertStatus::Warning => "installed, with a warning",
            CertStatus::Failed if self.version.is_some() => {
                "check failed; the installed version stays in place"
            }
            CertStatus::Failed => "not installed",
        }
    }
}

/// Where `requireInitialSync` stands, as the poller records it for `kvvm status --json` and `kvvm wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InitialSyncState {
    /// The settings do not ask for it: the worker reports success as soon as it polls.
    NotRequired,
    /// Not every certificate is installed yet; failing ones are retried.
    Trying,
    /// Every certificate was installed.
    Done,
    /// It gave up after its attempts (polling goes on).
    Failed,
}

/// The expiry alarm: the installed (and newest) version expires within `days` days, or has expired.
pub(crate) fn expiry_warning(
    not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
    days: u32,
) -> Option<String> {
    if days == 0 {
        return None;
    }
    let not_after = not_after?;
    let left = not_after - now;
    if left > time::Duration::days(i64::from(days)) {
        return None;
    }
    let when = if left.is_negative() {
        format!("expired on {}", utc_timestamp(not_after))
    } else {
        format!(
            "expires on {} (in {} day(s))",
            utc_timestamp(not_after),
            left.whole_days()
        )
    };
    Some(format!(
        "the installed certificate {when} and the vault has no newer version: Key Vault's automatic renewal \
         may be failing (check the certificate's lifetime action and issuer), or renew it by hand"
    ))
}

/// Everything the worker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerState {
    /// The settings' sequence number.
    pub seq: u64,
    /// The poller's pid.
    pub pid: u32,
    /// When this was written.
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
    /// How often the supervisor restarted the poller since the worker started.
    #[serde(default)]
    pub restarts: u32,
    /// Why the poller last exited abnormally, if it did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// How long the last pass over every certificate took, against the polling interval.
    #[serde(default)]
    pub polling: Option<Pace>,
    /// Where `requireInitialSync` stands (`None`: nothing to watch, or recorded by an older kvvm).
    #[serde(default)]
    pub initial_sync: Option<InitialSyncState>,
    /// Where the worker's log goes besides its files, as its processes set it up when they started (a reload
    /// does not change it; `None`: recorded by an older kvvm).
    #[serde(default)]
    pub log_sinks: Option<LogSinks>,
    /// One per observed certificate, in settings order.
    pub certificates: Vec<CertificateState>,
}

/// The log sinks a worker was started with: `enable` restarts the worker when new settings ask for others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSinks {
    /// The Fluentd collector (`loggingSettings`), if any: host, port, service name.
    pub fluentd: Option<(String, u16, String)>,
}

impl LogSinks {
    /// The sinks `logging` (`Settings::logging`) sets up.
    pub fn of(logging: Option<&LoggingSettings>) -> LogSinks {
        LogSinks {
            fluentd: logging.map(|l| {
                (
                    l.endpoint_host.clone(),
                    l.endpoint_port,
                    l.service_name.clone(),
                )
            }),
        }
    }
}

impl WorkerState {
    /// The state file in the worker's state folder `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Saves the state in `dir` (world-readable: it holds no secrets), atomically.
    pub fn save(&self, dir: &Path) -> Result<(), HandlerError> {
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomically(&Self::path(dir), &json, 0o644)
    }

    /// The saved state, or why there is none: missing (no worker has run yet), not readable, or not a state
    /// file.
    pub fn load(dir: &Path) -> Result<WorkerState, StateError> {
        let path = Self::path(dir);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StateError::Missing { path: path.clone() },
            // Windows refuses to read a folder with "access denied": that is not a question of rights.
            io::ErrorKind::PermissionDenied if !path.is_dir() => {
                StateError::RootOnly { path: path.clone() }
            }
            _ => StateError::Unreadable {
                path: path.clone(),
                source,
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::NotState { path, source })
    }

    /// Finds the record of `url`, or `None`.
    pub fn certificate(&self, url: &str) -> Option<&CertificateState> {
        self.certificates.iter().find(|c| c.url == url)
    }
}

impl CertificateState {
    /// A failed check or a warning (expiring, not valid now, a plain secret): what `status --json` flags.
    pub fn needs_attention(&self) -> bool {
        matches!(self.status, CertStatus::Failed | CertStatus::Warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful check that installed (`changed`) or found `file`.
    fn checked(file: &str, changed: bool, remark: Option<&str>) -> Checked {
        Checked {
            version: "0".repeat(32),
            file: PathBuf::from(file),
            link: PathBuf::from("Cert:\\LocalMachine\\MY"),
            changed,
            not_after: None,
            serial: None,
            validity_warning: None,
            removed: Vec::new(),
            folder: None,
            remark: remark.map(str::to_string),
        }
    }

    #[test]
    fn a_rotation_names_the_version_it_replaced_and_the_install_keeps_its_remark() {
        let cert = crate::settings::parse_public_settings(&serde_json::json!({
            "secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/c"]}
        }))
        .unwrap()
        .observed_certificates
        .remove(0);
        let mut c = CertificateState::pending(cert.url.as_str(), PathBuf::from("/s"));
        let record = |c: &mut CertificateState, checked: &Checked| {
            c.record(&cert, Ok(checked), now(), 0);
        };
        record(
            &mut c,
            &checked(
                "Cert:\\LocalMachine\\MY\\OLD",
                true,
                Some("root not trusted"),
            ),
        );
        assert_eq!(c.replaced, None, "the first install replaces nothing");
        assert_eq!(c.remark.as_deref(), Some("root not trusted"));
        assert_eq!(c.status, CertStatus::Installed, "a remark is not a warning");
        record(
            &mut c,
            &checked("Cert:\\LocalMachine\\MY\\OLD", false, None),
        );
        assert_eq!(
            c.remark.as_deref(),
            Some("root not trusted"),
            "kept while unchanged"
        );
        record(
            &mut c,
            &checked(
                "Cert:\\LocalMachine\\MY\\OLD",
                false,
                Some("access updated"),
            ),
        );
        assert_eq!(
            c.remark.as_deref(),
            Some("access updated"),
            "what a check did in place is said"
        );
        record(&mut c, &checked("Cert:\\LocalMachine\\MY\\NEW", true, None));
        assert_eq!(
            c.replaced,
            Some(PathBuf::from("Cert:\\LocalMachine\\MY\\OLD"))
        );
        assert_eq!(c.remark, None, "the new version's install said nothing");
        let text = crate::status::certificate_substatus(&c).message;
        assert!(
            text.contains(
                "file Cert:\\LocalMachine\\MY\\NEW; replaced Cert:\\LocalMachine\\MY\\OLD"
            ),
            "{text}"
        );
        // A check that finds the same file again keeps what it replaced.
        record(&mut c, &checked("Cert:\\LocalMachine\\MY\\NEW", true, None));
        assert_eq!(
            c.replaced,
            Some(PathBuf::from("Cert:\\LocalMachine\\MY\\OLD"))
        );
    }

    #[test]
    fn round_trip_render_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CertificateState::pending(
            "https://v.vault.azure.net/secrets/c",
            PathBuf::from("/s/v.c"),
        );
        assert_eq!(c.summary(), "not checked yet");
        c.status = CertStatus::Failed;
        c.last_error = Some("403".into());
        c.reason = Some("vault-forbidden".into());
        c.last_check = Some(now());
        assert_eq!(c.summary(), "not installed");
        c.version = Some("0".repeat(32));
        assert!(c.summary().contains("installed version stays in place"));
        let state = WorkerState {
            seq: 3,
            pid: 9,
            updated: now(),
            restarts: 1,
            last_exit: Some("was killed by signal 9".into()),
            polling: None,
            initial_sync: Some(InitialSyncState::Trying),
            log_sinks: None,
            certificates: vec![c],
        };
        state.save(dir.path()).unwrap();
        assert_eq!(WorkerState::load(dir.path()).ok(), Some(state.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(WorkerState::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn load_says_why_there_is_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = WorkerState::path(dir.path());
        let err = WorkerState::load(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Missing { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no worker has recorded anything yet ({} is missing): is the extension enabled?",
                path.display()
            )
        );
        std::fs::write(&path, "{\"seq\": 1").unwrap();
        let err = WorkerState::load(dir.path()).unwrap_err();
        assert_eq!(err.reason(), "state-invalid");
        assert!(
            err.to_string()
                .starts_with(&format!("{} is not a worker state file (", path.display())),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = WorkerState::load(dir.path()).unwrap_err();
        assert_eq!(err.reason(), "state-unreadable");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_state_file_of_the_previous_release_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            WorkerState::path(dir.path()),
            r#"{"seq":1,"pid":5,"updated":"2026-11-22T10:00:00Z","certificates":[{"url":"https://v.vault.azure.net/secrets/c",
            "status":"installed","version":"00000000000000000000000000000000","file":"/s/v.c.0","link":"/s/v.c",
            "notAfter":"2027-01-01T00:00:00Z","lastCheck":"2026-11-22T10:00:00Z","lastChange":null,"lastError":null,
            "failures":0,"note":null}]}"#,
        )
        .unwrap();
        let state = WorkerState::load(dir.path()).expect("loads");
        assert_eq!(
            state.certificates[0]
                .not_after
                .map(utc_timestamp)
                .as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(state.certificates[0].reason, None);
    }
}
