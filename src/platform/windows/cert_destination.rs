//! Seam (a) on Windows: certificates go into the certificate store their settings name
//! (`certificateStoreLocation`\`certificateStoreName`, default `LocalMachine\MY`), through [`CertStore`].
//!
//! Where a version is, is named as PowerShell's certificate drive names it: `Cert:\LocalMachine\MY\<thumbprint>`
//! for the version, `Cert:\LocalMachine\MY` for the store applications look in. Which thumbprint a version has is
//! recorded in kvvm's state folder when it is imported (`certificate-stores\<Location>.<Store>\<vault>.<cert>.<version>`,
//! holding the thumbprint), so a check of an unchanged version decodes nothing and imports nothing; the record
//! counts only while the store still holds that thumbprint (an administrator who deletes the certificate gets it
//! back at the next check). Versions stay in the store beside each other, as Microsoft's v3 leaves them.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::cert_store::{CertStore, CertStoreError};
use crate::certificate::CertificateBundle;
use crate::names::{CertificateStore, StoreLocation, Version};
use crate::platform::destination::{
    CertificateDestination, DestinationOptions, Installed, Placement,
};
use crate::platform::naming;
use crate::settings::ObservedCertificate;

/// The subfolder of kvvm's state folder that records the thumbprint of each version imported.
const RECORDS_FOLDER: &str = "certificate-stores";

/// Why a certificate could not be installed in its certificate store.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The store refused the certificate (or could not be opened).
    #[error(transparent)]
    Store(#[from] CertStoreError),
    /// kvvm's record of a version (its thumbprint, or the accounts its key's access was set for) could not be
    /// written; the certificate is in the store, and the next check finds it there by its thumbprint.
    #[error(
        "{name} is in {store}, but kvvm's record of it, {path}, cannot be written: {source}; check that kvvm's \
         state folder is writable"
    )]
    Record {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// The store, as `LocalMachine\MY`.
        store: String,
        /// The record file.
        path: PathBuf,
        /// What writing it said.
        source: std::io::Error,
    },
}

impl DestinationError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            DestinationError::Store(e) => e.reason(),
            DestinationError::Record { .. } => "record-unwritable",
        }
    }
}

/// Installs into Windows certificate stores, with its records in kvvm's state folder.
#[derive(Debug)]
pub(crate) struct Destination {
    records: PathBuf,
    link_on_renewal: bool,
    /// `retainedVersions`: versions of a certificate kept in its store (`u32::MAX`: all).
    retained: u32,
}

/// Held (shared) by every install, so [`CertificateDestination::quiesce`] can wait for them to end.
static IMPORTS: RwLock<()> = RwLock::new(());

fn importing() -> RwLockReadGuard<'static, ()> {
    IMPORTS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Cert:\LocalMachine\MY`, as PowerShell's certificate drive names the store.
pub(crate) fn store_path(store: &CertificateStore) -> PathBuf {
    PathBuf::from(format!(r"Cert:\{}\{}", store.location.as_str(), store.name))
}

/// What `linkOnRenewal` did with a new version, in words for the status.
enum Linking {
    /// The previous version now names the new one as its renewal.
    Linked(String),
    /// The previous version serves names the new one does not: not linked.
    NotLinked(String),
}

/// The suffix of the file beside a version's record that holds the `accounts` its key's access was set for.
const ACCESS_SUFFIX: &str = ".access";

/// The file beside `record` that holds the `accounts` its key's access was set for.
fn access_record(record: &Path) -> PathBuf {
    let mut name = record.as_os_str().to_owned();
    name.push(ACCESS_SUFFIX);
    PathBuf::from(name)
}

/// A certificate's `accounts` as its access record holds them, one per line (empty: none).
fn access_text(cert: &ObservedCertificate) -> String {
    cert.key.accounts.join("\n")
}

/// What the status says of a version whose chain ends in `root` (a thumbprint) that `target`'s location does not
/// trust.
fn untrusted_root(target: &CertificateStore, root: &str) -> String {
    format!(
        "its chain's root ({root}) is not in {}\\Root, so this machine does not trust it: add it there if this \
         machine must validate the chain itself (kvvm never adds a root; trust stays the administrator's)",
        target.location.as_str()
    )
}

/// `Cert:\LocalMachine\MY\<thumbprint>`: one certificate in it.
fn certificate_path(store: &CertificateStore, thumbprint: &str) -> PathBuf {
    store_path(store).join(thumbprint)
}

impl Destination {
    /// The records of the versions of `cert` this product installed, newest first: each record file and the
    /// thumbprint it holds.
    fn records_of(&self, cert: &ObservedCertificate, version: &Version) -> Vec<(PathBuf, String)> {
        let current = self.record(cert, version);
        let prefix = format!("{}.", naming::file_prefix(&cert.secret));
        let Some(entries) = current.parent().and_then(|d| std::fs::read_dir(d).ok()) else {
            return Vec::new();
        };
        let mut records: Vec<_> = entries
            .flatten()
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| {
                    n.starts_with(&prefix) && !n.ends_with(".tmp") && !n.ends_with(ACCESS_SUFFIX)
                })
            })
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                let thumbprint = std::fs::read_to_string(e.path()).ok()?.trim().to_string();
                Some((modified, e.path(), thumbprint))
            })
            .collect();
        records.sort_by(|a, b| b.0.cmp(&a.0));
        records.into_iter().map(|(_, path, t)| (path, t)).collect()
    }

    /// The thumbprint of the version of `cert` this product installed most recently before `version` (by its
    /// record), if the store still holds it.
    fn previous(
        &self,
        cert: &ObservedCertificate,
        version: &Version,
        store: &CertStore,
    ) -> Option<String> {
        let current = self.record(cert, version);
        self.records_of(cert, version)
            .into_iter()
            .find(|(path, _)| *path != current)
            .map(|(_, thumbprint)| thumbprint)
            .filter(|t| store.contains(t))
    }

    /// `retainedVersions`: removes from the store the versions of `cert` this product installed beyond the
    /// newest `self.retained` (the one just installed, `current`, is never removed), with their records; a
    /// certificate it did not install is never touched. What it removed, as the status names them; a version
    /// that cannot be removed stays, with a warning in the log, and is tried again at the next rotation.
    fn remove_older(
        &self,
        name: &str,
        cert: &ObservedCertificate,
        version: &Version,
        store: &CertStore,
        current: &str,
    ) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        // With linkOnRenewal the version a new one renews stays too: bindings that name it follow the link.
        let floor = if self.link_on_renewal { 2 } else { 1 };
        let keep = usize::try_from(self.retained)
            .unwrap_or(usize::MAX)
            .max(floor);
        for (record, thumbprint) in self.records_of(cert, version).into_iter().skip(keep) {
            if thumbprint != current {
                match store.remove(&thumbprint) {
                    Ok(true) => removed.push(certificate_path(&cert.store_location, &thumbprint)),
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!("{name}: {e}");
                        continue;
                    }
                }
            }
            // Its record goes too (a version removed by hand included): nothing is left to find.
            let _ = std::fs::remove_file(&record);
            let _ = std::fs::remove_file(access_record(&record));
        }
        removed
    }

    /// `linkOnRenewal`: marks `old`, the previous version, as renewed by `new` when every name of `old` is in
    /// `new`. What it did, for the status; nothing when there is nothing to say.
    fn link_renewal(
        &self,
        store: &CertStore,
        old: &str,
        new: &str,
    ) -> Result<Option<Linking>, DestinationError> {
        if old == new || store.renewal_of(old).as_deref() == Some(new) {
            return Ok(None);
        }
        let (Some(old_names), Some(new_names)) = (store.names_of(old), store.names_of(new)) else {
            return Ok(None);
        };
        if !crate::certificate::names_carry_over(&old_names, &new_names) {
            return Ok(Some(Linking::NotLinked(format!(
                "not linked as the renewal of {old}: its names ({}) are not all in this one's ({})",
                old_names.join(", "),
                new_names.join(", ")
            ))));
        }
        store.link_renewal(old, new)?;
        Ok(Some(Linking::Linked(format!(
            "linked as the renewal of {old} (linkOnRenewal): bindings that name {old} now present this one"
        ))))
    }

    /// After `old` was linked to `new`: raises the certificate replace notification IIS's automatic rebind
    /// follows (a `LocalMachine` store: IIS binds only those). What happened, for the status.
    fn notify_replaced(target: &CertificateStore, old: &str, new: &str) -> Option<String> {
        if target.location != StoreLocation::LocalMachine {
            return None;
        }
        Some(
            match super::lifecycle::notify_replaced(target.location, &target.name, old, new) {
                Ok(()) => "the certificate replace notification is raised (Switch-Certificate \
                           -NotifyOnly), so IIS sites with automatic rebind move their bindings to it"
                    .to_string(),
                Err(why) => {
                    log::warn!("{target}: the replace notification of {old} by {new} was not raised: {why}");
                    format!(
                        "the certificate replace notification was not raised ({why}), so IIS sites with \
                         automatic rebind keep their bindings: move them with `appcmd renew binding \
                         /oldcert:{old} /newcert:{new}`"
                    )
                }
            },
        )
    }

    /// Whether the key of the version recorded in `record` has the access `cert`'s `accounts` ask for now
    /// (what was last set is recorded beside it; no record: nothing was set, as for no accounts).
    fn access_is_current(record: &Path, cert: &ObservedCertificate) -> bool {
        std::fs::read_to_string(access_record(record)).unwrap_or_default() == access_text(cert)
    }

    /// The file recording which thumbprint `version` of `cert` was imported as.
    fn record(&self, cert: &ObservedCertificate, version: &Version) -> PathBuf {
        let store = &cert.store_location;
        self.records
            .join(format!("{}.{}", store.location.as_str(), store.name))
            .join(format!("{}.{}", naming::file_prefix(&cert.secret), version))
    }
}

impl CertificateDestination for Destination {
    type Error = DestinationError;

    fn new(options: DestinationOptions<'_>) -> Destination {
        Destination {
            records: options.lock_dir.to_path_buf(),
            link_on_renewal: options.link_on_renewal,
            retained: options.retained_versions,
        }
    }

    fn lock_folder(state_dir: &Path) -> PathBuf {
        state_dir.join(RECORDS_FOLDER)
    }

    fn quiesce() -> RwLockWriteGuard<'static, ()> {
        IMPORTS
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn link(cert: &ObservedCertificate) -> PathBuf {
        store_path(&cert.store_location)
    }

    fn current(&self, cert: &ObservedCertificate, version: &Version) -> Option<Placement> {
        let record = self.record(cert, version);
        let thumbprint = std::fs::read_to_string(&record).ok()?;
        let thumbprint = thumbprint.trim();
        // `accounts` changed since this version went in: the install brings its key's access up to date.
        if !Self::access_is_current(&record, cert) {
            return None;
        }
        let store =
            CertStore::open(cert.store_location.location, &cert.store_location.name).ok()?;
        store.contains(thumbprint).then(|| Placement {
            file: certificate_path(&cert.store_location, thumbprint),
            link: store_path(&cert.store_location),
            folder: None,
        })
    }

    fn install(
        &self,
        cert: &ObservedCertificate,
        version: &Version,
        bundle: &CertificateBundle,
    ) -> Result<Installed, DestinationError> {
        let _importing = importing();
        let target = &cert.store_location;
        let name = cert.secret.version_label(version.as_str());
        let store = CertStore::open(target.location, &target.name)?;
        let ca = CertStore::open(target.location, "CA")?;
        let mut imported = store.import(&name, bundle, &cert.link_name, &ca, &cert.key)?;
        let record = self.record(cert, version);
        // A version this product installed before `accounts` changed: its key gets the access they ask for now.
        // (Whether the key's access is what `accounts` says now: what the access record will say.)
        let mut access_set = imported.added;
        if !imported.added && record.exists() && !Self::access_is_current(&record, cert) {
            access_set = true;
            store.set_key_access(&name, &imported.thumbprint, &cert.key.accounts)?;
            let readers = match cert.key.accounts.as_slice() {
                [] => "no account beyond SYSTEM and Administrators".to_string(),
                accounts => accounts.join(", "),
            };
            let done =
                format!("its private key's access was updated to the accounts now set: {readers}");
            log::info!("{name}: {done}");
            imported.remarks.push(done);
        }
        // A root is never added (trust stays the administrator's); the status says when this machine does not
        // trust it already.
        let remark = imported.root.as_ref().and_then(|root| {
            let trusted = CertStore::open(target.location, "Root").is_ok_and(|r| r.contains(root));
            (!trusted).then(|| untrusted_root(target, root))
        });
        if let Some(remark) = &remark {
            log::warn!("{name}: {remark}");
        }
        // The renewal link goes on only once the new version is in the store, and only on a version this
        // product installed.
        let (linked, renewed) = match self.previous(cert, version, &store) {
            Some(old) if self.link_on_renewal && imported.added => {
                match self.link_renewal(&store, &old, &imported.thumbprint)? {
                    Some(Linking::Linked(text)) => (Some(text), Some(old)),
                    Some(Linking::NotLinked(text)) => (Some(text), None),
                    None => (None, None),
                }
            }
            _ => (None, None),
        };
        if let Some(linked) = &linked {
            log::info!("{name}: {linked}");
        }
        if let Some(provider) = &imported.key_provider {
            log::info!("{name}: its key is kept by {provider}");
        }
        for remark in &imported.remarks {
            log::warn!("{name}: {remark}");
        }
        let write = || -> Result<(), (PathBuf, std::io::Error)> {
            let folder = record.parent().unwrap_or(Path::new("."));
            crate::files::create_folder(folder, 0o700).map_err(|e| (folder.to_path_buf(), e))?;
            crate::files::write_atomically(&record, imported.thumbprint.as_bytes(), 0o600)
                .map_err(|e| (record.clone(), e))?;
            let access = access_record(&record);
            match access_text(cert) {
                _ if !access_set => Ok(()),
                text if text.is_empty() => match std::fs::remove_file(&access) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((access, e)),
                    _ => Ok(()),
                },
                text => crate::files::write_atomically(&access, text.as_bytes(), 0o600)
                    .map_err(|e| (access, e)),
            }
        };
        write().map_err(|(path, source)| DestinationError::Record {
            name: name.clone(),
            store: target.to_string(),
            path,
            source,
        })?;
        // What this handle added is in the store once it is closed; the removal works on the store as it is.
        drop(store);
        let removed = if imported.added {
            let store = CertStore::open(target.location, &target.name)?;
            self.remove_older(&name, cert, version, &store, &imported.thumbprint)
        } else {
            Vec::new()
        };
        for old in &removed {
            log::info!(
                "{name}: removed the older version {} (retainedVersions)",
                old.display()
            );
        }
        // The notification may take a while (PowerShell loads the PKI module): other imports need not wait.
        drop(_importing);
        let notified =
            renewed.and_then(|old| Self::notify_replaced(target, &old, &imported.thumbprint));
        let remarks: Vec<String> = linked
            .into_iter()
            .chain(notified)
            .chain(remark)
            .chain(imported.remarks.iter().cloned())
            .collect();
        let remark = (!remarks.is_empty()).then(|| remarks.join("; "));
        Ok(Installed {
            placement: Placement {
                file: certificate_path(target, &imported.thumbprint),
                link: store_path(target),
                folder: None,
            },
            changed: imported.added,
            removed,
            remark,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Under Wine (scripts/windows.sh), with the fixtures' certificates and a store of each test's own.

    use super::*;
    use crate::platform::windows::cert_store::tests::{fixture, one_key_at_a_time};
    use crate::settings::parse_public_settings;

    /// A destination with its records in `records`, keeping every version (Windows' default).
    fn destination(records: &Path) -> Destination {
        destination_keeping(records, u32::MAX, true)
    }

    /// A destination with its records in `records`, keeping `retained` versions, linking renewals or not.
    fn destination_keeping(records: &Path, retained: u32, link_on_renewal: bool) -> Destination {
        Destination::new(DestinationOptions {
            acls: false,
            retained_versions: retained,
            lock_dir: records,
            link_on_renewal,
        })
    }

    /// An observed certificate going to a `CurrentUser` store of the test's own, as the settings give it.
    fn observed(tag: &str) -> ObservedCertificate {
        observed_in(
            &format!("kvvm-test-dest-{tag}-{:016x}", fastrand::u64(..)),
            &[],
        )
    }

    /// An observed certificate going to the `CurrentUser` store `store`, its key readable by `accounts`.
    fn observed_in(store: &str, accounts: &[&str]) -> ObservedCertificate {
        observed_at("CurrentUser", store, accounts)
    }

    /// An observed certificate going to the store `location\store`, its key readable by `accounts`.
    fn observed_at(location: &str, store: &str, accounts: &[&str]) -> ObservedCertificate {
        let settings = parse_public_settings(&serde_json::json!({
            "secretsManagementSettings": {"observedCertificates": [{
                "url": "https://myvault.vault.azure.net/secrets/web",
                "certificateStoreLocation": location,
                "certificateStoreName": store,
                "accounts": accounts,
            }]}
        }))
        .unwrap();
        settings.observed_certificates.into_iter().next().unwrap()
    }

    #[test]
    fn changed_accounts_reach_the_key_of_the_version_already_installed() {
        use crate::platform::windows::cert_store::tests::key_dacl_of;
        let _keys = one_key_at_a_time();
        let Some(a) = fixture("a") else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let destination = destination(&Destination::lock_folder(state.path()));
        let none = observed("access");
        let store = none.store_location.name.clone();
        let first = destination.install(&none, &version('a'), &a).unwrap();
        assert!(first.changed);
        let thumbprint = thumbprint_of(&first);
        assert!(destination.current(&none, &version('a')).is_some());
        // Network Service added: the version is no longer current until its key has that access, which the
        // next install gives it without importing anything.
        let some = observed_in(&store, &["Network Service"]);
        assert_eq!(destination.current(&some, &version('a')), None);
        let updated = destination.install(&some, &version('a'), &a).unwrap();
        assert!(!updated.changed, "{updated:?}");
        assert!(
            updated.remark.as_deref().is_some_and(|r| r.contains(
                "its private key's access was updated to the accounts now set: Network Service"
            )),
            "{updated:?}"
        );
        // The ACEs as Windows reads them back (Wine drops the DACL's protection flag; verify.ps1 checks it).
        let aces = |thumbprint: &str| {
            let opened = CertStore::open(StoreLocation::CurrentUser, &store).unwrap();
            let (_, sddl) = key_dacl_of(&opened, thumbprint);
            sddl[sddl.find('(').unwrap_or(0)..]
                .replace(";FA;", ";GA;")
                .replace(";FR;", ";GR;")
        };
        assert_eq!(aces(&thumbprint), "(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;NS)");
        assert_eq!(
            destination.current(&some, &version('a')),
            Some(first.placement.clone())
        );
        // The same settings again change nothing.
        let again = destination.install(&some, &version('a'), &a).unwrap();
        assert!(again.remark.is_none(), "{again:?}");
        // Every account removed: not current either, until the key is back to SYSTEM and Administrators only.
        // (Setting that is Windows' part: Wine keeps kvvm's generic rights unmapped, so it refuses to open the
        // container again once they are on it; verify.ps1 -Accounts checks the key's ACL on a real VM.)
        assert_eq!(destination.current(&none, &version('a')), None);
    }

    /// The thumbprint an install put in the store (the last part of its `Cert:\…` path).
    fn thumbprint_of(installed: &Installed) -> String {
        installed
            .placement
            .file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn version(c: char) -> Version {
        Version::parse(&c.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn an_install_is_found_by_its_record_and_a_rotation_goes_beside_it() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b)) = (fixture("a"), fixture("b")) else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let records = Destination::lock_folder(state.path());
        let destination = destination(&records);
        let cert = observed("rotate");
        let store = format!(r"Cert:\CurrentUser\{}", cert.store_location.name);
        assert_eq!(Destination::link(&cert), PathBuf::from(&store));
        assert_eq!(destination.current(&cert, &version('a')), None);

        let first = destination.install(&cert, &version('a'), &a).unwrap();
        assert!(first.changed, "{first:?}");
        assert_eq!(first.placement.link, PathBuf::from(&store));
        let file = first.placement.file.display().to_string();
        let thumb_a = file
            .strip_prefix(&format!(r"{store}\"))
            .unwrap()
            .to_string();
        assert_eq!(thumb_a.len(), 40, "{file}");
        assert_eq!(
            destination.current(&cert, &version('a')),
            Some(first.placement.clone()),
            "the record names what is in the store"
        );
        assert_eq!(destination.current(&cert, &version('b')), None);

        // The same version again imports nothing and changes nothing applications see.
        let again = destination.install(&cert, &version('a'), &a).unwrap();
        assert!(!again.changed, "{again:?}");
        assert_eq!(again.placement, first.placement);

        // A new version goes beside the old one; both stay findable.
        let second = destination.install(&cert, &version('b'), &b).unwrap();
        assert!(second.changed);
        assert_ne!(second.placement.file, first.placement.file);
        let opened =
            CertStore::open(cert.store_location.location, &cert.store_location.name).unwrap();
        assert_eq!(opened.thumbprints().len(), 2);
        assert!(opened.contains(&thumb_a));
        assert_eq!(
            destination.current(&cert, &version('a')),
            Some(first.placement)
        );
        assert_eq!(
            destination.current(&cert, &version('b')),
            Some(second.placement)
        );
    }

    /// The tests' stand-in for powershell.exe (scripts/windows/fake-powershell.c), where Windows keeps
    /// PowerShell, for as long as this lives (Wine has none); it logs each command line.
    struct FakePowerShell {
        exe: PathBuf,
        log: PathBuf,
        /// Where what was there before (Wine's own powershell.exe, a stub that runs nothing) waits to go back.
        saved: PathBuf,
    }

    impl FakePowerShell {
        fn install() -> Option<FakePowerShell> {
            let Ok(from) = std::env::var("KVVM_WINDOWS_FAKE_POWERSHELL") else {
                eprintln!(
                    "skipped: KVVM_WINDOWS_FAKE_POWERSHELL is not set (run scripts/windows.sh test)"
                );
                return None;
            };
            let exe = super::super::lifecycle::powershell();
            let folder = exe.parent().unwrap().to_path_buf();
            std::fs::create_dir_all(&folder).unwrap();
            let saved = folder.join("powershell.exe.kvvm-saved");
            if exe.exists() && !saved.exists() {
                std::fs::rename(&exe, &saved).unwrap();
            }
            std::fs::copy(from, &exe).unwrap();
            let log = folder.join("powershell.log");
            let _ = std::fs::remove_file(&log);
            Some(FakePowerShell { exe, log, saved })
        }

        fn command_lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    impl Drop for FakePowerShell {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.exe);
            let _ = std::fs::remove_file(&self.log);
            let _ = std::fs::rename(&self.saved, &self.exe);
        }
    }

    #[test]
    fn a_linked_renewal_raises_the_replace_notification_iis_rebinds_on() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b), Some(d)) = (fixture("a"), fixture("b"), fixture("d")) else {
            return;
        };
        let Some(powershell) = FakePowerShell::install() else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let destination = destination(&Destination::lock_folder(state.path()));
        // A LocalMachine store: IIS binds only those, so only there is the notification raised.
        let cert = observed_at(
            "LocalMachine",
            &format!("kvvm-test-dest-notify-{:016x}", fastrand::u64(..)),
            &[],
        );
        let first = destination.install(&cert, &version('a'), &a).unwrap();
        assert!(
            powershell.command_lines().is_empty(),
            "nothing was replaced yet"
        );
        // b renews a: PowerShell is asked to raise the notification for exactly a → b in this store.
        let second = destination.install(&cert, &version('b'), &b).unwrap();
        let (ta, tb) = (thumbprint_of(&first), thumbprint_of(&second));
        let lines = powershell.command_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("-NonInteractive")
                && lines[0].contains(super::super::lifecycle::SWITCH_SCRIPT),
            "{lines:?}"
        );
        let store = &cert.store_location.name;
        let path = |thumbprint: &str| format!(r"Cert:\LocalMachine\{store}\{thumbprint}");
        assert_eq!(
            lines[1],
            format!(
                "KVVM_REPLACED_CERTIFICATE={} KVVM_REPLACING_CERTIFICATE={}",
                path(&ta),
                path(&tb)
            )
        );
        assert!(
            second.remark.as_deref().is_some_and(|r| r.contains(
                "the certificate replace notification is raised (Switch-Certificate -NotifyOnly)"
            )),
            "{second:?}"
        );
        // Without Windows PowerShell (Wine's powershell.exe is a stub that runs nothing and exits 0, or none at
        // all) the link still goes on, and the status says how to rebind by hand.
        let wine_stub = powershell.saved.exists();
        drop(powershell);
        let third = destination.install(&cert, &version('d'), &d).unwrap();
        if wine_stub {
            assert!(
                third.remark.as_deref().is_some_and(|r| r.contains(
                    r"System32\WindowsPowerShell\v1.0\powershell.exe exited without running Switch-Certificate"
                )),
                "Wine's stub exits 0 but is not taken for PowerShell: {third:?}"
            );
        }
        let td = thumbprint_of(&third);
        let remark = third.remark.clone().unwrap_or_default();
        assert!(
            remark.contains(&format!("linked as the renewal of {tb}"))
                && remark.contains("the certificate replace notification was not raised (")
                && remark.contains(&format!("appcmd renew binding /oldcert:{tb} /newcert:{td}")),
            "{third:?}"
        );
    }

    #[test]
    fn a_renewal_with_the_same_names_is_linked_from_the_version_it_follows_and_no_other() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b), Some(c), Some(d)) =
            (fixture("a"), fixture("b"), fixture("c"), fixture("d"))
        else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let destination = destination(&Destination::lock_folder(state.path()));
        let cert = observed("renew");
        let first = destination.install(&cert, &version('a'), &a).unwrap();
        assert!(
            !first.remark.clone().unwrap_or_default().contains("renewal"),
            "nothing to link the first version to: {first:?}"
        );
        let second = destination.install(&cert, &version('b'), &b).unwrap();
        let (ta, tb) = (thumbprint_of(&first), thumbprint_of(&second));
        // What the store holds now (a store handle shows what was in the store when it was opened).
        let renewal_of = |thumbprint: &str| {
            CertStore::open(cert.store_location.location, &cert.store_location.name)
                .unwrap()
                .renewal_of(thumbprint)
        };
        let store =
            CertStore::open(cert.store_location.location, &cert.store_location.name).unwrap();
        // b (the same name) renews a.
        assert_eq!(
            renewal_of(&ta).as_deref(),
            Some(tb.as_str()),
            "{second:?}, names {:?} {:?}",
            store.names_of(&ta),
            store.names_of(&tb)
        );
        // d (one name more) renews b: a chain a → b → d.
        let third = destination.install(&cert, &version('d'), &d).unwrap();
        let td = thumbprint_of(&third);
        assert!(
            third
                .remark
                .as_deref()
                .is_some_and(|r| r.contains(&format!("linked as the renewal of {tb}"))),
            "{third:?}"
        );
        assert_eq!(renewal_of(&tb).as_deref(), Some(td.as_str()));
        assert!(
            !third
                .remark
                .clone()
                .unwrap_or_default()
                .contains("replace notification"),
            "IIS binds only LocalMachine certificates: no notification for a CurrentUser one: {third:?}"
        );
        assert_eq!(
            renewal_of(&ta).as_deref(),
            Some(tb.as_str()),
            "a still points at b"
        );
        // c serves another name: d is not linked to it, and the status says why.
        let fourth = destination.install(&cert, &version('c'), &c).unwrap();
        let tc = thumbprint_of(&fourth);
        assert!(
            fourth.remark.as_deref().is_some_and(|r| r.contains(&format!(
                "not linked as the renewal of {td}: its names (DNS:web.example.com, DNS:www.example.com) are \
                 not all in this one's (DNS:other.example.com)"
            ))),
            "{fourth:?}"
        );
        assert_eq!(renewal_of(&td), None);
        assert_eq!(renewal_of(&tc), None);

        // Without linkOnRenewal nothing is linked.
        let unlinked = destination_keeping(
            &Destination::lock_folder(state.path()).join("other"),
            u32::MAX,
            false,
        );
        let other = observed("unlinked");
        let one = unlinked.install(&other, &version('a'), &a).unwrap();
        let two = unlinked.install(&other, &version('b'), &b).unwrap();
        assert!(
            !two.remark.clone().unwrap_or_default().contains("renewal"),
            "{two:?}"
        );
        let store =
            CertStore::open(other.store_location.location, &other.store_location.name).unwrap();
        assert_eq!(store.renewal_of(&thumbprint_of(&one)), None);
    }

    #[test]
    fn older_versions_this_product_installed_go_beyond_retained_versions() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b), Some(c)) = (fixture("a"), fixture("b"), fixture("c")) else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let records = Destination::lock_folder(state.path());
        let keeps_two = destination_keeping(&records, 2, false);
        let cert = observed("retain");
        let store =
            || CertStore::open(cert.store_location.location, &cert.store_location.name).unwrap();
        // A certificate someone else put in the same store is never touched.
        let ca = CertStore::open(cert.store_location.location, "CA").unwrap();
        let theirs = store()
            .import(
                "someone else's",
                &fixture("d").unwrap(),
                &cert.link_name,
                &ca,
                &crate::settings::KeyOptions::default(),
            )
            .unwrap()
            .thumbprint;
        let first = keeps_two.install(&cert, &version('a'), &a).unwrap();
        let second = keeps_two.install(&cert, &version('b'), &b).unwrap();
        assert!(
            second.removed.is_empty(),
            "two versions are kept: {second:?}"
        );
        let third = keeps_two.install(&cert, &version('c'), &c).unwrap();
        assert_eq!(
            third.removed,
            vec![first.placement.file.clone()],
            "{third:?}"
        );
        let thumbs = store().thumbprints();
        assert_eq!(
            thumbs.len(),
            3,
            "{thumbs:?}: theirs {theirs}, {second:?}, {third:?}"
        );
        assert!(store().contains(&theirs));
        assert_eq!(keeps_two.current(&cert, &version('a')), None);
        assert_eq!(
            keeps_two.current(&cert, &version('b')),
            Some(second.placement)
        );
        assert_eq!(
            keeps_two.current(&cert, &version('c')),
            Some(third.placement)
        );
    }

    #[test]
    fn with_link_on_renewal_the_version_a_new_one_renews_stays_whatever_retained_versions_says() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b), Some(d)) = (fixture("a"), fixture("b"), fixture("d")) else {
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let records = Destination::lock_folder(state.path());
        let keeps_one = destination_keeping(&records, 1, true);
        let cert = observed("retain-linked");
        let first = keeps_one.install(&cert, &version('a'), &a).unwrap();
        let second = keeps_one.install(&cert, &version('b'), &b).unwrap();
        assert!(
            second.removed.is_empty(),
            "a, which b renews, stays for the bindings that name it: {second:?}"
        );
        let third = keeps_one.install(&cert, &version('d'), &d).unwrap();
        assert_eq!(third.removed, vec![first.placement.file], "{third:?}");
        assert_eq!(
            keeps_one.current(&cert, &version('b')),
            Some(second.placement)
        );
    }

    #[test]
    fn a_record_counts_only_while_the_store_holds_its_certificate() {
        let state = tempfile::tempdir().unwrap();
        let records = Destination::lock_folder(state.path());
        let destination = destination(&records);
        let cert = observed("gone");
        let record = destination.record(&cert, &version('c'));
        assert!(record.starts_with(&records));
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(&record, "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709").unwrap();
        assert_eq!(
            destination.current(&cert, &version('c')),
            None,
            "a thumbprint the store does not hold is imported again"
        );
    }
}
