//! Windows: `certificateStoreLocation` is `LocalMachine` or `CurrentUser` (Microsoft's case-sensitive spelling)
//! and `certificateStoreName` the store (`MY`, `WebHosting`, any plain name); each falls back on its own.

use super::TargetProblem;
use crate::names::{CertificateStore, StoreLocation};

/// Where a certificate goes, as its settings say: a certificate store.
pub type StoreTarget = CertificateStore;

/// Where certificates go when the settings name no store, as messages show it: Microsoft's default.
pub const DEFAULT_STORE: &str = "LocalMachine\\MY";

/// Whether `certificateStoreName` means something on this platform.
pub(crate) const NAMES_A_STORE: bool = true;
/// `retainedVersions` when absent: every version stays in its store, as Microsoft's v3 for Windows leaves them.
pub(crate) const DEFAULT_RETAINED_VERSIONS: u32 = u32::MAX;
/// Whether a certificate's private key lives in a key store with its own options (`keyExportable`, `accounts`,
/// `linkOnRenewal`): yes, Windows' key storage providers.
pub(crate) const KEY_STORE_OPTIONS: bool = true;
/// What `certificateStoreLocation` should hold, for type errors.
pub(crate) const EXPECT_LOCATION: &str = "\"LocalMachine\" or \"CurrentUser\"";
/// What `certificateStoreName` should hold, for type errors.
pub(crate) const EXPECT_NAME: &str = "a store name string such as \"MY\"";

/// Where certificates go when the settings name no store: Microsoft's default, `LocalMachine\MY`.
pub(crate) fn default_target() -> StoreTarget {
    CertificateStore::default()
}

/// The target as messages name it: `LocalMachine\MY`.
pub(crate) fn shown(target: &StoreTarget) -> String {
    target.to_string()
}

/// The store `location` and `name` name, each part falling back to `default`'s.
pub(crate) fn parse(
    location: Option<&str>,
    name: Option<&str>,
    default: &StoreTarget,
) -> Result<StoreTarget, TargetProblem> {
    let location = match location {
        None => default.location,
        Some(text) => StoreLocation::parse(text).map_err(TargetProblem::Location)?,
    };
    let name = match name {
        None => default.name.clone(),
        Some(text) => store_name(text).map_err(TargetProblem::Name)?,
    };
    Ok(CertificateStore { location, name })
}

/// A Windows store name: not empty, no path separators or control characters, at most 256 characters.
fn store_name(text: &str) -> Result<String, &'static str> {
    if text.trim().is_empty() {
        return Err("is empty");
    }
    if text.contains(['\\', '/']) {
        return Err("contains a path separator");
    }
    if text.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if text.chars().count() > 256 {
        return Err("is longer than 256 characters");
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_plain_names() {
        for good in ["MY", "WebHosting", "TrustedPeople", "My Store"] {
            assert_eq!(store_name(good).as_deref(), Ok(good));
        }
        for (bad, problem) in [
            ("", "is empty"),
            ("  ", "is empty"),
            ("My\\Sub", "contains a path separator"),
            ("a/b", "contains a path separator"),
            ("a\u{1}b", "contains a control character"),
        ] {
            assert_eq!(store_name(bad), Err(problem), "{bad:?}");
        }
        assert_eq!(
            store_name(&"x".repeat(257)),
            Err("is longer than 256 characters")
        );
    }
}
