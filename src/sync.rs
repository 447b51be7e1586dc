//! One check of one observed certificate, and one poll cycle over all of them: read the newest (or pinned)
//! version from Key Vault and install it if it is new. Certificates are independent — one that fails (403, 404,
//! bad content) never blocks the others — and a few are checked at once, so many certificates do not cost N
//! round trips in a row. A version that is already installed is not decoded or written again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateError, ContentKind};
use crate::http::{self, Stop};
use crate::settings::ObservedCertificate;
use crate::store::{Install, Store, StoreError};
use crate::vault::{SecretKind, VaultClient, VaultError};

/// How many certificates are checked at once (the vault client reuses one connection per thread and vault).
pub const PARALLELISM: usize = 8;

/// Why a certificate could not be brought up to date. What was installed before stays in place.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Key Vault or the identity endpoint refused or failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The secret holds no certificate.
    #[error(
        "{url} is a plain secret (contentType {content_type}), not a certificate, so it is ignored; observe the \
         secret of a Key Vault certificate (its contentType is application/x-pkcs12 or application/x-pem-file)"
    )]
    NotACertificate { url: String, content_type: String },
    /// The certificate's content is unusable.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The files could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker is stopping; nothing was changed.
    #[error("not checked: the worker is stopping")]
    Stopped,
}

impl SyncError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Vault(e) => e.reason(),
            SyncError::NotACertificate { .. } => "not-a-certificate",
            SyncError::Certificate(e) => e.reason(),
            SyncError::Store(e) => e.reason(),
            SyncError::Stopped => "stopped",
        }
    }
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The version now current.
    pub version: String,
    /// Its file.
    pub file: PathBuf,
    /// The link pointing at it.
    pub link: PathBuf,
    /// A file was written or the link moved in this check.
    pub changed: bool,
    /// The leaf's notAfter, when the version was decoded in this check.
    pub not_after: Option<OffsetDateTime>,
    /// The leaf's serial number (hex), when decoded in this check.
    pub serial: Option<String>,
    /// Expired or not yet valid (installed anyway: it is what the vault holds).
    pub validity_warning: Option<String>,
    /// Old version files deleted by retention.
    pub removed: Vec<PathBuf>,
}

/// What the worker already knows of a certificate, so an unchanged version is not decoded again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// The version recorded as installed.
    pub version: Option<&'a str>,
    /// Whether its notAfter is recorded (needed for the expiry alarm).
    pub has_not_after: bool,
}

/// Options of a cycle, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    /// Apply the certificates' ACLs.
    pub acl_enabled: bool,
    /// Version files to keep per certificate.
    pub retained_versions: u32,
}

/// Brings one certificate up to date.
pub fn check(
    client: &VaultClient,
    cert: &ObservedCertificate,
    known: Known<'_>,
    options: SyncOptions,
    stop: &Stop,
) -> Result<Checked, SyncError> {
    if stop.requested() {
        return Err(SyncError::Stopped);
    }
    let secret = client.get_secret(
        &cert.vault_url,
        &cert.secret_name,
        cert.version.as_deref(),
        http::Deadline::after(http::CHECK_DEADLINE),
        stop,
    )?;
    let kind = match secret.kind() {
        SecretKind::Pkcs12 => ContentKind::Pkcs12,
        SecretKind::Pem => ContentKind::Pem,
        SecretKind::NotACertificate => {
            return Err(SyncError::NotACertificate {
                url: cert.url.to_string(),
                content_type: match &secret.content_type {
                    Some(ct) => format!("{ct:?}"),
                    None => "not set".to_string(),
                },
            });
        }
    };
    let store = Store::open(&cert.store_location)?;
    let prefix = cert.file_prefix();
    let file = store.dir().join(format!("{prefix}.{}", secret.version));
    let link = store.dir().join(&cert.link_name);
    let current = store.current_version(&cert.link_name, &prefix);
    if known.has_not_after
        && known.version == Some(secret.version.as_str())
        && current.as_deref() == Some(secret.version.as_str())
        && file.is_file()
    {
        return Ok(Checked {
            version: secret.version.clone(),
            file,
            link,
            changed: false,
            not_after: None,
            serial: None,
            validity_warning: None,
            removed: Vec::new(),
        });
    }
    let name = format!(
        "{}/{} version {}",
        cert.vault_name, cert.secret_name, secret.version
    );
    let bundle = CertificateBundle::from_secret(&name, kind, secret.value())?;
    let pem = bundle.to_pem();
    let acls = if options.acl_enabled {
        cert.acls.as_slice()
    } else {
        &[]
    };
    let installed = store.install(&Install {
        file_prefix: &prefix,
        link_name: &cert.link_name,
        version: &secret.version,
        pem: &pem,
        acls,
        retained_versions: options.retained_versions,
    })?;
    Ok(Checked {
        version: secret.version.clone(),
        file: installed.file,
        link: installed.link,
        changed: installed.written || installed.link_changed,
        not_after: Some(bundle.not_after()),
        serial: Some(bundle.serial_hex()),
        validity_warning: bundle.validity_warning(OffsetDateTime::now_utc()),
        removed: installed.removed,
    })
}

/// Checks every certificate, [`PARALLELISM`] at a time and at most [`http::CONNECTIONS_PER_HOST`] per vault
/// (so a cycle needs no more connections to a vault than the pool keeps); results in the order of `certs`.
///
/// The first certificate of each vault is checked in a first round (vaults in parallel): it answers the
/// vault's challenge, fetches the token and leaves a TLS session behind, so the parallel connections of the
/// second round resume that session instead of each doing a full handshake and racing for the token.
pub fn cycle(
    client: &VaultClient,
    certs: &[ObservedCertificate],
    known: &[Known<'_>],
    options: SyncOptions,
    stop: &Stop,
) -> Vec<Result<Checked, SyncError>> {
    let vault_of = |i: usize| certs[i].vault_url.as_str();
    let mut vaults = std::collections::HashSet::new();
    let (first, rest): (Vec<usize>, Vec<usize>) =
        (0..certs.len()).partition(|&i| vaults.insert(vault_of(i)));
    let results: Mutex<Vec<Option<Result<Checked, SyncError>>>> =
        Mutex::new((0..certs.len()).map(|_| None).collect());
    for round in [first, rest] {
        let queue = Mutex::new(Queue {
            waiting: round.into(),
            busy: HashMap::new(),
        });
        let freed = Condvar::new();
        let threads = PARALLELISM.min(queue.lock().map(|q| q.waiting.len()).unwrap_or(0));
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some(i) = Queue::take(&queue, &freed, vault_of) {
                        let result = check(
                            client,
                            &certs[i],
                            known.get(i).copied().unwrap_or_default(),
                            options,
                            stop,
                        );
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                        Queue::done(&queue, &freed, vault_of(i));
                    }
                });
            }
        });
    }
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or(Err(SyncError::Stopped)))
        .collect()
}

/// The certificates of a round not yet taken, and how many checks run per vault.
struct Queue<'a> {
    waiting: VecDeque<usize>,
    busy: HashMap<&'a str, usize>,
}

impl<'a> Queue<'a> {
    /// The next certificate whose vault has a free connection, waiting for one if all remaining certificates'
    /// vaults are busy; `None` when nothing is left.
    fn take(
        queue: &Mutex<Queue<'a>>,
        freed: &Condvar,
        vault_of: impl Fn(usize) -> &'a str,
    ) -> Option<usize> {
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if q.waiting.is_empty() {
                return None;
            }
            let pos = q.waiting.iter().position(|&i| {
                q.busy.get(vault_of(i)).copied().unwrap_or(0) < http::CONNECTIONS_PER_HOST
            });
            if let Some(pos) = pos {
                let i = q.waiting.remove(pos)?;
                *q.busy.entry(vault_of(i)).or_default() += 1;
                return Some(i);
            }
            q = freed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(queue: &Mutex<Queue<'a>>, freed: &Condvar, vault: &'a str) {
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.busy.get_mut(vault) {
            *n = n.saturating_sub(1);
        }
        freed.notify_all();
    }
}
