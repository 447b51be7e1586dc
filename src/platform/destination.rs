//! Seam (a): where installed certificates go. `sync` fetches and decodes a version, then asks the platform's
//! destination whether it is already in place and, if not, to install it; what an install means (files and
//! links, or a certificate store) is the destination's alone.

use std::path::{Path, PathBuf};
use std::sync::RwLockWriteGuard;

use crate::certificate::CertificateBundle;
use crate::names::Version;
use crate::settings::ObservedCertificate;

/// How a destination installs, from the settings.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(
    windows,
    allow(
        dead_code,
        reason = "a Windows store takes each certificate's accounts from its key options, not from acls"
    )
)]
pub(crate) struct DestinationOptions<'a> {
    /// Grant the certificate's `acls` (users, groups, accounts) access to what is installed.
    pub acls: bool,
    /// Versions to keep per certificate (older ones this product installed are removed).
    pub retained_versions: u32,
    /// Where the destination keeps its lock files (in kvvm's state folder).
    pub lock_dir: &'a Path,
    /// Mark a new version's previous one as renewed by it, when it serves the same names (Windows'
    /// `linkOnRenewal`; Linux's link always names the newest version).
    #[cfg_attr(unix, allow(dead_code, reason = "read by the Windows destination"))]
    pub link_on_renewal: bool,
}

/// Where an installed version is found: its file, the name applications use, and its folder of other formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The version itself.
    pub file: PathBuf,
    /// What applications open, which always names the newest version.
    pub link: PathBuf,
    /// The version's other formats (`additionalFormats`), when it has them.
    pub folder: Option<PathBuf>,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    /// Where the version now is.
    pub placement: Placement,
    /// Something applications see changed (written, or pointed at anew): post-install commands run.
    pub changed: bool,
    /// Older versions removed by retention.
    pub removed: Vec<PathBuf>,
    /// What the status should say of the version as installed (Windows: its chain's root is not one this
    /// machine trusts).
    pub remark: Option<String>,
}

/// Where a platform puts installed certificates.
pub(crate) trait CertificateDestination: Sized {
    /// Why an install failed. Everything installed before stays usable.
    type Error: std::error::Error;

    /// The destination `options` describe.
    fn new(options: DestinationOptions<'_>) -> Self;

    /// Where, in kvvm's state folder `state_dir`, the destination keeps its lock files.
    fn lock_folder(state_dir: &Path) -> PathBuf;

    /// What applications open for `cert` (before anything is installed too): its link in the store folder, or
    /// the certificate store it goes into.
    fn link(cert: &ObservedCertificate) -> PathBuf;

    /// Waits for the installs in progress in this process to end and holds new ones back while the guard
    /// lives: the worker takes it before it exits with checks still in flight, so no install is cut short.
    fn quiesce() -> RwLockWriteGuard<'static, ()>;

    /// Where `version` of `cert` is, if it is installed exactly as the settings ask; reads only.
    fn current(&self, cert: &ObservedCertificate, version: &Version) -> Option<Placement>;

    /// Installs `version` of `cert` and makes it the one applications use.
    fn install(
        &self,
        cert: &ObservedCertificate,
        version: &Version,
        bundle: &CertificateBundle,
    ) -> Result<Installed, Self::Error>;
}
