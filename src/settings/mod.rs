//! The KeyVaultForLinux settings schema. Users deploy the same settings JSON through ARM templates, `az vm
//! extension set`, `Set-AzVmExtension` and VMSS profiles, written for v1/v2 (URL strings) or v3 (objects), often
//! copied from Windows; all of it must keep working. So the JSON is first read into raw structs that mirror it
//! (keys matched case-insensitively, as the original .NET/Go readers do; `serde_json::Value` where a field takes
//! several types), then validated into a typed [`Settings`]. Anything we cannot act on safely is an error naming
//! the setting by its JSON path, the bad value and the fix; anything merely unused is a warning.

mod certificates;
mod error;
mod identity;
mod json;
mod raw;
mod sections;
mod url;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ::url::Url;
use serde_json::Value;

use certificates::{EXAMPLE_CERTIFICATES, EXPECT_CERTIFICATES, EXPECT_STORE, observed_certificate};
pub use error::SettingsError;
use identity::authentication;
use json::{
    boolean, escaped_json, expect_array, expect_object, found, is_zero, json_text, section, shown,
    string, whole_number,
};
use raw::*;
use sections::EXPECT_METRICS;
use sections::{additional_formats, logging, metrics_file, post_install_command, store_location};

/// Where certificates go when neither the certificate nor `secretsManagementSettings` names a folder.
pub const DEFAULT_STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
/// `pollingIntervalInS` when absent: one hour, as the Microsoft extension does.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(3600);
/// `retainedVersions` when absent: the current version and the previous one.
pub const DEFAULT_RETAINED_VERSIONS: u32 = 2;
/// fluentd `endpoint` when absent.
pub const DEFAULT_FLUENTD_ENDPOINT: &str = "tcp://localhost:24224";
/// fluentd port when the endpoint names none (fluentd's own default).
pub const DEFAULT_FLUENTD_PORT: u16 = 24224;
/// fluentd `servicename` when absent.
pub const DEFAULT_SERVICE_NAME: &str = "akvvm_service";
/// `expiryWarningDays` when absent: warn two weeks before the installed certificate expires.
pub const DEFAULT_EXPIRY_WARNING_DAYS: u32 = 14;
/// `postInstallCommand.timeoutInS` when absent.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest post-install command timeout accepted (one hour).
const MAX_HOOK_SECONDS: u64 = 3600;

/// Longest polling interval accepted, in seconds (keeps `Instant + interval` far from overflow).
const MAX_POLLING_SECONDS: u64 = u32::MAX as u64;

/// The validated settings: everything the worker, the store and the identity client need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The certificates to keep installed, in the order the user listed them.
    pub observed_certificates: Vec<ObservedCertificate>,
    /// Time between two polls of the vaults.
    pub polling_interval: Duration,
    /// Report `transitioning` until every certificate is installed once.
    pub require_initial_sync: bool,
    /// Apply each certificate's `acls` to its files.
    pub acl_enabled: bool,
    /// How many versions of each certificate to keep on disk (at least 1).
    pub retained_versions: u32,
    /// Managed identity endpoint (IMDS or Azure Arc); `None` means IMDS's default.
    pub msi_endpoint: Option<Url>,
    /// The user-assigned identity (`msiClientId`, `msiObjectId` or `msiResourceId`); `None` means the
    /// system-assigned identity.
    pub msi_identity: Option<crate::identity::UserIdentity>,
    /// Send the extension's log to fluentd as well.
    pub logging: Option<LoggingSettings>,
    /// Warn when an installed certificate expires within this many days and the vault has nothing newer
    /// (0: never).
    pub expiry_warning_days: u32,
    /// Where to write Prometheus text-format metrics after every check (`metricsFile`); `None`: no metrics.
    pub metrics_file: Option<PathBuf>,
    /// Settings accepted but not acted on, one sentence each, for the status file and the log.
    pub warnings: Vec<String>,
}

/// One certificate to keep installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCertificate {
    /// The secret URL as the user wrote it, normalised: `https://<host>[:port]/secrets/<name>[/<version>]`.
    pub url: Url,
    /// The vault's base URL, `https://<host>[:port]/`.
    pub vault_url: Url,
    /// First DNS label of the vault's host, lower case.
    pub vault_name: String,
    /// Secret name as written (Key Vault names are case-insensitive).
    pub secret_name: String,
    /// Pinned version (32 lower-case hex), or `None` to follow the latest.
    pub version: Option<String>,
    /// Absolute, normalised folder holding this certificate's files.
    pub store_location: PathBuf,
    /// File name of the symlink pointing at the current version.
    pub link_name: String,
    /// Users and groups given read access (only applied when `acl_enabled`).
    pub acls: Vec<AclEntry>,
    /// Command to run after a new version is installed: the certificate's own `postInstallCommand`, else the
    /// global one; `None` when neither is set (or the certificate's is an empty list).
    pub post_install: Option<crate::hook::Hook>,
    /// `additionalFormats`: the files of the version's `.d` folder besides the combined PEM (the
    /// certificate's own list, else the global one).
    pub formats: Formats,
}

/// `additionalFormats`: which files go into a version's folder `<vault>.<cert>.<version>.d/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    /// `"split"`: `cert.pem`, `chain.pem`, `fullchain.pem` and `privkey.pem`.
    pub split: bool,
    /// `"pfx"`: `certificate.pfx`.
    pub pfx: bool,
}

impl Formats {
    /// The format names `additionalFormats` accepts.
    pub const KNOWN: &'static [&'static str] = &["split", "pfx"];
    /// The files of `"split"`.
    pub const SPLIT_FILES: [&'static str; 4] =
        ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"];
    /// The file of `"pfx"`.
    pub const PFX_FILE: &'static str = "certificate.pfx";

    /// Whether a folder is written at all.
    pub fn any(&self) -> bool {
        self.split || self.pfx
    }

    /// The folder's file names.
    pub fn file_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.split {
            names.extend(Self::SPLIT_FILES);
        }
        if self.pfx {
            names.push(Self::PFX_FILE);
        }
        names
    }
}

impl ObservedCertificate {
    /// `<vault>.<secret>`: the certificate's default link name; version files are `<prefix>.<version>`.
    pub fn file_prefix(&self) -> String {
        format!("{}.{}", self.vault_name, self.secret_name)
    }
}

/// Read access for a user, a group, or both (at least one is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// User name (or numeric uid) as given.
    pub user: Option<String>,
    /// Group name (or numeric gid) as given.
    pub group: Option<String>,
}

/// Where to send the log with the fluentd Forward protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    /// Host name or IP address (IPv6 without brackets).
    pub endpoint_host: String,
    /// TCP port (non-zero).
    pub endpoint_port: u16,
    /// Tag of every record.
    pub service_name: String,
}

/// What a settings file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per enable and matched at once; boxing would only complicate every caller"
)]
pub enum Configured {
    /// No settings at all (empty file, or null/absent publicSettings): nothing to do, and not an error.
    Nothing {
        /// Why there is nothing to do, for the status message.
        reason: String,
    },
    /// Settings to act on.
    Settings(Settings),
}

const EXPECT_DOCUMENT: &str = "a JSON object such as {\"runtimeSettings\": [{\"handlerSettings\": {\"publicSettings\": {...}}}]}";
const EXPECT_RUNTIME: &str = "an object such as {\"handlerSettings\": {\"publicSettings\": {...}}}";
const EXPECT_HANDLER: &str = "an object such as {\"publicSettings\": {...}}";
const EXPECT_PUBLIC: &str = "a JSON object such as {\"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}}";
const EXPECT_SECRETS: &str = "an object such as {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";
const EXAMPLE_SECRETS: &str = "add \"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";

// ---------------------------------------------------------------------------------------------------------------
// Entry points.

/// Parses a whole `config/<seq>.settings` file
/// (`{"runtimeSettings":[{"handlerSettings":{"publicSettings":{..},"protectedSettings":..}}]}`).
///
/// An empty (or all-whitespace) file, or null/absent `publicSettings`, is [`Configured::Nothing`].
/// `protectedSettings` are accepted and ignored with a warning.
pub fn parse_settings_file(text: &str) -> Result<Configured, SettingsError> {
    // Files written by Windows tools may start with a byte order mark, which serde_json rejects.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Configured::Nothing {
            reason: "the settings file is empty".to_string(),
        });
    }
    let document: Value = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        SettingsError::NotJson {
            detail: full.strip_suffix(&suffix).unwrap_or(&full).to_string(),
            line: e.line(),
            column: e.column(),
        }
    })?;
    let mut warnings = Vec::new();
    let file: RawSettingsFile = section(
        expect_object(&document, "", EXPECT_DOCUMENT)?,
        "",
        FILE_KEYS,
        &mut warnings,
    )?;
    let runtime = match &file.runtime_settings {
        Some(Value::Array(list)) if list.len() == 1 => &list[0],
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(SettingsError::RuntimeSettings {
                found: "an empty list".to_string(),
            });
        }
        Some(Value::Array(list)) => {
            return Err(SettingsError::RuntimeSettings {
                found: format!("{} elements", list.len()),
            });
        }
        Some(other) => {
            return Err(SettingsError::RuntimeSettings {
                found: found(other),
            });
        }
        None => {
            return Err(SettingsError::RuntimeSettings {
                found: "no runtimeSettings".to_string(),
            });
        }
    };
    let runtime: RawRuntimeSetting = section(
        expect_object(runtime, "runtimeSettings[0]", EXPECT_RUNTIME)?,
        "runtimeSettings[0]",
        RUNTIME_KEYS,
        &mut warnings,
    )?;
    let Some(handler) = &runtime.handler_settings else {
        return Ok(Configured::Nothing {
            reason: "the settings file has no handlerSettings".to_string(),
        });
    };
    let handler: RawHandlerSettings = section(
        expect_object(
            handler,
            "runtimeSettings[0].handlerSettings",
            EXPECT_HANDLER,
        )?,
        "runtimeSettings[0].handlerSettings",
        HANDLER_KEYS,
        &mut warnings,
    )?;
    let Some(public) = &handler.public_settings else {
        return Ok(Configured::Nothing {
            reason: "publicSettings are null or absent".to_string(),
        });
    };
    let protected_given = match &handler.protected_settings {
        None => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(map)) => !map.is_empty(),
        Some(_) => true,
    };
    let mut settings = parse_public_settings(public)?;
    if protected_given {
        warnings.push("protectedSettings are ignored: KeyVaultForLinux needs none".to_string());
    }
    // Envelope warnings first: they describe the file before its contents.
    warnings.append(&mut settings.warnings);
    settings.warnings = warnings;
    Ok(Configured::Settings(settings))
}

/// Parses the publicSettings object alone (what users write as `settings` in ARM, `--settings` in `az`).
pub fn parse_public_settings(value: &Value) -> Result<Settings, SettingsError> {
    let mut warnings = Vec::new();
    // PowerShell's \" quoting and `az` on Windows often deliver the settings object as a JSON string: decode it
    // and say how to pass an object. A string that holds anything else stays an error.
    let decoded;
    let value = match value {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(inner @ Value::Object(_)) => {
                warnings.push(
                    "publicSettings is a JSON string holding the settings object; it was decoded and used, but pass \
                     the settings as a JSON object: in PowerShell give -Settings a hashtable (or -SettingString the \
                     output of ConvertTo-Json, converted once), with az give --settings the JSON text or @file.json \
                     once, without extra quoting"
                        .to_string(),
                );
                decoded = inner;
                &decoded
            }
            _ => {
                if let Some(preview) = escaped_json(text, true) {
                    return Err(SettingsError::EscapedJson {
                        setting: "publicSettings".to_string(),
                        preview,
                    });
                }
                value
            }
        },
        _ => value,
    };
    let public: RawPublicSettings = section(
        expect_object(value, "publicSettings", EXPECT_PUBLIC)?,
        "",
        PUBLIC_KEYS,
        &mut warnings,
    )?;

    let path = "secretsManagementSettings";
    let Some(secrets) = &public.secrets_management_settings else {
        return Err(SettingsError::Missing {
            setting: path.to_string(),
            fix: EXAMPLE_SECRETS,
        });
    };
    let secrets: RawSecretsManagement = section(
        expect_object(secrets, path, EXPECT_SECRETS)?,
        path,
        SECRETS_KEYS,
        &mut warnings,
    )?;
    if secrets.link_on_renewal.is_some() {
        warnings.push(format!(
            "{path}.linkOnRenewal is ignored on Linux: it is a Windows certificate store option"
        ));
    }
    if secrets.certificate_store_name.is_some() {
        warnings.push(format!(
            "{path}.certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation"
        ));
    }

    let polling_path = format!("{path}.pollingIntervalInS");
    let polling_interval = match &secrets.polling_interval_in_s {
        None => DEFAULT_POLLING_INTERVAL,
        Some(v) => Duration::from_secs(whole_number(v, MAX_POLLING_SECONDS).ok_or_else(|| {
            SettingsError::PollingInterval {
                setting: polling_path,
                value: json_text(v),
            }
        })?),
    };
    let require_initial_sync = boolean(
        secrets.require_initial_sync.as_ref(),
        &format!("{path}.requireInitialSync"),
        false,
    )?;
    let acl_enabled = boolean(
        secrets.acl_enabled.as_ref(),
        &format!("{path}.aclEnabled"),
        false,
    )?;
    let retained_path = format!("{path}.retainedVersions");
    let retained_versions = match &secrets.retained_versions {
        None => DEFAULT_RETAINED_VERSIONS,
        Some(v) => whole_number(v, u64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| SettingsError::RetainedVersions {
                setting: retained_path,
                value: json_text(v),
            })?,
    };
    let expiry_path = format!("{path}.expiryWarningDays");
    let expiry_warning_days = match &secrets.expiry_warning_days {
        None => DEFAULT_EXPIRY_WARNING_DAYS,
        Some(v) if is_zero(v) => 0,
        Some(v) => whole_number(v, 36_500)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| SettingsError::ExpiryWarningDays {
                setting: expiry_path,
                value: json_text(v),
            })?,
    };
    let metrics_path = format!("{path}.metricsFile");
    let metrics_file = match string(secrets.metrics_file.as_ref(), &metrics_path, EXPECT_METRICS)? {
        None => None,
        Some(s) => Some(metrics_file(s, &metrics_path, &mut warnings)?),
    };
    let global_hook = match &secrets.post_install_command {
        None => None,
        Some(v) => post_install_command(v, &format!("{path}.postInstallCommand"), &mut warnings)?,
    };
    let global_formats = match &secrets.additional_formats {
        None => Formats::default(),
        Some(v) => additional_formats(v, &format!("{path}.additionalFormats"))?,
    };
    let store_path = format!("{path}.certificateStoreLocation");
    let global_store = match string(
        secrets.certificate_store_location.as_ref(),
        &store_path,
        EXPECT_STORE,
    )? {
        None => None,
        Some(s) => Some(store_location(s, &store_path)?),
    };

    let list_path = format!("{path}.observedCertificates");
    let Some(list) = &secrets.observed_certificates else {
        return Err(SettingsError::Missing {
            setting: list_path,
            fix: EXAMPLE_CERTIFICATES,
        });
    };
    let list = expect_array(list, &list_path, EXPECT_CERTIFICATES)?;
    if list.is_empty() {
        return Err(SettingsError::NoCertificates { setting: list_path });
    }
    let default_store = global_store.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    let mut observed_certificates = Vec::with_capacity(list.len());
    // (vault, lower-case secret) → index; (store, link) → index. Key Vault names are case-insensitive.
    let mut seen_certificates: HashMap<(String, String), usize> = HashMap::new();
    let mut seen_links: HashMap<(PathBuf, String), usize> = HashMap::new();
    for (index, element) in list.iter().enumerate() {
        let element_path = format!("{list_path}[{index}]");
        let parsed = observed_certificate(
            element,
            &element_path,
            &default_store,
            global_hook.as_ref(),
            global_formats,
            &mut warnings,
        )?;
        let certificate = parsed.certificate;
        let key = (
            certificate.vault_name.clone(),
            certificate.secret_name.to_ascii_lowercase(),
        );
        if let Some(first) = seen_certificates.insert(key, index) {
            return Err(SettingsError::DuplicateCertificate {
                setting: parsed.url_path,
                value: shown(&parsed.url_text),
                first: format!("{list_path}[{first}]"),
                vault: certificate.vault_name,
                secret: certificate.secret_name,
            });
        }
        // With additionalFormats the folder's link `<link>.d` is taken too.
        let mut links = vec![certificate.link_name.clone()];
        if certificate.formats.any() {
            links.push(format!(
                "{}{}",
                certificate.link_name,
                crate::store::FOLDER_SUFFIX
            ));
        }
        for link in links {
            let link_key = (certificate.store_location.clone(), link.clone());
            if let Some(first) = seen_links.insert(link_key, index) {
                return Err(SettingsError::DuplicateLinkName {
                    setting: parsed.link_path,
                    link,
                    store: certificate.store_location.display().to_string(),
                    first: format!("{list_path}[{first}]"),
                });
            }
        }
        observed_certificates.push(certificate);
    }
    if !acl_enabled && observed_certificates.iter().any(|c| !c.acls.is_empty()) {
        warnings.push(format!(
            "{path}.aclEnabled is not true, so the certificates' acls are ignored; set \"aclEnabled\": true to apply them"
        ));
    }

    // authenticationSettings inside secretsManagementSettings is a common mistake: use it, and say where it
    // belongs; the top-level one wins when both are given.
    let nested_path = "secretsManagementSettings.authenticationSettings";
    let authentication_settings = match (
        &public.authentication_settings,
        &secrets.authentication_settings,
    ) {
        (Some(top), Some(_)) => {
            warnings.push(format!(
                "authenticationSettings is given both at the top level and as {nested_path}; the top-level one is \
                 used and {nested_path} is ignored: remove it"
            ));
            Some((top, "authenticationSettings"))
        }
        (Some(top), None) => Some((top, "authenticationSettings")),
        (None, Some(nested)) => {
            warnings.push(format!(
                "{nested_path} is used, but authenticationSettings belongs at the top level of the settings, beside \
                 secretsManagementSettings: move it there"
            ));
            Some((nested, nested_path))
        }
        (None, None) => None,
    };
    let (msi_endpoint, msi_identity) = match authentication_settings {
        None => (None, None),
        Some((v, auth_path)) => authentication(v, auth_path, &mut warnings)?,
    };
    let logging = match &public.logging_settings {
        None => None,
        Some(v) => logging(v, &mut warnings)?,
    };

    Ok(Settings {
        observed_certificates,
        polling_interval,
        require_initial_sync,
        acl_enabled,
        retained_versions,
        msi_endpoint,
        msi_identity,
        logging,
        expiry_warning_days,
        metrics_file,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn case_variant_keys_are_accepted_but_not_twice() {
        let settings = parse_public_settings(&json!({
            "SecretsManagementSettings": {"ObservedCertificates": ["https://v.vault.azure.net/secrets/c"], "pollingintervalins": 60}
        }))
        .unwrap();
        assert_eq!(settings.polling_interval, Duration::from_secs(60));
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
        let err = parse_public_settings(&json!({
            "secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/c"], "ObservedCertificates": []}
        }))
        .unwrap_err();
        assert_eq!(err.reason(), "setting-given-twice");
        assert_eq!(
            err.setting(),
            "secretsManagementSettings.observedCertificates"
        );
    }
}
