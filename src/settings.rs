//! The KeyVaultForLinux settings schema. Users deploy these settings with ARM templates, `az vm extension set`,
//! `Set-AzVmExtension` and scale-set profiles, so every shape the original extension accepts keeps working: v1/v2
//! string lists with a global store location, v3 objects, strings where numbers or booleans are meant. The JSON
//! is read into raw structs that mirror it, then validated into a typed [`Settings`]; every rejection names the
//! setting, the bad value and the fix.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// The store folder when none is configured.
pub const DEFAULT_STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
/// `pollingIntervalInS` when absent.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(3600);
/// `retainedVersions` when absent: the current version and the previous one.
pub const DEFAULT_RETAINED_VERSIONS: u32 = 2;
/// The Fluentd defaults of the original extension.
pub const DEFAULT_FLUENTD_ENDPOINT: &str = "tcp://localhost:24224";
pub const DEFAULT_SERVICE_NAME: &str = "akvvm_service";

/// The validated settings the worker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub observed_certificates: Vec<ObservedCertificate>,
    pub polling_interval: Duration,
    pub require_initial_sync: bool,
    pub acl_enabled: bool,
    pub retained_versions: u32,
    pub msi_endpoint: Option<Url>,
    pub msi_client_id: Option<String>,
    pub logging: Option<LoggingSettings>,
    /// Things accepted but not acted on (Windows-only settings, unknown keys, protected settings).
    pub warnings: Vec<String>,
}

/// One certificate to keep installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCertificate {
    /// The URL as configured (normalised by the URL parser).
    pub url: Url,
    /// `https://<host>[:port]/`.
    pub vault_url: Url,
    /// First DNS label of the vault host.
    pub vault_name: String,
    pub secret_name: String,
    /// A pinned version, if the URL names one.
    pub version: Option<String>,
    pub store_location: PathBuf,
    pub link_name: String,
    pub acls: Vec<AclEntry>,
}

impl ObservedCertificate {
    /// `<vault>.<secret>`: version files are `<prefix>.<version>`.
    pub fn file_prefix(&self) -> String {
        format!("{}.{}", self.vault_name, self.secret_name)
    }
}

/// Read access for a user and/or a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub user: Option<String>,
    pub group: Option<String>,
}

/// Where Fluentd records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    pub endpoint_host: String,
    pub endpoint_port: u16,
    pub service_name: String,
}

/// The outcome of reading a settings file.
// Built once per `enable` and moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Configured {
    /// No settings at all (empty file, null settings): nothing to watch.
    Nothing {
        reason: String,
    },
    Settings(Settings),
}

/// A rejected setting. The message names the setting (JSON path), the bad value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "the settings file is not JSON ({detail}); waagent writes it from the extension's settings: check the JSON you deployed"
    )]
    NotJson { detail: String },
    #[error(
        "{setting} is a string that holds JSON ({preview}), not a JSON object: the settings were escaped twice, \
         as happens when PowerShell passes a JSON string to Set-AzVMExtension -SettingString or -Settings. \
         Pass an object instead (a hashtable for -Settings, or the unescaped JSON text for -SettingString)"
    )]
    EscapedJson { setting: String, preview: String },
    #[error("{setting} must be {expected}, not {value}; {fix}")]
    WrongType {
        setting: String,
        expected: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error("{setting} is missing; {fix}")]
    Missing { setting: String, fix: &'static str },
    #[error(
        "{setting} is an empty list: add the URL of at least one certificate's secret, \
         e.g. \"https://myvault.vault.azure.net/secrets/mycert\""
    )]
    NoCertificates { setting: String },
    #[error("{setting} is {value:?}: {problem}; {fix}")]
    BadValue {
        setting: String,
        value: String,
        problem: &'static str,
        fix: String,
    },
    #[error(
        "{setting} is {value:?}: it names the certificate endpoint (/certificates/), which has no private key. \
         Use the secret endpoint of the same certificate: {suggestion:?}"
    )]
    CertificatesEndpoint {
        setting: String,
        value: String,
        suggestion: String,
    },
    #[error("{setting} and {other} both observe {vault}/{name}; list each certificate once")]
    DuplicateCertificate {
        setting: String,
        other: String,
        vault: String,
        name: String,
    },
    #[error(
        "{setting} and {other} both use the link name {link:?} in {folder}; give one of them another \
         customSymbolicLinkName"
    )]
    DuplicateLink {
        setting: String,
        other: String,
        link: String,
        folder: String,
    },
}

impl SettingsError {
    /// A short fixed identifier for logs and status.
    pub fn reason(&self) -> &'static str {
        match self {
            SettingsError::NotJson { .. } => "settings-not-json",
            SettingsError::EscapedJson { .. } => "settings-escaped-json",
            SettingsError::WrongType { .. } => "settings-wrong-type",
            SettingsError::Missing { .. } => "settings-missing",
            SettingsError::NoCertificates { .. } => "settings-no-certificates",
            SettingsError::BadValue { .. } => "settings-bad-value",
            SettingsError::CertificatesEndpoint { .. } => "settings-certificates-endpoint",
            SettingsError::DuplicateCertificate { .. } => "settings-duplicate-certificate",
            SettingsError::DuplicateLink { .. } => "settings-duplicate-link",
        }
    }

    /// The JSON path of the setting at fault ("" for the whole document).
    pub fn setting(&self) -> &str {
        match self {
            SettingsError::NotJson { .. } => "",
            SettingsError::EscapedJson { setting, .. }
            | SettingsError::WrongType { setting, .. }
            | SettingsError::Missing { setting, .. }
            | SettingsError::NoCertificates { setting }
            | SettingsError::BadValue { setting, .. }
            | SettingsError::CertificatesEndpoint { setting, .. }
            | SettingsError::DuplicateCertificate { setting, .. }
            | SettingsError::DuplicateLink { setting, .. } => setting,
        }
    }
}

// ---- raw shapes, mirroring the JSON ------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawPublic {
    #[serde(rename = "secretsManagementSettings")]
    secrets: Option<Value>,
    #[serde(rename = "authenticationSettings")]
    authentication: Option<Value>,
    #[serde(rename = "loggingSettings")]
    logging: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawSecrets {
    #[serde(rename = "pollingIntervalInS")]
    polling_interval: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    store_location: Option<Value>,
    #[serde(rename = "certificateStoreName")]
    store_name: Option<Value>,
    #[serde(rename = "linkOnRenewal")]
    link_on_renewal: Option<Value>,
    #[serde(rename = "requireInitialSync")]
    require_initial_sync: Option<Value>,
    #[serde(rename = "aclEnabled")]
    acl_enabled: Option<Value>,
    #[serde(rename = "retainedVersions")]
    retained_versions: Option<Value>,
    #[serde(rename = "observedCertificates")]
    observed: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawCertificate {
    url: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    store_location: Option<Value>,
    #[serde(rename = "customSymbolicLinkName")]
    link_name: Option<Value>,
    acls: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawAuthentication {
    #[serde(rename = "msiEndpoint")]
    msi_endpoint: Option<Value>,
    #[serde(rename = "msiClientId")]
    msi_client_id: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawLogging {
    logger: Option<Value>,
    endpoint: Option<Value>,
    format: Option<Value>,
    servicename: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

// ---- entry points ------------------------------------------------------------------------------------------

/// Parses a whole `config/<seq>.settings` file. An empty file or null public settings mean "nothing
/// configured"; protected settings, if present, are ignored with a warning (this extension needs none).
pub fn parse_settings_file(text: &str) -> Result<Configured, SettingsError> {
    if text.trim().is_empty() {
        return Ok(Configured::Nothing {
            reason: "the settings file is empty".into(),
        });
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| SettingsError::NotJson {
        detail: e.to_string(),
    })?;
    let doc = unescape_check("the settings file", doc)?;
    let runtime = object(&doc, "the settings file")?
        .get("runtimeSettings")
        .ok_or(SettingsError::Missing {
            setting: "runtimeSettings".into(),
            fix: "waagent writes {\"runtimeSettings\":[{\"handlerSettings\":{\"publicSettings\":{...}}}]}",
        })?;
    let list = match runtime {
        Value::Array(list) if list.len() == 1 => list,
        other => {
            return Err(SettingsError::WrongType {
                setting: "runtimeSettings".into(),
                expected: "a list with exactly one element",
                value: preview(other),
                fix: "waagent writes one runtimeSettings element per settings file",
            });
        }
    };
    let handler = list[0].get("handlerSettings").unwrap_or(&Value::Null);
    if handler.is_null() {
        return Ok(Configured::Nothing {
            reason: "runtimeSettings[0].handlerSettings is absent".into(),
        });
    }
    let public = handler.get("publicSettings").unwrap_or(&Value::Null);
    if public.is_null() {
        return Ok(Configured::Nothing {
            reason: "the public settings are null".into(),
        });
    }
    let mut settings = parse_public_value(public, "publicSettings")?;
    let protected = handler.get("protectedSettings").unwrap_or(&Value::Null);
    if !protected.is_null() && protected != "" {
        settings
            .warnings
            .push("protectedSettings are ignored: KeyVaultForLinux needs none.".into());
    }
    Ok(Configured::Settings(settings))
}

/// Parses the public settings object alone.
pub fn parse_public_settings(value: &Value) -> Result<Settings, SettingsError> {
    parse_public_value(value, "settings")
}

fn parse_public_value(value: &Value, name: &str) -> Result<Settings, SettingsError> {
    let value = unescape_check(name, value.clone())?;
    object(&value, name)?;
    let raw: RawPublic = serde_json::from_value(value).expect("an object always deserialises");
    let mut warnings = Vec::new();
    for key in raw.other.keys() {
        warnings.push(format!("Unknown setting {key:?} is ignored."));
    }
    let secrets_value = raw.secrets.ok_or(SettingsError::Missing {
        setting: "secretsManagementSettings".into(),
        fix: "add {\"secretsManagementSettings\": {\"observedCertificates\": [\"https://<vault>.vault.azure.net/secrets/<name>\"]}}",
    })?;
    let secrets_value = unescape_check("secretsManagementSettings", secrets_value)?;
    object(&secrets_value, "secretsManagementSettings")?;
    let secrets: RawSecrets =
        serde_json::from_value(secrets_value).expect("an object always deserialises");
    for key in secrets.other.keys() {
        warnings.push(format!(
            "Unknown setting secretsManagementSettings.{key} is ignored."
        ));
    }
    if secrets.store_name.is_some() {
        warnings.push("secretsManagementSettings.certificateStoreName is a Windows setting and is ignored on Linux.".into());
    }
    if secrets.link_on_renewal.is_some() {
        warnings.push(
            "secretsManagementSettings.linkOnRenewal is a Windows setting and is ignored on Linux."
                .into(),
        );
    }

    let polling_interval = match &secrets.polling_interval {
        None | Some(Value::Null) => DEFAULT_POLLING_INTERVAL,
        Some(v) => Duration::from_secs(positive_whole(
            "secretsManagementSettings.pollingIntervalInS",
            v,
            "seconds, e.g. \"3600\"",
        )?),
    };
    let retained_versions = match &secrets.retained_versions {
        None | Some(Value::Null) => DEFAULT_RETAINED_VERSIONS,
        Some(v) => {
            let n = positive_whole(
                "secretsManagementSettings.retainedVersions",
                v,
                "files per certificate, e.g. 2",
            )?;
            u32::try_from(n).map_err(|_| {
                bad(
                    "secretsManagementSettings.retainedVersions",
                    v,
                    "is too large",
                    "use a small number such as 2".into(),
                )
            })?
        }
    };
    let require_initial_sync = boolean(
        "secretsManagementSettings.requireInitialSync",
        secrets.require_initial_sync.as_ref(),
    )?;
    let acl_enabled = boolean(
        "secretsManagementSettings.aclEnabled",
        secrets.acl_enabled.as_ref(),
    )?;
    let global_store = match &secrets.store_location {
        None | Some(Value::Null) => PathBuf::from(DEFAULT_STORE),
        Some(v) => store_path("secretsManagementSettings.certificateStoreLocation", v)?,
    };

    let observed_setting = "secretsManagementSettings.observedCertificates";
    let observed = match secrets.observed {
        None | Some(Value::Null) => {
            return Err(SettingsError::Missing {
                setting: observed_setting.into(),
                fix: "list the certificates to install, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]",
            });
        }
        Some(v) => unescape_check(observed_setting, v)?,
    };
    let Value::Array(items) = observed else {
        return Err(SettingsError::WrongType {
            setting: observed_setting.into(),
            expected: "a list",
            value: preview(&observed),
            fix: "write [\"https://myvault.vault.azure.net/secrets/mycert\"] (or a list of {\"url\": ...} objects)",
        });
    };
    if items.is_empty() {
        return Err(SettingsError::NoCertificates {
            setting: observed_setting.into(),
        });
    }
    let mut observed_certificates: Vec<ObservedCertificate> = Vec::with_capacity(items.len());
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut links: BTreeMap<(PathBuf, String), String> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{observed_setting}[{i}]");
        let cert = certificate(&at, item, &global_store, &mut warnings)?;
        let key = (
            cert.vault_url.host_str().unwrap_or_default().to_string(),
            cert.secret_name.to_ascii_lowercase(),
        );
        if let Some(other) = seen.insert(key, at.clone()) {
            return Err(SettingsError::DuplicateCertificate {
                setting: at,
                other,
                vault: cert.vault_url.host_str().unwrap_or_default().into(),
                name: cert.secret_name,
            });
        }
        if let Some(other) = links.insert(
            (cert.store_location.clone(), cert.link_name.clone()),
            at.clone(),
        ) {
            return Err(SettingsError::DuplicateLink {
                setting: at,
                other,
                link: cert.link_name,
                folder: cert.store_location.display().to_string(),
            });
        }
        observed_certificates.push(cert);
    }

    let (msi_endpoint, msi_client_id) = match raw.authentication {
        None | Some(Value::Null) => (None, None),
        Some(v) => authentication(v, &mut warnings)?,
    };
    let logging = match raw.logging {
        None | Some(Value::Null) => None,
        Some(v) => Some(logging(v, &mut warnings)?),
    };
    Ok(Settings {
        observed_certificates,
        polling_interval,
        require_initial_sync,
        acl_enabled,
        retained_versions,
        msi_endpoint,
        msi_client_id,
        logging,
        warnings,
    })
}

// ---- pieces ------------------------------------------------------------------------------------------------

fn certificate(
    at: &str,
    item: &Value,
    global_store: &Path,
    warnings: &mut Vec<String>,
) -> Result<ObservedCertificate, SettingsError> {
    let (url_setting, url_value, store, link, acls) = match item {
        Value::String(_) => (at.to_string(), item.clone(), None, None, None),
        Value::Object(_) => {
            let raw: RawCertificate =
                serde_json::from_value(item.clone()).expect("an object always deserialises");
            for key in raw.other.keys() {
                warnings.push(format!("Unknown setting {at}.{key} is ignored."));
            }
            let url = raw.url.ok_or(SettingsError::Missing {
                setting: format!("{at}.url"),
                fix: "give the certificate's secret URL, e.g. \"https://myvault.vault.azure.net/secrets/mycert\"",
            })?;
            (
                format!("{at}.url"),
                url,
                raw.store_location,
                raw.link_name,
                raw.acls,
            )
        }
        other => {
            return Err(SettingsError::WrongType {
                setting: at.into(),
                expected: "a URL string or an object with \"url\"",
                value: preview(other),
                fix: "write \"https://myvault.vault.azure.net/secrets/mycert\" or {\"url\": \"https://myvault.vault.azure.net/secrets/mycert\"}",
            });
        }
    };
    let Value::String(url_text) = &url_value else {
        return Err(SettingsError::WrongType {
            setting: url_setting,
            expected: "a URL string",
            value: preview(&url_value),
            fix: "write \"https://myvault.vault.azure.net/secrets/mycert\"",
        });
    };
    let parsed = secret_url(&url_setting, url_text)?;
    let store_location = match &store {
        None | Some(Value::Null) => global_store.to_path_buf(),
        Some(v) => store_path(&format!("{at}.certificateStoreLocation"), v)?,
    };
    let link_name = match &link {
        None | Some(Value::Null) => format!("{}.{}", parsed.vault_name, parsed.secret_name),
        Some(v) => link_name(&format!("{at}.customSymbolicLinkName"), v)?,
    };
    let acls = match &acls {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => acl_list(&format!("{at}.acls"), v)?,
    };
    Ok(ObservedCertificate {
        url: parsed.url,
        vault_url: parsed.vault_url,
        vault_name: parsed.vault_name,
        secret_name: parsed.secret_name,
        version: parsed.version,
        store_location,
        link_name,
        acls,
    })
}

struct SecretUrl {
    url: Url,
    vault_url: Url,
    vault_name: String,
    secret_name: String,
    version: Option<String>,
}

const URL_EXAMPLE: &str = "use https://<vault>.vault.azure.net/secrets/<certificate name>, optionally followed by /<version>";

fn secret_url(setting: &str, text: &str) -> Result<SecretUrl, SettingsError> {
    let bad_url = |problem: &'static str, fix: String| SettingsError::BadValue {
        setting: setting.into(),
        value: text.into(),
        problem,
        fix,
    };
    // The URL parser would read "https:///secrets/c" as host "secrets": catch the empty host first.
    if text
        .trim()
        .strip_prefix("https://")
        .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err(bad_url("the URL has no host", URL_EXAMPLE.into()));
    }
    let url = Url::parse(text.trim()).map_err(|_| bad_url("not a URL", URL_EXAMPLE.into()))?;
    if url.scheme() != "https" {
        return Err(bad_url(
            "not an https URL",
            "Key Vault is only reached over https, so the token is never sent in clear text: write https://".into(),
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(bad_url("the URL has no host", URL_EXAMPLE.into()));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad_url(
            "the URL has a query or fragment",
            format!("remove it; {URL_EXAMPLE}"),
        ));
    }
    let segments: Vec<&str> = url
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.first().copied() {
        Some("secrets") => {}
        Some("certificates") => {
            let mut fixed = url.clone();
            fixed.set_path(&format!("/secrets/{}", segments[1..].join("/")));
            let suggestion = fixed.as_str().trim_end_matches('/').to_string();
            return Err(SettingsError::CertificatesEndpoint {
                setting: setting.into(),
                value: text.into(),
                suggestion,
            });
        }
        _ => {
            return Err(bad_url(
                "the path is not /secrets/<name>",
                URL_EXAMPLE.into(),
            ));
        }
    }
    let (name, version) = match segments.as_slice() {
        [_, name] => (name.to_string(), None),
        [_, name, version] => (name.to_string(), Some(version.to_string())),
        _ => {
            return Err(bad_url(
                "the path is not /secrets/<name> or /secrets/<name>/<version>",
                URL_EXAMPLE.into(),
            ));
        }
    };
    if name.is_empty()
        || name.len() > 127
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad_url(
            "the certificate name is not a Key Vault name",
            "names are 1-127 letters, digits and dashes".into(),
        ));
    }
    let version = match version.as_deref() {
        None => None,
        Some(v) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(bad_url(
                "the version is not a Key Vault version",
                "versions are 32 hexadecimal characters; leave the version out to follow the newest".into(),
            ));
        }
    };
    let vault_name = host.split('.').next().unwrap_or(host).to_ascii_lowercase();
    let mut vault_url = url.clone();
    vault_url.set_path("/");
    Ok(SecretUrl {
        url,
        vault_url,
        vault_name,
        secret_name: name,
        version,
    })
}

fn authentication(
    value: Value,
    warnings: &mut Vec<String>,
) -> Result<(Option<Url>, Option<String>), SettingsError> {
    let value = unescape_check("authenticationSettings", value)?;
    object(&value, "authenticationSettings")?;
    let raw: RawAuthentication =
        serde_json::from_value(value).expect("an object always deserialises");
    for key in raw.other.keys() {
        warnings.push(format!(
            "Unknown setting authenticationSettings.{key} is ignored."
        ));
    }
    let endpoint = match &raw.msi_endpoint {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => {
            let setting = "authenticationSettings.msiEndpoint";
            let fix = "use http://169.254.169.254/metadata/identity (Azure VMs) or http://localhost:40342/metadata/identity (Azure Arc)";
            let text = string(setting, v, fix)?;
            let url =
                Url::parse(text.trim()).map_err(|_| bad(setting, v, "not a URL", fix.into()))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty)
            {
                return Err(bad(
                    setting,
                    v,
                    "not an http(s) URL with a host",
                    fix.into(),
                ));
            }
            Some(url)
        }
    };
    let client_id = match &raw.msi_client_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => {
            let setting = "authenticationSettings.msiClientId";
            let fix = "use the client ID of the user-assigned identity (a GUID such as c7373ae5-91c2-4165-8ab6-7381d6e75619), or leave it out for the system-assigned identity";
            let text = string(setting, v, fix)?.trim();
            if !is_guid(text) {
                return Err(bad(setting, v, "not a GUID", fix.into()));
            }
            Some(text.to_ascii_lowercase())
        }
    };
    Ok((endpoint, client_id))
}

fn logging(value: Value, warnings: &mut Vec<String>) -> Result<LoggingSettings, SettingsError> {
    let value = unescape_check("loggingSettings", value)?;
    object(&value, "loggingSettings")?;
    let raw: RawLogging = serde_json::from_value(value).expect("an object always deserialises");
    for key in raw.other.keys() {
        warnings.push(format!("Unknown setting loggingSettings.{key} is ignored."));
    }
    let logger_fix =
        "the only logger is \"fluentd\"; leave loggingSettings out to log to files only";
    match &raw.logger {
        Some(v @ Value::String(s)) if !s.eq_ignore_ascii_case("fluentd") => {
            return Err(bad(
                "loggingSettings.logger",
                v,
                "not a known logger",
                logger_fix.into(),
            ));
        }
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => {
            return Err(SettingsError::Missing {
                setting: "loggingSettings.logger".into(),
                fix: logger_fix,
            });
        }
        Some(v) => {
            return Err(bad(
                "loggingSettings.logger",
                v,
                "not a known logger",
                logger_fix.into(),
            ));
        }
    }
    let format_fix = "the only format is \"forward\" (the Fluentd Forward protocol)";
    match &raw.format {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.eq_ignore_ascii_case("forward") => {}
        Some(v) => {
            return Err(bad(
                "loggingSettings.format",
                v,
                "not a known format",
                format_fix.into(),
            ));
        }
    }
    let endpoint_fix = "write tcp://<host>:<port>, e.g. \"tcp://localhost:24224\"";
    let endpoint = match &raw.endpoint {
        None | Some(Value::Null) => DEFAULT_FLUENTD_ENDPOINT.to_string(),
        Some(v) => string("loggingSettings.endpoint", v, endpoint_fix)?
            .trim()
            .to_string(),
    };
    let endpoint_value = Value::String(endpoint.clone());
    let url = Url::parse(&endpoint)
        .ok()
        .filter(|u| {
            u.scheme() == "tcp"
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.port().is_some()
                && matches!(u.path(), "" | "/")
        })
        .ok_or_else(|| {
            bad(
                "loggingSettings.endpoint",
                &endpoint_value,
                "not a tcp://host:port address",
                endpoint_fix.into(),
            )
        })?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let service_name = match &raw.servicename {
        None | Some(Value::Null) => DEFAULT_SERVICE_NAME.to_string(),
        Some(v) => {
            let fix = "use a Fluentd tag such as \"akvvm_service\"";
            let s = string("loggingSettings.servicename", v, fix)?.trim();
            if s.is_empty() {
                return Err(bad("loggingSettings.servicename", v, "empty", fix.into()));
            }
            s.to_string()
        }
    };
    Ok(LoggingSettings {
        endpoint_host: host,
        endpoint_port: url.port().unwrap_or(24224),
        service_name,
    })
}

fn store_path(setting: &str, value: &Value) -> Result<PathBuf, SettingsError> {
    let fix =
        "use an absolute folder path such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\"";
    let text = string(setting, value, fix)?;
    let path = Path::new(text);
    if text.trim().is_empty() {
        return Err(bad(setting, value, "empty", fix.into()));
    }
    if !path.is_absolute() {
        return Err(bad(setting, value, "a relative path", fix.into()));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) || text.contains('\0') {
        return Err(bad(setting, value, "a path with \"..\" in it", fix.into()));
    }
    Ok(path.components().collect())
}

fn link_name(setting: &str, value: &Value) -> Result<String, SettingsError> {
    let fix =
        "use a plain file name such as \"mycert.pem\": the link is created inside the store folder";
    let text = string(setting, value, fix)?;
    if text.is_empty()
        || text == "."
        || text == ".."
        || text.contains('/')
        || text.contains('\0')
        || text.len() > 255
    {
        return Err(bad(setting, value, "not a plain file name", fix.into()));
    }
    Ok(text.to_string())
}

fn acl_list(setting: &str, value: &Value) -> Result<Vec<AclEntry>, SettingsError> {
    let fix = "write [{\"user\": \"app1\"}, {\"group\": \"appgroup\"}]";
    let Value::Array(items) = value else {
        return Err(SettingsError::WrongType {
            setting: setting.into(),
            expected: "a list",
            value: preview(value),
            fix,
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{setting}[{i}]");
            let Value::Object(map) = item else {
                return Err(SettingsError::WrongType { setting: at, expected: "an object", value: preview(item), fix });
            };
            let name = |key: &str| -> Result<Option<String>, SettingsError> {
                match map.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => {
                        let s = format!("{at}.{key}");
                        let name_fix = "use an existing user or group name (letters, digits, '.', '_', '-', not starting with '-')";
                        let text = string(&s, v, name_fix)?;
                        let ok = !text.is_empty()
                            && text.len() <= 256
                            && !text.starts_with('-')
                            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-$@".contains(&b));
                        if ok { Ok(Some(text.to_string())) } else { Err(bad(&s, v, "not a valid user or group name", name_fix.into())) }
                    }
                }
            };
            let entry = AclEntry { user: name("user")?, group: name("group")? };
            if entry.user.is_none() && entry.group.is_none() {
                return Err(bad(&at, item, "names neither a user nor a group", "give \"user\", \"group\", or both".into()));
            }
            Ok(entry)
        })
        .collect()
}

// ---- value helpers -----------------------------------------------------------------------------------------

fn bad(setting: &str, value: &Value, problem: &'static str, fix: String) -> SettingsError {
    let value = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    SettingsError::BadValue {
        setting: setting.into(),
        value,
        problem,
        fix,
    }
}

fn string<'v>(
    setting: &str,
    value: &'v Value,
    fix: &'static str,
) -> Result<&'v str, SettingsError> {
    value.as_str().ok_or_else(|| SettingsError::WrongType {
        setting: setting.into(),
        expected: "a string",
        value: preview(value),
        fix,
    })
}

fn object<'v>(
    value: &'v Value,
    setting: &str,
) -> Result<&'v serde_json::Map<String, Value>, SettingsError> {
    value.as_object().ok_or_else(|| SettingsError::WrongType {
        setting: setting.into(),
        expected: "a JSON object",
        value: preview(value),
        fix: "write {\"secretsManagementSettings\": {...}} as an object",
    })
}

/// A string that itself parses as a JSON object is the double-escaping mistake: say so.
fn unescape_check(setting: &str, value: Value) -> Result<Value, SettingsError> {
    if let Value::String(s) = &value
        && let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(s)
    {
        return Err(SettingsError::EscapedJson {
            setting: setting.into(),
            preview: preview(&inner),
        });
    }
    Ok(value)
}

/// A whole number of at least 1, from a JSON number or a string of digits.
fn positive_whole(setting: &str, value: &Value, unit: &str) -> Result<u64, SettingsError> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(bad(
            setting,
            value,
            "not a positive whole number",
            format!("write a whole number of {unit}"),
        )),
    }
}

/// A JSON bool or the strings "true"/"false" (waagent's convention); absent means false.
fn boolean(setting: &str, value: Option<&Value>) -> Result<bool, SettingsError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v @ Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(
                setting,
                v,
                "not a boolean",
                "write true or false".into(),
            )),
        },
        Some(v) => Err(bad(
            setting,
            v,
            "not a boolean",
            "write true or false".into(),
        )),
    }
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A short rendering of a JSON value for messages.
fn preview(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 80 {
        return text;
    }
    let mut end = 77;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
