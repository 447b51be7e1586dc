//! The worker: the poller that `enable` (or the service) keeps running, and `kvvm sync --once`, which runs one
//! cycle of it in the foreground. This file holds what both start from — the host, the settings they run with,
//! the record carried over from the last worker, the vault client — and the one path a finished check takes
//! (`check_ended`). `poller` is the long-running loop, `post_install` runs the commands of a burst of installs,
//! and `process` tunes the process for a life spent mostly waiting.

mod poller;
mod post_install;

pub(crate) use poller::run;

use std::sync::Arc;
use std::time::Duration;

use crate::handler::HandlerError;
use crate::host::{Host, HostError, Loaded};
use crate::http::Stop;
use crate::identity::Identity;
use crate::logging::{self, Process};
use crate::platform::{CertificateDestination, Destination, KeepAliveError};
use crate::settings::{Configured, ObservedCertificate, Settings};
use crate::state::{self, CertificateState, LogSinks, StateError, WorkerState};
use crate::sync::{Checked, KnownOwned, SyncError, SyncOptions};
use crate::vault::{VaultClient, VaultError};

/// How often the heartbeat file is refreshed (waagent calls a handler unresponsive after 600 s).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// Errors that end the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The extension or its environment cannot be found.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The poller lock cannot be taken.
    #[error(transparent)]
    Supervisor(#[from] KeepAliveError),
    /// The keeper's requests (signals on Linux) cannot be listened for.
    #[error("cannot listen for the keeper's requests (signals): {source}")]
    Signals {
        /// Why the handler could not be installed.
        source: std::io::Error,
    },
    /// The settings to run with cannot be read or are invalid.
    #[error("no usable settings: {0}")]
    Settings(#[from] HostError),
    /// The settings observe no certificate (for `kvvm sync --once`; a poller waits for new settings).
    #[error("nothing to watch: {reason}")]
    NoSettings {
        /// Why, as the settings layer says it.
        reason: String,
    },
    /// Another poller holds the poller lock.
    #[error("another poller holds its lock in {dir}; this one exits")]
    AnotherPoller {
        /// The extension's data folder, where the lock is.
        dir: std::path::PathBuf,
    },
    /// The state folder or status file cannot be written at start.
    #[error("cannot record the worker's state: {detail}")]
    StateUnwritable {
        /// The write error.
        detail: String,
    },
}

impl WorkerError {
    /// A short stable code for the status file and the exit report (`no-settings`, `another-poller`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Handler(e) => e.reason(),
            WorkerError::Supervisor(e) => e.reason(),
            WorkerError::Signals { .. } => "signal-handler",
            WorkerError::Settings(e) => e.reason(),
            WorkerError::NoSettings { .. } => "no-settings",
            WorkerError::AnotherPoller { .. } => "another-poller",
            WorkerError::StateUnwritable { .. } => "state-unwritable",
        }
    }
}

/// The settings the worker runs with, and which sequence number they came from.
#[derive(Debug)]
pub(crate) struct Current {
    /// The settings file's sequence number.
    pub seq: u64,
    /// What it says.
    pub settings: Settings,
}

/// What the settings ask the worker to do.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per start or reload, moved a few times; boxing would only complicate every match"
)]
pub(crate) enum Watch {
    /// Keep these certificates installed.
    Certificates(Current),
    /// Nothing to watch (an empty settings file, or `{}` as the service's package ships it): the poller waits
    /// for new settings.
    Nothing {
        /// The settings' sequence number.
        seq: u64,
        /// Why there is nothing, as the settings layer says it.
        reason: String,
    },
}

/// What the poller and `kvvm sync --once` start from: the host and the settings the worker runs with.
#[derive(Debug)]
pub(crate) struct Start {
    /// Where this kvvm lives.
    pub host: Host,
    /// The settings, read and parsed once, at start; or why there are none. The poller reports that only once
    /// it holds its lock (another poller running is the better answer).
    pub watch: Result<Watch, WorkerError>,
    /// Where this process's log goes besides its files, as set up here (a reload does not change it).
    pub log_sinks: LogSinks,
}

/// The start-up the poller and `kvvm sync --once` share: find the host, read the settings the worker runs
/// with, and start `process`'s log (the poller's also goes to the Fluentd collector those settings name).
pub(crate) fn start(process: Process) -> Result<Start, HandlerError> {
    let host = Host::locate()?;
    let watch = load(&host);
    let forward = match &watch {
        Ok(Watch::Certificates(c)) => c.settings.logging.as_ref(),
        _ => None,
    };
    let log_sinks = LogSinks::of(forward);
    logging::start(&host, process, forward);
    Ok(Start {
        host,
        watch,
        log_sinks,
    })
}

/// The settings the host names (the extension's `mrseq`, else its newest settings file; the service's file).
fn load(host: &Host) -> Result<Watch, WorkerError> {
    let Loaded { seq, configured } = host.settings()?;
    Ok(match configured {
        Configured::Settings(settings) => Watch::Certificates(Current { seq, settings }),
        Configured::Nothing { reason } => Watch::Nothing { seq, reason },
    })
}

/// What the worker recorded last, to carry over: nothing if no worker has run yet; a file that cannot be read
/// is logged, and the worker starts from the settings alone.
fn recorded(host: &Host) -> Option<WorkerState> {
    match WorkerState::load(&host.data_dir()) {
        Ok(state) => Some(state),
        Err(StateError::Missing { .. }) => None,
        Err(e) => {
            log::warn!("{e}; starting from the settings alone");
            None
        }
    }
}

/// The certificates the settings observe, carrying over what is known of each from `previous`.
pub fn certificate_states(
    settings: &Settings,
    previous: Option<&WorkerState>,
) -> Vec<CertificateState> {
    settings
        .observed_certificates
        .iter()
        .map(|c| {
            let url = c.url.as_str();
            previous
                .and_then(|p| p.certificate(url))
                .cloned()
                .unwrap_or_else(|| CertificateState::pending(url, Destination::link(c)))
        })
        .collect()
}

/// The vault client for `settings`, or why there is none: every certificate then fails with that error, its
/// own reason code and fix in the status.
fn vault_client(settings: &Settings) -> Result<Arc<VaultClient>, SyncError> {
    let identity = Identity::for_user(
        settings.msi_endpoint.as_ref(),
        settings.msi_identity.as_ref(),
    )
    .map_err(VaultError::from)?;
    let client = VaultClient::new(Arc::new(identity)).map_err(VaultError::from)?;
    Ok(Arc::new(client))
}

fn sync_options(settings: &Settings, lock_dir: &std::path::Path) -> SyncOptions {
    SyncOptions {
        acl_enabled: settings.acl_enabled,
        retained_versions: settings.retained_versions,
        lock_dir: lock_dir.to_path_buf(),
        link_on_renewal: settings.link_on_renewal,
    }
}

fn known(state: &CertificateState) -> KnownOwned {
    KnownOwned {
        version: state.version.clone(),
        has_not_after: state.not_after.is_some(),
    }
}

/// What every finished check goes through, in the poller and in `kvvm sync --once` alike: its result recorded in
/// the certificate's state (and the log), and the post-install command it calls for when it installed a new
/// version.
fn check_ended(
    state: &mut CertificateState,
    cert: &ObservedCertificate,
    result: Result<&Checked, &SyncError>,
    expiry_warning_days: u32,
) -> Option<post_install::Change> {
    state.record(cert, result, state::now(), expiry_warning_days);
    post_install::change_of(cert, result, state.replaced.as_deref())
}
/// `kvvm sync --once`: checks every certificate of `current` once, from what the worker recorded, and returns
/// their records in settings order. The worker's status and state files are left to the worker.
pub(crate) fn sync_once(host: &Host, current: &Current) -> Vec<CertificateState> {
    let mut certs = certificate_states(&current.settings, recorded(host).as_ref());
    let client = vault_client(&current.settings);
    let locks = Destination::lock_folder(&host.data_dir());
    poll_once(
        &client,
        &current.settings,
        &mut certs,
        &locks,
        &Stop::default(),
    );
    certs
}

/// Checks every certificate of `settings` once, all at once within the limits of [`Checks`], records the
/// results in `certs` (same order) and runs the post-install commands of those that changed.
fn poll_once(
    client: &Result<Arc<VaultClient>, SyncError>,
    settings: &Settings,
    certs: &mut [CertificateState],
    lock_dir: &std::path::Path,
    stop: &Stop,
) {
    let observed = &settings.observed_certificates;
    let client = match client {
        Ok(client) => Arc::clone(client),
        Err(why) => {
            for (state, cert) in certs.iter_mut().zip(observed) {
                check_ended(state, cert, Err(why), settings.expiry_warning_days);
            }
            return;
        }
    };
    let known: Vec<KnownOwned> = certs.iter().map(known).collect();
    let results = crate::sync::check_all(
        client,
        observed,
        &known,
        sync_options(settings, lock_dir),
        stop,
    );
    let mut changes = Vec::new();
    for ((state, cert), result) in certs.iter_mut().zip(observed).zip(&results) {
        changes.extend(check_ended(
            state,
            cert,
            result.as_ref(),
            settings.expiry_warning_days,
        ));
    }
    post_install::record(certs, &post_install::run(changes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserIdentity;

    /// A client that cannot be built fails every certificate with that error's own reason and text, not a
    /// catch-all: here a user-assigned identity beside Azure Arc's endpoint, which the settings parser rejects
    /// but a caller of the library can still put together.
    #[test]
    fn a_client_that_cannot_be_built_fails_each_certificate_with_its_own_reason() {
        let mut settings = crate::settings::parse_public_settings(&serde_json::json!({
            "secretsManagementSettings": {"observedCertificates": [
                "https://myvault.vault.azure.net/secrets/a", "https://myvault.vault.azure.net/secrets/b"]}
        }))
        .unwrap();
        settings.msi_endpoint =
            Some(url::Url::parse("http://localhost:40342/metadata/identity/oauth2/token").unwrap());
        settings.msi_identity = Some(UserIdentity::ClientId(
            "c7373ae5-91c2-4165-8ab6-7381d6e75619".into(),
        ));
        let client = vault_client(&settings);
        let mut certs = certificate_states(&settings, None);
        let locks = tempfile::tempdir().unwrap();
        poll_once(
            &client,
            &settings,
            &mut certs,
            locks.path(),
            &Stop::default(),
        );
        for cert in &certs {
            assert_eq!(
                cert.reason.as_deref(),
                Some("arc-user-assigned"),
                "{cert:?}"
            );
            let error = cert.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains("msiClientId is 'c7373ae5-91c2-4165-8ab6-7381d6e75619'")
                    && error.contains("remove msiClientId"),
                "{error}"
            );
            assert_eq!(cert.failures, 1);
        }
    }
}
