//! Linux: `certificateStoreLocation` is a store folder; `certificateStoreName` names nothing here (the settings
//! warn that it is ignored).

use std::path::PathBuf;

use super::TargetProblem;
use crate::names::{StoreLocation, absolute_path};

/// Where a certificate goes, as its settings say: its store folder.
pub type StoreTarget = PathBuf;

pub use crate::platform::paths::DEFAULT_STORE;

/// Whether `certificateStoreName` means something on this platform.
pub(crate) const NAMES_A_STORE: bool = false;
/// `retainedVersions` when absent: the current version file and the previous one.
pub(crate) const DEFAULT_RETAINED_VERSIONS: u32 = 2;
/// Whether a certificate's private key lives in a key store with its own options (`keyExportable`, `accounts`,
/// `linkOnRenewal`): Windows' only; Linux keys are files, read by `acls`.
pub(crate) const KEY_STORE_OPTIONS: bool = false;
/// What `certificateStoreLocation` should hold, for type errors.
pub(crate) const EXPECT_LOCATION: &str =
    "a folder path string such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\"";
/// What `certificateStoreName` should hold (unused: it is not read on Linux).
pub(crate) const EXPECT_NAME: &str = "";

/// Where certificates go when the settings name no folder: the Microsoft extension's store.
pub(crate) fn default_target() -> StoreTarget {
    PathBuf::from(DEFAULT_STORE)
}

/// The target as messages name it.
pub(crate) fn shown(target: &StoreTarget) -> String {
    target.display().to_string()
}

/// The folder `location` names (absolute, without `..`, normalised), else `default`. A Windows location
/// (`LocalMachine`, in any case) is named as such.
pub(crate) fn parse(
    location: Option<&str>,
    _name: Option<&str>,
    default: &StoreTarget,
) -> Result<StoreTarget, TargetProblem> {
    let Some(text) = location else {
        return Ok(default.clone());
    };
    if StoreLocation::recognize(text).is_some() {
        return Err(TargetProblem::Folder(
            "names a Windows certificate store location (KeyVaultForWindows); on Linux certificateStoreLocation is a \
             folder",
        ));
    }
    absolute_path(text).map_err(TargetProblem::Folder)
}
