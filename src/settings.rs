//! The KeyVaultForLinux settings schema. Users deploy the same settings JSON through ARM templates, `az vm
//! extension set`, `Set-AzVmExtension` and VMSS profiles, written for v1/v2 (URL strings) or v3 (objects), often
//! copied from Windows; all of it must keep working. So the JSON is first read into raw structs that mirror it
//! (keys matched case-insensitively, as the original .NET/Go readers do; `serde_json::Value` where a field takes
//! several types), then validated into a typed [`Settings`]. Anything we cannot act on safely is an error naming
//! the setting by its JSON path, the bad value and the fix; anything merely unused is a warning.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use url::{Host, Url};

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
/// Longest value quoted back in an error message, in characters.
const MAX_SHOWN: usize = 200;

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

/// Why settings were rejected. The Display text names the setting (JSON path), the bad value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file is not JSON.
    #[error(
        "the settings file is not valid JSON ({detail} at line {line} column {column}); the extension settings must be a JSON object"
    )]
    NotJson {
        /// serde's description of the syntax error.
        detail: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// A string holding JSON where an object or list belongs (PowerShell/ARM double encoding).
    #[error(
        "{what} is a JSON string that itself holds JSON ({preview}), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)",
        what = describe_setting(.setting)
    )]
    EscapedJson {
        /// JSON path of the setting ("" for the whole document).
        setting: String,
        /// The start of the string, JSON-quoted.
        preview: String,
    },
    /// `runtimeSettings` is not a one-element list.
    #[error(
        "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found {found}"
    )]
    RuntimeSettings {
        /// What was found instead.
        found: String,
    },
    /// A setting has the wrong JSON type.
    #[error("{what} must be {expected}; found {found}", what = describe_setting(.setting))]
    WrongType {
        /// JSON path of the setting ("" for the whole document).
        setting: String,
        /// What it must be, with an example.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A required setting is absent or null.
    #[error("{setting} is missing; {fix}")]
    Missing {
        /// JSON path of the setting.
        setting: String,
        /// What to add.
        fix: &'static str,
    },
    /// The same key is given twice, differing only in letter case.
    #[error("{setting} is given twice (as {first:?} and {second:?}); keep only one of them")]
    DuplicateKey {
        /// JSON path of the setting.
        setting: String,
        /// The key as first written.
        first: String,
        /// The key as written the second time.
        second: String,
    },
    /// `observedCertificates` is an empty list.
    #[error(
        "{setting} is empty; list at least one certificate, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]"
    )]
    NoCertificates {
        /// JSON path of the setting.
        setting: String,
    },
    /// A certificate URL does not parse.
    #[error(
        "{setting}: {value:?} is not a URL ({detail}); write it as https://<vault>.vault.azure.net/secrets/<name>"
    )]
    UrlInvalid {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A certificate URL is not https.
    #[error(
        "{setting}: {value:?} uses {scheme}, but https is required because the access token must never travel in clear text; write the URL with https://"
    )]
    UrlNotHttps {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The scheme used.
        scheme: String,
    },
    /// A certificate URL has no host.
    #[error(
        "{setting}: {value:?} has no host; write it as https://<vault>.vault.azure.net/secrets/<name>"
    )]
    UrlNoHost {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
    },
    /// A certificate URL's host is not a vault DNS name.
    #[error(
        "{setting}: host {host:?} in {value:?} {problem}; use the vault's DNS name, e.g. https://myvault.vault.azure.net/secrets/<name>"
    )]
    UrlHost {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The host.
        host: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A certificate URL has a query, fragment or credentials.
    #[error(
        "{setting}: {value:?} has {part}; remove it, a secret URL is only https://<vault>.<vault DNS suffix>/secrets/<name>[/<version>]"
    )]
    UrlExtra {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The superfluous part.
        part: &'static str,
    },
    /// A certificate URL uses `/certificates/` instead of `/secrets/`.
    #[error(
        "{setting}: {value:?} points at /certificates/, which does not expose the private key (only the secret endpoint does); use {corrected:?}"
    )]
    UrlCertificatesPath {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The same certificate's secret URL.
        corrected: String,
    },
    /// A certificate URL's path is not `/secrets/<name>[/<version>]`.
    #[error(
        "{setting}: {value:?} is not a Key Vault secret URL; write it as https://<vault>.vault.azure.net/secrets/<name> or .../secrets/<name>/<version>"
    )]
    UrlPath {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
    },
    /// The secret name breaks Key Vault's naming rule.
    #[error(
        "{setting}: secret name {name:?} in {value:?} is not a Key Vault name; names are 1 to 127 letters, digits and hyphens"
    )]
    SecretName {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The name found in it.
        name: String,
    },
    /// The pinned version is not 32 hex digits.
    #[error(
        "{setting}: version {version:?} in {value:?} is not a Key Vault version; a version is 32 hexadecimal characters (leave it out to follow the latest version)"
    )]
    Version {
        /// JSON path of the setting.
        setting: String,
        /// The URL as given.
        value: String,
        /// The version found in it.
        version: String,
    },
    /// A store location is not a usable absolute folder.
    #[error(
        "{setting}: {value:?} {problem}; give an absolute folder such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\""
    )]
    StoreLocation {
        /// JSON path of the setting.
        setting: String,
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `customSymbolicLinkName` is not a plain file name.
    #[error(
        "{setting}: {value:?} {problem}; give a plain file name such as \"mycert.pem\", without \"/\""
    )]
    LinkName {
        /// JSON path of the setting.
        setting: String,
        /// The name as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `pollingIntervalInS` is not a positive whole number of seconds.
    #[error(
        "{setting}: {value} is not a whole number of seconds between 1 and 4294967295; give e.g. \"3600\" (one hour, the default)"
    )]
    PollingInterval {
        /// JSON path of the setting.
        setting: String,
        /// The value as JSON text.
        value: String,
    },
    /// `retainedVersions` is not a positive whole number.
    #[error(
        "{setting}: {value} is not a positive whole number; give how many versions of each certificate to keep on disk, e.g. 2 (the current and the previous one, the default)"
    )]
    RetainedVersions {
        /// JSON path of the setting.
        setting: String,
        /// The value as JSON text.
        value: String,
    },
    /// `expiryWarningDays` is not a whole number of days.
    #[error(
        "{setting}: {value} is not a whole number of days; give how many days before expiry to warn, e.g. 14 (the default), or 0 to never warn"
    )]
    ExpiryWarningDays {
        /// JSON path of the setting.
        setting: String,
        /// The value as JSON text.
        value: String,
    },
    /// `metricsFile` is not a usable absolute file path.
    #[error(
        "{setting}: {value:?} {problem}; give an absolute file path such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\" (or leave metricsFile out for no metrics)"
    )]
    MetricsFile {
        /// JSON path of the setting.
        setting: String,
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `postInstallCommand` is malformed.
    #[error("{setting}: {value} {problem}; {fix}")]
    PostInstallCommand {
        /// JSON path of the setting.
        setting: String,
        /// The value as JSON text.
        value: String,
        /// What is wrong.
        problem: String,
        /// How to write it.
        fix: &'static str,
    },
    /// A boolean setting is neither a bool nor "true"/"false".
    #[error("{setting}: {value} is not a boolean; give true or false")]
    NotBoolean {
        /// JSON path of the setting.
        setting: String,
        /// The value as JSON text.
        value: String,
    },
    /// `msiEndpoint` is not an http(s) URL with a host.
    #[error(
        "{setting}: {value:?} {problem}; give the managed identity endpoint, e.g. \"http://169.254.169.254/metadata/identity\""
    )]
    MsiEndpoint {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `msiClientId` is not a GUID.
    #[error(
        "{setting}: {value:?} is not a client id; give the user-assigned identity's client id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\""
    )]
    MsiClientId {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// `msiObjectId` is not a GUID.
    #[error(
        "{setting}: {value:?} is not an object id; give the user-assigned identity's object (principal) id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\" (az identity show -g <group> -n <name> --query principalId)"
    )]
    MsiObjectId {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// `msiResourceId` is not a user-assigned identity's ARM resource ID.
    #[error(
        "{setting}: {value:?} is not a user-assigned identity's resource ID; give it as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\" (az identity show -g <group> -n <name> --query id)"
    )]
    MsiResourceId {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// More than one of `msiClientId`, `msiObjectId`, `msiResourceId`.
    #[error(
        "{setting} names the identity twice, as {first} and as {second}; keep only one of msiClientId, msiObjectId and msiResourceId"
    )]
    SeveralIdentities {
        /// JSON path of `authenticationSettings`.
        setting: String,
        /// The first setting given.
        first: &'static str,
        /// The second one.
        second: &'static str,
    },
    /// `additionalFormats` names a format kvvm does not write.
    #[error(
        "{setting}: {value} is not a known format; the formats are \"split\" (cert.pem, chain.pem, fullchain.pem, privkey.pem) and \"pfx\" (certificate.pfx), e.g. [\"split\", \"pfx\"], or [] for none"
    )]
    UnknownFormat {
        /// JSON path of the list element.
        setting: String,
        /// The element as JSON text.
        value: String,
    },
    /// `loggingSettings.logger` names a logger we do not have.
    #[error(
        "{setting}: {value:?} is not a known logger; the only logger is \"fluentd\" (or remove loggingSettings)"
    )]
    UnknownLogger {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// fluentd `endpoint` is not `tcp://host:port`.
    #[error(
        "{setting}: {value:?} is not a fluentd endpoint; give tcp://<host>:<port>, e.g. \"tcp://localhost:24224\""
    )]
    FluentdEndpoint {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// fluentd `format` is not `forward`.
    #[error("{setting}: {value:?} is not supported; the only fluentd format is \"forward\"")]
    FluentdFormat {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// fluentd `servicename` is empty or unprintable.
    #[error(
        "{setting}: {value:?} is not a usable service name; give a non-empty name without spaces or control characters, e.g. \"akvvm_service\""
    )]
    ServiceName {
        /// JSON path of the setting.
        setting: String,
        /// The value as given.
        value: String,
    },
    /// An ACL entry names neither a user nor a group.
    #[error(
        "{setting} names neither a user nor a group; give \"user\", \"group\" or both, e.g. {{\"user\": \"app1\", \"group\": \"appgroup\"}}"
    )]
    AclEmpty {
        /// JSON path of the entry.
        setting: String,
    },
    /// An ACL user or group name is not a plausible POSIX name.
    #[error(
        "{setting}: {value:?} is not a valid {kind} name; give the name of a {kind} on the VM, e.g. \"www-data\""
    )]
    AclName {
        /// JSON path of the setting.
        setting: String,
        /// The name as given.
        value: String,
        /// "user" or "group".
        kind: &'static str,
    },
    /// Two entries observe the same certificate.
    #[error(
        "{setting}: {value:?} observes the same certificate as {first} (vault {vault:?}, secret {secret:?}); list each certificate once"
    )]
    DuplicateCertificate {
        /// JSON path of the later entry's URL.
        setting: String,
        /// The later URL as given.
        value: String,
        /// JSON path of the earlier entry.
        first: String,
        /// Vault name.
        vault: String,
        /// Secret name.
        secret: String,
    },
    /// Two certificates would use the same link in one folder.
    #[error(
        "{setting}: link name {link:?} in {store:?} is already used by {first}; give one of them a different customSymbolicLinkName"
    )]
    DuplicateLinkName {
        /// JSON path of the later entry's link name (or URL, for a default link name).
        setting: String,
        /// The link name.
        link: String,
        /// The folder.
        store: String,
        /// JSON path of the earlier entry.
        first: String,
    },
}

impl SettingsError {
    /// A short fixed string naming the kind of failure, for the status file and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson { .. } => "settings-not-json",
            Self::EscapedJson { .. } => "settings-double-encoded",
            Self::RuntimeSettings { .. } => "runtime-settings-not-one",
            Self::WrongType { .. } => "setting-wrong-type",
            Self::Missing { .. } => "setting-missing",
            Self::DuplicateKey { .. } => "setting-given-twice",
            Self::NoCertificates { .. } => "no-observed-certificates",
            Self::UrlInvalid { .. } => "certificate-url-invalid",
            Self::UrlNotHttps { .. } => "certificate-url-not-https",
            Self::UrlNoHost { .. } => "certificate-url-no-host",
            Self::UrlHost { .. } => "certificate-url-bad-host",
            Self::UrlExtra { .. } => "certificate-url-extra-parts",
            Self::UrlCertificatesPath { .. } => "certificate-url-not-secret",
            Self::UrlPath { .. } => "certificate-url-bad-path",
            Self::SecretName { .. } => "certificate-name-invalid",
            Self::Version { .. } => "certificate-version-invalid",
            Self::StoreLocation { .. } => "store-location-invalid",
            Self::LinkName { .. } => "link-name-invalid",
            Self::PollingInterval { .. } => "polling-interval-invalid",
            Self::RetainedVersions { .. } => "retained-versions-invalid",
            Self::ExpiryWarningDays { .. } => "expiry-warning-days-invalid",
            Self::MetricsFile { .. } => "metrics-file-invalid",
            Self::PostInstallCommand { .. } => "post-install-command-invalid",
            Self::NotBoolean { .. } => "setting-not-boolean",
            Self::MsiEndpoint { .. } => "msi-endpoint-invalid",
            Self::MsiClientId { .. } => "msi-client-id-invalid",
            Self::MsiObjectId { .. } => "msi-object-id-invalid",
            Self::MsiResourceId { .. } => "msi-resource-id-invalid",
            Self::SeveralIdentities { .. } => "msi-identity-given-twice",
            Self::UnknownFormat { .. } => "additional-format-unknown",
            Self::UnknownLogger { .. } => "logger-unknown",
            Self::FluentdEndpoint { .. } => "fluentd-endpoint-invalid",
            Self::FluentdFormat { .. } => "fluentd-format-unsupported",
            Self::ServiceName { .. } => "fluentd-service-name-invalid",
            Self::AclEmpty { .. } => "acl-entry-empty",
            Self::AclName { .. } => "acl-name-invalid",
            Self::DuplicateCertificate { .. } => "certificate-duplicate",
            Self::DuplicateLinkName { .. } => "link-name-duplicate",
        }
    }

    /// JSON path of the offending setting, relative to publicSettings (e.g.
    /// `secretsManagementSettings.observedCertificates[1].url`); `runtimeSettings…` for the file's envelope and
    /// "" for the whole document.
    pub fn setting(&self) -> &str {
        match self {
            Self::NotJson { .. } => "",
            Self::RuntimeSettings { .. } => "runtimeSettings",
            Self::EscapedJson { setting, .. }
            | Self::WrongType { setting, .. }
            | Self::Missing { setting, .. }
            | Self::DuplicateKey { setting, .. }
            | Self::NoCertificates { setting }
            | Self::UrlInvalid { setting, .. }
            | Self::UrlNotHttps { setting, .. }
            | Self::UrlNoHost { setting, .. }
            | Self::UrlHost { setting, .. }
            | Self::UrlExtra { setting, .. }
            | Self::UrlCertificatesPath { setting, .. }
            | Self::UrlPath { setting, .. }
            | Self::SecretName { setting, .. }
            | Self::Version { setting, .. }
            | Self::StoreLocation { setting, .. }
            | Self::LinkName { setting, .. }
            | Self::PollingInterval { setting, .. }
            | Self::RetainedVersions { setting, .. }
            | Self::ExpiryWarningDays { setting, .. }
            | Self::MetricsFile { setting, .. }
            | Self::PostInstallCommand { setting, .. }
            | Self::NotBoolean { setting, .. }
            | Self::MsiEndpoint { setting, .. }
            | Self::MsiClientId { setting, .. }
            | Self::MsiObjectId { setting, .. }
            | Self::MsiResourceId { setting, .. }
            | Self::SeveralIdentities { setting, .. }
            | Self::UnknownFormat { setting, .. }
            | Self::UnknownLogger { setting, .. }
            | Self::FluentdEndpoint { setting, .. }
            | Self::FluentdFormat { setting, .. }
            | Self::ServiceName { setting, .. }
            | Self::AclEmpty { setting }
            | Self::AclName { setting, .. }
            | Self::DuplicateCertificate { setting, .. }
            | Self::DuplicateLinkName { setting, .. } => setting,
        }
    }
}

/// How a setting path reads in a sentence ("" is the whole document).
fn describe_setting(setting: &str) -> &str {
    if setting.is_empty() {
        "the settings file"
    } else {
        setting
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw structs: the JSON exactly as written. Every field is a `Value` so that a wrong type is reported with the
// setting's path (serde's own messages have none). Keys are matched case-insensitively before deserializing
// (see `known_keys`), so the `*_KEYS` lists must name the same keys as the `rename`s (a unit test checks).

/// `{"runtimeSettings": [...]}`, the whole `config/<seq>.settings` file.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawSettingsFile {
    #[serde(rename = "runtimeSettings")]
    runtime_settings: Option<Value>,
}
const FILE_KEYS: &[&str] = &["runtimeSettings"];

/// `runtimeSettings[0]`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawRuntimeSetting {
    #[serde(rename = "handlerSettings")]
    handler_settings: Option<Value>,
}
const RUNTIME_KEYS: &[&str] = &["handlerSettings"];

/// `runtimeSettings[0].handlerSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawHandlerSettings {
    #[serde(rename = "publicSettings")]
    public_settings: Option<Value>,
    #[serde(rename = "protectedSettings")]
    protected_settings: Option<Value>,
    /// Names the certificate that decrypts protectedSettings; known so that it draws no warning, never used.
    #[allow(dead_code)]
    #[serde(rename = "protectedSettingsCertThumbprint")]
    protected_settings_cert_thumbprint: Option<Value>,
}
const HANDLER_KEYS: &[&str] = &[
    "publicSettings",
    "protectedSettings",
    "protectedSettingsCertThumbprint",
];

/// publicSettings.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawPublicSettings {
    #[serde(rename = "secretsManagementSettings")]
    secrets_management_settings: Option<Value>,
    #[serde(rename = "authenticationSettings")]
    authentication_settings: Option<Value>,
    #[serde(rename = "loggingSettings")]
    logging_settings: Option<Value>,
}
const PUBLIC_KEYS: &[&str] = &[
    "secretsManagementSettings",
    "authenticationSettings",
    "loggingSettings",
];

/// `secretsManagementSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawSecretsManagement {
    #[serde(rename = "pollingIntervalInS")]
    polling_interval_in_s: Option<Value>,
    #[serde(rename = "certificateStoreName")]
    certificate_store_name: Option<Value>,
    #[serde(rename = "linkOnRenewal")]
    link_on_renewal: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    certificate_store_location: Option<Value>,
    #[serde(rename = "requireInitialSync")]
    require_initial_sync: Option<Value>,
    #[serde(rename = "observedCertificates")]
    observed_certificates: Option<Value>,
    #[serde(rename = "aclEnabled")]
    acl_enabled: Option<Value>,
    #[serde(rename = "retainedVersions")]
    retained_versions: Option<Value>,
    #[serde(rename = "expiryWarningDays")]
    expiry_warning_days: Option<Value>,
    #[serde(rename = "postInstallCommand")]
    post_install_command: Option<Value>,
    #[serde(rename = "metricsFile")]
    metrics_file: Option<Value>,
    #[serde(rename = "additionalFormats")]
    additional_formats: Option<Value>,
    /// Belongs at the top level; accepted here with a warning (a common mistake).
    #[serde(rename = "authenticationSettings")]
    authentication_settings: Option<Value>,
}
const SECRETS_KEYS: &[&str] = &[
    "additionalFormats",
    "authenticationSettings",
    "pollingIntervalInS",
    "certificateStoreName",
    "linkOnRenewal",
    "certificateStoreLocation",
    "requireInitialSync",
    "observedCertificates",
    "aclEnabled",
    "retainedVersions",
    "expiryWarningDays",
    "postInstallCommand",
    "metricsFile",
];

/// One v3 `observedCertificates` object.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawObservedCertificate {
    url: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    certificate_store_location: Option<Value>,
    #[serde(rename = "customSymbolicLinkName")]
    custom_symbolic_link_name: Option<Value>,
    acls: Option<Value>,
    #[serde(rename = "certificateStoreName")]
    certificate_store_name: Option<Value>,
    #[serde(rename = "postInstallCommand")]
    post_install_command: Option<Value>,
    #[serde(rename = "additionalFormats")]
    additional_formats: Option<Value>,
}
const CERTIFICATE_KEYS: &[&str] = &[
    "additionalFormats",
    "url",
    "certificateStoreLocation",
    "customSymbolicLinkName",
    "acls",
    "certificateStoreName",
    "postInstallCommand",
];

/// A `postInstallCommand` object.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawHook {
    command: Option<Value>,
    shell: Option<Value>,
    #[serde(rename = "timeoutInS")]
    timeout_in_s: Option<Value>,
}
const HOOK_KEYS: &[&str] = &["command", "shell", "timeoutInS"];

/// One `acls` entry.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawAcl {
    user: Option<Value>,
    group: Option<Value>,
}
const ACL_KEYS: &[&str] = &["user", "group"];

/// `authenticationSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawAuthentication {
    #[serde(rename = "msiEndpoint")]
    msi_endpoint: Option<Value>,
    #[serde(rename = "msiClientId")]
    msi_client_id: Option<Value>,
    #[serde(rename = "msiObjectId")]
    msi_object_id: Option<Value>,
    #[serde(rename = "msiResourceId")]
    msi_resource_id: Option<Value>,
}
const AUTHENTICATION_KEYS: &[&str] =
    &["msiEndpoint", "msiClientId", "msiObjectId", "msiResourceId"];

/// `loggingSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawLogging {
    logger: Option<Value>,
    endpoint: Option<Value>,
    format: Option<Value>,
    servicename: Option<Value>,
}
const LOGGING_KEYS: &[&str] = &["logger", "endpoint", "format", "servicename"];

// ---------------------------------------------------------------------------------------------------------------
// Expected shapes, quoted in WrongType messages.

const EXPECT_DOCUMENT: &str = "a JSON object such as {\"runtimeSettings\": [{\"handlerSettings\": {\"publicSettings\": {...}}}]}";
const EXPECT_RUNTIME: &str = "an object such as {\"handlerSettings\": {\"publicSettings\": {...}}}";
const EXPECT_HANDLER: &str = "an object such as {\"publicSettings\": {...}}";
const EXPECT_PUBLIC: &str = "a JSON object such as {\"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}}";
const EXPECT_SECRETS: &str = "an object such as {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";
const EXPECT_CERTIFICATES: &str = "a list of secret URLs or objects with \"url\", e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
const EXPECT_CERTIFICATE: &str = "a secret URL string or an object with \"url\", e.g. \"https://myvault.vault.azure.net/secrets/mycert\"";
const EXPECT_URL: &str = "a URL string such as \"https://myvault.vault.azure.net/secrets/mycert\"";
const EXPECT_STORE: &str =
    "a folder path string such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\"";
const EXPECT_METRICS: &str =
    "a file path string such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\"";
const EXPECT_LINK: &str = "a file name string such as \"mycert.pem\"";
const EXPECT_ACLS: &str =
    "a list of objects such as [{\"user\": \"app1\", \"group\": \"appgroup\"}]";
const EXPECT_ACL: &str = "an object such as {\"user\": \"app1\", \"group\": \"appgroup\"}";
const EXPECT_USER: &str = "a user name string such as \"app1\"";
const EXPECT_GROUP: &str = "a group name string such as \"appgroup\"";
const EXPECT_AUTHENTICATION: &str =
    "an object such as {\"msiEndpoint\": \"http://169.254.169.254/metadata/identity\"}";
const EXPECT_MSI_ENDPOINT: &str =
    "a URL string such as \"http://169.254.169.254/metadata/identity\"";
const EXPECT_MSI_CLIENT_ID: &str = "a GUID string such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\"";
const EXPECT_MSI_RESOURCE_ID: &str = "a resource ID string such as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\"";
const EXPECT_FORMATS: &str = "a list of format names such as [\"split\", \"pfx\"]";
const EXPECT_LOGGING: &str =
    "an object such as {\"logger\": \"fluentd\", \"endpoint\": \"tcp://localhost:24224\"}";
const EXPECT_LOGGER: &str = "the string \"fluentd\"";
const EXPECT_ENDPOINT: &str = "a string such as \"tcp://localhost:24224\"";
const EXPECT_FORMAT: &str = "the string \"forward\"";
const EXPECT_SERVICE_NAME: &str = "a string such as \"akvvm_service\"";

const EXAMPLE_SECRETS: &str = "add \"secretsManagementSettings\": {\"observedCertificates\": [\"https://myvault.vault.azure.net/secrets/mycert\"]}";
const EXAMPLE_CERTIFICATES: &str =
    "list the certificates, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]";
const EXAMPLE_URL: &str =
    "add \"url\": \"https://myvault.vault.azure.net/secrets/mycert\" to this certificate";
const EXAMPLE_LOGGER: &str = "add \"logger\": \"fluentd\" or remove loggingSettings";

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

// ---------------------------------------------------------------------------------------------------------------
// Sections.

/// A validated certificate plus the paths its duplicate checks report.
struct ParsedCertificate {
    certificate: ObservedCertificate,
    url_text: String,
    url_path: String,
    link_path: String,
}

fn observed_certificate(
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

fn acl_list(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<AclEntry>, SettingsError> {
    let list = expect_array(value, path, EXPECT_ACLS)?;
    let mut acls = Vec::with_capacity(list.len());
    for (index, element) in list.iter().enumerate() {
        let entry_path = format!("{path}[{index}]");
        let raw: RawAcl = section(
            expect_object(element, &entry_path, EXPECT_ACL)?,
            &entry_path,
            ACL_KEYS,
            warnings,
        )?;
        let user = acl_name(
            raw.user.as_ref(),
            &format!("{entry_path}.user"),
            "user",
            EXPECT_USER,
        )?;
        let group = acl_name(
            raw.group.as_ref(),
            &format!("{entry_path}.group"),
            "group",
            EXPECT_GROUP,
        )?;
        if user.is_none() && group.is_none() {
            return Err(SettingsError::AclEmpty {
                setting: entry_path,
            });
        }
        acls.push(AclEntry { user, group });
    }
    Ok(acls)
}

/// A user or group name; an empty string counts as absent (templates fill unused parameters with "").
fn acl_name(
    value: Option<&Value>,
    path: &str,
    kind: &'static str,
    expected: &'static str,
) -> Result<Option<String>, SettingsError> {
    match string(value, path, expected)? {
        None => Ok(None),
        Some("") => Ok(None),
        Some(name) if plausible_account_name(name) => Ok(Some(name.to_string())),
        Some(name) => Err(SettingsError::AclName {
            setting: path.to_string(),
            value: shown(name),
            kind,
        }),
    }
}

/// Plausible POSIX (or directory-service) account name: what `setfacl` could resolve. Rejects what would break
/// the ACL text syntax (`:` `,`), paths, whitespace and control characters, and option-like names.
fn plausible_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/'))
}

const EXPECT_HOOK: &str = "a list such as [\"systemctl\", \"reload\", \"nginx\"], or an object such as {\"command\": [\"systemctl\", \"reload\", \"nginx\"], \"timeoutInS\": 60} or {\"shell\": \"nginx -s reload && logger renewed\"}";
const FIX_HOOK: &str = "give the program and its arguments as a list, e.g. [\"systemctl\", \"reload\", \"nginx\"], or {\"shell\": \"...\"} to run a shell command line";

/// `postInstallCommand`: `[program, args…]`; a plain string of words (no shell syntax); or an object with
/// `command` (a list) or `shell` (a command line for /bin/sh), and `timeoutInS`. An empty list means "none"
/// (a certificate can opt out of the global command).
fn post_install_command(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::hook::Hook>, SettingsError> {
    let bad = |problem: &str| SettingsError::PostInstallCommand {
        setting: path.to_string(),
        value: json_text(value),
        problem: problem.to_string(),
        fix: FIX_HOOK,
    };
    let argv_of = |v: &Value| -> Result<Vec<String>, SettingsError> {
        let list = expect_array(v, path, EXPECT_HOOK)?;
        list.iter()
            .map(|a| match a {
                Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                _ => Err(bad("has an element that is not a string")),
            })
            .collect()
    };
    let hook = |argv: Vec<String>, shell: bool, timeout: Duration| {
        Ok((!argv.is_empty()).then_some(crate::hook::Hook {
            argv,
            shell,
            timeout,
        }))
    };
    match value {
        Value::Array(_) => {
            let argv = argv_of(value)?;
            if argv.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(bad("starts with an empty program name"));
            }
            hook(argv, false, DEFAULT_HOOK_TIMEOUT)
        }
        Value::String(text) => {
            if text
                .chars()
                .any(|c| "|&;<>()$`\\\"'*?[]#~=%{}!\n".contains(c))
            {
                return Err(bad(
                    "contains shell syntax, but the command runs without a shell",
                ));
            }
            hook(
                text.split_whitespace().map(str::to_string).collect(),
                false,
                DEFAULT_HOOK_TIMEOUT,
            )
        }
        Value::Object(map) => {
            let raw: RawHook = section(map, path, HOOK_KEYS, warnings)?;
            let timeout = match &raw.timeout_in_s {
                None => DEFAULT_HOOK_TIMEOUT,
                Some(t) => {
                    Duration::from_secs(whole_number(t, MAX_HOOK_SECONDS).ok_or_else(|| {
                        bad("has a timeoutInS that is not a whole number of seconds from 1 to 3600")
                    })?)
                }
            };
            match (&raw.command, &raw.shell) {
                (Some(_), Some(_)) => Err(bad("has both command and shell")),
                (Some(c), None) => {
                    let argv = argv_of(c)?;
                    if argv.is_empty() || argv[0].trim().is_empty() {
                        return Err(bad("has an empty command"));
                    }
                    hook(argv, false, timeout)
                }
                (None, Some(Value::String(line))) if !line.trim().is_empty() => {
                    hook(vec![line.clone()], true, timeout)
                }
                (None, Some(_)) => Err(bad("has a shell value that is not a non-empty string")),
                (None, None) => Err(bad("has neither command nor shell")),
            }
        }
        other => Err(SettingsError::WrongType {
            setting: path.to_string(),
            expected: EXPECT_HOOK,
            found: found(other),
        }),
    }
}

/// Whether a number setting is zero (0, 0.0 or "0").
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.trim() == "0",
        _ => false,
    }
}

fn authentication(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<(Option<Url>, Option<crate::identity::UserIdentity>), SettingsError> {
    use crate::identity::UserIdentity;
    let raw: RawAuthentication = section(
        expect_object(value, path, EXPECT_AUTHENTICATION)?,
        path,
        AUTHENTICATION_KEYS,
        warnings,
    )?;
    let endpoint_path = format!("{path}.msiEndpoint");
    let endpoint = match string(
        raw.msi_endpoint.as_ref(),
        &endpoint_path,
        EXPECT_MSI_ENDPOINT,
    )? {
        None => None,
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!(
                "{endpoint_path} is empty and is ignored; the default IMDS endpoint is used"
            ));
            None
        }
        Some(s) => Some(msi_endpoint(s, &endpoint_path)?),
    };
    let mut given: Vec<UserIdentity> = Vec::new();
    let client_path = format!("{path}.msiClientId");
    match string(
        raw.msi_client_id.as_ref(),
        &client_path,
        EXPECT_MSI_CLIENT_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => warnings.push(format!(
            "{client_path} is empty and is ignored; the system-assigned identity is used"
        )),
        Some(s) if is_guid(s.trim()) => {
            given.push(UserIdentity::ClientId(s.trim().to_ascii_lowercase()));
        }
        Some(s) if is_identity_resource_id(s.trim()) => {
            warnings.push(format!(
                "{client_path} holds a resource ID, so it is used as msiResourceId; move it to \"msiResourceId\" \
                 (msiClientId takes the identity's client id, a GUID: az identity show -g <group> -n <name> --query \
                 clientId)"
            ));
            given.push(UserIdentity::ResourceId(s.trim().to_string()));
        }
        Some(s) => {
            return Err(SettingsError::MsiClientId {
                setting: client_path,
                value: shown(s),
            });
        }
    }
    let object_path = format!("{path}.msiObjectId");
    match string(
        raw.msi_object_id.as_ref(),
        &object_path,
        EXPECT_MSI_CLIENT_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!("{object_path} is empty and is ignored"))
        }
        Some(s) if is_guid(s.trim()) => {
            given.push(UserIdentity::ObjectId(s.trim().to_ascii_lowercase()));
        }
        Some(s) => {
            return Err(SettingsError::MsiObjectId {
                setting: object_path,
                value: shown(s),
            });
        }
    }
    let resource_path = format!("{path}.msiResourceId");
    match string(
        raw.msi_resource_id.as_ref(),
        &resource_path,
        EXPECT_MSI_RESOURCE_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!("{resource_path} is empty and is ignored"))
        }
        Some(s) if is_identity_resource_id(s.trim()) => {
            given.push(UserIdentity::ResourceId(s.trim().to_string()));
        }
        Some(s) => {
            return Err(SettingsError::MsiResourceId {
                setting: resource_path,
                value: shown(s),
            });
        }
    }
    // A resource ID given as msiClientId counts as msiClientId when it clashes with another.
    let name = |i: &UserIdentity, index: usize| -> &'static str {
        if index == 0 && raw.msi_client_id.is_some() && matches!(i, UserIdentity::ResourceId(_)) {
            "msiClientId"
        } else {
            i.setting()
        }
    };
    if given.len() > 1 {
        return Err(SettingsError::SeveralIdentities {
            setting: path.to_string(),
            first: name(&given[0], 0),
            second: name(&given[1], 1),
        });
    }
    Ok((endpoint, given.pop()))
}

/// `/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`
/// (fixed segments in any case, as ARM compares them).
fn is_identity_resource_id(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let fixed = [
        (0, "subscriptions"),
        (2, "resourceGroups"),
        (4, "providers"),
        (5, "Microsoft.ManagedIdentity"),
        (6, "userAssignedIdentities"),
    ];
    parts.len() == 8
        && fixed
            .iter()
            .all(|(i, word)| parts[*i].eq_ignore_ascii_case(word))
        && [1, 3, 7].iter().all(|i| {
            !parts[*i].is_empty()
                && !parts[*i]
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '&'))
        })
}

/// `additionalFormats`: a list of known format names (any case; repeats are harmless); `[]` means none.
fn additional_formats(value: &Value, path: &str) -> Result<Formats, SettingsError> {
    let list = expect_array(value, path, EXPECT_FORMATS)?;
    let mut formats = Formats::default();
    for (index, element) in list.iter().enumerate() {
        match element {
            Value::String(s) if s.trim().eq_ignore_ascii_case("split") => formats.split = true,
            Value::String(s) if s.trim().eq_ignore_ascii_case("pfx") => formats.pfx = true,
            other => {
                return Err(SettingsError::UnknownFormat {
                    setting: format!("{path}[{index}]"),
                    value: truncate(&json_text(other), MAX_SHOWN),
                });
            }
        }
    }
    Ok(formats)
}

fn msi_endpoint(text: &str, path: &str) -> Result<Url, SettingsError> {
    let problem = match Url::parse(text.trim()) {
        Err(url::ParseError::EmptyHost) => "has no host".to_string(),
        Ok(_) if empty_authority(text) => "has no host".to_string(),
        Err(e) => format!("is not a URL ({e})"),
        Ok(url) if url.scheme() != "http" && url.scheme() != "https" => {
            format!("uses {}, not http or https", url.scheme())
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => "has no host".to_string(),
        Ok(url) => return Ok(url),
    };
    Err(SettingsError::MsiEndpoint {
        setting: path.to_string(),
        value: shown(text),
        problem,
    })
}

fn logging(
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<LoggingSettings>, SettingsError> {
    let path = "loggingSettings";
    let map = expect_object(value, path, EXPECT_LOGGING)?;
    if map.is_empty() {
        return Ok(None);
    }
    let raw: RawLogging = section(map, path, LOGGING_KEYS, warnings)?;
    let logger_path = format!("{path}.logger");
    match string(raw.logger.as_ref(), &logger_path, EXPECT_LOGGER)? {
        None => {
            return Err(SettingsError::Missing {
                setting: logger_path,
                fix: EXAMPLE_LOGGER,
            });
        }
        Some(s) if s.trim().eq_ignore_ascii_case("fluentd") => {}
        Some(s) => {
            return Err(SettingsError::UnknownLogger {
                setting: logger_path,
                value: shown(s),
            });
        }
    }
    let format_path = format!("{path}.format");
    if let Some(format) = string(raw.format.as_ref(), &format_path, EXPECT_FORMAT)?
        && !format.trim().eq_ignore_ascii_case("forward")
    {
        return Err(SettingsError::FluentdFormat {
            setting: format_path,
            value: shown(format),
        });
    }
    let endpoint_path = format!("{path}.endpoint");
    let endpoint = string(raw.endpoint.as_ref(), &endpoint_path, EXPECT_ENDPOINT)?
        .unwrap_or(DEFAULT_FLUENTD_ENDPOINT);
    let (endpoint_host, endpoint_port) =
        fluentd_endpoint(endpoint.trim()).ok_or_else(|| SettingsError::FluentdEndpoint {
            setting: endpoint_path,
            value: shown(endpoint),
        })?;
    let service_path = format!("{path}.servicename");
    let service_name = string(raw.servicename.as_ref(), &service_path, EXPECT_SERVICE_NAME)?
        .unwrap_or(DEFAULT_SERVICE_NAME);
    if service_name.is_empty()
        || service_name.len() > 256
        || service_name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SettingsError::ServiceName {
            setting: service_path,
            value: shown(service_name),
        });
    }
    Ok(Some(LoggingSettings {
        endpoint_host,
        endpoint_port,
        service_name: service_name.to_string(),
    }))
}

/// `tcp://host[:port][/]` → (host, port); the port defaults to fluentd's 24224.
fn fluentd_endpoint(text: &str) -> Option<(String, u16)> {
    let url = Url::parse(text).ok()?;
    if url.scheme() != "tcp"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || !(url.path().is_empty() || url.path() == "/")
    {
        return None;
    }
    let host = match url.host()? {
        Host::Domain(d) if !d.is_empty() && !d.contains('%') => d.to_string(),
        Host::Domain(_) => return None,
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => a.to_string(),
    };
    let port = url.port().unwrap_or(DEFAULT_FLUENTD_PORT);
    (port != 0).then_some((host, port))
}

// ---------------------------------------------------------------------------------------------------------------
// Certificate URLs.

/// The parts of a validated secret URL.
struct SecretUrl {
    url: Url,
    vault_url: Url,
    vault_name: String,
    secret_name: String,
    version: Option<String>,
}

impl SecretUrl {
    fn file_prefix(&self) -> String {
        format!("{}.{}", self.vault_name, self.secret_name)
    }

    fn into_certificate(
        self,
        store_location: PathBuf,
        link_name: String,
        acls: Vec<AclEntry>,
        post_install: Option<crate::hook::Hook>,
        formats: Formats,
    ) -> ObservedCertificate {
        ObservedCertificate {
            url: self.url,
            vault_url: self.vault_url,
            vault_name: self.vault_name,
            secret_name: self.secret_name,
            version: self.version,
            store_location,
            link_name,
            acls,
            post_install,
            formats,
        }
    }
}

/// Validates `https://<vault>.<suffix>[:port]/secrets/<name>[/<version>][/]`.
fn secret_url(text: &str, path: &str) -> Result<SecretUrl, SettingsError> {
    let setting = || path.to_string();
    let value = || shown(text);
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::EmptyHost) => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Err(e) => {
            return Err(SettingsError::UrlInvalid {
                setting: setting(),
                value: value(),
                detail: e.to_string(),
            });
        }
    };
    if empty_authority(text) {
        return Err(SettingsError::UrlNoHost {
            setting: setting(),
            value: value(),
        });
    }
    if url.scheme() != "https" {
        return Err(SettingsError::UrlNotHttps {
            setting: setting(),
            value: value(),
            scheme: url.scheme().to_string(),
        });
    }
    let host = match url.host() {
        None => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Some(Host::Domain("")) => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
            return Err(SettingsError::UrlHost {
                setting: setting(),
                value: value(),
                host: url.host_str().unwrap_or_default().to_string(),
                problem: "is an IP address, not a vault DNS name",
            });
        }
        Some(Host::Domain(host)) => host.to_string(),
    };
    let vault_name = match host.split_once('.') {
        Some((first, rest)) if !rest.is_empty() && !rest.starts_with('.') => first.to_string(),
        _ => {
            return Err(SettingsError::UrlHost {
                setting: setting(),
                value: value(),
                host,
                problem: "has no vault DNS suffix",
            });
        }
    };
    if vault_name.is_empty()
        || vault_name.len() > 63
        || !vault_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(SettingsError::UrlHost {
            setting: setting(),
            value: value(),
            host,
            problem: "does not start with a vault name (letters, digits and hyphens)",
        });
    }
    let extra = if !url.username().is_empty() || url.password().is_some() {
        Some("a user name or password")
    } else if url.query().is_some() {
        Some("a query (\"?...\")")
    } else if url.fragment().is_some() {
        Some("a fragment (\"#...\")")
    } else {
        None
    };
    if let Some(part) = extra {
        return Err(SettingsError::UrlExtra {
            setting: setting(),
            value: value(),
            part,
        });
    }

    let mut segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    if segments.len() > 1 && segments.last() == Some(&"") {
        segments.pop();
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let (collection, name, version) = match segments.as_slice() {
        [collection, name] => (*collection, *name, None),
        [collection, name, version] => (*collection, *name, Some(*version)),
        _ => {
            return Err(SettingsError::UrlPath {
                setting: setting(),
                value: value(),
            });
        }
    };
    if collection.eq_ignore_ascii_case("certificates") && !name.is_empty() {
        let mut corrected = format!("https://{authority}/secrets/{name}");
        if let Some(version) = version {
            corrected.push('/');
            corrected.push_str(version);
        }
        return Err(SettingsError::UrlCertificatesPath {
            setting: setting(),
            value: value(),
            corrected,
        });
    }
    if !collection.eq_ignore_ascii_case("secrets") || name.is_empty() {
        return Err(SettingsError::UrlPath {
            setting: setting(),
            value: value(),
        });
    }
    if !is_secret_name(name) {
        return Err(SettingsError::SecretName {
            setting: setting(),
            value: value(),
            name: shown(name),
        });
    }
    let version = match version {
        None => None,
        Some(v) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(v) => {
            return Err(SettingsError::Version {
                setting: setting(),
                value: value(),
                version: shown(v),
            });
        }
    };
    let mut normalised = format!("https://{authority}/secrets/{name}");
    if let Some(version) = &version {
        normalised.push('/');
        normalised.push_str(version);
    }
    let parse_back = |s: &str| {
        Url::parse(s).map_err(|e| SettingsError::UrlInvalid {
            setting: setting(),
            value: value(),
            detail: e.to_string(),
        })
    };
    Ok(SecretUrl {
        url: parse_back(&normalised)?,
        vault_url: parse_back(&format!("https://{authority}/"))?,
        vault_name,
        secret_name: name.to_string(),
        version,
    })
}

/// `scheme:///path`: the URL parser would take the first path segment as the host ("https:///secrets/x" has
/// host "secrets"), which hides what the user actually left out.
fn empty_authority(text: &str) -> bool {
    text.trim_start()
        .split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with(['/', '\\']))
}

/// Key Vault's object name rule: 1–127 characters of `[0-9A-Za-z-]`.
fn is_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// 8-4-4-4-12 hexadecimal digits.
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------------------------
// Paths and names.

/// An absolute folder without `..`, normalised (no `.` components, no trailing slash).
fn store_location(text: &str, path: &str) -> Result<PathBuf, SettingsError> {
    let fail = |problem| SettingsError::StoreLocation {
        setting: path.to_string(),
        value: shown(text),
        problem,
    };
    if text.is_empty() {
        return Err(fail("is empty"));
    }
    if text.contains('\0') {
        return Err(fail("contains a NUL character"));
    }
    let given = Path::new(text);
    if !given.is_absolute() {
        return Err(fail("is not an absolute path"));
    }
    let mut normalised = PathBuf::new();
    for component in given.components() {
        match component {
            Component::RootDir => normalised.push("/"),
            Component::Normal(part) => normalised.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(fail("contains a \"..\" component")),
            Component::Prefix(_) => return Err(fail("is not an absolute path")),
        }
    }
    if normalised == Path::new("/") {
        return Err(fail(
            "is the filesystem root, which cannot hold certificates",
        ));
    }
    Ok(normalised)
}

/// `metricsFile`: an absolute file path without `..`, normalised like a store location. node_exporter's textfile
/// collector reads only `*.prom` files, so another name is accepted with a warning.
fn metrics_file(
    text: &str,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, SettingsError> {
    let fail = |problem| SettingsError::MetricsFile {
        setting: path.to_string(),
        value: shown(text),
        problem,
    };
    if text.ends_with('/') || text.ends_with("/.") {
        return Err(fail("names a folder, not a file"));
    }
    let normalised = store_location(text, path).map_err(|e| match e {
        SettingsError::StoreLocation { problem, .. } => fail(problem),
        other => other,
    })?;
    if normalised.extension().is_none_or(|e| e != "prom") {
        warnings.push(format!(
            "{path}: {:?} does not end in .prom, so node_exporter's textfile collector will not read it",
            shown(text)
        ));
    }
    Ok(normalised)
}

/// A plain file name usable as a symlink in the store folder.
fn link_name(text: &str, path: &str) -> Result<(), SettingsError> {
    let problem = if text.is_empty() {
        "is empty"
    } else if text.contains('/') {
        "contains \"/\""
    } else if text == "." || text == ".." {
        "is not a file name"
    } else if text.contains('\0') {
        "contains a NUL character"
    } else if text.len() > 255 {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(SettingsError::LinkName {
        setting: path.to_string(),
        value: shown(text),
        problem,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// JSON helpers.

/// Keeps the keys of `object` that name fields (matched case-insensitively, renamed to the canonical
/// spelling), warns about the others, and deserializes the raw struct.
fn section<T: DeserializeOwned>(
    object: &Map<String, Value>,
    path: &str,
    known: &[&'static str],
    warnings: &mut Vec<String>,
) -> Result<T, SettingsError> {
    let mut kept = Map::new();
    let mut spelled: HashMap<&'static str, &str> = HashMap::new();
    for (key, value) in object {
        match known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            Some(&canonical) => {
                if let Some(first) = spelled.insert(canonical, key) {
                    return Err(SettingsError::DuplicateKey {
                        setting: join(path, canonical),
                        first: first.to_string(),
                        second: key.clone(),
                    });
                }
                kept.insert(canonical.to_string(), value.clone());
            }
            None => warnings.push(format!(
                "{} is not a KeyVaultForLinux setting and is ignored",
                join(path, key)
            )),
        }
    }
    // Every field is an Option<Value>, so this cannot fail; report it as a type error rather than panic.
    serde_json::from_value(Value::Object(kept)).map_err(|e| SettingsError::WrongType {
        setting: path.to_string(),
        expected: "an object",
        found: e.to_string(),
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn expect_object<'a>(
    value: &'a Value,
    path: &str,
    expected: &'static str,
) -> Result<&'a Map<String, Value>, SettingsError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(not_a(other, path, expected, false)),
    }
}

fn expect_array<'a>(
    value: &'a Value,
    path: &str,
    expected: &'static str,
) -> Result<&'a Vec<Value>, SettingsError> {
    match value {
        Value::Array(list) => Ok(list),
        other => Err(not_a(other, path, expected, true)),
    }
}

/// The error for a value of the wrong type: the double-encoding message when it is a string holding the JSON
/// that was expected, a type error otherwise.
fn not_a(value: &Value, path: &str, expected: &'static str, list: bool) -> SettingsError {
    if let Value::String(s) = value
        && let Some(preview) = escaped_json(s, list)
    {
        return SettingsError::EscapedJson {
            setting: path.to_string(),
            preview,
        };
    }
    SettingsError::WrongType {
        setting: path.to_string(),
        expected,
        found: found(value),
    }
}

/// If `text` is itself a JSON object (or, when `list_too`, a list), its JSON-quoted start for the message.
fn escaped_json(text: &str, list_too: bool) -> Option<String> {
    let inner: Value = serde_json::from_str(text).ok()?;
    if !(inner.is_object() || (list_too && inner.is_array())) {
        return None;
    }
    let quoted = serde_json::to_string(text).unwrap_or_default();
    Some(truncate(&quoted, 40))
}

/// An optional string setting: absent/null → None, a string → Some, anything else → WrongType.
fn string<'a>(
    value: Option<&'a Value>,
    path: &str,
    expected: &'static str,
) -> Result<Option<&'a str>, SettingsError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(not_a(other, path, expected, false)),
    }
}

/// A bool, or the strings "true"/"false" in any case (waagent and PowerShell write booleans as strings).
fn boolean(value: Option<&Value>, path: &str, default: bool) -> Result<bool, SettingsError> {
    match value {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(SettingsError::NotBoolean {
            setting: path.to_string(),
            value: json_text(other),
        }),
    }
}

/// A whole number in 1..=max, given as a JSON number (3600 or 3600.0) or a string of digits ("3600").
fn whole_number(value: &Value, max: u64) -> Option<u64> {
    let n = match value {
        Value::Number(n) => match n.as_u64() {
            Some(u) => u,
            None => {
                let f = n.as_f64()?;
                if f.fract() != 0.0 || f < 1.0 || f > max as f64 {
                    return None;
                }
                f as u64
            }
        },
        Value::String(s) => {
            let digits = s.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()?
        }
        _ => return None,
    };
    (1..=max).contains(&n).then_some(n)
}

/// What a value is, for "found …" in messages.
fn found(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => format!("the string {}", json_text(value)),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A value as JSON text, shortened for messages.
fn json_text(value: &Value) -> String {
    truncate(&serde_json::to_string(value).unwrap_or_default(), MAX_SHOWN)
}

/// A user string, shortened for messages (status files are read by people and capped by waagent).
fn shown(text: &str) -> String {
    truncate(text, MAX_SHOWN)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys_of<T: Default + serde::Serialize>() -> Vec<String> {
        let value = serde_json::to_value(T::default()).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn key_lists_match_raw_structs() {
        assert_eq!(keys_of::<RawSettingsFile>(), sorted(FILE_KEYS));
        assert_eq!(keys_of::<RawRuntimeSetting>(), sorted(RUNTIME_KEYS));
        assert_eq!(keys_of::<RawHandlerSettings>(), sorted(HANDLER_KEYS));
        assert_eq!(keys_of::<RawPublicSettings>(), sorted(PUBLIC_KEYS));
        assert_eq!(keys_of::<RawSecretsManagement>(), sorted(SECRETS_KEYS));
        assert_eq!(
            keys_of::<RawObservedCertificate>(),
            sorted(CERTIFICATE_KEYS)
        );
        assert_eq!(keys_of::<RawAcl>(), sorted(ACL_KEYS));
        assert_eq!(keys_of::<RawHook>(), sorted(HOOK_KEYS));
        assert_eq!(keys_of::<RawAuthentication>(), sorted(AUTHENTICATION_KEYS));
        assert_eq!(keys_of::<RawLogging>(), sorted(LOGGING_KEYS));
    }

    #[test]
    fn whole_numbers() {
        let max = MAX_POLLING_SECONDS;
        assert_eq!(whole_number(&json!(3600), max), Some(3600));
        assert_eq!(whole_number(&json!("3600"), max), Some(3600));
        assert_eq!(whole_number(&json!(" 60 "), max), Some(60));
        assert_eq!(whole_number(&json!(60.0), max), Some(60));
        for bad in [
            json!(0),
            json!("0"),
            json!(-5),
            json!("-5"),
            json!("+5"),
            json!(1.5),
            json!("3600s"),
            json!("abc"),
            json!(""),
            json!(null),
            json!(true),
            json!([1]),
            json!(4_294_967_296u64),
            json!(1e300),
        ] {
            assert_eq!(whole_number(&bad, max), None, "{bad}");
        }
        assert_eq!(
            whole_number(&json!(4_294_967_295u64), max),
            Some(4_294_967_295)
        );
    }

    #[test]
    fn guids() {
        assert!(is_guid("c7373ae5-91c2-4165-8ab6-7381d6e75619"));
        assert!(is_guid("C7373AE5-91C2-4165-8AB6-7381D6E75619"));
        assert!(!is_guid("c7373ae591c241658ab67381d6e75619"));
        assert!(!is_guid("{c7373ae5-91c2-4165-8ab6-7381d6e75619}"));
        assert!(!is_guid("c7373ae5-91c2-4165-8ab6-7381d6e7561"));
        assert!(!is_guid("g7373ae5-91c2-4165-8ab6-7381d6e75619"));
        assert!(!is_guid("c7373ae5-91c2-4165-8ab6-7381d6e75619-"));
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("a"));
        assert!(is_secret_name("My-Cert-01"));
        assert!(is_secret_name(&"a".repeat(127)));
        assert!(!is_secret_name(&"a".repeat(128)));
        assert!(!is_secret_name(""));
        assert!(!is_secret_name("my_cert"));
        assert!(!is_secret_name("my%20cert"));
    }

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

    #[test]
    fn account_names() {
        for good in [
            "www-data",
            "app1",
            "_svc",
            "user@contoso.com",
            "DOMAIN\\user",
            "1000",
            "svc$",
        ] {
            assert!(plausible_account_name(good), "{good:?}");
        }
        for bad in [
            "",
            "-rf",
            "a:b",
            "a,b",
            "a b",
            "a/b",
            "a\nb",
            &"a".repeat(257),
        ] {
            assert!(!plausible_account_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn fluentd_endpoints() {
        assert_eq!(
            fluentd_endpoint("tcp://localhost:24224"),
            Some(("localhost".into(), 24224))
        );
        assert_eq!(
            fluentd_endpoint("tcp://10.0.0.4:5000/"),
            Some(("10.0.0.4".into(), 5000))
        );
        assert_eq!(
            fluentd_endpoint("tcp://[::1]:5000"),
            Some(("::1".into(), 5000))
        );
        assert_eq!(
            fluentd_endpoint("tcp://fluent"),
            Some(("fluent".into(), 24224))
        );
        for bad in [
            "udp://localhost:24224",
            "localhost:24224",
            "tcp://:24224",
            "tcp://localhost:0",
            "tcp://localhost:24224/path",
            "tcp://localhost:24224?x",
            "tcp://localhost:99999",
            "http://localhost:24224",
        ] {
            assert_eq!(fluentd_endpoint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn secret_urls() {
        let url = secret_url(
            "HTTPS://MyVault.Vault.Azure.Net:443/Secrets/MyCert/ABCDEF0123456789ABCDEF0123456789/",
            "p",
        )
        .unwrap();
        assert_eq!(
            url.url.as_str(),
            "https://myvault.vault.azure.net/secrets/MyCert/abcdef0123456789abcdef0123456789"
        );
        assert_eq!(url.vault_url.as_str(), "https://myvault.vault.azure.net/");
        assert_eq!(url.vault_name, "myvault");
        assert_eq!(url.secret_name, "MyCert");
        let with_port = secret_url("https://myvault.vault.azure.net:8443/secrets/c", "p").unwrap();
        assert_eq!(
            with_port.vault_url.as_str(),
            "https://myvault.vault.azure.net:8443/"
        );
        for (bad, reason) in [
            ("https://127.0.0.1/secrets/c", "certificate-url-bad-host"),
            ("https://[::1]/secrets/c", "certificate-url-bad-host"),
            ("https://localhost/secrets/c", "certificate-url-bad-host"),
            (
                "https://my_vault.vault.azure.net/secrets/c",
                "certificate-url-bad-host",
            ),
            (
                "https://u:p@v.vault.azure.net/secrets/c",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/c#x",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/c?",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets",
                "certificate-url-bad-path",
            ),
            ("https://v.vault.azure.net/", "certificate-url-bad-path"),
            (
                "https://v.vault.azure.net/secrets//c",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets/a/b/c",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets/c/versions",
                "certificate-version-invalid",
            ),
            (
                "myvault.vault.azure.net/secrets/c",
                "certificate-url-invalid",
            ),
            (
                "ftp://v.vault.azure.net/secrets/c",
                "certificate-url-not-https",
            ),
        ] {
            assert_eq!(
                secret_url(bad, "p").map(|_| ()).unwrap_err().reason(),
                reason,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), MAX_SHOWN + 1);
        assert!(shown(&long).ends_with('…'));
        assert_eq!(shown("short"), "short");
    }

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
