//! Seam (a), settings: what `certificateStoreLocation` and `certificateStoreName` name on this platform — a
//! store folder on Linux (`linux/target.rs`), a certificate store on Windows (`windows/target.rs`). The settings
//! read both values and ask here; the two implementations have the same names, and this is the one place that
//! picks one.

/// What is wrong with a store setting, for the settings to name with the setting and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetProblem {
    /// `certificateStoreLocation` is not a usable folder (Linux).
    #[cfg_attr(windows, allow(dead_code, reason = "made by the Linux implementation"))]
    Folder(&'static str),
    /// `certificateStoreLocation` is not a store location (Windows): the whole sentence, with what to write.
    #[cfg_attr(unix, allow(dead_code, reason = "made by the Windows implementation"))]
    Location(String),
    /// `certificateStoreName` is not a usable store name (Windows).
    #[cfg_attr(unix, allow(dead_code, reason = "made by the Windows implementation"))]
    Name(&'static str),
}

#[cfg(unix)]
#[path = "linux/target.rs"]
mod implementation;
#[cfg(windows)]
#[path = "windows/target.rs"]
mod implementation;

pub(crate) use implementation::{
    DEFAULT_RETAINED_VERSIONS, EXPECT_LOCATION, EXPECT_NAME, KEY_STORE_OPTIONS, NAMES_A_STORE,
    default_target, parse, shown,
};
pub use implementation::{DEFAULT_STORE, StoreTarget};
