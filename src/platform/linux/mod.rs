//! Linux: certificates go to the store folder (`crate::store`: version files, links, POSIX ACLs, the
//! `additionalFormats` folders), the worker is kept alive by the `setsid` supervisor or systemd
//! (`crate::supervisor`), and users are passwd and group entries.

pub(crate) mod paths;
pub(crate) mod process;
pub(crate) mod users;
pub(crate) mod vmapp;

use std::path::{Path, PathBuf};
use std::sync::RwLockWriteGuard;

use crate::certificate::{CertificateBundle, CertificateError};
use crate::names::Version;
use crate::platform::destination::{
    CertificateDestination, DestinationOptions, Installed, Placement,
};
use crate::settings::{AclEntry, Formats, ObservedCertificate};
use crate::store::{FolderFile, Install, Placed, Store, StoreError, resolve_principals};
use users::PrincipalKind;

pub(crate) use crate::supervisor::{Supervisor as Keeper, SupervisorError as KeepAliveError};

/// Why a certificate could not be installed in the store folder.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The files, links or ACLs could not be written (or a user or group is unknown).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An `additionalFormats` file could not be made from the certificate.
    #[error(transparent)]
    Format(#[from] CertificateError),
}

impl DestinationError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            DestinationError::Store(e) => e.reason(),
            DestinationError::Format(e) => e.reason(),
        }
    }
}

/// The store folders: each certificate's `certificateStoreLocation`, its locks in kvvm's state folder.
#[derive(Debug)]
pub(crate) struct Destination {
    acls: bool,
    retained_versions: u32,
    lock_dir: PathBuf,
}

impl CertificateDestination for Destination {
    type Error = DestinationError;

    fn new(options: DestinationOptions<'_>) -> Destination {
        Destination {
            acls: options.acls,
            retained_versions: options.retained_versions,
            lock_dir: options.lock_dir.to_path_buf(),
        }
    }

    fn lock_folder(state_dir: &Path) -> PathBuf {
        crate::store::lock_folder(state_dir)
    }

    fn quiesce() -> RwLockWriteGuard<'static, ()> {
        crate::store::quiesce()
    }

    fn link(cert: &ObservedCertificate) -> PathBuf {
        cert.store_location.join(cert.link_name.as_str())
    }

    fn current(&self, cert: &ObservedCertificate, version: &Version) -> Option<Placement> {
        let placed = Store::installed(
            &cert.store_location,
            &cert.link_name,
            &cert.secret,
            version,
            &cert.formats.file_names(),
        )?;
        Some(placement(placed))
    }

    fn install(
        &self,
        cert: &ObservedCertificate,
        version: &Version,
        bundle: &CertificateBundle,
    ) -> Result<Installed, DestinationError> {
        let store = Store::open(&cert.store_location, &self.lock_dir)?;
        let name = cert.secret.version_label(version.as_str());
        let pem = bundle.to_pem();
        let folder = folder_files(bundle, cert, &name)?;
        let folder: Vec<FolderFile<'_>> = folder
            .iter()
            .map(|(file, content, exact)| FolderFile {
                name: file,
                content,
                exact: *exact,
            })
            .collect();
        // Resolved before the install, so an unknown user or group fails before anything is written.
        let acls = if self.acls {
            resolve_principals(principal_names(&cert.acls))?
        } else {
            Vec::new()
        };
        let installed = store.install(&Install {
            secret: &cert.secret,
            link_name: &cert.link_name,
            version,
            pem: &pem,
            acls: &acls,
            retained_versions: self.retained_versions,
            folder: &folder,
        })?;
        Ok(Installed {
            // A version folder that appeared or moved is new to applications too (its post-install command runs).
            changed: installed.written || installed.link_changed || installed.folder_changed,
            removed: installed.removed,
            remark: None,
            placement: Placement {
                file: installed.file,
                link: installed.link,
                folder: installed.folder,
            },
        })
    }
}

fn placement(placed: Placed) -> Placement {
    Placement {
        file: placed.file,
        link: placed.link,
        folder: placed.folder,
    }
}

/// The `acls` setting as the store's `(kind, name)` pairs: each entry's user, then its group.
fn principal_names(acls: &[AclEntry]) -> impl Iterator<Item = (PrincipalKind, &str)> {
    acls.iter().flat_map(|entry| {
        let user = entry.user.as_deref().map(|u| (PrincipalKind::User, u));
        let group = entry.group.as_deref().map(|g| (PrincipalKind::Group, g));
        user.into_iter().chain(group)
    })
}

/// The files of the version's folder for the certificate's `additionalFormats` (none when it has none).
type FolderContent = Vec<(&'static str, zeroize::Zeroizing<Vec<u8>>, bool)>;

fn folder_files(
    bundle: &CertificateBundle,
    cert: &ObservedCertificate,
    name: &str,
) -> Result<FolderContent, CertificateError> {
    let mut files: FolderContent = Vec::new();
    if cert.formats.split {
        let [leaf, chain, full, key] = Formats::SPLIT_FILES;
        files.push((leaf, bundle.leaf_pem().into(), true));
        files.push((chain, bundle.chain_pem().into(), true));
        files.push((full, bundle.fullchain_pem().into(), true));
        files.push((key, bundle.key_pem(), true));
    }
    if cert.formats.pfx {
        let pfx = bundle.to_pkcs12(name, &cert.link_name)?;
        files.push((Formats::PFX_FILE, pfx, false));
    }
    Ok(files)
}
