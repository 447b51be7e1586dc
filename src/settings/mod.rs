//! The KeyVaultForLinux settings schema. Users deploy the same settings JSON through ARM templates, `az vm
//! extension set`, `Set-AzVmExtension` and VMSS profiles, written for v1/v2 (URL strings) or v3 (objects), often
//! copied from Windows; all of it must keep working. So the JSON is first read into raw structs that mirror it
//! (keys matched case-insensitively, as the original .NET/Go readers do; `serde_json::Value` where a field takes
//! several types), then validated into a typed [`Settings`]. Anything we cannot act on safely is an error naming
//! the setting by its JSON path, the bad value and the fix; anything merely unused is a warning.
//!
//! The parts: `raw` (the structs that mirror the JSON), `json` (reading values, quoting them back), `error`,
//! and one file per part of the schema: `certificates` (observedCertificates), `url` (a certificate's secret
//! URL), `paths` (store folders, link names, the metrics file), `sections` (the numbers, acls,
//! postInstallCommand, additionalFormats), `identity` (authenticationSettings) and `logging`
//! (loggingSettings). This file holds the types and the two entry points, which read as the schema.

mod certificates;
mod error;
mod identity;
mod json;
mod logging;
mod paths;
mod raw;
mod sections;
mod url;

use std::path::PathBuf;
use std::time::Duration;

use ::url::Url;
use serde_json::Value;

use crate::names::{LinkName, SecretRef, Version};

pub use crate::platform::target::DEFAULT_STORE;
use certificates::{Defaults, observed_certificates};
pub use error::{SettingsError, SettingsErrorKind};
use identity::authentication_settings;
use json::{boolean, escaped_json, expect_object, found, section};
pub use paths::StoreTarget;
use paths::{metrics_setting, store_target};
use raw::{
    RawHandlerSettings, RawPublicSettings, RawRuntimeSetting, RawSecretsManagement, RawSettingsFile,
};
use sections::{
    additional_formats, expiry_warning_days, polling_interval, post_install_command,
    retained_versions,
};

/// `pollingIntervalInS` when absent: one hour, as the Microsoft extension does.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(3600);
/// `retainedVersions` when absent, the platform's: on Linux the current version and the previous one; on
/// Windows every version (`u32::MAX`), as Microsoft's v3 for Windows leaves them.
pub const DEFAULT_RETAINED_VERSIONS: u32 = crate::platform::target::DEFAULT_RETAINED_VERSIONS;
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
    /// How many versions of each certificate to keep on disk (at least 1); on Windows, in its store, where
    /// the default is every version (`u32::MAX`).
    pub retained_versions: u32,
    /// Windows: `linkOnRenewal` — a new version's previous one points at it (`CERT_RENEWAL_PROP_ID`) when its
    /// names are all in the new one, so bindings follow a renewal. Always false on Linux.
    pub link_on_renewal: bool,
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
    /// The vault's name and the secret's, which name the certificate's files and log lines.
    pub secret: SecretRef,
    /// Pinned version (32 lower-case hex), or `None` to follow the latest.
    pub version: Option<Version>,
    /// Absolute, normalised folder holding this certificate's files.
    pub store_location: StoreTarget,
    /// File name of the symlink pointing at the current version.
    pub link_name: LinkName,
    /// Users and groups given read access (only applied when `acl_enabled`).
    pub acls: Vec<AclEntry>,
    /// Command to run after a new version is installed: the certificate's own `postInstallCommand`, else the
    /// global one; `None` when neither is set (or the certificate's is an empty list).
    pub post_install: Option<crate::hook::Hook>,
    /// `additionalFormats`: the files of the version's `.d` folder besides the combined PEM (the
    /// certificate's own list, else the global one).
    pub formats: Formats,
    /// Windows: how its private key is kept (`keyExportable`, `accounts`); always the default on Linux.
    pub key: KeyOptions,
}

/// How a certificate's private key is kept in Windows' key storage (the certificate's `keyExportable` and
/// `accounts`, Microsoft's KeyVaultForWindows v3 settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// The key may be exported (`keyExportable`; default false). Never plaintext export.
    pub exportable: bool,
    /// Accounts given read access to the key, as written (`accounts`: `"Network Service"`, `"IIS_IUSRS"`,
    /// `"CONTOSO\\web"`, or a SID); SYSTEM and Administrators always have full control.
    pub accounts: Vec<String>,
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

// The paths of the sections, as messages name them.
const RUNTIME: &str = "runtimeSettings[0]";
const HANDLER: &str = "runtimeSettings[0].handlerSettings";
const SECRETS: &str = "secretsManagementSettings";

// What a section must be, quoted in WrongType messages, and what to add when it is missing.
const EXPECT_DOCUMENT: &str = "a JSON object such as {\"runtimeSettings\": [{\"handlerSettings\": {\"publicSettings\": {...}}}]}";
const EXPECT_RUNTIME: &str = "an object such as {\"handlerSettings\": {\"publicSettings\": {...}}}";
const EXPECT_HANDLER: &str = "an object such as {\"publicSettings\": {...}}";
const EXPECT_PUBLIC: &str = "a JSON object such as {\"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}}";
const EXPECT_SECRETS: &str = "an object such as {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";
const EXAMPLE_SECRETS: &str = "add \"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";

/// Parses a whole `config/<seq>.settings` file
/// (`{"runtimeSettings":[{"handlerSettings":{"publicSettings":{..},"protectedSettings":..}}]}`).
///
/// An empty (or all-whitespace) file, or null/absent `publicSettings`, is [`Configured::Nothing`].
/// `protectedSettings` are accepted and ignored with a warning.
pub fn parse_settings_file(text: &str) -> Result<Configured, SettingsError> {
    // Files written by Windows tools may start with a byte order mark, which serde_json rejects.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(nothing("the settings file is empty"));
    }
    let document = json_document(text)?;
    let mut warnings = Vec::new();
    let file: RawSettingsFile = section(
        expect_object(&document, "", EXPECT_DOCUMENT)?,
        "",
        &mut warnings,
    )?;
    let runtime = only_runtime_setting(file.runtime_settings.as_ref())?;
    let runtime: RawRuntimeSetting = section(
        expect_object(runtime, RUNTIME, EXPECT_RUNTIME)?,
        RUNTIME,
        &mut warnings,
    )?;
    let Some(handler) = &runtime.handler_settings else {
        return Ok(nothing("the settings file has no handlerSettings"));
    };
    let handler: RawHandlerSettings = section(
        expect_object(handler, HANDLER, EXPECT_HANDLER)?,
        HANDLER,
        &mut warnings,
    )?;
    let Some(public) = &handler.public_settings else {
        return Ok(nothing("publicSettings are null or absent"));
    };
    let mut settings = parse_public_settings(public)?;
    if protected_given(handler.protected_settings.as_ref()) {
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
    let decoded = decoded_string(value, &mut warnings)?;
    let public = expect_object(
        decoded.as_ref().unwrap_or(value),
        "publicSettings",
        EXPECT_PUBLIC,
    )?;
    let public: RawPublicSettings = section(public, "", &mut warnings)?;
    let secrets = secrets_section(public.secrets_management_settings.as_ref(), &mut warnings)?;
    let settings = secrets_management(&secrets, &mut warnings)?;
    let (msi_endpoint, msi_identity) = authentication_settings(
        public.authentication_settings.as_ref(),
        secrets.authentication_settings.as_ref(),
        &mut warnings,
    )?;
    let logging = match &public.logging_settings {
        None => None,
        Some(v) => logging::logging(v, &mut warnings)?,
    };
    Ok(Settings {
        msi_endpoint,
        msi_identity,
        logging,
        warnings,
        ..settings
    })
}

/// What `secretsManagementSettings` sets: everything but the identity and the logging, which are left unset
/// here, and the warnings, which go to `warnings`.
fn secrets_management(
    secrets: &RawSecretsManagement,
    warnings: &mut Vec<String>,
) -> Result<Settings, SettingsError> {
    let at = |key: &str| format!("{SECRETS}.{key}");
    let polling_interval = polling_interval(
        secrets.polling_interval_in_s.as_ref(),
        &at("pollingIntervalInS"),
    )?;
    let require_initial_sync = boolean(
        secrets.require_initial_sync.as_ref(),
        &at("requireInitialSync"),
        false,
    )?;
    let acl_enabled = boolean(secrets.acl_enabled.as_ref(), &at("aclEnabled"), false)?;
    let link_on_renewal = crate::platform::target::KEY_STORE_OPTIONS
        && boolean(
            secrets.link_on_renewal.as_ref(),
            &at("linkOnRenewal"),
            false,
        )?;
    let retained_versions =
        retained_versions(secrets.retained_versions.as_ref(), &at("retainedVersions"))?;
    let expiry_warning_days = expiry_warning_days(
        secrets.expiry_warning_days.as_ref(),
        &at("expiryWarningDays"),
    )?;
    let metrics_file =
        metrics_setting(secrets.metrics_file.as_ref(), &at("metricsFile"), warnings)?;
    let defaults = certificate_defaults(secrets, warnings)?;
    let observed_certificates = observed_certificates(
        secrets.observed_certificates.as_ref(),
        &at("observedCertificates"),
        &defaults,
        warnings,
    )?;
    if !acl_enabled && observed_certificates.iter().any(|c| !c.acls.is_empty()) {
        warnings.push(format!(
            "{SECRETS}.aclEnabled is not true, so the certificates' acls are ignored; set \"aclEnabled\": true to apply them"
        ));
    }
    Ok(Settings {
        observed_certificates,
        polling_interval,
        require_initial_sync,
        acl_enabled,
        retained_versions,
        link_on_renewal,
        msi_endpoint: None,
        msi_identity: None,
        logging: None,
        expiry_warning_days,
        metrics_file,
        warnings: Vec::new(),
    })
}

/// Nothing to do, and why.
fn nothing(reason: &str) -> Configured {
    Configured::Nothing {
        reason: reason.to_string(),
    }
}

/// The file's JSON, or where it stops being JSON.
fn json_document(text: &str) -> Result<Value, SettingsError> {
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        SettingsErrorKind::NotJson {
            detail: full.strip_suffix(&suffix).unwrap_or(&full).to_string(),
            line: e.line(),
            column: e.column(),
        }
        .at("")
    })
}

/// The one element of `runtimeSettings`.
fn only_runtime_setting(value: Option<&Value>) -> Result<&Value, SettingsError> {
    let found = match value {
        Some(Value::Array(list)) if list.len() == 1 => return Ok(&list[0]),
        Some(Value::Array(list)) if list.is_empty() => "an empty list".to_string(),
        Some(Value::Array(list)) => format!("{} elements", list.len()),
        Some(other) => found(other),
        None => "no runtimeSettings".to_string(),
    };
    Err(SettingsErrorKind::RuntimeSettings { found }.at("runtimeSettings"))
}

/// Whether `protectedSettings` hold anything (waagent writes an empty string or object when there are none).
fn protected_given(value: Option<&Value>) -> bool {
    match value {
        None => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(map)) => !map.is_empty(),
        Some(_) => true,
    }
}

/// PowerShell's \" quoting and `az` on Windows often deliver the settings object as a JSON string: the object
/// it holds, with a warning that says how to pass an object. A string that holds anything else stays an error.
fn decoded_string(
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, SettingsError> {
    let Value::String(text) = value else {
        return Ok(None);
    };
    if let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
        warnings.push(
            "publicSettings is a JSON string holding the settings object; it was decoded and used, but pass \
             the settings as a JSON object: in PowerShell give -Settings a hashtable (or -SettingString the \
             output of ConvertTo-Json, converted once), with az give --settings the JSON text or @file.json \
             once, without extra quoting"
                .to_string(),
        );
        return Ok(Some(inner));
    }
    match escaped_json(text, true) {
        Some(preview) => Err(SettingsErrorKind::EscapedJson { preview }.at("publicSettings")),
        None => Ok(None),
    }
}

/// `secretsManagementSettings`, which must be given; the Windows-only settings in it draw a warning.
fn secrets_section(
    value: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<RawSecretsManagement, SettingsError> {
    let Some(value) = value else {
        return Err(SettingsErrorKind::Missing {
            fix: EXAMPLE_SECRETS,
        }
        .at(SECRETS));
    };
    let secrets: RawSecretsManagement = section(
        expect_object(value, SECRETS, EXPECT_SECRETS)?,
        SECRETS,
        warnings,
    )?;
    if !crate::platform::target::KEY_STORE_OPTIONS && secrets.link_on_renewal.is_some() {
        warnings.push(format!(
            "{SECRETS}.linkOnRenewal is ignored on Linux: it is a Windows certificate store option"
        ));
    }
    if !crate::platform::target::NAMES_A_STORE && secrets.certificate_store_name.is_some() {
        warnings.push(format!(
            "{SECRETS}.certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation"
        ));
    }
    Ok(secrets)
}

/// The settings of `secretsManagementSettings` that a certificate may override.
fn certificate_defaults(
    secrets: &RawSecretsManagement,
    warnings: &mut Vec<String>,
) -> Result<Defaults, SettingsError> {
    let hook = match &secrets.post_install_command {
        None => None,
        Some(v) => post_install_command(v, &format!("{SECRETS}.postInstallCommand"), warnings)?,
    };
    let formats = match &secrets.additional_formats {
        None => Formats::default(),
        Some(v) => additional_formats(v, &format!("{SECRETS}.additionalFormats"))?,
    };
    let store = store_target(
        secrets.certificate_store_location.as_ref(),
        secrets.certificate_store_name.as_ref(),
        SECRETS,
        &crate::platform::target::default_target(),
    )?;
    Ok(Defaults {
        store,
        hook,
        formats,
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

    #[test]
    fn errors_carry_the_setting_and_the_kind() {
        let err = parse_public_settings(&json!({
            "secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/c"], "pollingIntervalInS": "soon"}
        }))
        .unwrap_err();
        assert_eq!(
            err.setting(),
            "secretsManagementSettings.pollingIntervalInS"
        );
        assert_eq!(
            err.kind(),
            &SettingsErrorKind::PollingInterval {
                value: "\"soon\"".to_string()
            }
        );
        assert_eq!(err.reason(), err.kind().reason());
    }

    #[test]
    #[cfg(windows)]
    fn on_windows_certificates_go_to_the_named_store_of_the_named_location() {
        use crate::names::{CertificateStore, StoreLocation};
        let v1 = serde_json::json!({"secretsManagementSettings": {
            "certificateStoreName": "WebHosting", "certificateStoreLocation": "CurrentUser",
            "observedCertificates": ["https://myvault.vault.azure.net/secrets/web"]}});
        let settings = parse_public_settings(&v1).unwrap();
        assert_eq!(
            settings.observed_certificates[0].store_location,
            CertificateStore {
                location: StoreLocation::CurrentUser,
                name: "WebHosting".into()
            }
        );
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
        let v3 = serde_json::json!({"secretsManagementSettings": {
            "observedCertificates": [
                {"url": "https://myvault.vault.azure.net/secrets/web", "certificateStoreName": "TrustedPeople"},
                {"url": "https://myvault.vault.azure.net/secrets/api"}]}});
        let settings = parse_public_settings(&v3).unwrap();
        let stores: Vec<String> = settings
            .observed_certificates
            .iter()
            .map(|c| c.store_location.to_string())
            .collect();
        assert_eq!(stores, ["LocalMachine\\TrustedPeople", "LocalMachine\\MY"]);
        let bad = serde_json::json!({"secretsManagementSettings": {
            "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/web",
                                      "certificateStoreLocation": "localmachine"}]}});
        let e = parse_public_settings(&bad).unwrap_err();
        assert_eq!(
            e.setting(),
            "secretsManagementSettings.observedCertificates[0].certificateStoreLocation"
        );
        assert!(e.to_string().contains("write \"LocalMachine\""), "{e}");
    }

    #[test]
    #[cfg(windows)]
    fn on_windows_a_certificate_says_how_its_key_is_kept_and_renewals_may_link() {
        let settings = parse_public_settings(&serde_json::json!({"secretsManagementSettings": {
            "linkOnRenewal": "true",
            "observedCertificates": [
                {"url": "https://myvault.vault.azure.net/secrets/web", "keyExportable": true,
                 "accounts": ["Network Service", "", "network service", "CONTOSO\\web"]},
                {"url": "https://myvault.vault.azure.net/secrets/api", "accounts": "IIS_IUSRS"},
                "https://myvault.vault.azure.net/secrets/old"]}}))
        .unwrap();
        assert!(settings.link_on_renewal);
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
        let keys: Vec<&KeyOptions> = settings
            .observed_certificates
            .iter()
            .map(|c| &c.key)
            .collect();
        assert_eq!(
            keys,
            [
                &KeyOptions {
                    exportable: true,
                    accounts: vec!["Network Service".into(), "CONTOSO\\web".into()]
                },
                &KeyOptions {
                    exportable: false,
                    accounts: vec!["IIS_IUSRS".into()]
                },
                &KeyOptions::default(),
            ]
        );
        let defaults = parse_public_settings(&serde_json::json!({"secretsManagementSettings": {
            "observedCertificates": ["https://myvault.vault.azure.net/secrets/web"]}}))
        .unwrap();
        assert!(!defaults.link_on_renewal);
        assert_eq!(
            defaults.retained_versions,
            u32::MAX,
            "every version stays unless the settings say"
        );
        for (bad, setting) in [
            (
                serde_json::json!({"url": "https://myvault.vault.azure.net/secrets/web", "accounts": 5}),
                "secretsManagementSettings.observedCertificates[0].accounts",
            ),
            (
                serde_json::json!({"url": "https://myvault.vault.azure.net/secrets/web", "accounts": ["ok", 5]}),
                "secretsManagementSettings.observedCertificates[0].accounts[1]",
            ),
            (
                serde_json::json!({"url": "https://myvault.vault.azure.net/secrets/web", "keyExportable": "maybe"}),
                "secretsManagementSettings.observedCertificates[0].keyExportable",
            ),
        ] {
            let e = parse_public_settings(
                &serde_json::json!({"secretsManagementSettings": {"observedCertificates": [bad]}}),
            )
            .unwrap_err();
            assert_eq!(e.setting(), setting, "{e}");
        }
        let e = parse_public_settings(&serde_json::json!({"secretsManagementSettings": {
            "linkOnRenewal": 2, "observedCertificates": ["https://myvault.vault.azure.net/secrets/web"]}}))
        .unwrap_err();
        assert_eq!(
            e.setting(),
            "secretsManagementSettings.linkOnRenewal",
            "{e}"
        );
    }
}
