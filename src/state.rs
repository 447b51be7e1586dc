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
use crate::status::utc_timestamp;

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
    /// One per observed certificate, in settings order.
    pub certificates: Vec<CertificateState>,
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
            io::ErrorKind::PermissionDenied => StateError::RootOnly { path: path.clone() },
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

    /// A human-readable table for `kvvm status`; `worker` is the running worker's (supervisor's) pid, `settings`
    /// how the host names the settings recorded (`settings 3`).
    pub fn render(&self, worker: Option<u32>, settings: &str) -> String {
        let worker = worker.map_or_else(|| "?".to_string(), |p| p.to_string());
        let mut out = format!(
            "worker pid {worker} · poller pid {} · {settings} · updated {}\n",
            self.pid,
            utc_timestamp(self.updated)
        );
        if let Some(why) = &self.last_exit {
            out.push_str(&format!(
                "restarted {} time(s); the last exit: the poller {why}\n",
                self.restarts
            ));
        }
        if let Some(pace) = &self.polling {
            out.push_str(&match (pace.warning(), pace.pass_s()) {
                (Some(warning), _) => format!("polling: WARNING: {warning}\n"),
                (None, Some(pass)) => format!(
                    "polling: every {} s; the last pass over {} certificate(s) took {pass:.1} s\n",
                    pace.interval_s, pace.certificates
                ),
                (None, None) => format!(
                    "polling: every {} s; no pass has finished yet\n",
                    pace.interval_s
                ),
            });
        }
        for c in &self.certificates {
            out.push_str(&format!("\n{}\n  status:      {:?}\n", c.url, c.status));
            let field = |name: &str, v: Option<String>| {
                format!("  {name:<12} {}\n", v.unwrap_or_else(|| "-".into()))
            };
            out.push_str(&field("version:", c.version.clone()));
            out.push_str(&field(
                "file:",
                c.file.as_ref().map(|p| p.display().to_string()),
            ));
            out.push_str(&field("link:", Some(c.link.display().to_string())));
            out.push_str(&field("notAfter:", c.not_after.map(utc_timestamp)));
            out.push_str(&field("last check:", c.last_check.map(utc_timestamp)));
            out.push_str(&field("last change:", c.last_change.map(utc_timestamp)));
            if let Some(reason) = &c.reason {
                out.push_str(&field("reason:", Some(reason.clone())));
            }
            if let Some(note) = &c.note {
                out.push_str(&field("note:", Some(note.clone())));
            }
            if let Some(hook) = &c.hook {
                out.push_str(&field("hook:", Some(hook.clone())));
            }
            out.push_str(&field("last error:", c.last_error.clone()));
        }
        out
    }
}

/// The reason code of the warning that a pass over the certificates takes longer than the polling interval.
pub(crate) const POLLING_BEHIND: &str = "polling-behind";

/// Version of the `kvvm status --json` document. It changes only when a field changes meaning or goes away;
/// fields may be added within a version.
pub(crate) const STATUS_SCHEMA_VERSION: u32 = 1;

/// The worker (supervisor) as `kvvm status` finds it, from its lock and pid file in the state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervision {
    /// A supervisor holds the worker lock.
    Running {
        /// Its pid, if it recorded one.
        pid: Option<u32>,
    },
    /// No worker runs: what `state.json` says is what the last one recorded.
    Stopped,
    /// The lock could not be looked at.
    Unknown {
        /// Why.
        detail: String,
    },
}

/// `kvvm status --json`: a stable document for scripts (see README, "kvvm status --json").
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a> {
    schema_version: u32,
    needs_attention: bool,
    worker: WorkerDocument<'a>,
    certificates: Vec<CertificateDocument<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerDocument<'a> {
    supervision: &'static str,
    supervision_detail: Option<&'a str>,
    supervisor_pid: Option<u32>,
    poller_pid: u32,
    settings_sequence: u64,
    updated: String,
    restarts: u32,
    last_exit: Option<&'a str>,
    initial_sync: Option<InitialSyncState>,
    polling: Option<PollingDocument>,
}

/// How the passes keep up with the interval.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PollingDocument {
    interval_seconds: u64,
    last_pass_seconds: Option<f64>,
    behind: bool,
    warning: Option<Problem<'static>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CertificateDocument<'a> {
    url: &'a str,
    state: CertStatus,
    needs_attention: bool,
    version: Option<&'a str>,
    file: Option<&'a Path>,
    link: &'a Path,
    not_after: Option<String>,
    last_check: Option<String>,
    last_change: Option<String>,
    last_success: Option<String>,
    failures: u32,
    last_error: Option<Problem<'a>>,
    warning: Option<Problem<'a>>,
    post_install: Option<&'a str>,
}

/// An error or a warning with its fixed reason code.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    reason: Option<&'a str>,
    message: std::borrow::Cow<'a, str>,
}

impl CertificateState {
    /// A failed check or a warning (expiring, not valid now, a plain secret): what `status --json` flags.
    pub fn needs_attention(&self) -> bool {
        matches!(self.status, CertStatus::Failed | CertStatus::Warning)
    }
}

impl WorkerState {
    /// The `kvvm status --json` document, and whether anything needs attention (a certificate failed or has a
    /// warning, or no worker runs): then `kvvm status --json` exits 1.
    pub fn status_json(&self, supervision: &Supervision) -> (String, bool) {
        let (name, supervisor_pid, detail) = match supervision {
            Supervision::Running { pid } => ("running", *pid, None),
            Supervision::Stopped => ("stopped", None, None),
            Supervision::Unknown { detail } => ("unknown", None, Some(detail.as_str())),
        };
        let certificates: Vec<CertificateDocument<'_>> = self
            .certificates
            .iter()
            .map(|c| CertificateDocument {
                url: &c.url,
                state: c.status,
                needs_attention: c.needs_attention(),
                version: c.version.as_deref(),
                file: c.file.as_deref(),
                link: &c.link,
                not_after: c.not_after.map(utc_timestamp),
                last_check: c.last_check.map(utc_timestamp),
                last_change: c.last_change.map(utc_timestamp),
                last_success: c.last_success.map(utc_timestamp),
                failures: c.failures,
                last_error: c.last_error.as_deref().map(|message| Problem {
                    reason: c.reason.as_deref(),
                    message: message.into(),
                }),
                warning: match (&c.status, &c.note) {
                    (CertStatus::Failed, _) | (_, None) => None,
                    (_, Some(note)) => Some(Problem {
                        reason: c.reason.as_deref(),
                        message: note.into(),
                    }),
                },
                post_install: c.hook.as_deref(),
            })
            .collect();
        let polling = self.polling.map(|pace| PollingDocument {
            interval_seconds: pace.interval_s,
            last_pass_seconds: pace.pass_s(),
            behind: pace.behind(),
            warning: pace.warning().map(|message| Problem {
                reason: Some(POLLING_BEHIND),
                message: message.into(),
            }),
        });
        let behind = polling.as_ref().is_some_and(|p| p.behind);
        let needs_attention =
            name != "running" || behind || certificates.iter().any(|c| c.needs_attention);
        let doc = StatusDocument {
            schema_version: STATUS_SCHEMA_VERSION,
            needs_attention,
            worker: WorkerDocument {
                supervision: name,
                supervision_detail: detail,
                supervisor_pid,
                poller_pid: self.pid,
                settings_sequence: self.seq,
                updated: utc_timestamp(self.updated),
                restarts: self.restarts,
                last_exit: self.last_exit.as_deref(),
                initial_sync: self.initial_sync,
                polling,
            },
            certificates,
        };
        let json = serde_json::to_string_pretty(&doc).expect("the status document serialises");
        (json, needs_attention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            certificates: vec![c],
        };
        state.save(dir.path()).unwrap();
        assert_eq!(WorkerState::load(dir.path()).ok(), Some(state.clone()));
        let text = state.render(Some(8), "settings 3");
        assert!(
            text.starts_with("worker pid 8 · poller pid 9 · settings 3"),
            "{text}"
        );
        assert!(text.contains("last error:  403"), "{text}");
        assert!(text.contains("reason:      vault-forbidden"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(WorkerState::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn status_json_is_the_documented_shape() {
        let mut ok = CertificateState::pending(
            "https://v.vault.azure.net/secrets/a",
            PathBuf::from("/s/v.a"),
        );
        ok.status = CertStatus::Installed;
        ok.version = Some("a".repeat(32));
        ok.file = Some(PathBuf::from(format!("/s/v.a.{}", "a".repeat(32))));
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        ok.not_after = Some(t);
        ok.last_check = Some(t);
        ok.last_success = Some(t);
        let mut state = WorkerState {
            seq: 4,
            pid: 77,
            updated: t,
            restarts: 0,
            last_exit: None,
            initial_sync: Some(InitialSyncState::Done),
            polling: Some(Pace {
                interval_s: 5,
                certificates: 1,
                last_pass_ms: Some(1200),
                overdue_ms: None,
            }),
            certificates: vec![ok.clone()],
        };
        let (json, attention) = state.status_json(&Supervision::Running { pid: Some(76) });
        assert!(!attention);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["schemaVersion"], 1);
        assert_eq!(doc["needsAttention"], false);
        assert_eq!(doc["worker"]["supervision"], "running");
        assert_eq!(doc["worker"]["supervisorPid"], 76);
        assert_eq!(doc["worker"]["pollerPid"], 77);
        assert_eq!(doc["worker"]["settingsSequence"], 4);
        assert_eq!(doc["worker"]["initialSync"], "done");
        assert_eq!(
            doc["worker"]["polling"],
            serde_json::json!({"intervalSeconds": 5, "lastPassSeconds": 1.2, "behind": false, "warning": null})
        );
        let c = &doc["certificates"][0];
        assert_eq!(c["url"], "https://v.vault.azure.net/secrets/a");
        assert_eq!(c["state"], "installed");
        assert_eq!(c["notAfter"], "2027-01-15T08:00:00Z");
        assert_eq!(c["lastSuccess"], "2027-01-15T08:00:00Z");
        assert_eq!(c["lastError"], serde_json::Value::Null);

        let mut bad = ok;
        bad.url = "https://v.vault.azure.net/secrets/b".into();
        bad.status = CertStatus::Failed;
        bad.failures = 2;
        bad.last_error = Some("403 Forbidden".into());
        bad.reason = Some("vault-forbidden".into());
        state.certificates.push(bad);
        let (json, attention) = state.status_json(&Supervision::Running { pid: None });
        assert!(attention);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            doc["certificates"][1]["lastError"],
            serde_json::json!({"reason": "vault-forbidden", "message": "403 Forbidden"})
        );
        assert_eq!(doc["certificates"][1]["needsAttention"], true);
        state.certificates.truncate(1);
        let (_, attention) = state.status_json(&Supervision::Stopped);
        assert!(attention, "a stopped worker needs attention");

        // A pass longer than the interval needs attention, with the reason and the measured figures.
        state.polling = Some(Pace {
            interval_s: 5,
            certificates: 1,
            last_pass_ms: Some(7600),
            overdue_ms: None,
        });
        let (json, attention) = state.status_json(&Supervision::Running { pid: Some(76) });
        assert!(attention, "a poller that falls behind needs attention");
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let polling = &doc["worker"]["polling"];
        assert_eq!(polling["behind"], true);
        assert_eq!(polling["lastPassSeconds"], 7.6);
        assert_eq!(polling["warning"]["reason"], "polling-behind");
        let message = polling["warning"]["message"].as_str().unwrap();
        assert!(
            message.contains("pollingIntervalInS (5 s)") && message.contains("took 7.6 s"),
            "{message}"
        );
        assert!(
            state
                .render(Some(76), "settings 4")
                .contains("polling: WARNING: polling cannot keep up")
        );
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
