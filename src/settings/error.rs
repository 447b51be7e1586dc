//! Why settings were rejected, in the shape of `io::Error`: a [`SettingsError`] is the setting's JSON path plus a
//! [`SettingsErrorKind`] saying what is wrong with it. The kind carries the bad value and whatever the message
//! needs; the message names the setting, the value and the fix (tests/settings_table.rs pins every one).

/// Why settings were rejected: which setting, and what is wrong with it ([`SettingsErrorKind`]). The Display
/// text names the setting (JSON path), the bad value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", describe_setting(.setting))]
pub struct SettingsError {
    setting: String,
    kind: SettingsErrorKind,
}

/// What is wrong with a setting. Each variant holds what its message quotes; the setting itself is
/// [`SettingsError::setting`]. The Display text is the rest of the sentence that begins with the setting's
/// name (`": \"…\" is not a URL …"`, `" is missing; …"`): a [`SettingsError`] reads as one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsErrorKind {
    /// The file is not JSON.
    #[error(
        " is not valid JSON ({detail} at line {line} column {column}); the extension settings must be a JSON object"
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
        " is a JSON string that itself holds JSON ({preview}), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)"
    )]
    EscapedJson {
        /// The start of the string, JSON-quoted.
        preview: String,
    },
    /// `runtimeSettings` is not a one-element list.
    #[error(
        " must be a list with exactly one element (waagent writes one per settings file); found {found}"
    )]
    RuntimeSettings {
        /// What was found instead.
        found: String,
    },
    /// A setting has the wrong JSON type.
    #[error(" must be {expected}; found {found}")]
    WrongType {
        /// What it must be, with an example.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A required setting is absent or null.
    #[error(" is missing; {fix}")]
    Missing {
        /// What to add.
        fix: &'static str,
    },
    /// The same key is given twice, differing only in letter case.
    #[error(" is given twice (as {first:?} and {second:?}); keep only one of them")]
    DuplicateKey {
        /// The key as first written.
        first: String,
        /// The key as written the second time.
        second: String,
    },
    /// `observedCertificates` is an empty list.
    #[error(
        " is empty; list at least one certificate, e.g. [\"https://myvault.vault.azure.net/secrets/mycert\"]"
    )]
    NoCertificates,
    /// A certificate URL does not parse.
    #[error(
        ": {value:?} is not a URL ({detail}); write it as https://<vault>.vault.azure.net/secrets/<name>"
    )]
    UrlInvalid {
        /// The URL as given.
        value: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A certificate URL is not https.
    #[error(
        ": {value:?} uses {scheme}, but https is required because the access token must never travel in clear text; write the URL with https://"
    )]
    UrlNotHttps {
        /// The URL as given.
        value: String,
        /// The scheme used.
        scheme: String,
    },
    /// A certificate URL has no host.
    #[error(": {value:?} has no host; write it as https://<vault>.vault.azure.net/secrets/<name>")]
    UrlNoHost {
        /// The URL as given.
        value: String,
    },
    /// A certificate URL's host is not a vault DNS name.
    #[error(
        ": host {host:?} in {value:?} {problem}; use the vault's DNS name, e.g. https://myvault.vault.azure.net/secrets/<name>"
    )]
    UrlHost {
        /// The URL as given.
        value: String,
        /// The host.
        host: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A certificate URL has a query, fragment or credentials.
    #[error(
        ": {value:?} has {part}; remove it, a secret URL is only https://<vault>.<vault DNS suffix>/secrets/<name>[/<version>]"
    )]
    UrlExtra {
        /// The URL as given.
        value: String,
        /// The superfluous part.
        part: &'static str,
    },
    /// A certificate URL uses `/certificates/` instead of `/secrets/`.
    #[error(
        ": {value:?} points at /certificates/, which does not expose the private key (only the secret endpoint does); use {corrected:?}"
    )]
    UrlCertificatesPath {
        /// The URL as given.
        value: String,
        /// The same certificate's secret URL.
        corrected: String,
    },
    /// A certificate URL's path is not `/secrets/<name>[/<version>]`.
    #[error(
        ": {value:?} is not a Key Vault secret URL; write it as https://<vault>.vault.azure.net/secrets/<name> or .../secrets/<name>/<version>"
    )]
    UrlPath {
        /// The URL as given.
        value: String,
    },
    /// The secret name breaks Key Vault's naming rule.
    #[error(
        ": secret name {name:?} in {value:?} is not a Key Vault name; names are 1 to 127 letters, digits and hyphens"
    )]
    SecretName {
        /// The URL as given.
        value: String,
        /// The name found in it.
        name: String,
    },
    /// The pinned version is not 32 hex digits.
    #[error(
        ": version {version:?} in {value:?} is not a Key Vault version; a version is 32 hexadecimal characters (leave it out to follow the latest version)"
    )]
    Version {
        /// The URL as given.
        value: String,
        /// The version found in it.
        version: String,
    },
    /// A store location is not a usable absolute folder.
    #[error(
        ": {value:?} {problem}; give an absolute folder such as \"/var/lib/waagent/Microsoft.Azure.KeyVault.Store\""
    )]
    StoreLocation {
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// On Windows, `certificateStoreLocation` is not `LocalMachine` or `CurrentUser` (the message says what to
    /// write).
    #[error(": {problem}")]
    WindowsStoreLocation {
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// On Windows, `certificateStoreName` is not a usable store name.
    #[error(
        ": {value:?} {problem}; give a store name such as \"MY\" (the personal store), \"WebHosting\" or \"TrustedPeople\""
    )]
    StoreName {
        /// The name as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `customSymbolicLinkName` is not a plain file name.
    #[error(": {value:?} {problem}; give a plain file name such as \"mycert.pem\", without \"/\"")]
    LinkName {
        /// The name as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `pollingIntervalInS` is not a positive whole number of seconds.
    #[error(
        ": {value} is not a whole number of seconds between 1 and 4294967295; give e.g. \"3600\" (one hour, the default)"
    )]
    PollingInterval {
        /// The value as JSON text.
        value: String,
    },
    /// `retainedVersions` is not a positive whole number.
    #[error(
        ": {value} is not a positive whole number; give how many versions of each certificate to keep on disk, e.g. 2 (the current and the previous one, the default)"
    )]
    RetainedVersions {
        /// The value as JSON text.
        value: String,
    },
    /// `expiryWarningDays` is not a whole number of days.
    #[error(
        ": {value} is not a whole number of days; give how many days before expiry to warn, e.g. 14 (the default), or 0 to never warn"
    )]
    ExpiryWarningDays {
        /// The value as JSON text.
        value: String,
    },
    /// `metricsFile` is not a usable absolute file path.
    #[error(
        ": {value:?} {problem}; give an absolute file path such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\" (or leave metricsFile out for no metrics)"
    )]
    MetricsFile {
        /// The path as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `postInstallCommand` is malformed.
    #[error(": {value} {problem}; {fix}")]
    PostInstallCommand {
        /// The value as JSON text.
        value: String,
        /// What is wrong.
        problem: String,
        /// How to write it.
        fix: &'static str,
    },
    /// A boolean setting is neither a bool nor "true"/"false".
    #[error(": {value} is not a boolean; give true or false")]
    NotBoolean {
        /// The value as JSON text.
        value: String,
    },
    /// `msiEndpoint` is not an http(s) URL with a host.
    #[error(
        ": {value:?} {problem}; give the managed identity endpoint, e.g. \"http://169.254.169.254/metadata/identity\""
    )]
    MsiEndpoint {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `msiClientId` is not a GUID.
    #[error(
        ": {value:?} is not a client id; give the user-assigned identity's client id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\""
    )]
    MsiClientId {
        /// The value as given.
        value: String,
    },
    /// `msiObjectId` is not a GUID.
    #[error(
        ": {value:?} is not an object id; give the user-assigned identity's object (principal) id, a GUID such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\" (az identity show -g <group> -n <name> --query principalId)"
    )]
    MsiObjectId {
        /// The value as given.
        value: String,
    },
    /// `msiResourceId` is not a user-assigned identity's ARM resource ID.
    #[error(
        ": {value:?} is not a user-assigned identity's resource ID; give it as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\" (az identity show -g <group> -n <name> --query id)"
    )]
    MsiResourceId {
        /// The value as given.
        value: String,
    },
    /// More than one of `msiClientId`, `msiObjectId`, `msiResourceId`.
    #[error(
        " names the identity twice, as {first} and as {second}; keep only one of msiClientId, msiObjectId and msiResourceId"
    )]
    SeveralIdentities {
        /// The first setting given.
        first: &'static str,
        /// The second one.
        second: &'static str,
    },
    /// A user-assigned identity named beside Azure Arc's identity endpoint, which has none.
    #[error(
        ": {value:?} names a user-assigned identity, but msiEndpoint {endpoint} is Azure Arc's identity endpoint, which serves only the machine's own (system-assigned) identity; remove this setting and grant the vault access to the Arc machine's identity"
    )]
    ArcUserAssigned {
        /// The identity as given.
        value: String,
        /// The Arc endpoint given as msiEndpoint.
        endpoint: String,
    },
    /// `additionalFormats` names a format kvvm does not write.
    #[error(
        ": {value} is not a known format; the formats are \"split\" (cert.pem, chain.pem, fullchain.pem, privkey.pem) and \"pfx\" (certificate.pfx), e.g. [\"split\", \"pfx\"], or [] for none"
    )]
    UnknownFormat {
        /// The element as JSON text.
        value: String,
    },
    /// `loggingSettings.logger` names a logger we do not have.
    #[error(
        ": {value:?} is not a known logger; the only logger is \"fluentd\" (or remove loggingSettings)"
    )]
    UnknownLogger {
        /// The value as given.
        value: String,
    },
    /// fluentd `endpoint` is not `tcp://host:port`.
    #[error(
        ": {value:?} is not a fluentd endpoint; give tcp://<host>:<port>, e.g. \"tcp://localhost:24224\""
    )]
    FluentdEndpoint {
        /// The value as given.
        value: String,
    },
    /// fluentd `format` is not `forward`.
    #[error(": {value:?} is not supported; the only fluentd format is \"forward\"")]
    FluentdFormat {
        /// The value as given.
        value: String,
    },
    /// fluentd `servicename` is empty or unprintable.
    #[error(
        ": {value:?} is not a usable service name; give a non-empty name without spaces or control characters, e.g. \"akvvm_service\""
    )]
    ServiceName {
        /// The value as given.
        value: String,
    },
    /// An ACL entry names neither a user nor a group.
    #[error(
        " names neither a user nor a group; give \"user\", \"group\" or both, e.g. {{\"user\": \"app1\", \"group\": \"appgroup\"}}"
    )]
    AclEmpty,
    /// An ACL user or group name is not a plausible POSIX name.
    #[error(
        ": {value:?} is not a valid {account} name; give the name of a {account} on the VM, e.g. \"www-data\""
    )]
    AclName {
        /// The name as given.
        value: String,
        /// "user" or "group".
        account: &'static str,
    },
    /// Two entries observe the same certificate.
    #[error(
        ": {value:?} observes the same certificate as {first} (vault {vault:?}, secret {secret:?}); list each certificate once"
    )]
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
    #[error(
        ": link name {link:?} in {store:?} is already used by {first}; give one of them a different customSymbolicLinkName"
    )]
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
            Self::StoreLocation { .. } | Self::WindowsStoreLocation { .. } => {
                "store-location-invalid"
            }
            Self::StoreName { .. } => "store-name-invalid",
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
            Self::ArcUserAssigned { .. } => "msi-identity-on-arc",
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

/// How a setting path reads at the start of a sentence ("" is the whole document).
fn describe_setting(setting: &str) -> &str {
    if setting.is_empty() {
        "the settings file"
    } else {
        setting
    }
}
