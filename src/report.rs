//! What an operator reads: `kvvm status` (a table) and `kvvm status --json` (a stable document for scripts),
//! from what the worker recorded (`state.json`) and whether a worker holds its lock. The record itself, and how
//! a check changes it, is `state`'s; waagent's status file is `status`'s.

use std::path::Path;

use serde::Serialize;

use crate::platform::keep_alive::Supervision;
use crate::schedule::Pace;
use crate::state::{CertStatus, InitialSyncState, WorkerState, utc_timestamp};

/// `kvvm status`: `recorded` as a human-readable table; `worker` is the running worker's (supervisor's) pid,
/// `settings` how the host names the settings recorded (`settings 3`).
pub(crate) fn text(recorded: &WorkerState, worker: Option<u32>, settings: &str) -> String {
    let worker = worker.map_or_else(|| "?".to_string(), |p| p.to_string());
    let mut out = format!(
        "worker pid {worker} · poller pid {} · {settings} · updated {}\n",
        recorded.pid,
        utc_timestamp(recorded.updated)
    );
    if let Some(why) = &recorded.last_exit {
        out.push_str(&format!(
            "restarted {} time(s); the last exit: the poller {why}\n",
            recorded.restarts
        ));
    }
    if let Some(pace) = &recorded.polling {
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
    for c in &recorded.certificates {
        out.push_str(&format!("\n{}\n  status:      {:?}\n", c.url, c.status));
        let field = |name: &str, v: Option<String>| {
            format!("  {name:<12} {}\n", v.unwrap_or_else(|| "-".into()))
        };
        out.push_str(&field("version:", c.version.clone()));
        out.push_str(&field(
            "file:",
            c.file.as_ref().map(|p| p.display().to_string()),
        ));
        if let Some(old) = &c.replaced {
            out.push_str(&field("replaced:", Some(old.display().to_string())));
        }
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
        if let Some(remark) = &c.remark {
            out.push_str(&field("remark:", Some(remark.clone())));
        }
        if let Some(hook) = &c.hook {
            out.push_str(&field("hook:", Some(hook.clone())));
        }
        out.push_str(&field("last error:", c.last_error.clone()));
    }
    out
}

/// Version of the `kvvm status --json` document. It changes only when a field changes meaning or goes away;
/// fields may be added within a version.
pub(crate) const STATUS_SCHEMA_VERSION: u32 = 1;

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
    replaced: Option<&'a Path>,
    link: &'a Path,
    not_after: Option<String>,
    last_check: Option<String>,
    last_change: Option<String>,
    last_success: Option<String>,
    failures: u32,
    last_error: Option<Problem<'a>>,
    warning: Option<Problem<'a>>,
    post_install: Option<&'a str>,
    remark: Option<&'a str>,
}

/// An error or a warning with its fixed reason code.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    reason: Option<&'a str>,
    message: std::borrow::Cow<'a, str>,
}

/// The `kvvm status --json` document of `recorded`, with the worker as its lock says (`supervision`, or why the
/// lock could not be looked at), and whether anything needs attention (a certificate failed or has a warning,
/// polling falls behind, or no worker runs): then `kvvm status --json` exits 1.
pub(crate) fn json(
    recorded: &WorkerState,
    supervision: &Result<Supervision, String>,
) -> (String, bool) {
    let (name, supervisor_pid, detail) = match supervision {
        Ok(Supervision::Running { pid }) => ("running", *pid, None),
        Ok(Supervision::Stopped) => ("stopped", None, None),
        Err(detail) => ("unknown", None, Some(detail.as_str())),
    };
    let certificates: Vec<CertificateDocument<'_>> = recorded
        .certificates
        .iter()
        .map(|c| CertificateDocument {
            url: &c.url,
            state: c.status,
            needs_attention: c.needs_attention(),
            version: c.version.as_deref(),
            file: c.file.as_deref(),
            replaced: c.replaced.as_deref(),
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
            remark: c.remark.as_deref(),
        })
        .collect();
    let polling = recorded.polling.map(|pace| PollingDocument {
        interval_seconds: pace.interval_s,
        last_pass_seconds: pace.pass_s(),
        behind: pace.behind(),
        warning: pace.warning().map(|message| Problem {
            reason: Some(Pace::REASON),
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
            poller_pid: recorded.pid,
            settings_sequence: recorded.seq,
            updated: utc_timestamp(recorded.updated),
            restarts: recorded.restarts,
            last_exit: recorded.last_exit.as_deref(),
            initial_sync: recorded.initial_sync,
            polling,
        },
        certificates,
    };
    let json = serde_json::to_string_pretty(&doc).expect("the status document serialises");
    (json, needs_attention)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use time::OffsetDateTime;

    use super::*;
    use crate::state::CertificateState;

    #[test]
    fn the_table_names_the_worker_the_settings_and_each_certificate() {
        let mut c = CertificateState::pending(
            "https://v.vault.azure.net/secrets/c",
            PathBuf::from("/s/v.c"),
        );
        c.status = CertStatus::Failed;
        c.last_error = Some("403".into());
        c.reason = Some("vault-forbidden".into());
        let state = WorkerState {
            seq: 3,
            pid: 9,
            updated: crate::state::now(),
            restarts: 1,
            last_exit: Some("was killed by signal 9".into()),
            polling: None,
            initial_sync: Some(InitialSyncState::Trying),
            log_sinks: None,
            certificates: vec![c],
        };
        let text = text(&state, Some(8), "settings 3");
        assert!(
            text.starts_with("worker pid 8 · poller pid 9 · settings 3"),
            "{text}"
        );
        assert!(text.contains("last error:  403"), "{text}");
        assert!(text.contains("reason:      vault-forbidden"), "{text}");
        assert!(
            text.contains("restarted 1 time(s); the last exit: the poller was killed by signal 9")
        );
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
            log_sinks: None,
            certificates: vec![ok.clone()],
        };
        let (document, attention) =
            super::json(&state, &Ok(Supervision::Running { pid: Some(76) }));
        assert!(!attention);
        let doc: serde_json::Value = serde_json::from_str(&document).unwrap();
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
        let (document, attention) = super::json(&state, &Ok(Supervision::Running { pid: None }));
        assert!(attention);
        let doc: serde_json::Value = serde_json::from_str(&document).unwrap();
        assert_eq!(
            doc["certificates"][1]["lastError"],
            serde_json::json!({"reason": "vault-forbidden", "message": "403 Forbidden"})
        );
        assert_eq!(doc["certificates"][1]["needsAttention"], true);
        state.certificates.truncate(1);
        let (_, attention) = super::json(&state, &Ok(Supervision::Stopped));
        assert!(attention, "a stopped worker needs attention");

        // A pass longer than the interval needs attention, with the reason and the measured figures.
        state.polling = Some(Pace {
            interval_s: 5,
            certificates: 1,
            last_pass_ms: Some(7600),
            overdue_ms: None,
        });
        let (document, attention) =
            super::json(&state, &Ok(Supervision::Running { pid: Some(76) }));
        assert!(attention, "a poller that falls behind needs attention");
        let doc: serde_json::Value = serde_json::from_str(&document).unwrap();
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
            text(&state, Some(76), "settings 4")
                .contains("polling: WARNING: polling cannot keep up")
        );
    }
}
