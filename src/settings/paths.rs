//! The paths settings name: certificate store folders, the metrics file and the link names inside a store
//! folder. Each is checked and normalised here, so the store only ever sees absolute paths without `..` and
//! plain file names.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::SettingsError;
use super::error::SettingsErrorKind;
use super::json::{shown, string};
use crate::names::{LinkName, StoreLocation};

const EXPECT_STORE: &str =
    "a folder path string such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\"";
const EXPECT_METRICS: &str =
    "a file path string such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\"";
const EXPECT_LINK: &str = "a file name string such as \"mycert.pem\"";

/// A `certificateStoreLocation` setting, if given.
pub(super) fn store_setting(
    value: Option<&Value>,
    path: &str,
) -> Result<Option<PathBuf>, SettingsError> {
    string(value, path, EXPECT_STORE)?
        .map(|text| store_location(text, path))
        .transpose()
}

/// The `metricsFile` setting, if given.
pub(super) fn metrics_setting(
    value: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<PathBuf>, SettingsError> {
    string(value, path, EXPECT_METRICS)?
        .map(|text| metrics_file(text, path, warnings))
        .transpose()
}

/// A `customSymbolicLinkName` setting, if given.
pub(super) fn link_setting(
    value: Option<&Value>,
    path: &str,
) -> Result<Option<LinkName>, SettingsError> {
    string(value, path, EXPECT_LINK)?
        .map(|name| link_name(name, path))
        .transpose()
}

/// An absolute folder without `..`, normalised (no `.` components, no trailing slash).
fn store_location(text: &str, path: &str) -> Result<PathBuf, SettingsError> {
    let windows = StoreLocation::recognize(text).map(|_| {
        "names a Windows certificate store location (KeyVaultForWindows); on Linux certificateStoreLocation is a \
         folder"
    });
    windows.map_or_else(|| absolute_path(text), Err).map_err(|problem| {
        SettingsErrorKind::StoreLocation {
            value: shown(text),
            problem,
        }
        .at(path)
    })
}

/// `metricsFile`: an absolute file path without `..`, normalised like a store location. node_exporter's textfile
/// collector reads only `*.prom` files, so another name is accepted with a warning.
fn metrics_file(
    text: &str,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, SettingsError> {
    let checked = if text.ends_with('/') || text.ends_with("/.") {
        Err("names a folder, not a file")
    } else {
        absolute_path(text)
    };
    let normalised = checked.map_err(|problem| {
        SettingsErrorKind::MetricsFile {
            value: shown(text),
            problem,
        }
        .at(path)
    })?;
    if normalised.extension().is_none_or(|e| e != "prom") {
        warnings.push(format!(
            "{path}: {:?} does not end in .prom, so node_exporter's textfile collector will not read it",
            shown(text)
        ));
    }
    Ok(normalised)
}

/// `text` as an absolute path without `..`, normalised; or what is wrong with it.
fn absolute_path(text: &str) -> Result<PathBuf, &'static str> {
    if text.is_empty() {
        return Err("is empty");
    }
    if text.contains('\0') {
        return Err("contains a NUL character");
    }
    let given = Path::new(text);
    if !given.is_absolute() {
        return Err("is not an absolute path");
    }
    let mut normalised = PathBuf::new();
    for component in given.components() {
        match component {
            Component::RootDir => normalised.push("/"),
            Component::Normal(part) => normalised.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains a \"..\" component"),
            Component::Prefix(_) => return Err("is not an absolute path"),
        }
    }
    if normalised == Path::new("/") {
        return Err("is the filesystem root, which cannot hold certificates");
    }
    Ok(normalised)
}

/// A plain file name usable as a symlink in the store folder: a [`LinkName`]; when it is not one, the message
/// says why.
pub(super) fn link_name(text: &str, path: &str) -> Result<LinkName, SettingsError> {
    if let Some(name) = LinkName::parse(text) {
        return Ok(name);
    }
    let problem = if text.is_empty() {
        "is empty"
    } else if text.contains('/') {
        "contains \"/\""
    } else if text == "." || text == ".." {
        "is not a file name"
    } else if text.contains('\0') {
        "contains a NUL character"
    } else {
        "is longer than 255 bytes"
    };
    Err(SettingsErrorKind::LinkName {
        value: shown(text),
        problem,
    }
    .at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_are_normalised() {
        assert_eq!(
            store_location("/etc/ssl//certs/./", "p").unwrap(),
            PathBuf::from("/etc/ssl/certs")
        );
        for (bad, reason) in [
            ("", "store-location-invalid"),
            ("relative/dir", "store-location-invalid"),
            ("/a/../b", "store-location-invalid"),
            ("/", "store-location-invalid"),
            ("//", "store-location-invalid"),
            ("/a\0b", "store-location-invalid"),
            ("LocalMachine", "store-location-invalid"),
        ] {
            assert_eq!(
                store_location(bad, "p").unwrap_err().reason(),
                reason,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn link_names() {
        assert!(link_name("nginx.pem", "p").is_ok());
        assert!(link_name(".hidden", "p").is_ok());
        assert!(link_name(&"a".repeat(255), "p").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b"] {
            assert!(link_name(bad, "p").is_err(), "{bad:?}");
        }
        assert!(link_name(&"é".repeat(128), "p").is_err());
    }
}
