//! `observedCertificates` entries, v1/v2 URL strings and v3 objects.

use std::path::Path;

use serde_json::Value;

use super::json::{escaped_json, found, section, string};
use super::raw::{CERTIFICATE_KEYS, RawObservedCertificate};
use super::sections::{
    acl_list, additional_formats, link_name, post_install_command, store_location,
};
use super::url::secret_url;
use super::{Formats, ObservedCertificate, SettingsError};

pub(super) const EXPECT_CERTIFICATES: &str = "a list of secret URLs or objects with \"url\", e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
pub(super) const EXPECT_CERTIFICATE: &str = "a secret URL string or an object with \"url\", e.g. \"https://myvault.vault.azure.net/secrets/mycert\"";
pub(super) const EXPECT_URL: &str =
    "a URL string such as \"https://myvault.vault.azure.net/secrets/mycert\"";
pub(super) const EXPECT_STORE: &str =
    "a folder path string such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\"";
pub(super) const EXPECT_LINK: &str = "a file name string such as \"mycert.pem\"";
pub(super) const EXAMPLE_CERTIFICATES: &str =
    "list the certificates, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
pub(super) const EXAMPLE_URL: &str =
    "add \"url\": \"https://myvault.vault.azure.net/secrets/mycert\" to this certificate";

/// A validated certificate plus the paths its duplicate checks report.
pub(super) struct ParsedCertificate {
    pub(super) certificate: ObservedCertificate,
    pub(super) url_text: String,
    pub(super) url_path: String,
    pub(super) link_path: String,
}

pub(super) fn observed_certificate(
    element: &Value,
    path: &str,
    default_store: &Path,
    global_hook: Option<&crate::hook::Hook>,
    global_formats: Formats,
    warnings: &mut Vec<String>,
) -> Result<ParsedCertificate, SettingsError> {
    match element {
        Value::String(text) => {
            if let Some(preview) = escaped_json(text, true) {
                return Err(SettingsError::EscapedJson {
                    setting: path.to_string(),
                    preview,
                });
            }
            let url = secret_url(text, path)?;
            let link_name = url.file_prefix();
            Ok(ParsedCertificate {
                certificate: url.into_certificate(
                    default_store.to_path_buf(),
                    link_name,
                    Vec::new(),
                    global_hook.cloned(),
                    global_formats,
                ),
                url_text: text.clone(),
                url_path: path.to_string(),
                link_path: path.to_string(),
            })
        }
        Value::Object(map) => {
            let raw: RawObservedCertificate = section(map, path, CERTIFICATE_KEYS, warnings)?;
            if raw.certificate_store_name.is_some() {
                warnings.push(format!(
                    "{path}.certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation"
                ));
            }
            let url_path = format!("{path}.url");
            let Some(url_value) = &raw.url else {
                return Err(SettingsError::Missing {
                    setting: url_path,
                    fix: EXAMPLE_URL,
                });
            };
            let url_text = string(Some(url_value), &url_path, EXPECT_URL)?.unwrap_or_default();
            let url = secret_url(url_text, &url_path)?;
            let store_path = format!("{path}.certificateStoreLocation");
            let store = match string(
                raw.certificate_store_location.as_ref(),
                &store_path,
                EXPECT_STORE,
            )? {
                None => default_store.to_path_buf(),
                Some(s) => store_location(s, &store_path)?,
            };
            let link_setting = format!("{path}.customSymbolicLinkName");
            let (link_name, link_path) = match string(
                raw.custom_symbolic_link_name.as_ref(),
                &link_setting,
                EXPECT_LINK,
            )? {
                None => (url.file_prefix(), url_path.clone()),
                Some(name) => {
                    link_name(name, &link_setting)?;
                    (name.to_string(), link_setting)
                }
            };
            let acls = match &raw.acls {
                None => Vec::new(),
                Some(v) => acl_list(v, &format!("{path}.acls"), warnings)?,
            };
            let post_install = match &raw.post_install_command {
                None => global_hook.cloned(),
                Some(v) => {
                    post_install_command(v, &format!("{path}.postInstallCommand"), warnings)?
                }
            };
            let formats = match &raw.additional_formats {
                None => global_formats,
                Some(v) => additional_formats(v, &format!("{path}.additionalFormats"))?,
            };
            Ok(ParsedCertificate {
                certificate: url.into_certificate(store, link_name, acls, post_install, formats),
                url_text: url_text.to_string(),
                url_path,
                link_path,
            })
        }
        other => Err(SettingsError::WrongType {
            setting: path.to_string(),
            expected: EXPECT_CERTIFICATE,
            found: found(other),
        }),
    }
}
