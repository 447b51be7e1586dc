//! Why settings were rejected, in the shape of `io::Error`: a [`SettingsError`] is the setting's JSON path plus a
//! [`SettingsErrorKind`] saying what is wrong with it. The kind carries the bad value and whatever the message
//! needs; the Display text names the setting, the value and the fix (tests/settings_table.rs pins every one).

use std::fmt;

/// Why settings were rejected: which setting, and what is wrong with it ([`SettingsErrorKind`]). The Display
/// text names the setting (JSON path), the bad value and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    setting: String,
    kind: SettingsErrorKind,
}

/// What is wrong with a setting. Each variant holds what its message quotes; the setting itself is in
/// [`SettingsError::setting`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsErrorKind {
    /// The file is not JSON.
    NotJson {
        /// serde's description of the syntax error.
        detail: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// A string holding JSON where an object or list belongs (PowerShell/ARM double encoding).
    EscapedJson {
        /// The start of the string, JSON-quoted.
        preview: String,
    },
    /// `runtimeSettings` is not a one-element list.
    RuntimeSettings {
        /// What was found instead.
        found: String,
    },
    /// A setting has the wrong JSON type.
    WrongType {
        /// What it must be, with an example.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A required setting is absent or null.
    Missing {
        /// What to add.
        fix: &'static str,
    },
    /// The same key is given twice, differing only in letter case.
    DuplicateKey {
        /// The key as first written.
        first: String,
        /// The key as written the second time.
        second: String,
    },
    /// `observedCertificates` is an empty list.
    NoCertificates,
    /// A certificate URL does not parse.
    UrlInvalid {
        /// The URL as given.
        value: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A certificate URL is not https.
    UrlNotHttps {
        /// The URL as given.
        value: String,
        /// The scheme used.
        scheme: String,
    },
    /// A certificate URL has no host.
    UrlNoHost {
        /// The URL as given.
        value: String,
    },
    /// A certificate URL's host is not a vault DNS name.
    UrlHost {
        /// The URL as given.
        value: String,
        /// The host.
        host: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A certificate URL has a query, fragment or credentials.
    UrlExtra {
        /// The URL as given.
        value: String,
        /// The superfluous part.
        part: &'static str,
    },
    /// A certificate URL uses `/certificates/` instead of `/secrets/`.
    UrlCertificatesPath {
        /// The URL as given.
        value: String,
        /// The same certificate's secret URL.
        corrected: String,
    },
    /// A certificate URL's path is not `/secrets/<name>[/<version>]`.
    UrlPath {
        /// The URL as given.
        value: String,
    },
    /// The secret name breaks Key Vault's naming rule.
    SecretName {
        /// The URL as given.
        value: String,
        /// The name found in it.
        name: String,
    },
    /// The pinned version is not 32 hex digits.
    Version {
        /// The URL as given.
        value: String,
        /// The version found in it.
        version: String,
    },
    /// A store location is not a usable absolute folder.
    StoreLocation {
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `customSymbolicLinkName` is not a plain file name.
    LinkName {
        /// The name as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `pollingIntervalInS` is not a positive whole number of seconds.
    PollingInterval {
        /// The value as JSON text.
        value: String,
    },
    /// `retainedVersions` is not a positive whole number.
    RetainedVersions {
        /// The value as JSON text.
        value: String,
    },
    /// `expiryWarningDays` is not a whole number of days.
    ExpiryWarningDays {
        /// The value as JSON text.
        value: String,
    },
    /// `metricsFile` is not a usable absolute file path.
    MetricsFile {
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `postInstallCommand` is malformed.
    PostInstallCommand {
        /// The value as JSON text.
        value: String,
        /// What is wrong.
        problem: String,
        /// How to write it.
        fix: &'static str,
    },
    /// A boolean setting is neither a bool nor "true"/"false".
    NotBoolean {
        /// The value as JSON text.
        value: String,
    },
    /// `msiEndpoint` is not an http(s) URL with a host.
    MsiEndpoint {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `msiClientId` is not a GUID.
    MsiClientId {
        /// The value as given.
        value: String,
    },
    /// `msiObjectId` is not a GUID.
    MsiObjectId {
        /// The value as given.
        value: String,
    },
    /// `msiResourceId` is not a user-assigned identity's ARM resource ID.
    MsiResourceId {
        /// The value as given.
        value: String,
    },
    /// More than one of `msiClientId`, `msiObjectId`, `msiResourceId`.
    SeveralIdentities {
        /// The first setting given.
        first: &'static str,
        /// The second one.
        second: &'static str,
    },
    /// `additionalFormats` names a format kvvm does not write.
    UnknownFormat {
        /// The element as JSON text.
        value: String,
    },
    /// `loggingSettings.logger` names a logger we do not have.
    UnknownLogger {
        /// The value as given.
        value: String,
    },
    /// fluentd `endpoint` is not `tcp://host:port`.
    FluentdEndpoint {
        /// The value as given.
        value: String,
    },
    /// fluentd `format` is not `forward`.
    FluentdFormat {
        /// The value as given.
        value: String,
    },
    /// fluentd `servicename` is empty or unprintable.
    ServiceName {
        /// The value as given.
        value: String,
    },
    /// An ACL entry names neither a user nor a group.
    AclEmpty,
    /// An ACL user or group name is not a plausible POSIX name.
    AclName {
        /// The name as given.
        value: String,
        /// "user" or "group".
        account: &'static str,
    },
    /// Two entries observe the same certificate.
    DuplicateCertificate {
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
    DuplicateLinkName {
        /// The link name.
        link: String,
        /// The folder.
        store: String,
        /// JSON path of the earlier entry.
        first: String,
    },
}

impl SettingsErrorKind {
    /// The error for the setting at JSON path `setting`.
    pub(super) fn at(self, setting: impl Into<String>) -> SettingsError {
        SettingsError {
            setting: setting.into(),
            kind: self,
        }
    }

    /// A short fixed string naming the kind of failure, for the status file and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson { .. } => "settings-not-json",
            Self::EscapedJson { .. } => "settings-double-encoded",
            Self::RuntimeSettings { .. } => "runtime-settings-not-one",
            Self::WrongType { .. } => "setting-wrong-type",
            Self::Missing { .. } => "setting-missing",
            Self::DuplicateKey { .. } => "setting-given-twice",
            Self::NoCertificates => "no-observed-certificates",
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
            Self::AclEmpty => "acl-entry-empty",
            Self::AclName { .. } => "acl-name-invalid",
            Self::DuplicateCertificate { .. } => "certificate-duplicate",
            Self::DuplicateLinkName { .. } => "link-name-duplicate",
        }
    }
}

impl SettingsError {
    /// JSON path of the offending setting, relative to publicSettings (e.g.
    /// `secretsManagementSettings.observedCertificates[1].url`); `runtimeSettings…` for the file's envelope and
    /// "" for the whole document.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// What is wrong with the setting.
    pub fn kind(&self) -> &SettingsErrorKind {
        &self.kind
    }

    /// A short fixed string naming the kind of failure, for the status file and tests.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }
}

impl std::error::Error for SettingsError {}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SettingsErrorKind as K;
        let setting = &self.setting;
        match &self.kind {
            K::NotJson {
                detail,
                line,
                column,
            } => write!(
                f,
                "the settings file is not valid JSON ({detail} at line {line} column {column}); the extension settings must be a JSON object"
            ),
            K::EscapedJson { preview } => write!(
                f,
                "{what} is a JSON string that itself holds JSON ({preview}), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)",
                what = describe_setting(setting)
            ),
            K::RuntimeSettings { found } => write!(
                f,
                "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found {found}"
            ),
            K::WrongType { expected, found } => write!(
                f,
                "{what} must be {expected}; found {found}",
                what = describe_setting(setting)
            ),
            K::Missing { fix } => write!(f, "{setting} is missing; {fix}"),
            K::DuplicateKey { first, second } => write!(
                f,
                "{setting} is given twice (as {first:?} and {second:?}); keep only one of them"
            ),
            K::NoCertificates => write!(
                f,
                "{setting} is empty; list at least one certificate, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]"
            ),
            K::UrlInvalid { value, detail } => write!(
                f,
                "{setting}: {value:?} is not a URL ({detail}); write it as https://<vault>.vault.azure.net/secrets/<name>"
            ),
            K::UrlNotHttps { value, scheme } => write!(
                f,
                "{setting}: {value:?} uses {scheme}, but https is required because the access token must never travel in clear text; write the URL with https://"
            ),
            K::UrlNoHost { value } => write!(
                f,
                "{setting}: {value:?} has no host; write it as https://<vault>.vault.azure.net/secrets/<name>"
            ),
            K::UrlHost {
                value,
                host,
                problem,
            } => write!(
                f,
                "{setting}: host {host:?} in {value:?} {problem}; use the vault's DNS name, e.g. https://myvault.vault.azure.net/secrets/<name>"
            ),
            K::UrlExtra { value, part } => write!(
                f,
                "{setting}: {value:?} has {part}; remove it, a secret URL is only https://<vault>.<vault DNS suffix>/secrets/<name>[/<version>]"
            ),
            K::UrlCertificatesPath { value, corrected } => write!(
                f,
                "{setting}: {value:?} points at /certificates/, which does not expose the private key (only the secret endpoint does); use {corrected:?}"
            ),
            K::UrlPath { value } => write!(
                f,
                "{setting}: {value:?} is not a Key Vault secret URL; write it as https://<vault>.vault.azure.net/secrets/<name> or .../secrets/<name>/<version>"
            ),
            K::SecretName { value, name } => write!(
                f,
                "{setting}: secret name {name:?} in {value:?} is not a Key Vault name; names are 1 to 127 letters, digits and hyphens"
            ),
            K::Version { value, version } => write!(
                f,
                "{setting}: version {version:?} in {value:?} is not a Key Vault version; a version is 32 hexadecimal characters (leave it out to follow the latest version)"
            ),
            K::StoreLocation { value, problem } => write!(
                f,
                "{setting}: {value:?} {problem}; give an absolute folder such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\""
            ),
            K::LinkName { value, problem } => write!(
                f,
                "{setting}: {value:?} {problem}; give a plain file name such as \"mycert.pem\", without \"/\""
            ),
            K::PollingInterval { value } => write!(
                f,
                "{setting}: {value} is not a whole number of seconds between 1 and 4294967295; give e.g. \"3600\" (one hour, the default)"
            ),
            K::RetainedVersions { value } => write!(
                f,
                "{setting}: {value} is not a positive whole number; give how many versions of each certificate to keep on disk, e.g. 2 (the current and the previous one, the default)"
            ),
            K::ExpiryWarningDays { value } => write!(
                f,
                "{setting}: {value} is not a whole number of days; give how many days before expiry to warn, e.g. 14 (the default), or 0 to never warn"
            ),
            K::MetricsFile { value, problem } => write!(
                f,
                "{setting}: {value:?} {problem}; give an absolute file path such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\" (or leave metricsFile out for no metrics)"
            ),
            K::PostInstallCommand {
                value,
                problem,
                fix,
            } => write!(f, "{setting}: {value} {problem}; {fix}"),
            K::NotBoolean { value } => {
                write!(f, "{setting}: {value} is not a boolean; give true or false")
            }
            K::MsiEndpoint { value, problem } => write!(
                f,
                "{setting}: {value:?} {problem}; give the managed identity endpoint, e.g. \"http://169.254.169.254/metadata/identity\""
            ),
            K::MsiClientId { value } => write!(
                f,
                "{setting}: {value:?} is not a client id; give the user-assigned identity's client id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\""
            ),
            K::MsiObjectId { value } => write!(
                f,
                "{setting}: {value:?} is not an object id; give the user-assigned identity's object (principal) id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\" (az identity show -g <group> -n <name> --query principalId)"
            ),
            K::MsiResourceId { value } => write!(
                f,
                "{setting}: {value:?} is not a user-assigned identity's resource ID; give it as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\" (az identity show -g <group> -n <name> --query id)"
            ),
            K::SeveralIdentities { first, second } => write!(
                f,
                "{setting} names the identity twice, as {first} and as {second}; keep only one of msiClientId, msiObjectId and msiResourceId"
            ),
            K::UnknownFormat { value } => write!(
                f,
                "{setting}: {value} is not a known format; the formats are \"split\" (cert.pem, chain.pem, fullchain.pem, privkey.pem) and \"pfx\" (certificate.pfx), e.g. [\"split\", \"pfx\"], or [] for none"
            ),
            K::UnknownLogger { value } => write!(
                f,
                "{setting}: {value:?} is not a known logger; the only logger is \"fluentd\" (or remove loggingSettings)"
            ),
            K::FluentdEndpoint { value } => write!(
                f,
                "{setting}: {value:?} is not a fluentd endpoint; give tcp://<host>:<port>, e.g. \"tcp://localhost:24224\""
            ),
            K::FluentdFormat { value } => write!(
                f,
                "{setting}: {value:?} is not supported; the only fluentd format is \"forward\""
            ),
            K::ServiceName { value } => write!(
                f,
                "{setting}: {value:?} is not a usable service name; give a non-empty name without spaces or control characters, e.g. \"akvvm_service\""
            ),
            K::AclEmpty => write!(
                f,
                "{setting} names neither a user nor a group; give \"user\", \"group\" or both, e.g. {{\"user\": \"app1\", \"group\": \"appgroup\"}}"
            ),
            K::AclName { value, account } => write!(
                f,
                "{setting}: {value:?} is not a valid {account} name; give the name of a {account} on the VM, e.g. \"www-data\""
            ),
            K::DuplicateCertificate {
                value,
                first,
                vault,
                secret,
            } => write!(
                f,
                "{setting}: {value:?} observes the same certificate as {first} (vault {vault:?}, secret {secret:?}); list each certificate once"
            ),
            K::DuplicateLinkName { link, store, first } => write!(
                f,
                "{setting}: link name {link:?} in {store:?} is already used by {first}; give one of them a different customSymbolicLinkName"
            ),
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
