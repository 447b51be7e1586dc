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
use crate::names::{CertificateStore, Version};
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
    /// The record of what was imported could not be written; the certificate is in the store, and the next
    /// check finds it there by its thumbprint.
    #[error(
        "{name} was imported into {store}, but the record of it, {path}, cannot be written: {source}; check that \
         kvvm's state folder is writable"
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
        let thumbprint = std::fs::read_to_string(self.record(cert, version)).ok()?;
        let thumbprint = thumbprint.trim();
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
        let imported = store.import(&name, bundle, &cert.link_name, &ca)?;
        // A root is never added (trust stays the administrator's); the status says when this machine does not
        // trust it already.
        let remark = imported.root.as_ref().and_then(|root| {
            let trusted = CertStore::open(target.location, "Root").is_ok_and(|r| r.contains(root));
            (!trusted).then(|| untrusted_root(target, root))
        });
        if let Some(remark) = &remark {
            log::warn!("{name}: {remark}");
        }
        let record = self.record(cert, version);
        let write = || -> std::io::Result<()> {
            crate::files::create_folder(record.parent().unwrap_or(Path::new(".")), 0o700)?;
            crate::files::write_atomically(&record, imported.thumbprint.as_bytes(), 0o600)
        };
        write().map_err(|source| DestinationError::Record {
            name: name.clone(),
            store: target.to_string(),
            path: record.clone(),
            source,
        })?;
        Ok(Installed {
            placement: Placement {
                file: certificate_path(target, &imported.thumbprint),
                link: store_path(target),
                folder: None,
            },
            changed: imported.added,
            removed: Vec::new(),
            remark,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Under Wine (scripts/windows.sh), with the fixtures' certificates and a store of each test's own.

    use super::*;
    use crate::platform::windows::cert_store::tests::fixture;
    use crate::settings::parse_public_settings;

    /// A destination with its records in `records`.
    fn destination(records: &Path) -> Destination {
        Destination::new(DestinationOptions {
            acls: false,
            retained_versions: 0,
            lock_dir: records,
        })
    }

    /// An observed certificate going to a `CurrentUser` store of the test's own, as the settings give it.
    fn observed(tag: &str) -> ObservedCertificate {
        let store = format!("kvvm-test-dest-{tag}-{:016x}", fastrand::u64(..));
        let settings = parse_public_settings(&serde_json::json!({
            "secretsManagementSettings": {"observedCertificates": [{
                "url": "https://myvault.vault.azure.net/secrets/web",
                "certificateStoreLocation": "CurrentUser",
                "certificateStoreName": store,
            }]}
        }))
        .unwrap();
        settings.observed_certificates.into_iter().next().unwrap()
    }

    fn version(c: char) -> Version {
        Version::parse(&c.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn an_install_is_found_by_its_record_and_a_rotation_goes_beside_it() {
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
