//! Prometheus text-format metrics for node_exporter's textfile collector (`metricsFile`). The worker rewrites
//! the file after every check (and with each heartbeat), atomically, so the collector never reads half a file:
//! fleets are watched with the tools they already run, without a port opened on every VM.
//!
//! Counters are those of the running poller (they restart from zero with it, which Prometheus' `rate()` and
//! `increase()` expect); times and versions come from the recorded state, so they survive a restart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::schedule::Pace;
use crate::settings::ObservedCertificate;
use crate::state::CertificateState;
use crate::sync::{Checked, SyncError};
use crate::vault::VaultClient;

/// Why the metrics file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Writing the temp file or renaming it over the metrics file failed.
    #[error(
        "cannot write the metrics file {path} (secretsManagementSettings.metricsFile): {source}; create its folder \
         (e.g. node_exporter's --collector.textfile.directory) or point metricsFile at a folder root can write"
    )]
    Write {
        /// The metrics file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl MetricsError {
    /// A short fixed reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            MetricsError::Write { .. } => "metrics-unwritable",
        }
    }
}

/// What the poller counts between two writes: installs and errors per certificate, and the requests of vault
/// clients it has replaced (a new `msiEndpoint` or `msiClientId` brings a new client).
#[derive(Debug, Default)]
pub struct Counters {
    /// Per certificate URL: new versions installed.
    installs: BTreeMap<String, u64>,
    /// Per (certificate URL, reason code): failed checks.
    errors: BTreeMap<(String, String), u64>,
    /// Per (vault host, code): requests of replaced clients.
    vault_requests: BTreeMap<(String, String), u64>,
    /// Token requests of replaced clients.
    token_requests: u64,
    /// The last write failed (so the next failure is not logged again).
    failing: bool,
}

impl Counters {
    /// Counts one finished check.
    pub fn record(&mut self, url: &str, result: Result<&Checked, &SyncError>) {
        match result {
            Ok(c) if c.changed => *self.installs.entry(url.to_string()).or_default() += 1,
            Ok(_) | Err(SyncError::Stopped) => {}
            Err(e) => {
                *self
                    .errors
                    .entry((url.to_string(), e.reason().to_string()))
                    .or_default() += 1
            }
        }
    }

    /// Keeps the request counts of a client about to be replaced.
    pub fn retire(&mut self, client: &VaultClient) {
        for (host, code, n) in client.request_counts() {
            *self.vault_requests.entry((host, code)).or_default() += n;
        }
        self.token_requests += client.identity().token_requests();
    }
}

/// Everything one metrics file shows.
pub struct Snapshot<'a> {
    /// The observed certificates, in settings order.
    pub observed: &'a [ObservedCertificate],
    /// What is recorded of each, in the same order.
    pub states: &'a [CertificateState],
    /// The poller's counters.
    pub counters: &'a Counters,
    /// The current vault client, if there is one.
    pub client: Option<&'a VaultClient>,
    /// Poller restarts since the worker started.
    pub restarts: u32,
    /// How the passes over the certificates keep up with the polling interval, once measured.
    pub pace: Option<&'a Pace>,
}

/// One metric family being written: HELP and TYPE once, then its samples.
struct Family<'o> {
    out: &'o mut String,
}

impl<'o> Family<'o> {
    fn new(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value: backslash, double quote and line feed escaped, as the text format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Reads one time of a certificate's record, in Unix seconds.
type TimeOf = fn(&CertificateState) -> Option<f64>;

fn seconds(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

/// The metrics in Prometheus text format (version 0.0.4), every family with HELP and TYPE.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let certs: Vec<(Vec<(&str, &str)>, &CertificateState)> = s
        .observed
        .iter()
        .zip(s.states)
        .map(|(o, st)| {
            let labels = vec![
                ("vault", o.vault_url.host_str().unwrap_or_default()),
                ("certificate", o.secret.name.as_str()),
                ("link", st.link.to_str().unwrap_or_default()),
            ];
            (labels, st)
        })
        .collect();

    let mut f = Family::new(
        &mut out,
        "kvvm_info",
        "gauge",
        "The kvvm extension's version (always 1).",
    );
    f.sample("kvvm_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);

    let gauges: [(&str, &str, TimeOf); 3] = [
        (
            "kvvm_certificate_not_after_seconds",
            "The installed certificate's notAfter, in Unix seconds.",
            |c| c.not_after.map(seconds),
        ),
        (
            "kvvm_certificate_last_check_timestamp_seconds",
            "When the certificate's last check ended, successful or not, in Unix seconds.",
            |c| c.last_check.map(seconds),
        ),
        (
            "kvvm_certificate_last_success_timestamp_seconds",
            "When a check last found the newest version installed, in Unix seconds.",
            |c| c.last_success.map(seconds),
        ),
    ];
    for (name, help, value) in gauges {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for (labels, st) in &certs {
            if let Some(v) = value(st) {
                f.sample(name, labels, v);
            }
        }
    }

    let name = "kvvm_certificate_needs_attention";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "1 when the certificate's last check failed or it has a warning (expiring, not valid now), else 0.",
    );
    for (labels, st) in &certs {
        f.sample(name, labels, if st.needs_attention() { 1.0 } else { 0.0 });
    }

    let name = "kvvm_certificate_installs_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "New versions of the certificate installed by this poller.",
    );
    for (labels, st) in &certs {
        let n = s.counters.installs.get(&st.url).copied().unwrap_or(0);
        f.sample(name, labels, n as f64);
    }

    let name = "kvvm_certificate_errors_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Failed checks of the certificate by this poller, by reason code.",
    );
    for (labels, st) in &certs {
        for ((url, reason), n) in &s.counters.errors {
            if url == &st.url {
                let mut labels = labels.clone();
                labels.push(("reason", reason));
                f.sample(name, &labels, *n as f64);
            }
        }
    }

    let mut requests = s.counters.vault_requests.clone();
    let mut tokens = s.counters.token_requests;
    if let Some(client) = s.client {
        for (host, code, n) in client.request_counts() {
            *requests.entry((host, code)).or_default() += n;
        }
        tokens += client.identity().token_requests();
    }
    let name = "kvvm_vault_requests_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Requests sent to Key Vault by this poller, by vault host and HTTP status (or dns, connect, tls, timeout, \
         broken, too-large when no answer came).",
    );
    for ((host, code), n) in &requests {
        f.sample(name, &[("vault", host), ("code", code)], *n as f64);
    }

    let name = "kvvm_token_requests_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Requests sent to the managed identity endpoint (IMDS or Azure Arc) by this poller.",
    );
    f.sample(name, &[], tokens as f64);

    let name = "kvvm_worker_restarts_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Times the supervisor restarted the poller since the worker started.",
    );
    f.sample(name, &[], f64::from(s.restarts));

    if let Some(pace) = s.pace {
        let name = "kvvm_poll_interval_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "The polling interval (pollingIntervalInS), in seconds.",
        );
        f.sample(name, &[], pace.interval_s as f64);
        if let Some(pass) = pace.pass_s() {
            let name = "kvvm_poll_pass_seconds";
            let mut f = Family::new(
                &mut out,
                name,
                "gauge",
                "How long the last pass over every certificate took (or the pass under way, when it is already \
                 longer than the interval): from a beat until the last certificate had its turn, in seconds.",
            );
            f.sample(name, &[], pass);
        }
        let name = "kvvm_poll_behind";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "1 when a pass over the certificates takes longer than the polling interval (each certificate is \
             then checked less often than configured), else 0.",
        );
        f.sample(name, &[], if pace.behind() { 1.0 } else { 0.0 });
    }
    out
}

/// Writes `text` to `path` atomically (a dot-named temp file beside it, which the textfile collector skips,
/// fsynced and renamed), world-readable: metrics hold no secrets.
pub fn write(path: &Path, text: &str) -> Result<(), MetricsError> {
    crate::handler::write_atomically(path, text.as_bytes(), 0o644).map_err(|e| match e {
        crate::handler::HandlerError::Write { source, .. } => MetricsError::Write {
            path: path.to_path_buf(),
            source,
        },
        other => MetricsError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Writes rendered metrics, logging a failure once (and the recovery) rather than at every write.
pub fn update(path: &Path, text: &str, counters: &mut Counters) {
    match write(path, text) {
        Ok(()) => {
            if counters.failing {
                log::info!("metrics file {} written again", path.display());
            }
            counters.failing = false;
        }
        Err(e) => {
            if !counters.failing {
                log::error!("[{}] {e}", e.reason());
            }
            counters.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz\""), "x\\\\y\\nz\"");
    }

    #[test]
    fn an_unwritable_folder_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/kvvm.prom");
        let e = write(&path, "x 1\n").unwrap_err();
        assert_eq!(e.reason(), "metrics-unwritable");
        assert!(
            e.to_string()
                .contains("secretsManagementSettings.metricsFile"),
            "{e}"
        );
        let path = dir.path().join("kvvm.prom");
        write(&path, "x 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x 1\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file is left: {names:?}");
    }
}
