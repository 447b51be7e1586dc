//! The raw structs: the JSON exactly as written, one struct per object of the schema. Every field is a `Value`
//! so that a wrong type is reported with the setting's path (serde's own messages have none). Keys are matched
//! case-insensitively before deserializing (`json::section`), against the list `raw_section!` derives
//! from the same declaration as the struct's `rename`s, so the two cannot drift apart.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A raw section: a struct of optional JSON values, one per key of its object.
pub(super) trait RawSection: DeserializeOwned {
    /// The keys as the schema spells them (the fields' `rename`s).
    const KEYS: &'static [&'static str];
}

/// Declares a raw section: `Name { field: "jsonKey", … }` becomes a struct whose fields are `Option<Value>`
/// renamed to their keys, and its `RawSection::KEYS`.
macro_rules! raw_section {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident: $key:literal,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize)]
        pub(super) struct $name {
            $(
                $(#[$field_meta])*
                #[serde(rename = $key)]
                pub(super) $field: Option<Value>,
            )*
        }

        impl RawSection for $name {
            const KEYS: &'static [&'static str] = &[$($key),*];
        }
    };
}

raw_section! {
    /// `{"runtimeSettings": [...]}`, the whole `config/<seq>.settings` file.
    RawSettingsFile {
        runtime_settings: "runtimeSettings",
    }
}

raw_section! {
    /// `runtimeSettings[0]`.
    RawRuntimeSetting {
        handler_settings: "handlerSettings",
    }
}

raw_section! {
    /// `runtimeSettings[0].handlerSettings`.
    RawHandlerSettings {
        public_settings: "publicSettings",
        protected_settings: "protectedSettings",
        /// Names the certificate that decrypts protectedSettings; known so that it draws no warning, never used.
        #[allow(dead_code)]
        protected_settings_cert_thumbprint: "protectedSettingsCertThumbprint",
    }
}

raw_section! {
    /// publicSettings.
    RawPublicSettings {
        secrets_management_settings: "secretsManagementSettings",
        authentication_settings: "authenticationSettings",
        logging_settings: "loggingSettings",
    }
}

raw_section! {
    /// `secretsManagementSettings`.
    RawSecretsManagement {
        polling_interval_in_s: "pollingIntervalInS",
        certificate_store_name: "certificateStoreName",
        link_on_renewal: "linkOnRenewal",
        certificate_store_location: "certificateStoreLocation",
        require_initial_sync: "requireInitialSync",
        observed_certificates: "observedCertificates",
        acl_enabled: "aclEnabled",
        retained_versions: "retainedVersions",
        expiry_warning_days: "expiryWarningDays",
        post_install_command: "postInstallCommand",
        metrics_file: "metricsFile",
        additional_formats: "additionalFormats",
        /// Belongs at the top level; accepted here with a warning (a common mistake).
        authentication_settings: "authenticationSettings",
    }
}

raw_section! {
    /// One v3 `observedCertificates` object.
    RawObservedCertificate {
        url: "url",
        certificate_store_location: "certificateStoreLocation",
        custom_symbolic_link_name: "customSymbolicLinkName",
        acls: "acls",
        certificate_store_name: "certificateStoreName",
        post_install_command: "postInstallCommand",
        additional_formats: "additionalFormats",
        key_exportable: "keyExportable",
        accounts: "accounts",
    }
}

raw_section! {
    /// A `postInstallCommand` object.
    RawHook {
        command: "command",
        shell: "shell",
        timeout_in_s: "timeoutInS",
    }
}

raw_section! {
    /// One `acls` entry.
    RawAcl {
        user: "user",
        group: "group",
    }
}

raw_section! {
    /// `authenticationSettings`.
    RawAuthentication {
        msi_endpoint: "msiEndpoint",
        msi_client_id: "msiClientId",
        msi_object_id: "msiObjectId",
        msi_resource_id: "msiResourceId",
    }
}

raw_section! {
    /// `loggingSettings`.
    RawLogging {
        logger: "logger",
        endpoint: "endpoint",
        format: "format",
        servicename: "servicename",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_the_renames() {
        assert_eq!(RawHook::KEYS, ["command", "shell", "timeoutInS"]);
        let hook: RawHook =
            serde_json::from_value(json!({"command": ["a"], "timeoutInS": 5})).unwrap();
        assert_eq!(hook.command, Some(json!(["a"])));
        assert_eq!(hook.shell, None);
        assert_eq!(hook.timeout_in_s, Some(json!(5)));
    }
}
