//! What the worker knows about each observed certificate: installed version, paths, expiry, last check, last
//! error. It is the single source for the status file's substatus entries and for `kvvm status`, and it is
//! saved (world-readable, no secrets in it) in the worker's state folder so an operator can read it without
//! root-only surprises.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::handler::{HandlerError, Status, SubStatus, write_atomically};

/// File name of the saved state, in the worker's state folder.
pub const STATE_FILE: &str = "state.json";

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
    pub url: String,
    pub status: CertStatus,
    pub version: Option<String>,
    pub file: Option<PathBuf>,
    pub link: PathBuf,
    /// RFC 3339.
    pub not_after: Option<String>,
    pub last_check: Option<String>,
    pub last_change: Option<String>,
    pub last_error: Option<String>,
    /// Failed checks in a row.
    pub failures: u32,
    /// A warning that is not an error (e.g. expiry soon), shown in the substatus.
    pub note: Option<String>,
    /// How the post-install command last ran for this certificate (exit code and output tail).
    #[serde(default)]
    pub hook: Option<String>,
}

impl CertificateState {
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
            last_error: None,
            failures: 0,
            note: None,
            hook: None,
        }
    }

    /// The substatus entry waagent shows for this certificate.
    pub fn substatus(&self) -> SubStatus {
        let status = match self.status {
            CertStatus::Pending => Status::Transitioning,
            CertStatus::Installed => Status::Success,
            CertStatus::Warning => Status::Warning,
            CertStatus::Failed => Status::Error,
        };
        let mut parts = vec![format!("{}: {}", self.url, self.summary())];
        if let Some(version) = &self.version {
            parts.push(format!("version {version}"));
        }
        if let Some(file) = &self.file {
            parts.push(format!("file {}", file.display()));
        }
        parts.push(format!("link {}", self.link.display()));
        if let Some(t) = &self.not_after {
            parts.push(format!("notAfter {t}"));
        }
        if let Some(t) = &self.last_check {
            parts.push(format!("last check {t}"));
        }
        if let Some(note) = &self.note {
            parts.push(note.clone());
        }
        if let Some(hook) = &self.hook {
            parts.push(hook.clone());
        }
        if let Some(e) = &self.last_error {
            parts.push(format!("last error: {e}"));
        }
        SubStatus {
            name: self.url.clone(),
            status,
            code: if status == Status::Error { 1 } else { 0 },
            message: parts.join("; "),
        }
    }

    fn summary(&self) -> &'static str {
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

/// Everything the worker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerState {
    pub seq: u64,
    pub pid: u32,
    pub updated: String,
    pub certificates: Vec<CertificateState>,
}

impl WorkerState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), HandlerError> {
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomically(&Self::path(dir), &json, 0o644)
    }

    /// The saved state, if any (a missing or unreadable file is `None`: the worker has not run yet).
    pub fn load(dir: &Path) -> Option<WorkerState> {
        let text = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Finds the record of `url`, or `None`.
    pub fn certificate(&self, url: &str) -> Option<&CertificateState> {
        self.certificates.iter().find(|c| c.url == url)
    }

    /// A human-readable table for `kvvm status`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "worker pid {} · settings {} · updated {}\n",
            self.pid, self.seq, self.updated
        );
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
            out.push_str(&field("notAfter:", c.not_after.clone()));
            out.push_str(&field("last check:", c.last_check.clone()));
            out.push_str(&field("last change:", c.last_change.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_substatus() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CertificateState::pending(
            "https://v.vault.azure.net/secrets/c",
            PathBuf::from("/s/v.c"),
        );
        assert_eq!(c.substatus().status, Status::Transitioning);
        c.status = CertStatus::Failed;
        c.last_error = Some("403".into());
        let sub = c.substatus();
        assert_eq!((sub.status, sub.code), (Status::Error, 1));
        assert!(sub.message.contains("not installed"), "{}", sub.message);
        c.version = Some("0".repeat(32));
        assert!(
            c.substatus()
                .message
                .contains("installed version stays in place")
        );
        let state = WorkerState {
            seq: 3,
            pid: 9,
            updated: "t".into(),
            certificates: vec![c],
        };
        state.save(dir.path()).unwrap();
        assert_eq!(WorkerState::load(dir.path()), Some(state.clone()));
        assert!(
            state.render().contains("last error:  403"),
            "{}",
            state.render()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(WorkerState::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
