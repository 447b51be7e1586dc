//! The paths settings name: certificate store folders, the metrics file and the link names inside a store
//! folder. Each is checked and normalised here, so the store only ever sees absolute paths without `..` and
//! plain file names.

use std::path::PathBuf;

use serde_json::Value;

use super::SettingsError;
use super::error::SettingsErrorKind;
use super::json::{shown, string};
use crate::names::{LinkName, absolute_path};
use crate::platform::target::{self, TargetProblem};

const EXPECT_METRICS: &str =
    "a file path string such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\"";
const EXPECT_LINK: &str = "a file name string such as \"mycert.pem\"";

pub use crate::platform::target::StoreTarget;

/// The store a certificate (or, at `secretsManagementSettings`, every certificate) names, falling back part by
/// part to `default`. `section` is the settings path holding `certificateStoreLocation` and
/// `certificateStoreName`; what they mean is the platform's (`platform::target`: a folder on Linux, a
/// certificate store on Windows).
pub(super) fn store_target(
    location: Option<&Value>,
    name: Option<&Value>,
    section: &str,
    default: &StoreTarget,
) -> Result<StoreTarget, SettingsError> {
    let location_path = format!("{section}.certificateStoreLocation");
    let name_path = format!("{section}.certificateStoreName");
    let location = string(location, &location_path, target::EXPECT_LOCATION)?;
    let name = match target::NAMES_A_STORE {
        true => string(name, &name_path, target::EXPECT_NAME)?,
        false => None,
    };
    target::parse(location, name, default).map_err(|problem| match problem {
        TargetProblem::Folder(problem) => SettingsErrorKind::StoreLocation {
            value: shown(location.unwrap_or_default()),
            problem,
        }
        .at(&location_path),
        TargetProblem::Location(problem) => {
            SettingsErrorKind::WindowsStoreLocation { problem }.at(&location_path)
        }
        TargetProblem::Name(problem) => SettingsErrorKind::StoreName {
            value: shown(name.unwrap_or_default()),
            problem,
        }
        .at(&name_path),
    })
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
    #[cfg(windows)]
    fn windows_store_targets_fall_back_part_by_part_and_say_what_is_wrong() {
        use crate::names::StoreLocation;
        use serde_json::json;
        let default = StoreTarget::default();
        let target = |location: Option<Value>, name: Option<Value>| {
            store_target(location.as_ref(), name.as_ref(), "s", &default)
        };
        assert_eq!(target(None, None).unwrap(), default);
        assert_eq!(
            target(Some(json!("CurrentUser")), None).unwrap(),
            StoreTarget {
                location: StoreLocation::CurrentUser,
                name: "MY".into()
            }
        );
        assert_eq!(
            target(None, Some(json!("WebHosting"))).unwrap(),
            StoreTarget {
                location: StoreLocation::LocalMachine,
                name: "WebHosting".into()
            }
        );
        let e = target(Some(json!("localmachine")), None).unwrap_err();
        assert_eq!(e.reason(), "store-location-invalid");
        assert_eq!(
            e.to_string(),
            "s.certificateStoreLocation: \"localmachine\" is not spelled as Windows expects; write \"LocalMachine\" \
             (the location names are case-sensitive)"
        );
        let e = target(
            Some(json!("/var/lib/waagent/Microsoft.Azure.KeyVault.Store")),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("is a folder path"), "{e}");
        let e = target(None, Some(json!("My\\Sub"))).unwrap_err();
        assert_eq!(e.reason(), "store-name-invalid");
        assert_eq!(e.setting(), "s.certificateStoreName");
        assert!(target(Some(json!(5)), None).is_err());
    }

    #[test]
    #[cfg(unix)]
    fn store_locations_are_normalised() {
        let store_location = |text: &str, _: &str| {
            let value = Value::String(text.to_string());
            store_target(Some(&value), None, "p", &PathBuf::from("/default"))
        };
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
