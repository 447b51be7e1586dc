//! One check of one observed certificate, and [`Checks`], which runs many of them at once: read the newest (or pinned)
//! version from Key Vault and install it if it is new. Certificates are independent — one that fails (403, 404,
//! bad content) never blocks the others — and a few are checked at once, so many certificates do not cost N
//! round trips in a row. A version that is already installed is not decoded or written again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateError, ContentKind};
use crate::http::{self, Stop};
use crate::platform::{CertificateDestination, Destination, DestinationError, DestinationOptions};
use crate::schedule::Offer;
use crate::settings::ObservedCertificate;
use crate::vault::{SecretKind, VaultClient, VaultError};

/// How many certificates are checked at once.
pub(crate) const PARALLELISM: usize = 16;
/// How long the other certificates of a vault wait for its first check before they go ahead anyway.
pub(crate) const WARM_UP: Duration = Duration::from_secs(3);

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
    NotACertificate {
        /// The observed certificate's URL.
        url: String,
        /// The secret's contentType, quoted, or `not set`.
        content_type: String,
    },
    /// The certificate's content is unusable.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The certificate could not be installed (files, links, ACLs; a certificate store).
    #[error(transparent)]
    Store(#[from] DestinationError),
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
    /// The link to the version's folder (`<link>.d`), when `additionalFormats` asks for one.
    pub folder: Option<PathBuf>,
    /// What the destination said of the version it installed in this check (see `Installed::remark`).
    pub remark: Option<String>,
}

/// What the worker already knows of a certificate, so an unchanged version is not decoded again.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    /// The version recorded as installed.
    pub version: Option<&'a str>,
    /// Whether its notAfter is recorded (needed for the expiry alarm).
    pub has_not_after: bool,
}

/// Options of a check, from the settings and the extension.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Apply the certificates' ACLs.
    pub acl_enabled: bool,
    /// Version files to keep per certificate.
    pub retained_versions: u32,
    /// Where the stores' lock files go: the destination's lock folder in kvvm's state folder.
    pub lock_dir: PathBuf,
    /// Windows: mark a new version's previous one as renewed by it (`linkOnRenewal`).
    pub link_on_renewal: bool,
}

/// Brings one certificate up to date.
pub(crate) fn check(
    client: &VaultClient,
    cert: &ObservedCertificate,
    known: Known<'_>,
    options: &SyncOptions,
    stop: &Stop,
) -> Result<Checked, SyncError> {
    if stop.requested() {
        return Err(SyncError::Stopped);
    }
    let secret = client.get_secret(
        &cert.vault_url,
        &cert.secret.name,
        cert.version.as_ref(),
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
    let destination = Destination::new(DestinationOptions {
        acls: options.acl_enabled,
        retained_versions: options.retained_versions,
        lock_dir: &options.lock_dir,
        link_on_renewal: options.link_on_renewal,
    });
    if known.has_not_after
        && known.version == Some(secret.version.as_str())
        && let Some(placed) = destination.current(cert, &secret.version)
    {
        return Ok(Checked {
            version: secret.version.to_string(),
            file: placed.file,
            link: placed.link,
            changed: false,
            not_after: None,
            serial: None,
            validity_warning: None,
            removed: Vec::new(),
            folder: placed.folder,
            remark: None,
        });
    }
    let name = cert.secret.version_label(secret.version.as_str());
    let bundle = CertificateBundle::from_secret(&name, kind, secret.value())?;
    let installed = destination.install(cert, &secret.version, &bundle)?;
    Ok(Checked {
        version: secret.version.to_string(),
        file: installed.placement.file,
        link: installed.placement.link,
        changed: installed.changed,
        not_after: Some(bundle.not_after()),
        serial: Some(bundle.serial_hex()),
        validity_warning: bundle.validity_warning(OffsetDateTime::now_utc()),
        removed: installed.removed,
        folder: installed.placement.folder,
        remark: installed.remark,
    })
}

/// What a check started by [`Checks`] found.
#[derive(Debug)]
pub(crate) struct Done {
    /// The [`Checks::new_generation`] it was started in.
    pub generation: u64,
    /// The certificate's index in the settings it was started with.
    pub index: usize,
    /// The certificate's URL.
    pub url: String,
    /// Its vault's base URL.
    pub vault: String,
    /// What the check found.
    pub result: Result<Checked, SyncError>,
}

/// The threads checks run on: at most [`PARALLELISM`], started as checks need them and kept between cycles
/// (a thread per check cost more CPU than the checks themselves: creating it, mapping and unmapping its stack,
/// and the TLB shootdowns that unmapping costs in a process with other threads), until [`Checks::release`]
/// lets them go before a long wait, or the [`Checks`] is dropped.
struct Threads {
    shared: Arc<(Mutex<ThreadsState>, Condvar)>,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct ThreadsState {
    jobs: VecDeque<Job>,
    /// Threads running, busy or idle.
    threads: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Idle threads are to exit (a long wait ahead, or the owner is gone).
    retire: bool,
    /// Threads woken to retire that have not exited yet.
    waking: usize,
}

impl Threads {
    fn new() -> Threads {
        Threads {
            shared: Arc::new((Mutex::new(ThreadsState::default()), Condvar::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThreadsState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on an idle thread, or a new one while there are fewer than [`PARALLELISM`]; otherwise it
    /// waits for the first thread to finish (one that has reported its check's end and not yet come back).
    fn run(&self, job: Job) -> std::io::Result<()> {
        let mut state = self.lock();
        state.retire = false;
        if state.idle == 0 && state.threads < PARALLELISM {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("check".into())
                .spawn(move || work(&shared))?;
            state.threads += 1;
        }
        state.jobs.push_back(job);
        self.shared.1.notify_one();
        Ok(())
    }

    /// Lets the idle threads exit, and waits (up to [`RETIRE_PATIENCE`]) until they have, so that the memory
    /// the owner gives back next includes their stacks.
    fn release(&self) {
        let mut state = self.lock();
        state.retire = true;
        self.shared.1.notify_all();
        let deadline = Instant::now() + RETIRE_PATIENCE;
        while state.idle > 0 || state.waking > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .shared
                .1
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// How long [`Threads::release`] waits for idle threads to exit (they need microseconds).
const RETIRE_PATIENCE: Duration = Duration::from_millis(50);

impl Drop for Threads {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.retire = true;
        self.shared.1.notify_all();
    }
}

/// A check thread's life: run jobs until told to retire while idle.
fn work(shared: &(Mutex<ThreadsState>, Condvar)) {
    let mut state = shared.0.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            job();
            state = shared.0.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        if state.retire {
            state.threads -= 1;
            state.waking = state.waking.saturating_sub(1);
            // Tell a releasing owner that one more is gone.
            shared.1.notify_all();
            return;
        }
        state.idle += 1;
        state = shared.1.wait(state).unwrap_or_else(|e| e.into_inner());
        state.idle -= 1;
        if state.retire && state.jobs.is_empty() {
            // Counted until it has left, so `release` waits for it.
            state.waking += 1;
        }
    }
}

/// Load on one vault.
#[derive(Debug, Default)]
struct VaultLoad {
    busy: usize,
    /// A check of this vault has ended (its challenge and token are known, a TLS session can be resumed).
    warm: bool,
    first_started: Option<Instant>,
}

/// Certificate checks on their own clocks: each runs on a thread of its own ([`Threads`]) and reports back
/// through a channel, so a slow or hung check holds up nothing but its own certificate. At most [`PARALLELISM`] run at once and at
/// most [`http::CONNECTIONS_PER_HOST`] per vault (the connections the pool keeps). A vault's first check goes
/// alone for up to [`WARM_UP`]: it answers the challenge, fetches the token and leaves a TLS session for the
/// others to resume, and if it hangs the others go ahead without it.
///
/// A check's end is sent as `E::from(done)` to the channel the owner waits on (the poller's one channel for
/// everything that can wake it); the owner hands each [`Done`] back to [`Checks::ended`].
pub(crate) struct Checks<E> {
    client: Arc<VaultClient>,
    options: SyncOptions,
    stop: Stop,
    tx: Sender<E>,
    vaults: HashMap<String, VaultLoad>,
    in_flight: usize,
    generation: u64,
    threads: Threads,
}

impl<E: From<Done> + Send + 'static> Checks<E> {
    /// Checks with `client`, none running yet, reporting to `tx`.
    pub(crate) fn new(
        client: Arc<VaultClient>,
        options: SyncOptions,
        stop: Stop,
        tx: Sender<E>,
    ) -> Checks<E> {
        Checks {
            client,
            options,
            stop,
            tx,
            vaults: HashMap::new(),
            in_flight: 0,
            generation: 0,
            threads: Threads::new(),
        }
    }

    /// Lets the idle check threads exit (before a wait longer than it is worth keeping them for); the next
    /// checks start new ones.
    pub(crate) fn release(&self) {
        self.threads.release();
    }

    /// New settings: later checks use `client` and `options`; results of checks started before carry the old
    /// generation number.
    pub(crate) fn new_generation(&mut self, client: Arc<VaultClient>, options: SyncOptions) -> u64 {
        if !Arc::ptr_eq(&client, &self.client) {
            for load in self.vaults.values_mut() {
                load.warm = false;
                load.first_started = None;
            }
        }
        self.client = client;
        self.options = options;
        self.generation += 1;
        self.generation
    }

    /// Checks running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When a vault whose first check is still running lets its other certificates go ahead anyway
    /// ([`WARM_UP`] after that check started), if one is waiting for that.
    pub(crate) fn warm_up_ends(&self) -> Option<Instant> {
        self.vaults
            .values()
            .filter(|load| !load.warm && load.busy > 0)
            .filter_map(|load| load.first_started)
            .map(|t| t + WARM_UP)
            .filter(|t| *t > Instant::now())
            .min()
    }

    /// Starts checking `cert` (index `index` of the current settings) unless the limits say wait.
    pub(crate) fn try_start(
        &mut self,
        index: usize,
        cert: &ObservedCertificate,
        known: KnownOwned,
    ) -> Offer {
        if self.in_flight >= PARALLELISM {
            return Offer::Full;
        }
        let load = self.vaults.entry(cert.vault_url.to_string()).or_default();
        let warmed_up = load.warm || load.first_started.is_some_and(|t| t.elapsed() >= WARM_UP);
        let limit = if warmed_up {
            http::CONNECTIONS_PER_HOST
        } else {
            1
        };
        if load.busy >= limit {
            return Offer::NoRoom;
        }
        let (client, options, stop, tx) = (
            Arc::clone(&self.client),
            self.options.clone(),
            self.stop.clone(),
            self.tx.clone(),
        );
        let generation = self.generation;
        let cert = cert.clone();
        let started = self.threads.run(Box::new(move || {
            let known = Known {
                version: known.version.as_deref(),
                has_not_after: known.has_not_after,
            };
            let result = check(&client, &cert, known, &options, &stop);
            let _ = tx.send(E::from(Done {
                generation,
                index,
                url: cert.url.to_string(),
                vault: cert.vault_url.to_string(),
                result,
            }));
        }));
        if let Err(e) = started {
            log::warn!("cannot start a check thread ({e}); trying again shortly");
            return Offer::Full;
        }
        load.busy += 1;
        load.first_started.get_or_insert_with(Instant::now);
        self.in_flight += 1;
        Offer::Started
    }

    /// Books the end of a check this started (whatever its generation): its connection is free again.
    pub(crate) fn ended(&mut self, done: &Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(load) = self.vaults.get_mut(&done.vault) {
            load.busy = load.busy.saturating_sub(1);
            load.warm = true;
        }
    }
}

/// What is known to be installed for one certificate (the version, whether its notAfter is recorded), owned,
/// to hand to a check's thread.
#[derive(Debug, Clone, Default)]
pub struct KnownOwned {
    /// The version recorded as installed.
    pub version: Option<String>,
    /// Whether its notAfter is recorded.
    pub has_not_after: bool,
}

/// Checks every certificate of `certs` once, as many at once as the parallelism limits allow, in settings order;
/// results in the order of `certs` (`known` gives what is installed, by the same index; missing entries mean
/// nothing is).
pub fn check_all(
    client: Arc<VaultClient>,
    certs: &[ObservedCertificate],
    known: &[KnownOwned],
    options: SyncOptions,
    stop: &Stop,
) -> Vec<Result<Checked, SyncError>> {
    let (tx, rx) = mpsc::channel::<Done>();
    let mut checks = Checks::new(client, options, stop.clone(), tx);
    let mut results: Vec<Option<Result<Checked, SyncError>>> = certs.iter().map(|_| None).collect();
    let mut waiting: Vec<usize> = (0..certs.len()).collect();
    let mut left = certs.len();
    while left > 0 {
        let mut full = false;
        waiting.retain(|&i| {
            if full {
                return true;
            }
            match checks.try_start(i, &certs[i], known.get(i).cloned().unwrap_or_default()) {
                Offer::Started | Offer::Settled => false,
                Offer::NoRoom => true,
                Offer::Full => {
                    full = true;
                    true
                }
            }
        });
        if checks.in_flight() == 0 && (stop.requested() || !waiting.is_empty()) {
            if stop.requested() {
                break;
            }
            // No thread could be started: try again shortly.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // A check's end frees room; a vault's warm-up ending lets its other certificates go.
        let wait = checks.warm_up_ends().map_or(http::CHECK_DEADLINE, |t| {
            t.saturating_duration_since(Instant::now())
        });
        if let Ok(done) = rx.recv_timeout(wait) {
            checks.ended(&done);
            left -= 1;
            results[done.index] = Some(done.result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(SyncError::Stopped)))
        .collect()
}
