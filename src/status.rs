//! The one home of what waagent reads back: the status file (`status/<seq>.status`) and the heartbeat. Every
//! verb, the supervisor and the poller hand this module typed facts; only here are they turned into waagent's
//! JSON, kept inside waagent's 128 KiB limit without ever clipping a certificate's URL, and given the error's
//! fixed `reason()` code.
//!
//! With `reportHeartbeat` true, waagent *replaces* the handler status it reports with the heartbeat's status
//! and message (REFERENCE.md §1a), so the heartbeat must always say what is true: Ready while a poller runs,
//! NotReady while a crashed one is being restarted, NotReady after `disable`.
//!
//! The size rule, for any number of certificates: the status file stays under [`STATUS_BUDGET`] (three quarters of
//! waagent's limit). If one full substatus per certificate does not fit, the healthy ones get a one-line
//! message (version and notAfter); if that does not fit either, they are folded into one summary entry; if the ones that need attention still do not fit, their messages are shortened to the
//! reason code and a one-line summary; if even that does not fit, they are grouped per reason, each group
//! naming its certificates by their full URLs as far as the budget goes. `kvvm status` has no limit and lists
//! everything.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::handler::{HandlerError, write_atomically};
use crate::host::Host;
use crate::schedule::{INITIAL_SYNC_ATTEMPTS, InitialSync, Pace};
use crate::state::utc_timestamp;
use crate::state::{CertStatus, CertificateState};

/// waagent truncates status files above this size (`_MAX_STATUS_FILE_SIZE_IN_BYTES`).
pub(crate) const MAX_STATUS_BYTES: usize = 128 * 1024;
/// What kvvm allows itself, whatever the number of certificates: a quarter under waagent's limit, so a status
/// never reaches the agent's truncation.
pub(crate) const STATUS_BUDGET: usize = 96 * 1024;
/// The overall message lists failing certificates up to about this many bytes.
const MESSAGE_BUDGET: usize = 4 * 1024;

/// The status values waagent accepts, exactly as it spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Work is under way (e.g. the initial sync).
    Transitioning,
    /// Done and healthy.
    Success,
    /// Working, but something needs attention.
    Warning,
    /// Failed.
    Error,
}

/// The operation a status file reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `install`.
    Install,
    /// `enable` (and the worker it starts).
    Enable,
    /// `disable`.
    Disable,
    /// `update`.
    Update,
    /// `uninstall`.
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

/// One `substatus` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubStatus {
    /// A certificate's URL, or the name of a summary entry.
    pub name: String,
    /// Its status.
    pub status: Status,
    /// 1 for errors, else 0.
    pub code: i32,
    /// What waagent shows.
    pub message: String,
}

/// A whole `status/<seq>.status` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusReport {
    /// The operation reported on.
    pub operation: Operation,
    /// The overall status.
    pub status: Status,
    /// 1 for errors, else 0.
    pub code: i32,
    /// The overall message.
    pub message: String,
    /// Per certificate (or summary) entries.
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
    name: &'a str,
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

fn code_of(status: Status) -> i32 {
    if status == Status::Error { 1 } else { 0 }
}

impl SubStatus {
    /// An entry whose code follows from its status.
    pub(crate) fn new(
        name: impl Into<String>,
        status: Status,
        message: impl Into<String>,
    ) -> SubStatus {
        SubStatus {
            name: name.into(),
            status,
            code: code_of(status),
            message: message.into(),
        }
    }
}

impl StatusReport {
    /// A report without substatus entries; the code follows from the status.
    pub(crate) fn new(
        operation: Operation,
        status: Status,
        message: impl Into<String>,
    ) -> StatusReport {
        StatusReport {
            operation,
            status,
            code: code_of(status),
            message: message.into(),
            substatus: Vec::new(),
        }
    }

    /// The JSON waagent reads. Reports built by [`worker_report`] fit [`STATUS_BUDGET`]; a report whose own
    /// messages are too long for waagent's limit (a verb's message never is) is cut at a character boundary.
    pub(crate) fn to_json(&self, name: &str) -> Vec<u8> {
        let bytes = self.render(name, usize::MAX);
        if bytes.len() <= MAX_STATUS_BYTES {
            return bytes;
        }
        let per_entry = STATUS_BUDGET / (self.substatus.len() * 2 + 1);
        self.render(name, per_entry.max(64))
    }

    fn render(&self, name: &str, limit: usize) -> Vec<u8> {
        let doc = [StatusJson {
            version: 1.0,
            timestamp_utc: utc_timestamp(OffsetDateTime::now_utc()),
            status: StatusBodyJson {
                name,
                operation: self.operation.as_str(),
                status: self.status,
                code: self.code,
                formatted_message: FormattedMessage {
                    lang: "en-US",
                    message: clip(&self.message, limit),
                },
                substatus: self
                    .substatus
                    .iter()
                    .map(|s| SubStatusJson {
                        name: &s.name,
                        status: s.status,
                        code: s.code,
                        formatted_message: FormattedMessage {
                            lang: "en-US",
                            message: clip(&s.message, limit),
                        },
                    })
                    .collect(),
            },
        }];
        serde_json::to_vec(&doc).expect("status serialises")
    }
}

fn clip(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the status of settings `seq` for `host` (waagent's `status/<seq>.status`), atomically.
pub(crate) fn write(host: &Host, seq: u64, report: &StatusReport) -> Result<(), HandlerError> {
    let path = host.status_path(seq);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| HandlerError::Write {
            path: folder.to_path_buf(),
            source,
        })?;
    }
    write_atomically(&path, &report.to_json(&host.name()), 0o644)
}

/// What the heartbeat file says. waagent reports its status and message as the handler's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heartbeat {
    /// A poller runs with these settings.
    Running {
        /// Which settings, as messages name them (`settings 3`).
        settings: String,
    },
    /// The poller exited abnormally and is being restarted.
    Restarting {
        /// Why and when (from the supervisor).
        detail: String,
    },
    /// No worker runs, on purpose (`disable`, `uninstall`, nothing to watch).
    Stopped {
        /// Why.
        detail: String,
    },
}

impl Heartbeat {
    /// The file's JSON.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let (status, message) = match self {
            Heartbeat::Running { settings } => {
                ("Ready", format!("kvvm worker running with {settings}"))
            }
            Heartbeat::Restarting { detail } => {
                ("NotReady", format!("kvvm worker restarting: {detail}"))
            }
            Heartbeat::Stopped { detail } => ("NotReady", detail.clone()),
        };
        let doc = serde_json::json!([{
            "version": 1.0,
            "heartbeat": {
                "status": status,
                "code": 0,
                "formattedMessage": {"lang": "en-US", "message": message},
            }
        }]);
        serde_json::to_vec(&doc).expect("heartbeat serialises")
    }
}

/// Writes the heartbeat file for `host`, atomically.
pub(crate) fn write_heartbeat(host: &Host, heartbeat: &Heartbeat) -> Result<(), HandlerError> {
    write_atomically(&host.heartbeat_file(), &heartbeat.to_json(), 0o644)
}

/// What the poller knows when it writes its status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerView<'a> {
    /// Which settings it runs with, as messages name them (`settings 3`, `settings /etc/kvvm/settings.json`).
    pub settings: &'a str,
    /// The poller's pid.
    pub pid: u32,
    /// The polling interval in seconds.
    pub polling_interval_s: u64,
    /// Settings that were accepted with a warning.
    pub settings_warnings: &'a [String],
    /// Where `requireInitialSync` stands.
    pub sync: InitialSync,
    /// How the passes over the certificates keep up with the interval.
    pub pace: Option<&'a Pace>,
    /// One per observed certificate, in settings order.
    pub certificates: &'a [CertificateState],
    /// How often the supervisor restarted the poller since the worker started, and the last exit reason.
    pub restarts: Option<(u32, &'a str)>,
}

/// The poller's status report, within [`STATUS_BUDGET`] for any number of certificates.
pub(crate) fn worker_report(view: &WorkerView<'_>) -> StatusReport {
    let (mut status, summary) = overall(view.sync, view.certificates);
    let behind = view.pace.and_then(Pace::warning);
    if behind.is_some() && status == Status::Success {
        status = Status::Warning;
    }
    let restarted = match view.restarts {
        Some((n, why)) if n > 0 => format!(" It was restarted {n} time(s); the last exit: {why}."),
        _ => String::new(),
    };
    let mut report = StatusReport::new(
        Operation::Enable,
        status,
        format!(
            "{summary}. kvvm {} worker (pid {}) is running with {}: {} observed certificate(s), polling every {} \
             s.{restarted}",
            env!("CARGO_PKG_VERSION"),
            view.pid,
            view.settings,
            view.certificates.len(),
            view.polling_interval_s
        ),
    );
    if let Some(warning) = &behind {
        report
            .message
            .push_str(&format!(" [{}] {warning}.", Pace::REASON));
    }
    let mut first = Vec::new();
    if !view.settings_warnings.is_empty() {
        first.push(SubStatus::new(
            "settings",
            Status::Warning,
            view.settings_warnings.join(" "),
        ));
    }
    if let Some(warning) = behind {
        first.push(SubStatus::new(
            "polling",
            Status::Warning,
            format!("[{}] {warning}", Pace::REASON),
        ));
    }
    for level in [
        Detail::Full,
        Detail::CompactHealthy,
        Detail::FoldHealthy,
        Detail::Short,
        Detail::Grouped,
    ] {
        report.substatus = first
            .iter()
            .cloned()
            .chain(substatus(view.certificates, level))
            .collect();
        if level == Detail::Grouped
            || report
                .render(crate::handler::EXTENSION_NAME, usize::MAX)
                .len()
                <= STATUS_BUDGET
        {
            break;
        }
    }
    report
}

/// How much of each certificate the substatus shows (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    Full,
    CompactHealthy,
    FoldHealthy,
    Short,
    Grouped,
}

fn needs_attention(c: &CertificateState) -> bool {
    matches!(c.status, CertStatus::Failed | CertStatus::Warning)
}

fn substatus(certs: &[CertificateState], level: Detail) -> Vec<SubStatus> {
    if level == Detail::Full {
        return certs.iter().map(certificate_substatus).collect();
    }
    if level == Detail::CompactHealthy {
        return certs
            .iter()
            .map(|c| match (c.status, &c.version) {
                (CertStatus::Installed, Some(version)) => SubStatus::new(
                    c.url.clone(),
                    Status::Success,
                    format!(
                        "installed; version {version}{}",
                        c.not_after
                            .map(|t| format!("; notAfter {}", utc_timestamp(t)))
                            .unwrap_or_default()
                    ),
                ),
                _ => certificate_substatus(c),
            })
            .collect();
    }
    let mut out = Vec::new();
    let installed = certs
        .iter()
        .filter(|c| c.status == CertStatus::Installed)
        .count();
    if installed > 0 {
        out.push(SubStatus::new(
            "certificates up to date",
            Status::Success,
            format!(
                "{installed} certificate(s) installed and up to date (not listed one by one, to keep this status \
                 within waagent's size limit; `kvvm status` lists each)"
            ),
        ));
    }
    let pending = certs
        .iter()
        .filter(|c| c.status == CertStatus::Pending)
        .count();
    if pending > 0 {
        out.push(SubStatus::new(
            "certificates not checked yet",
            Status::Transitioning,
            format!("{pending} certificate(s) not checked yet (`kvvm status` lists each)"),
        ));
    }
    let attention = certs.iter().filter(|c| needs_attention(c));
    match level {
        Detail::Full | Detail::CompactHealthy => unreachable!("handled above"),
        Detail::FoldHealthy => out.extend(attention.map(certificate_substatus)),
        Detail::Short => out.extend(attention.map(|c| {
            SubStatus::new(
                c.url.clone(),
                sub_status_of(c.status),
                format!(
                    "{}{}: {} (details: `kvvm status`)",
                    reason_tag(c),
                    c.url,
                    c.summary()
                ),
            )
        })),
        Detail::Grouped => out.extend(grouped(certs)),
    }
    out
}

/// One entry per (status, reason), listing full URLs while the budget lasts.
fn grouped(certs: &[CertificateState]) -> Vec<SubStatus> {
    let mut groups: Vec<(Status, String, Vec<&str>)> = Vec::new();
    for c in certs.iter().filter(|c| needs_attention(c)) {
        let status = sub_status_of(c.status);
        let reason = c.reason.clone().unwrap_or_else(|| "unknown".into());
        match groups
            .iter_mut()
            .find(|(s, r, _)| *s == status && *r == reason)
        {
            Some(g) => g.2.push(&c.url),
            None => groups.push((status, reason, vec![&c.url])),
        }
    }
    // The URLs share what is left of the budget after the folded entries and the JSON around each group.
    let room = (STATUS_BUDGET - MESSAGE_BUDGET * 2) / groups.len().max(1);
    groups
        .into_iter()
        .map(|(status, reason, urls)| {
            let mut message = format!("[{reason}] {} certificate(s):", urls.len());
            let mut listed = 0;
            for url in &urls {
                if message.len() + url.len() + 64 > room {
                    break;
                }
                message.push(' ');
                message.push_str(url);
                listed += 1;
            }
            if listed < urls.len() {
                let _ = write!(
                    message,
                    " … and {} more (`kvvm status` lists every one)",
                    urls.len() - listed
                );
            }
            SubStatus::new(format!("[{reason}] certificates"), status, message)
        })
        .collect()
}

fn sub_status_of(status: CertStatus) -> Status {
    match status {
        CertStatus::Pending => Status::Transitioning,
        CertStatus::Installed => Status::Success,
        CertStatus::Warning => Status::Warning,
        CertStatus::Failed => Status::Error,
    }
}

fn reason_tag(c: &CertificateState) -> String {
    match &c.reason {
        Some(r) if needs_attention(c) => format!("[{r}] "),
        _ => String::new(),
    }
}

/// The substatus entry of one certificate, in full.
pub(crate) fn certificate_substatus(c: &CertificateState) -> SubStatus {
    let mut parts = vec![format!("{}{}: {}", reason_tag(c), c.url, c.summary())];
    if let Some(version) = &c.version {
        parts.push(format!("version {version}"));
    }
    if let Some(file) = &c.file {
        parts.push(format!("file {}", file.display()));
    }
    if let Some(old) = &c.replaced {
        parts.push(format!("replaced {}", old.display()));
    }
    parts.push(format!("link {}", c.link.display()));
    if let Some(t) = c.not_after {
        parts.push(format!("notAfter {}", utc_timestamp(t)));
    }
    if let Some(t) = c.last_check {
        parts.push(format!("last check {}", utc_timestamp(t)));
    }
    if let Some(note) = &c.note {
        parts.push(note.clone());
    }
    if let Some(remark) = &c.remark {
        parts.push(remark.clone());
    }
    if let Some(hook) = &c.hook {
        parts.push(hook.clone());
    }
    if let Some(e) = &c.last_error {
        parts.push(format!("last error: {e}"));
    }
    SubStatus::new(c.url.clone(), sub_status_of(c.status), parts.join("; "))
}

/// The overall status and its message, from the certificates' states.
pub(crate) fn overall(sync: InitialSync, certs: &[CertificateState]) -> (Status, String) {
    let installed = certs
        .iter()
        .filter(|c| matches!(c.status, CertStatus::Installed | CertStatus::Warning))
        .count();
    let failing: Vec<&CertificateState> = certs
        .iter()
        .filter(|c| c.status == CertStatus::Failed)
        .collect();
    let warned: Vec<&CertificateState> = certs
        .iter()
        .filter(|c| c.status == CertStatus::Warning)
        .collect();
    let total = certs.len();
    match sync {
        InitialSync::Trying { attempts } => {
            let last = failing
                .iter()
                .find_map(|c| c.last_error.as_deref())
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            (
                Status::Transitioning,
                format!(
                    "Initial sync: {installed} of {total} certificates installed after {attempts} attempt(s){last}"
                ),
            )
        }
        InitialSync::Failed if !failing.is_empty() => (
            Status::Error,
            format!(
                "Initial sync failed after {INITIAL_SYNC_ATTEMPTS} attempts: {installed} of {total} certificates installed; \
                 failing: {}. Polling continues.",
                listing(&failing)
            ),
        ),
        _ if !failing.is_empty() => (
            Status::Warning,
            format!(
                "{installed} of {total} certificates up to date; failing: {}",
                listing(&failing)
            ),
        ),
        _ if !warned.is_empty() => (
            Status::Warning,
            format!(
                "{installed} of {total} certificates installed; needs attention: {}",
                listing(&warned)
            ),
        ),
        _ if certs.iter().any(|c| c.status == CertStatus::Pending) => (
            Status::Success,
            format!(
                "Polling started: {installed} of {total} certificates installed, {} not checked yet",
                total - installed
            ),
        ),
        _ => (
            Status::Success,
            format!("{installed} of {total} certificates installed and up to date"),
        ),
    }
}

/// `url ([reason] why); …` for as many certificates as fit [`MESSAGE_BUDGET`], then how many more.
fn listing(list: &[&CertificateState]) -> String {
    let mut out = String::new();
    for (i, c) in list.iter().enumerate() {
        let why = c
            .last_error
            .as_deref()
            .or(c.note.as_deref())
            .unwrap_or("no detail");
        let item = format!("{} ({}{why})", c.url, reason_tag(c));
        if i > 0 && out.len() + item.len() > MESSAGE_BUDGET {
            let _ = write!(
                out,
                "; … and {} more (see the substatus and `kvvm status`)",
                list.len() - i
            );
            break;
        }
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&item);
    }
    out
}

/// The supervisor's report while it restarts a crashed poller: the status of the current settings says
/// `error` with the exit reason, and the heartbeat says the worker is restarting (NotReady).
pub(crate) struct RestartReport<'a> {
    /// Where the worker lives.
    pub host: &'a Host,
}

impl crate::platform::keep_alive::Report for RestartReport<'_> {
    fn restarting(&self, why: &str, restarts: u32, wait: Duration) {
        let detail = format!(
            "the poller {why}; it is restarted in {} s (restart {restarts} since the worker started). \
             Installed certificates stay in place. Details: kvvm.log and supervisor.log in {}",
            wait.as_secs(),
            self.host.log_folder().display()
        );
        if let Err(e) = write_heartbeat(
            self.host,
            &Heartbeat::Restarting {
                detail: detail.clone(),
            },
        ) {
            log::error!("{e}");
        }
        let Some(seq) = self.host.current_seq() else {
            return;
        };
        let message = format!("[worker-restarting] The kvvm worker is not polling: {detail}");
        crate::notify::ready(&message);
        let report = StatusReport::new(Operation::Enable, Status::Error, message);
        if let Err(e) = write(self.host, seq, &report) {
            log::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cert(name: &str, status: CertStatus, error: Option<&str>) -> CertificateState {
        let mut c = CertificateState::pending(
            &format!("https://v.vault.azure.net/secrets/{name}"),
            PathBuf::from("/s"),
        );
        c.status = status;
        c.last_error = error.map(str::to_string);
        c.reason = error.map(|_| "vault-forbidden".to_string());
        c
    }

    #[test]
    fn status_json_has_waagent_shape() {
        let mut report = StatusReport::new(Operation::Enable, Status::Warning, "m");
        report
            .substatus
            .push(SubStatus::new("c", Status::Error, "x"));
        let v: serde_json::Value =
            serde_json::from_slice(&report.to_json(crate::handler::EXTENSION_NAME)).unwrap();
        let s = &v[0]["status"];
        assert_eq!(v[0]["version"], 1.0);
        assert_eq!(s["status"], "warning");
        assert_eq!(s["operation"], "Enable");
        assert_eq!(s["formattedMessage"]["lang"], "en-US");
        assert_eq!(s["substatus"][0]["status"], "error");
        assert_eq!(s["substatus"][0]["code"], 1);
        assert_eq!(s["substatus"][0]["formattedMessage"]["message"], "x");
        let ts = v[0]["timestampUTC"].as_str().unwrap();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn timestamps_are_utc_whole_seconds_as_waagent_writes_them() {
        let at = |unix: i64, nanos: u32, offset_hours: i8| {
            OffsetDateTime::from_unix_timestamp(unix)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap()
                .to_offset(time::UtcOffset::from_hms(offset_hours, 0, 0).unwrap())
        };
        assert_eq!(
            utc_timestamp(at(1_795_341_600, 0, 0)),
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(
            utc_timestamp(at(1_795_341_600, 999_999_999, 0)),
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(
            utc_timestamp(at(1_795_341_600, 1, -5)),
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(
            utc_timestamp(at(-62_135_596_800, 5, 0)),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(
            utc_timestamp(at(253_402_300_799, 5, 0)),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn an_oversized_verb_report_is_cut_under_waagent_limit() {
        let mut report = StatusReport::new(Operation::Enable, Status::Success, "m".repeat(200_000));
        for i in 0..50 {
            report.substatus.push(SubStatus::new(
                format!("c{i}"),
                Status::Success,
                "é".repeat(10_000),
            ));
        }
        let bytes = report.to_json(crate::handler::EXTENSION_NAME);
        assert!(bytes.len() <= MAX_STATUS_BYTES, "{}", bytes.len());
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
    }

    #[test]
    fn heartbeat_says_what_is_true() {
        let v =
            |h: Heartbeat| -> serde_json::Value { serde_json::from_slice(&h.to_json()).unwrap() };
        let running = v(Heartbeat::Running {
            settings: "settings 3".into(),
        });
        assert_eq!(running[0]["heartbeat"]["status"], "Ready");
        assert_eq!(
            running[0]["heartbeat"]["formattedMessage"]["message"],
            "kvvm worker running with settings 3"
        );
        let stopped = v(Heartbeat::Stopped {
            detail: "disabled; worker 9 stopped".into(),
        });
        assert_eq!(stopped[0]["heartbeat"]["status"], "NotReady");
        assert_eq!(
            stopped[0]["heartbeat"]["formattedMessage"]["message"],
            "disabled; worker 9 stopped"
        );
        let restarting = v(Heartbeat::Restarting {
            detail: "killed by signal 9".into(),
        });
        assert_eq!(restarting[0]["heartbeat"]["status"], "NotReady");
    }

    #[test]
    fn overall_status_rules() {
        let ok = cert("a", CertStatus::Installed, None);
        let bad = cert("b", CertStatus::Failed, Some("403 Forbidden"));
        let (s, m) = overall(
            InitialSync::Trying { attempts: 2 },
            &[ok.clone(), bad.clone()],
        );
        assert_eq!(s, Status::Transitioning);
        assert_eq!(
            m,
            "Initial sync: 1 of 2 certificates installed after 2 attempt(s); last error: 403 Forbidden"
        );
        let (s, m) = overall(InitialSync::Failed, &[ok.clone(), bad.clone()]);
        assert_eq!(s, Status::Error);
        assert!(
            m.contains(
                "failing: https://v.vault.azure.net/secrets/b ([vault-forbidden] 403 Forbidden)"
            ),
            "{m}"
        );
        assert_eq!(
            overall(InitialSync::Done, &[ok.clone(), bad]).0,
            Status::Warning
        );
        assert_eq!(
            overall(InitialSync::Done, std::slice::from_ref(&ok)),
            (
                Status::Success,
                "1 of 1 certificates installed and up to date".into()
            )
        );
        let mut expiring = cert("c", CertStatus::Warning, None);
        expiring.note = Some("expires in 3 days".into());
        let (s, m) = overall(InitialSync::Done, &[ok, expiring]);
        assert_eq!(s, Status::Warning);
        assert!(
            m.ends_with("needs attention: https://v.vault.azure.net/secrets/c (expires in 3 days)"),
            "{m}"
        );
    }

    #[test]
    fn a_failing_certificate_substatus_starts_with_its_reason() {
        let mut c = cert("b", CertStatus::Failed, Some("403 Forbidden"));
        let s = certificate_substatus(&c);
        assert_eq!((s.status, s.code), (Status::Error, 1));
        assert!(
            s.message.starts_with(
                "[vault-forbidden] https://v.vault.azure.net/secrets/b: not installed"
            ),
            "{}",
            s.message
        );
        c.version = Some("0".repeat(32));
        assert!(
            certificate_substatus(&c)
                .message
                .contains("installed version stays in place")
        );
        c.status = CertStatus::Installed;
        assert!(certificate_substatus(&c).message.starts_with("https://"));
    }

    fn view<'a>(certs: &'a [CertificateState]) -> WorkerView<'a> {
        WorkerView {
            settings: "settings 7",
            pid: 7,
            polling_interval_s: 3600,
            settings_warnings: &[],
            sync: InitialSync::Done,
            pace: None,
            certificates: certs,
            restarts: None,
        }
    }

    fn long_url_cert(vault: usize, i: usize, status: CertStatus) -> CertificateState {
        let mut c = CertificateState::pending(
            &format!(
                "https://vault-number-{vault}-of-the-fleet.vault.azure.net/secrets/certificate-{i:04}"
            ),
            PathBuf::from(format!(
                "/etc/ssl/kvvm/vault-number-{vault}.certificate-{i:04}"
            )),
        );
        c.status = status;
        c.version = Some(format!("{i:032x}"));
        c.file = Some(PathBuf::from(format!(
            "/etc/ssl/kvvm/vault-number-{vault}.certificate-{i:04}.{i:032x}"
        )));
        if status == CertStatus::Failed {
            c.reason = Some(
                if i.is_multiple_of(2) {
                    "vault-forbidden"
                } else {
                    "vault-timeout"
                }
                .into(),
            );
            c.last_error = Some("the vault refused the identity; grant it the Key Vault Secrets User role on the vault (az role assignment create ...), or an access policy with get on secrets".into());
        }
        c
    }

    fn urls_in(report: &StatusReport) -> String {
        report
            .substatus
            .iter()
            .flat_map(|s| [s.name.clone(), s.message.clone()])
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_thousand_certificates_fit_and_every_failing_one_is_named_in_full() {
        for failing_every in [1usize, 3, 10] {
            let certs: Vec<CertificateState> = (0..1000usize)
                .map(|i| {
                    let status = if i.is_multiple_of(failing_every) {
                        CertStatus::Failed
                    } else {
                        CertStatus::Installed
                    };
                    long_url_cert(i % 4, i, status)
                })
                .collect();
            let report = worker_report(&view(&certs));
            let bytes = report.to_json(crate::handler::EXTENSION_NAME);
            assert!(
                bytes.len() <= STATUS_BUDGET,
                "{} bytes with 1 in {failing_every} failing",
                bytes.len()
            );
            let text = urls_in(&report);
            let words: Vec<&str> = text
                .split_whitespace()
                .map(|w| w.trim_end_matches([':', ';', ',', ')']))
                .collect();
            for c in certs.iter().filter(|c| c.status == CertStatus::Failed) {
                let named = report.substatus.iter().any(|s| s.name == c.url)
                    || words.contains(&c.url.as_str());
                assert!(named, "{} not named (1 in {failing_every} failing)", c.url);
            }
            // Never a clipped URL: every vault URL in the text is a whole one of ours.
            for word in text
                .split_whitespace()
                .filter(|w| w.starts_with("https://"))
            {
                let word = word.trim_end_matches([':', ';', ',']);
                assert!(
                    certs.iter().any(|c| c.url == word),
                    "clipped or unknown URL {word}"
                );
            }
        }
    }

    #[test]
    fn few_certificates_get_one_full_substatus_each() {
        let certs: Vec<CertificateState> = (0..20)
            .map(|i| long_url_cert(0, i, CertStatus::Installed))
            .collect();
        let report = worker_report(&view(&certs));
        assert_eq!(report.substatus.len(), 20);
        assert!(
            report
                .substatus
                .iter()
                .zip(&certs)
                .all(|(s, c)| s.name == c.url && s.message.contains(c.version.as_deref().unwrap()))
        );
    }

    #[test]
    fn three_hundred_healthy_certificates_keep_one_short_entry_each() {
        let certs: Vec<CertificateState> = (0..300)
            .map(|i| {
                let mut c = long_url_cert(i % 3, i, CertStatus::Installed);
                c.last_check = Some(crate::state::now());
                c
            })
            .collect();
        let mut full = StatusReport::new(Operation::Enable, Status::Success, "m");
        full.substatus = certs.iter().map(certificate_substatus).collect();
        let full = full.to_json(crate::handler::EXTENSION_NAME).len();
        assert!(full > STATUS_BUDGET, "full entries take only {full} bytes");
        let report = worker_report(&view(&certs));
        assert!(report.to_json(crate::handler::EXTENSION_NAME).len() <= STATUS_BUDGET);
        assert_eq!(report.substatus.len(), 300);
        for (s, c) in report.substatus.iter().zip(&certs) {
            assert_eq!(s.name, c.url);
            assert_eq!(
                s.message,
                format!("installed; version {}", c.version.as_deref().unwrap())
            );
        }
    }

    #[test]
    fn many_healthy_certificates_fold_into_one_entry_and_the_failing_stay_in_full() {
        let certs: Vec<CertificateState> = (0..600)
            .map(|i| {
                long_url_cert(
                    i % 3,
                    i,
                    if i == 17 {
                        CertStatus::Failed
                    } else {
                        CertStatus::Installed
                    },
                )
            })
            .collect();
        let report = worker_report(&view(&certs));
        assert!(report.to_json(crate::handler::EXTENSION_NAME).len() <= STATUS_BUDGET);
        assert_eq!(report.substatus.len(), 2, "{:#?}", report.substatus);
        assert_eq!(report.substatus[0].name, "certificates up to date");
        assert!(
            report.substatus[0]
                .message
                .starts_with("599 certificate(s) installed")
        );
        assert_eq!(report.substatus[1].name, certs[17].url);
        assert!(
            report.substatus[1].message.starts_with("[vault-timeout] "),
            "{}",
            report.substatus[1].message
        );
        assert!(
            report.substatus[1]
                .message
                .contains("Key Vault Secrets User")
        );
    }
}
