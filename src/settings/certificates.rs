//! `observedCertificates`: each entry a secret URL (v1/v2) or an object with `url` and the certificate's own
//! settings (v3), which fall back to those of `secretsManagementSettings`. Two entries may not observe the same
//! certificate, nor use the same link in one folder.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::error::SettingsErrorKind;
use super::json::{escaped_json, expect_array, found, section, shown, string};
use super::paths::{StoreTarget, link_name, link_setting, store_target};
use super::raw::RawObservedCertificate;
use super::sections::{acl_list, additional_formats, key_options, post_install_command};
use super::url::secret_url;
use super::{Formats, ObservedCertificate, SettingsError};
use crate::hook::Hook;

const EXPECT_CERTIFICATES: &str = "a list of secret URLs or objects with \"url\", e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
const EXPECT_CERTIFICATE: &str = "a secret URL string or an object with \"url\", e.g. \"https://myvault.vault.azure.net/secrets/mycert\"";
const EXPECT_URL: &str = "a URL string such as \"https://myvault.vault.azure.net/secrets/mycert\"";
const EXAMPLE_CERTIFICATES: &str =
    "list the certificates, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
const EXAMPLE_URL: &str =
    "add \"url\": \"https://myvault.vault.azure.net/secrets/mycert\" to this certificate";

/// What a certificate takes from `secretsManagementSettings` when it does not say itself.
pub(super) struct Defaults {
    /// `certificateStoreLocation`, else [`super::DEFAULT_STORE`].
    pub(super) store: StoreTarget,
    /// `postInstallCommand`.
    pub(super) hook: Option<Hook>,
    /// `additionalFormats`.
    pub(super) formats: Formats,
}

/// The list at `path` (`secretsManagementSettings.observedCertificates`): present, not empty, each entry
/// valid, no certificate and no link twice.
pub(super) fn observed_certificates(
    value: Option<&Value>,
    path: &str,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
) -> Result<Vec<ObservedCertificate>, SettingsError> {
    let Some(list) = value else {
        return Err(SettingsErrorKind::Missing {
            fix: EXAMPLE_CERTIFICATES,
        }
        .at(path));
    };
    let list = expect_array(list, path, EXPECT_CERTIFICATES)?;
    if list.is_empty() {
        return Err(SettingsErrorKind::NoCertificates.at(path));
    }
    let mut seen = Seen::default();
    let mut certificates = Vec::with_capacity(list.len());
    for (index, element) in list.iter().enumerate() {
        let parsed =
            observed_certificate(element, &format!("{path}[{index}]"), defaults, warnings)?;
        seen.check(&parsed, index, path)?;
        certificates.push(parsed.certificate);
    }
    Ok(certificates)
}

/// A validated certificate plus the paths its duplicate checks report.
struct ParsedCertificate {
    certificate: ObservedCertificate,
    url_text: String,
    url_path: String,
    link_path: String,
}

/// The certificates and links of the entries read so far, with the index of the entry that took each.
#[derive(Default)]
struct Seen {
    /// (vault, lower-case secret): Key Vault names are case-insensitive.
    certificates: HashMap<(String, String), usize>,
    /// (store folder, link name).
    links: HashMap<(StoreTarget, String), usize>,
}

impl Seen {
    /// Records entry `index` of the list at `list_path`, or says which earlier entry it repeats.
    fn check(
        &mut self,
        parsed: &ParsedCertificate,
        index: usize,
        list_path: &str,
    ) -> Result<(), SettingsError> {
        let certificate = &parsed.certificate;
        let key = (
            certificate.secret.vault.clone(),
            certificate.secret.name.to_ascii_lowercase(),
        );
        if let Some(first) = self.certificates.insert(key, index) {
            return Err(SettingsErrorKind::DuplicateCertificate {
                value: shown(&parsed.url_text),
                first: format!("{list_path}[{first}]"),
                vault: certificate.secret.vault.clone(),
                secret: certificate.secret.name.clone(),
            }
            .at(&parsed.url_path));
        }
        for link in
            crate::platform::naming::links_taken(&certificate.link_name, certificate.formats.any())
        {
            let link_key = (certificate.store_location.clone(), link.clone());
            if let Some(first) = self.links.insert(link_key, index) {
                return Err(SettingsErrorKind::DuplicateLinkName {
                    link,
                    store: crate::platform::target::shown(&certificate.store_location),
                    first: format!("{list_path}[{first}]"),
                }
                .at(&parsed.link_path));
            }
        }
        Ok(())
    }
}

/// One entry of the list, at `path`.
fn observed_certificate(
    element: &Value,
    path: &str,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
) -> Result<ParsedCertificate, SettingsError> {
    match element {
        Value::String(text) => url_entry(text, path, defaults),
        Value::Object(map) => object_entry(map, path, defaults, warnings),
        other => Err(SettingsErrorKind::WrongType {
            expected: EXPECT_CERTIFICATE,
            found: found(other),
        }
        .at(path)),
    }
}

/// A v1/v2 entry: the secret URL alone, with every other setting from `defaults`.
fn url_entry(
    text: &str,
    path: &str,
    defaults: &Defaults,
) -> Result<ParsedCertificate, SettingsError> {
    if let Some(preview) = escaped_json(text, true) {
        return Err(SettingsErrorKind::EscapedJson { preview }.at(path));
    }
    let url = secret_url(text, path)?;
    // `<vault>.<secret>` is always a link name (a DNS label, a dot, a Key Vault name).
    let link_name = link_name(
        &crate::platform::naming::default_link_name(&url.secret),
        path,
    )?;
    Ok(ParsedCertificate {
        certificate: url.into_certificate(
            defaults.store.clone(),
            link_name,
            Vec::new(),
            defaults.hook.clone(),
            defaults.formats,
            super::KeyOptions::default(),
        ),
        url_text: text.to_string(),
        url_path: path.to_string(),
        link_path: path.to_string(),
    })
}

/// A v3 entry: `url` and the certificate's own settings.
fn object_entry(
    map: &Map<String, Value>,
    path: &str,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
) -> Result<ParsedCertificate, SettingsError> {
    let raw: RawObservedCertificate = section(map, path, warnings)?;
    if !crate::platform::target::NAMES_A_STORE && raw.certificate_store_name.is_some() {
        warnings.push(format!(
            "{path}.certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation"
        ));
    }
    let url_path = format!("{path}.url");
    let Some(url_value) = &raw.url else {
        return Err(SettingsErrorKind::Missing { fix: EXAMPLE_URL }.at(url_path));
    };
    let url_text = string(Some(url_value), &url_path, EXPECT_URL)?.unwrap_or_default();
    let url = secret_url(url_text, &url_path)?;
    let store = store_target(
        raw.certificate_store_location.as_ref(),
        raw.certificate_store_name.as_ref(),
        path,
        &defaults.store,
    )?;
    let link_path = format!("{path}.customSymbolicLinkName");
    let (link_name, link_path) =
        match link_setting(raw.custom_symbolic_link_name.as_ref(), &link_path)? {
            None => (
                link_name(
                    &crate::platform::naming::default_link_name(&url.secret),
                    &url_path,
                )?,
                url_path.clone(),
            ),
            Some(name) => (name, link_path),
        };
    let acls = match &raw.acls {
        None => Vec::new(),
        Some(v) => acl_list(v, &format!("{path}.acls"), warnings)?,
    };
    let post_install = match &raw.post_install_command {
        None => defaults.hook.clone(),
        Some(v) => post_install_command(v, &format!("{path}.postInstallCommand"), warnings)?,
    };
    let formats = match &raw.additional_formats {
        None => defaults.formats,
        Some(v) => additional_formats(v, &format!("{path}.additionalFormats"))?,
    };
    let key = key_options(
        raw.key_exportable.as_ref(),
        raw.accounts.as_ref(),
        path,
        warnings,
    )?;
    Ok(ParsedCertificate {
        certificate: url.into_certificate(store, link_name, acls, post_install, formats, key),
        url_text: url_text.to_string(),
        url_path,
        link_path,
    })
}
