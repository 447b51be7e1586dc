//! Why settings were rejected: `SettingsError`, whose Display names the setting, the bad value and the fix.

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
