//! The raw structs: the JSON exactly as written, before validation.

use serde::Deserialize;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------------
// Raw structs: the JSON exactly as written. Every field is a `Value` so that a wrong type is reported with the
// setting's path (serde's own messages have none). Keys are matched case-insensitively before deserializing
// (see `known_keys`), so the `*_KEYS` lists must name the same keys as the `rename`s (a unit test checks).

/// `{"runtimeSettings": [...]}`, the whole `config/<seq>.settings` file.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawSettingsFile {
    #[serde(rename = "runtimeSettings")]
    pub(super) runtime_settings: Option<Value>,
}
pub(super) const FILE_KEYS: &[&str] = &["runtimeSettings"];

/// `runtimeSettings[0]`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawRuntimeSetting {
    #[serde(rename = "handlerSettings")]
    pub(super) handler_settings: Option<Value>,
}
pub(super) const RUNTIME_KEYS: &[&str] = &["handlerSettings"];

/// `runtimeSettings[0].handlerSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawHandlerSettings {
    #[serde(rename = "publicSettings")]
    pub(super) public_settings: Option<Value>,
    #[serde(rename = "protectedSettings")]
    pub(super) protected_settings: Option<Value>,
    /// Names the certificate that decrypts protectedSettings; known so that it draws no warning, never used.
    #[allow(dead_code)]
    #[serde(rename = "protectedSettingsCertThumbprint")]
    pub(super) protected_settings_cert_thumbprint: Option<Value>,
}
pub(super) const HANDLER_KEYS: &[&str] = &[
    "publicSettings",
    "protectedSettings",
    "protectedSettingsCertThumbprint",
];

/// publicSettings.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawPublicSettings {
    #[serde(rename = "secretsManagementSettings")]
    pub(super) secrets_management_settings: Option<Value>,
    #[serde(rename = "authenticationSettings")]
    pub(super) authentication_settings: Option<Value>,
    #[serde(rename = "loggingSettings")]
    pub(super) logging_settings: Option<Value>,
}
pub(super) const PUBLIC_KEYS: &[&str] = &[
    "secretsManagementSettings",
    "authenticationSettings",
    "loggingSettings",
];

/// `secretsManagementSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawSecretsManagement {
    #[serde(rename = "pollingIntervalInS")]
    pub(super) polling_interval_in_s: Option<Value>,
    #[serde(rename = "certificateStoreName")]
    pub(super) certificate_store_name: Option<Value>,
    #[serde(rename = "linkOnRenewal")]
    pub(super) link_on_renewal: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    pub(super) certificate_store_location: Option<Value>,
    #[serde(rename = "requireInitialSync")]
    pub(super) require_initial_sync: Option<Value>,
    #[serde(rename = "observedCertificates")]
    pub(super) observed_certificates: Option<Value>,
    #[serde(rename = "aclEnabled")]
    pub(super) acl_enabled: Option<Value>,
    #[serde(rename = "retainedVersions")]
    pub(super) retained_versions: Option<Value>,
    #[serde(rename = "expiryWarningDays")]
    pub(super) expiry_warning_days: Option<Value>,
    #[serde(rename = "postInstallCommand")]
    pub(super) post_install_command: Option<Value>,
    #[serde(rename = "metricsFile")]
    pub(super) metrics_file: Option<Value>,
    #[serde(rename = "additionalFormats")]
    pub(super) additional_formats: Option<Value>,
    /// Belongs at the top level; accepted here with a warning (a common mistake).
    #[serde(rename = "authenticationSettings")]
    pub(super) authentication_settings: Option<Value>,
}
pub(super) const SECRETS_KEYS: &[&str] = &[
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
pub(super) struct RawObservedCertificate {
    pub(super) url: Option<Value>,
    #[serde(rename = "certificateStoreLocation")]
    pub(super) certificate_store_location: Option<Value>,
    #[serde(rename = "customSymbolicLinkName")]
    pub(super) custom_symbolic_link_name: Option<Value>,
    pub(super) acls: Option<Value>,
    #[serde(rename = "certificateStoreName")]
    pub(super) certificate_store_name: Option<Value>,
    #[serde(rename = "postInstallCommand")]
    pub(super) post_install_command: Option<Value>,
    #[serde(rename = "additionalFormats")]
    pub(super) additional_formats: Option<Value>,
}
pub(super) const CERTIFICATE_KEYS: &[&str] = &[
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
pub(super) struct RawHook {
    pub(super) command: Option<Value>,
    pub(super) shell: Option<Value>,
    #[serde(rename = "timeoutInS")]
    pub(super) timeout_in_s: Option<Value>,
}
pub(super) const HOOK_KEYS: &[&str] = &["command", "shell", "timeoutInS"];

/// One `acls` entry.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawAcl {
    pub(super) user: Option<Value>,
    pub(super) group: Option<Value>,
}
pub(super) const ACL_KEYS: &[&str] = &["user", "group"];

/// `authenticationSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawAuthentication {
    #[serde(rename = "msiEndpoint")]
    pub(super) msi_endpoint: Option<Value>,
    #[serde(rename = "msiClientId")]
    pub(super) msi_client_id: Option<Value>,
    #[serde(rename = "msiObjectId")]
    pub(super) msi_object_id: Option<Value>,
    #[serde(rename = "msiResourceId")]
    pub(super) msi_resource_id: Option<Value>,
}
pub(super) const AUTHENTICATION_KEYS: &[&str] =
    &["msiEndpoint", "msiClientId", "msiObjectId", "msiResourceId"];

/// `loggingSettings`.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct RawLogging {
    pub(super) logger: Option<Value>,
    pub(super) endpoint: Option<Value>,
    pub(super) format: Option<Value>,
    pub(super) servicename: Option<Value>,
}
pub(super) const LOGGING_KEYS: &[&str] = &["logger", "endpoint", "format", "servicename"];

#[cfg(test)]
mod tests {
    use super::*;

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
}
