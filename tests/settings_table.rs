//! The settings schema seen from outside: every rejection's exact message (users read these in the portal, so a
//! change of wording is a change of behaviour), and every accepted shape users deploy today.

use std::path::PathBuf;
use std::time::Duration;

use kvvm::UserIdentity;
use kvvm::settings::Formats;
use kvvm::settings::{
    AclEntry, Configured, DEFAULT_STORE, Settings, SettingsError, parse_public_settings,
    parse_settings_file,
};
use serde_json::{Value, json};

/// Input of one table row.
enum Input {
    /// A whole `config/<seq>.settings` file.
    File(&'static str),
    /// publicSettings alone; also run through a settings file wrapping it.
    Public(&'static str),
}
use Input::{File, Public};

/// (input, reason(), setting(), exact Display).
const REJECTIONS: &[(Input, &str, &str, &str)] = &[
    // The file and its envelope.
    (
        File(r#"{"runtimeSettings": ["#),
        "settings-not-json",
        "",
        "the settings file is not valid JSON (EOF while parsing a list at line 1 column 21); the extension settings must be a JSON object",
    ),
    (
        File("secretsManagementSettings=1"),
        "settings-not-json",
        "",
        "the settings file is not valid JSON (expected value at line 1 column 1); the extension settings must be a JSON object",
    ),
    (
        File(r#""{\"runtimeSettings\":[{\"handlerSettings\":{}}]}""#),
        "settings-double-encoded",
        "",
        r#"the settings file is a JSON string that itself holds JSON ("{\"runtimeSettings\":[{\"handlerSetting…), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)"#,
    ),
    (
        File(r#"[1]"#),
        "setting-wrong-type",
        "",
        r#"the settings file must be a JSON object such as {"runtimeSettings": [{"handlerSettings": {"publicSettings": {...}}}]}; found a list"#,
    ),
    (
        File(r#"{}"#),
        "runtime-settings-not-one",
        "runtimeSettings",
        "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found no runtimeSettings",
    ),
    (
        File(r#"{"runtimeSettings": []}"#),
        "runtime-settings-not-one",
        "runtimeSettings",
        "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found an empty list",
    ),
    (
        File(r#"{"runtimeSettings": [{}, {}]}"#),
        "runtime-settings-not-one",
        "runtimeSettings",
        "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found 2 elements",
    ),
    (
        File(r#"{"runtimeSettings": {"handlerSettings": {}}}"#),
        "runtime-settings-not-one",
        "runtimeSettings",
        "runtimeSettings must be a list with exactly one element (waagent writes one per settings file); found an object",
    ),
    (
        File(r#"{"runtimeSettings": [{"handlerSettings": "x"}]}"#),
        "setting-wrong-type",
        "runtimeSettings[0].handlerSettings",
        r#"runtimeSettings[0].handlerSettings must be an object such as {"publicSettings": {...}}; found the string "x""#,
    ),
    // publicSettings itself.
    (
        Public(r#""[\"https://myvault.vault.azure.net/secrets/mycert\"]""#),
        "settings-double-encoded",
        "publicSettings",
        r#"publicSettings is a JSON string that itself holds JSON ("[\"https://myvault.vault.azure.net/secr…), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)"#,
    ),
    (
        Public(r#""secretsManagementSettings=1""#),
        "setting-wrong-type",
        "publicSettings",
        r#"publicSettings must be a JSON object such as {"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}; found the string "secretsManagementSettings=1""#,
    ),
    (
        Public(r#"[]"#),
        "setting-wrong-type",
        "publicSettings",
        r#"publicSettings must be a JSON object such as {"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}; found a list"#,
    ),
    (
        Public(r#"{}"#),
        "setting-missing",
        "secretsManagementSettings",
        r#"secretsManagementSettings is missing; add "secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": ["https://myvault.vault.azure.net/secrets/mycert"]}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings",
        r#"secretsManagementSettings must be an object such as {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}; found a list"#,
    ),
    (
        Public(r#"{"secretsManagementSettings": {"pollingIntervalInS": "3600"}}"#),
        "setting-missing",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates is missing; list the certificates, e.g. ["https://myvault.vault.azure.net/secrets/mycert"]"#,
    ),
    (
        Public(r#"{"secretsManagementSettings": {"observedCertificates": null}}"#),
        "setting-missing",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates is missing; list the certificates, e.g. ["https://myvault.vault.azure.net/secrets/mycert"]"#,
    ),
    (
        Public(r#"{"secretsManagementSettings": {"observedCertificates": []}}"#),
        "no-observed-certificates",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates is empty; list at least one certificate, e.g. ["https://myvault.vault.azure.net/secrets/mycert"]"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": "https://myvault.vault.azure.net/secrets/mycert"}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates must be a list of secret URLs or objects with "url", e.g. ["https://myvault.vault.azure.net/secrets/mycert"]; found the string "https://myvault.vault.azure.net/secrets/mycert""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": "[\"https://myvault.vault.azure.net/secrets/mycert\"]"}}"#,
        ),
        "settings-double-encoded",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates is a JSON string that itself holds JSON ("[\"https://myvault.vault.azure.net/secr…), not an object; pass the settings as a JSON object, not as a string: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/a", 42]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates[1]",
        r#"secretsManagementSettings.observedCertificates[1] must be a secret URL string or an object with "url", e.g. "https://myvault.vault.azure.net/secrets/mycert"; found the number 42"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"certificateStoreLocation": "/etc/ssl"}]}}"#,
        ),
        "setting-missing",
        "secretsManagementSettings.observedCertificates[0].url",
        r#"secretsManagementSettings.observedCertificates[0].url is missing; add "url": "https://myvault.vault.azure.net/secrets/mycert" to this certificate"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": ["https://myvault.vault.azure.net/secrets/mycert"]}]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates[0].url",
        r#"secretsManagementSettings.observedCertificates[0].url must be a URL string such as "https://myvault.vault.azure.net/secrets/mycert"; found a list"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/a"], "ObservedCertificates": []}}"#,
        ),
        "setting-given-twice",
        "secretsManagementSettings.observedCertificates",
        r#"secretsManagementSettings.observedCertificates is given twice (as "ObservedCertificates" and "observedCertificates"); keep only one of them"#,
    ),
    // Certificate URLs.
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["http://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "certificate-url-not-https",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "http://myvault.vault.azure.net/secrets/mycert" uses http, but https is required because the access token must never travel in clear text; write the URL with https://"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https:///secrets/mycert"}]}}"#,
        ),
        "certificate-url-no-host",
        "secretsManagementSettings.observedCertificates[0].url",
        r#"secretsManagementSettings.observedCertificates[0].url: "https:///secrets/mycert" has no host; write it as https://<vault>.vault.azure.net/secrets/<name>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/a", "https://"]}}"#,
        ),
        "certificate-url-no-host",
        "secretsManagementSettings.observedCertificates[1]",
        r#"secretsManagementSettings.observedCertificates[1]: "https://" has no host; write it as https://<vault>.vault.azure.net/secrets/<name>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "certificate-url-invalid",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "myvault.vault.azure.net/secrets/mycert" is not a URL (relative URL without a base); write it as https://<vault>.vault.azure.net/secrets/<name>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://10.0.0.4/secrets/mycert"]}}"#,
        ),
        "certificate-url-bad-host",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: host "10.0.0.4" in "https://10.0.0.4/secrets/mycert" is an IP address, not a vault DNS name; use the vault's DNS name, e.g. https://myvault.vault.azure.net/secrets/<name>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/certificates/mycert"]}}"#,
        ),
        "certificate-url-not-secret",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "https://myvault.vault.azure.net/certificates/mycert" points at /certificates/, which does not expose the private key (only the secret endpoint does); use "https://myvault.vault.azure.net/secrets/mycert""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/certificates/mycert/0123456789abcdef0123456789abcdef"}]}}"#,
        ),
        "certificate-url-not-secret",
        "secretsManagementSettings.observedCertificates[0].url",
        r#"secretsManagementSettings.observedCertificates[0].url: "https://myvault.vault.azure.net/certificates/mycert/0123456789abcdef0123456789abcdef" points at /certificates/, which does not expose the private key (only the secret endpoint does); use "https://myvault.vault.azure.net/secrets/mycert/0123456789abcdef0123456789abcdef""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/keys/mykey"]}}"#,
        ),
        "certificate-url-bad-path",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "https://myvault.vault.azure.net/keys/mykey" is not a Key Vault secret URL; write it as https://<vault>.vault.azure.net/secrets/<name> or .../secrets/<name>/<version>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/"]}}"#,
        ),
        "certificate-url-bad-path",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "https://myvault.vault.azure.net/" is not a Key Vault secret URL; write it as https://<vault>.vault.azure.net/secrets/<name> or .../secrets/<name>/<version>"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/my_cert"]}}"#,
        ),
        "certificate-name-invalid",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: secret name "my_cert" in "https://myvault.vault.azure.net/secrets/my_cert" is not a Key Vault name; names are 1 to 127 letters, digits and hyphens"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert/v2"]}}"#,
        ),
        "certificate-version-invalid",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: version "v2" in "https://myvault.vault.azure.net/secrets/mycert/v2" is not a Key Vault version; a version is 32 hexadecimal characters (leave it out to follow the latest version)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert?api-version=7.4"]}}"#,
        ),
        "certificate-url-extra-parts",
        "secretsManagementSettings.observedCertificates[0]",
        r#"secretsManagementSettings.observedCertificates[0]: "https://myvault.vault.azure.net/secrets/mycert?api-version=7.4" has a query ("?..."); remove it, a secret URL is only https://<vault>.<vault DNS suffix>/secrets/<name>[/<version>]"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert#latest"]}}"#,
        ),
        "certificate-url-extra-parts",
        "secretsManagementSettings.observedCertificates[0]",
        r##"secretsManagementSettings.observedCertificates[0]: "https://myvault.vault.azure.net/secrets/mycert#latest" has a fragment ("#..."); remove it, a secret URL is only https://<vault>.<vault DNS suffix>/secrets/<name>[/<version>]"##,
    ),
    // Store locations and link names.
    (
        Public(
            r#"{"secretsManagementSettings": {"certificateStoreLocation": "LocalMachine", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "store-location-invalid",
        "secretsManagementSettings.certificateStoreLocation",
        r#"secretsManagementSettings.certificateStoreLocation: "LocalMachine" names a Windows certificate store location (KeyVaultForWindows); on Linux certificateStoreLocation is a folder; give an absolute folder such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "certificateStoreLocation": "currentuser"}]}}"#,
        ),
        "store-location-invalid",
        "secretsManagementSettings.observedCertificates[0].certificateStoreLocation",
        r#"secretsManagementSettings.observedCertificates[0].certificateStoreLocation: "currentuser" names a Windows certificate store location (KeyVaultForWindows); on Linux certificateStoreLocation is a folder; give an absolute folder such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "certificateStoreLocation": ""}]}}"#,
        ),
        "store-location-invalid",
        "secretsManagementSettings.observedCertificates[0].certificateStoreLocation",
        r#"secretsManagementSettings.observedCertificates[0].certificateStoreLocation: "" is empty; give an absolute folder such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "certificateStoreLocation": "/etc/ssl/../shadow"}]}}"#,
        ),
        "store-location-invalid",
        "secretsManagementSettings.observedCertificates[0].certificateStoreLocation",
        r#"secretsManagementSettings.observedCertificates[0].certificateStoreLocation: "/etc/ssl/../shadow" contains a ".." component; give an absolute folder such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "certificateStoreLocation": 5}]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates[0].certificateStoreLocation",
        r#"secretsManagementSettings.observedCertificates[0].certificateStoreLocation must be a folder path string such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store"; found the number 5"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "customSymbolicLinkName": "../nginx.pem"}]}}"#,
        ),
        "link-name-invalid",
        "secretsManagementSettings.observedCertificates[0].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[0].customSymbolicLinkName: "../nginx.pem" contains "/"; give a plain file name such as "mycert.pem", without "/""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "customSymbolicLinkName": ""}]}}"#,
        ),
        "link-name-invalid",
        "secretsManagementSettings.observedCertificates[0].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[0].customSymbolicLinkName: "" is empty; give a plain file name such as "mycert.pem", without "/""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "customSymbolicLinkName": ".."}]}}"#,
        ),
        "link-name-invalid",
        "secretsManagementSettings.observedCertificates[0].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[0].customSymbolicLinkName: ".." is not a file name; give a plain file name such as "mycert.pem", without "/""#,
    ),
    // Numbers and booleans.
    (
        Public(
            r#"{"secretsManagementSettings": {"pollingIntervalInS": "abc", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "polling-interval-invalid",
        "secretsManagementSettings.pollingIntervalInS",
        r#"secretsManagementSettings.pollingIntervalInS: "abc" is not a whole number of seconds between 1 and 4294967295; give e.g. "3600" (one hour, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"pollingIntervalInS": "-5", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "polling-interval-invalid",
        "secretsManagementSettings.pollingIntervalInS",
        r#"secretsManagementSettings.pollingIntervalInS: "-5" is not a whole number of seconds between 1 and 4294967295; give e.g. "3600" (one hour, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"pollingIntervalInS": 0, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "polling-interval-invalid",
        "secretsManagementSettings.pollingIntervalInS",
        r#"secretsManagementSettings.pollingIntervalInS: 0 is not a whole number of seconds between 1 and 4294967295; give e.g. "3600" (one hour, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"pollingIntervalInS": 1.5, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "polling-interval-invalid",
        "secretsManagementSettings.pollingIntervalInS",
        r#"secretsManagementSettings.pollingIntervalInS: 1.5 is not a whole number of seconds between 1 and 4294967295; give e.g. "3600" (one hour, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"pollingIntervalInS": "3600s", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "polling-interval-invalid",
        "secretsManagementSettings.pollingIntervalInS",
        r#"secretsManagementSettings.pollingIntervalInS: "3600s" is not a whole number of seconds between 1 and 4294967295; give e.g. "3600" (one hour, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"retainedVersions": 0, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "retained-versions-invalid",
        "secretsManagementSettings.retainedVersions",
        r#"secretsManagementSettings.retainedVersions: 0 is not a positive whole number; give how many versions of each certificate to keep on disk, e.g. 2 (the current and the previous one, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"retainedVersions": "all", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "retained-versions-invalid",
        "secretsManagementSettings.retainedVersions",
        r#"secretsManagementSettings.retainedVersions: "all" is not a positive whole number; give how many versions of each certificate to keep on disk, e.g. 2 (the current and the previous one, the default)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"expiryWarningDays": -3, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "expiry-warning-days-invalid",
        "secretsManagementSettings.expiryWarningDays",
        r#"secretsManagementSettings.expiryWarningDays: -3 is not a whole number of days; give how many days before expiry to warn, e.g. 14 (the default), or 0 to never warn"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"metricsFile": "kvvm.prom", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "metrics-file-invalid",
        "secretsManagementSettings.metricsFile",
        r#"secretsManagementSettings.metricsFile: "kvvm.prom" is not an absolute path; give an absolute file path such as "/var/lib/node_exporter/textfile_collector/kvvm.prom" (or leave metricsFile out for no metrics)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"metricsFile": "", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "metrics-file-invalid",
        "secretsManagementSettings.metricsFile",
        r#"secretsManagementSettings.metricsFile: "" is empty; give an absolute file path such as "/var/lib/node_exporter/textfile_collector/kvvm.prom" (or leave metricsFile out for no metrics)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"metricsFile": "/var/lib/node_exporter/textfile_collector/", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "metrics-file-invalid",
        "secretsManagementSettings.metricsFile",
        r#"secretsManagementSettings.metricsFile: "/var/lib/node_exporter/textfile_collector/" names a folder, not a file; give an absolute file path such as "/var/lib/node_exporter/textfile_collector/kvvm.prom" (or leave metricsFile out for no metrics)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"metricsFile": "/var/lib/node_exporter/../kvvm.prom", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "metrics-file-invalid",
        "secretsManagementSettings.metricsFile",
        r#"secretsManagementSettings.metricsFile: "/var/lib/node_exporter/../kvvm.prom" contains a ".." component; give an absolute file path such as "/var/lib/node_exporter/textfile_collector/kvvm.prom" (or leave metricsFile out for no metrics)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"metricsFile": true, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.metricsFile",
        r#"secretsManagementSettings.metricsFile must be a file path string such as "/var/lib/node_exporter/textfile_collector/kvvm.prom"; found the boolean true"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"postInstallCommand": "systemctl reload nginx && echo ok", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "post-install-command-invalid",
        "secretsManagementSettings.postInstallCommand",
        r#"secretsManagementSettings.postInstallCommand: "systemctl reload nginx && echo ok" contains shell syntax, but the command runs without a shell; give the program and its arguments as a list, e.g. ["systemctl", "reload", "nginx"], or {"shell": "..."} to run a shell command line"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"postInstallCommand": {"command": ["nginx"], "shell": "nginx"}, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "post-install-command-invalid",
        "secretsManagementSettings.postInstallCommand",
        r#"secretsManagementSettings.postInstallCommand: {"command":["nginx"],"shell":"nginx"} has both command and shell; give the program and its arguments as a list, e.g. ["systemctl", "reload", "nginx"], or {"shell": "..."} to run a shell command line"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "postInstallCommand": {"command": ["nginx"], "timeoutInS": 0}}]}}"#,
        ),
        "post-install-command-invalid",
        "secretsManagementSettings.observedCertificates[0].postInstallCommand",
        r#"secretsManagementSettings.observedCertificates[0].postInstallCommand: {"command":["nginx"],"timeoutInS":0} has a timeoutInS that is not a whole number of seconds from 1 to 3600; give the program and its arguments as a list, e.g. ["systemctl", "reload", "nginx"], or {"shell": "..."} to run a shell command line"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"postInstallCommand": ["systemctl", 1], "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "post-install-command-invalid",
        "secretsManagementSettings.postInstallCommand",
        r#"secretsManagementSettings.postInstallCommand: ["systemctl",1] has an element that is not a string; give the program and its arguments as a list, e.g. ["systemctl", "reload", "nginx"], or {"shell": "..."} to run a shell command line"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"postInstallCommand": 5, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.postInstallCommand",
        r#"secretsManagementSettings.postInstallCommand must be a list such as ["systemctl", "reload", "nginx"], or an object such as {"command": ["systemctl", "reload", "nginx"], "timeoutInS": 60} or {"shell": "nginx -s reload && logger renewed"}; found the number 5"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"requireInitialSync": "yes", "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "setting-not-boolean",
        "secretsManagementSettings.requireInitialSync",
        r#"secretsManagementSettings.requireInitialSync: "yes" is not a boolean; give true or false"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"aclEnabled": 1, "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "setting-not-boolean",
        "secretsManagementSettings.aclEnabled",
        r#"secretsManagementSettings.aclEnabled: 1 is not a boolean; give true or false"#,
    ),
    // ACLs.
    (
        Public(
            r#"{"secretsManagementSettings": {"aclEnabled": true, "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "acls": [{"user": "app1"}, {}]}]}}"#,
        ),
        "acl-entry-empty",
        "secretsManagementSettings.observedCertificates[0].acls[1]",
        r#"secretsManagementSettings.observedCertificates[0].acls[1] names neither a user nor a group; give "user", "group" or both, e.g. {"user": "app1", "group": "appgroup"}"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"aclEnabled": true, "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "acls": [{"user": "app1", "group": "app:group"}]}]}}"#,
        ),
        "acl-name-invalid",
        "secretsManagementSettings.observedCertificates[0].acls[0].group",
        r#"secretsManagementSettings.observedCertificates[0].acls[0].group: "app:group" is not a valid group name; give the name of a group on the VM, e.g. "www-data""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"aclEnabled": true, "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "acls": {"user": "app1"}}]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates[0].acls",
        r#"secretsManagementSettings.observedCertificates[0].acls must be a list of objects such as [{"user": "app1", "group": "appgroup"}]; found an object"#,
    ),
    // Duplicates.
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert", "https://other.vault.azure.net/secrets/mycert", {"url": "https://MyVault.vault.azure.net/secrets/MyCert/0123456789abcdef0123456789abcdef", "certificateStoreLocation": "/etc/nginx/ssl"}]}}"#,
        ),
        "certificate-duplicate",
        "secretsManagementSettings.observedCertificates[2].url",
        r#"secretsManagementSettings.observedCertificates[2].url: "https://MyVault.vault.azure.net/secrets/MyCert/0123456789abcdef0123456789abcdef" observes the same certificate as secretsManagementSettings.observedCertificates[0] (vault "myvault", secret "MyCert"); list each certificate once"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert", {"url": "https://myvault.vault.azure.net/secrets/other", "customSymbolicLinkName": "myvault.mycert"}]}}"#,
        ),
        "link-name-duplicate",
        "secretsManagementSettings.observedCertificates[1].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[1].customSymbolicLinkName: link name "myvault.mycert" in "/var/lib/waagent/Microsoft.Azure.KeyVault.Store" is already used by secretsManagementSettings.observedCertificates[0]; give one of them a different customSymbolicLinkName"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"certificateStoreLocation": "/etc/ssl/private", "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/a", "customSymbolicLinkName": "tls.pem"}, {"url": "https://myvault.vault.azure.net/secrets/b", "customSymbolicLinkName": "tls.pem", "certificateStoreLocation": "/etc/ssl/private/"}]}}"#,
        ),
        "link-name-duplicate",
        "secretsManagementSettings.observedCertificates[1].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[1].customSymbolicLinkName: link name "tls.pem" in "/etc/ssl/private" is already used by secretsManagementSettings.observedCertificates[0]; give one of them a different customSymbolicLinkName"#,
    ),
    // Authentication.
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiEndpoint": "169.254.169.254/metadata/identity"}}"#,
        ),
        "msi-endpoint-invalid",
        "authenticationSettings.msiEndpoint",
        r#"authenticationSettings.msiEndpoint: "169.254.169.254/metadata/identity" is not a URL (relative URL without a base); give the managed identity endpoint, e.g. "http://169.254.169.254/metadata/identity""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiEndpoint": "ftp://169.254.169.254/metadata/identity"}}"#,
        ),
        "msi-endpoint-invalid",
        "authenticationSettings.msiEndpoint",
        r#"authenticationSettings.msiEndpoint: "ftp://169.254.169.254/metadata/identity" uses ftp, not http or https; give the managed identity endpoint, e.g. "http://169.254.169.254/metadata/identity""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiEndpoint": "http:///metadata/identity"}}"#,
        ),
        "msi-endpoint-invalid",
        "authenticationSettings.msiEndpoint",
        r#"authenticationSettings.msiEndpoint: "http:///metadata/identity" has no host; give the managed identity endpoint, e.g. "http://169.254.169.254/metadata/identity""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiClientId": "myidentity"}}"#,
        ),
        "msi-client-id-invalid",
        "authenticationSettings.msiClientId",
        r#"authenticationSettings.msiClientId: "myidentity" is not a client id; give the user-assigned identity's client id, a GUID such as "c7373ae5-91c2-4165-8ab6-7381d6e75619""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiObjectId": "object-1"}}"#,
        ),
        "msi-object-id-invalid",
        "authenticationSettings.msiObjectId",
        r#"authenticationSettings.msiObjectId: "object-1" is not an object id; give the user-assigned identity's object (principal) id, a GUID such as "c7373ae5-91c2-4165-8ab6-7381d6e75619" (az identity show -g <group> -n <name> --query principalId)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiResourceId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z"}}"#,
        ),
        "msi-resource-id-invalid",
        "authenticationSettings.msiResourceId",
        r#"authenticationSettings.msiResourceId: "/subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z" is not a user-assigned identity's resource ID; give it as "/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>" (az identity show -g <group> -n <name> --query id)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiClientId": "c7373ae5-91c2-4165-8ab6-7381d6e75619", "msiObjectId": "00000000-1111-2222-3333-444444444444"}}"#,
        ),
        "msi-identity-given-twice",
        "authenticationSettings",
        r#"authenticationSettings names the identity twice, as msiClientId and as msiObjectId; keep only one of msiClientId, msiObjectId and msiResourceId"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiClientId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z", "msiResourceId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z"}}"#,
        ),
        "msi-identity-given-twice",
        "authenticationSettings",
        r#"authenticationSettings names the identity twice, as msiClientId and as msiResourceId; keep only one of msiClientId, msiObjectId and msiResourceId"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiEndpoint": "http://localhost:40342/metadata/identity", "msiClientId": "c7373ae5-91c2-4165-8ab6-7381d6e75619"}}"#,
        ),
        "msi-identity-on-arc",
        "authenticationSettings.msiClientId",
        r#"authenticationSettings.msiClientId: "c7373ae5-91c2-4165-8ab6-7381d6e75619" names a user-assigned identity, but msiEndpoint http://localhost:40342/metadata/identity is Azure Arc's identity endpoint, which serves only the machine's own (system-assigned) identity; remove this setting and grant the vault access to the Arc machine's identity"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": {"msiEndpoint": "http://127.0.0.1:40342", "msiClientId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z"}}"#,
        ),
        "msi-identity-on-arc",
        "authenticationSettings.msiClientId",
        r#"authenticationSettings.msiClientId: "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z" names a user-assigned identity, but msiEndpoint http://127.0.0.1:40342/ is Azure Arc's identity endpoint, which serves only the machine's own (system-assigned) identity; remove this setting and grant the vault access to the Arc machine's identity"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"], "authenticationSettings": {"msiObjectId": "x"}}}"#,
        ),
        "msi-object-id-invalid",
        "secretsManagementSettings.authenticationSettings.msiObjectId",
        r#"secretsManagementSettings.authenticationSettings.msiObjectId: "x" is not an object id; give the user-assigned identity's object (principal) id, a GUID such as "c7373ae5-91c2-4165-8ab6-7381d6e75619" (az identity show -g <group> -n <name> --query principalId)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"additionalFormats": ["split", "jks"], "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}}"#,
        ),
        "additional-format-unknown",
        "secretsManagementSettings.additionalFormats[1]",
        r#"secretsManagementSettings.additionalFormats[1]: "jks" is not a known format; the formats are "split" (cert.pem, chain.pem, fullchain.pem, privkey.pem) and "pfx" (certificate.pfx), e.g. ["split", "pfx"], or [] for none"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "additionalFormats": [7]}]}}"#,
        ),
        "additional-format-unknown",
        "secretsManagementSettings.observedCertificates[0].additionalFormats[0]",
        r#"secretsManagementSettings.observedCertificates[0].additionalFormats[0]: 7 is not a known format; the formats are "split" (cert.pem, chain.pem, fullchain.pem, privkey.pem) and "pfx" (certificate.pfx), e.g. ["split", "pfx"], or [] for none"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"additionalFormats": ["split"], "observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/a", "customSymbolicLinkName": "web"}, {"url": "https://myvault.vault.azure.net/secrets/b", "customSymbolicLinkName": "web.d", "additionalFormats": []}]}}"#,
        ),
        "link-name-duplicate",
        "secretsManagementSettings.observedCertificates[1].customSymbolicLinkName",
        r#"secretsManagementSettings.observedCertificates[1].customSymbolicLinkName: link name "web.d" in "/var/lib/waagent/Microsoft.Azure.KeyVault.Store" is already used by secretsManagementSettings.observedCertificates[0]; give one of them a different customSymbolicLinkName"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": [{"url": "https://myvault.vault.azure.net/secrets/mycert", "additionalFormats": "split"}]}}"#,
        ),
        "setting-wrong-type",
        "secretsManagementSettings.observedCertificates[0].additionalFormats",
        r#"secretsManagementSettings.observedCertificates[0].additionalFormats must be a list of format names such as ["split", "pfx"]; found the string "split""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "authenticationSettings": "http://169.254.169.254/metadata/identity"}"#,
        ),
        "setting-wrong-type",
        "authenticationSettings",
        r#"authenticationSettings must be an object such as {"msiEndpoint": "http://169.254.169.254/metadata/identity"}; found the string "http://169.254.169.254/metadata/identity""#,
    ),
    // Logging.
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"logger": "syslog"}}"#,
        ),
        "logger-unknown",
        "loggingSettings.logger",
        r#"loggingSettings.logger: "syslog" is not a known logger; the only logger is "fluentd" (or remove loggingSettings)"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"endpoint": "tcp://localhost:24224"}}"#,
        ),
        "setting-missing",
        "loggingSettings.logger",
        r#"loggingSettings.logger is missing; add "logger": "fluentd" or remove loggingSettings"#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"logger": "fluentd", "endpoint": "udp://localhost:24224"}}"#,
        ),
        "fluentd-endpoint-invalid",
        "loggingSettings.endpoint",
        r#"loggingSettings.endpoint: "udp://localhost:24224" is not a fluentd endpoint; give tcp://<host>:<port>, e.g. "tcp://localhost:24224""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"logger": "fluentd", "endpoint": "localhost:24224"}}"#,
        ),
        "fluentd-endpoint-invalid",
        "loggingSettings.endpoint",
        r#"loggingSettings.endpoint: "localhost:24224" is not a fluentd endpoint; give tcp://<host>:<port>, e.g. "tcp://localhost:24224""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"logger": "fluentd", "format": "json"}}"#,
        ),
        "fluentd-format-unsupported",
        "loggingSettings.format",
        r#"loggingSettings.format: "json" is not supported; the only fluentd format is "forward""#,
    ),
    (
        Public(
            r#"{"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert"]}, "loggingSettings": {"logger": "fluentd", "servicename": ""}}"#,
        ),
        "fluentd-service-name-invalid",
        "loggingSettings.servicename",
        r#"loggingSettings.servicename: "" is not a usable service name; give a non-empty name without spaces or control characters, e.g. "akvvm_service""#,
    ),
];

/// Wraps publicSettings text into a settings file as waagent writes it.
fn settings_file(public: &str) -> String {
    format!(
        r#"{{"runtimeSettings":[{{"handlerSettings":{{"protectedSettingsCertThumbprint":null,"publicSettings":{public}}}}}]}}"#
    )
}

#[test]
fn every_rejection_has_its_exact_message() {
    let mut failures = Vec::new();
    for (index, (input, reason, setting, message)) in REJECTIONS.iter().enumerate() {
        let mut errors: Vec<(&str, SettingsError)> = Vec::new();
        match input {
            File(text) => match parse_settings_file(text) {
                Err(e) => errors.push(("file", e)),
                Ok(ok) => failures.push(format!("row {index}: file accepted: {ok:?}")),
            },
            Public(text) => {
                let value: Value = serde_json::from_str(text).expect("table JSON");
                match parse_public_settings(&value) {
                    Err(e) => errors.push(("publicSettings", e)),
                    Ok(ok) => {
                        failures.push(format!("row {index}: publicSettings accepted: {ok:?}"))
                    }
                }
                match parse_settings_file(&settings_file(text)) {
                    Err(e) => errors.push(("wrapped", e)),
                    Ok(ok) => failures.push(format!("row {index}: wrapped file accepted: {ok:?}")),
                }
            }
        }
        for (how, error) in errors {
            let got = (error.reason(), error.setting(), error.to_string());
            if got != (*reason, *setting, message.to_string()) {
                failures.push(format!(
                    "row {index} ({how}):\n  want {reason} | {setting} | {message}\n  got  {} | {} | {}",
                    got.0, got.1, got.2
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn parse(public: Value) -> Settings {
    parse_public_settings(&public).unwrap_or_else(|e| panic!("rejected: {e}"))
}

fn parse_file(text: &str) -> Settings {
    match parse_settings_file(text) {
        Ok(Configured::Settings(settings)) => settings,
        other => panic!("expected settings, got {other:?}"),
    }
}

#[test]
fn v1_strings_with_global_store() {
    let settings = parse_file(
        r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":null,"protectedSettings":null,"publicSettings":{
            "secretsManagementSettings": {
                "pollingIntervalInS": "3600",
                "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault",
                "requireInitialSync": true,
                "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert", "https://myvault.vault.azure.net/secrets/other"]
            },
            "authenticationSettings": {
                "msiEndpoint": "http://169.254.169.254/metadata/identity",
                "msiClientId": "C7373AE5-91C2-4165-8AB6-7381D6E75619"
            }
        }}}]}"#,
    );
    assert_eq!(settings.observed_certificates.len(), 2);
    let first = &settings.observed_certificates[0];
    assert_eq!(
        first.url.as_str(),
        "https://myvault.vault.azure.net/secrets/mycert"
    );
    assert_eq!(first.vault_url.as_str(), "https://myvault.vault.azure.net/");
    assert_eq!(first.secret.vault, "myvault");
    assert_eq!(first.secret.name, "mycert");
    assert_eq!(first.version, None);
    assert_eq!(
        first.store_location,
        PathBuf::from("/var/lib/waagent/Microsoft.Azure.KeyVault")
    );
    assert_eq!(first.link_name, "myvault.mycert");
    assert_eq!(
        (first.secret.vault.as_str(), first.secret.name.as_str()),
        ("myvault", "mycert")
    );
    assert!(first.acls.is_empty());
    assert_eq!(settings.observed_certificates[1].link_name, "myvault.other");
    assert_eq!(settings.polling_interval, Duration::from_secs(3600));
    assert!(settings.require_initial_sync);
    assert!(!settings.acl_enabled);
    assert_eq!(settings.retained_versions, 2);
    assert_eq!(
        settings.msi_endpoint.as_ref().map(|u| u.as_str()),
        Some("http://169.254.169.254/metadata/identity")
    );
    assert_eq!(
        settings.msi_identity,
        Some(UserIdentity::ClientId(
            "c7373ae5-91c2-4165-8ab6-7381d6e75619".to_string()
        ))
    );
    assert_eq!(settings.logging, None);
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}

#[test]
fn v3_objects() {
    let settings = parse(json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "300",
            "requireInitialSync": "false",
            "aclEnabled": true,
            "observedCertificates": [
                {
                    "url": "https://myvault.vault.azure.net/secrets/mycert",
                    "certificateStoreLocation": "/etc/nginx/ssl",
                    "customSymbolicLinkName": "nginx.pem",
                    "acls": [{"user": "app1", "group": "appgroup"}, {"user": "www-data"}, {"group": "ssl-cert"}]
                },
                {"url": "https://myvault.vault.azure.net/secrets/second"}
            ]
        },
        "authenticationSettings": {"msiEndpoint": "http://169.254.169.254/metadata/identity/oauth2/token"},
        "loggingSettings": {"logger": "fluentd", "endpoint": "tcp://10.1.0.4:24225", "format": "forward", "servicename": "kv"}
    }));
    let first = &settings.observed_certificates[0];
    assert_eq!(first.store_location, PathBuf::from("/etc/nginx/ssl"));
    assert_eq!(first.link_name, "nginx.pem");
    assert_eq!(
        (first.secret.vault.as_str(), first.secret.name.as_str()),
        ("myvault", "mycert")
    );
    assert_eq!(
        first.acls,
        vec![
            AclEntry {
                user: Some("app1".into()),
                group: Some("appgroup".into())
            },
            AclEntry {
                user: Some("www-data".into()),
                group: None
            },
            AclEntry {
                user: None,
                group: Some("ssl-cert".into())
            },
        ]
    );
    let second = &settings.observed_certificates[1];
    assert_eq!(second.store_location, PathBuf::from(DEFAULT_STORE));
    assert_eq!(second.link_name, "myvault.second");
    assert_eq!(settings.polling_interval, Duration::from_secs(300));
    assert!(!settings.require_initial_sync);
    assert!(settings.acl_enabled);
    assert_eq!(
        settings.msi_endpoint.as_ref().map(|u| u.as_str()),
        Some("http://169.254.169.254/metadata/identity/oauth2/token")
    );
    let logging = settings.logging.expect("logging");
    assert_eq!(logging.endpoint_host, "10.1.0.4");
    assert_eq!(logging.endpoint_port, 24225);
    assert_eq!(logging.service_name, "kv");
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}

#[test]
fn mixed_strings_and_objects() {
    let settings = parse(json!({
        "secretsManagementSettings": {
            "certificateStoreLocation": "/srv/certs",
            "observedCertificates": [
                "https://myvault.vault.azure.net/secrets/a",
                {"url": "https://myvault.vault.azure.net/secrets/b", "customSymbolicLinkName": "b.pem"},
                {"url": "https://myvault.vault.azure.net/secrets/c", "certificateStoreLocation": "/etc/c"}
            ]
        }
    }));
    let got: Vec<(&str, &str, PathBuf)> = settings
        .observed_certificates
        .iter()
        .map(|c| {
            (
                c.secret.name.as_str(),
                c.link_name.as_str(),
                c.store_location.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", "myvault.a", PathBuf::from("/srv/certs")),
            ("b", "b.pem", PathBuf::from("/srv/certs")),
            ("c", "myvault.c", PathBuf::from("/etc/c")),
        ]
    );
}

#[test]
fn polling_interval_as_string_or_number() {
    for (given, seconds) in [
        (json!("60"), 60),
        (json!(60), 60),
        (json!(" 7200 "), 7200),
        (json!(86400.0), 86400),
    ] {
        let settings = parse(json!({"secretsManagementSettings": {
            "pollingIntervalInS": given,
            "observedCertificates": ["https://v.vault.azure.net/secrets/c"]
        }}));
        assert_eq!(settings.polling_interval, Duration::from_secs(seconds));
    }
}

#[test]
fn booleans_as_strings() {
    for (given, want) in [
        (json!(true), true),
        (json!("true"), true),
        (json!("True"), true),
        (json!(false), false),
        (json!("false"), false),
        (json!("FALSE"), false),
    ] {
        let settings = parse(json!({"secretsManagementSettings": {
            "requireInitialSync": given,
            "aclEnabled": given,
            "observedCertificates": ["https://v.vault.azure.net/secrets/c"]
        }}));
        assert_eq!(
            (settings.require_initial_sync, settings.acl_enabled),
            (want, want),
            "{given}"
        );
    }
}

#[test]
fn defaults() {
    let settings = parse(json!({"secretsManagementSettings": {
        "observedCertificates": ["https://v.vault.azure.net/secrets/c"]
    }}));
    assert_eq!(settings.polling_interval, Duration::from_secs(3600));
    assert!(!settings.require_initial_sync);
    assert!(!settings.acl_enabled);
    assert_eq!(settings.retained_versions, 2);
    assert_eq!(settings.msi_endpoint, None);
    assert_eq!(settings.msi_identity, None);
    assert_eq!(settings.logging, None);
    assert_eq!(
        settings.observed_certificates[0].store_location,
        PathBuf::from(DEFAULT_STORE)
    );
    assert!(settings.warnings.is_empty());

    let settings = parse(json!({
        "secretsManagementSettings": {"retainedVersions": "5", "observedCertificates": ["https://v.vault.azure.net/secrets/c"]},
        "loggingSettings": {"logger": "fluentd"}
    }));
    assert_eq!(settings.retained_versions, 5);
    let logging = settings.logging.expect("logging");
    assert_eq!(
        (logging.endpoint_host.as_str(), logging.endpoint_port),
        ("localhost", 24224)
    );
    assert_eq!(logging.service_name, "akvvm_service");
}

#[test]
fn windows_and_unknown_settings_are_warnings() {
    let settings = parse(json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "3600",
            "certificateStoreName": "MY",
            "linkOnRenewal": false,
            "observedCertificates": [
                {"url": "https://v.vault.azure.net/secrets/c", "certificateStoreName": "My", "keyExportable": true,
                 "accounts": ["Network Service"], "acls": [{"user": "app1", "rights": "read"}]}
            ]
        },
        "authenticationSettings": {"msiEndpoint": "", "msiClientId": ""},
        "extraTopLevel": 1
    }));
    assert_eq!(
        settings.warnings,
        vec![
            "extraTopLevel is not a KeyVaultForLinux setting and is ignored",
            "secretsManagementSettings.linkOnRenewal is ignored on Linux: it is a Windows certificate store option",
            "secretsManagementSettings.certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation",
            "secretsManagementSettings.observedCertificates[0].certificateStoreName is ignored on Linux: it names a Windows certificate store; certificates go to certificateStoreLocation",
            "secretsManagementSettings.observedCertificates[0].acls[0].rights is not a KeyVaultForLinux setting and is ignored",
            "secretsManagementSettings.observedCertificates[0].keyExportable is ignored on Linux: it is a Windows private-key option; on Linux, give users and groups read access with acls (and aclEnabled)",
            "secretsManagementSettings.observedCertificates[0].accounts is ignored on Linux: it is a Windows private-key option; on Linux, give users and groups read access with acls (and aclEnabled)",
            "secretsManagementSettings.aclEnabled is not true, so the certificates' acls are ignored; set \"aclEnabled\": true to apply them",
            "authenticationSettings.msiEndpoint is empty and is ignored; the default IMDS endpoint is used",
            "authenticationSettings.msiClientId is empty and is ignored; the system-assigned identity is used",
        ]
    );
    assert_eq!(settings.msi_endpoint, None);
    assert_eq!(settings.msi_identity, None);
}

#[test]
fn protected_settings_are_a_warning() {
    let settings = parse_file(
        r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":"0123456789ABCDEF0123456789ABCDEF01234567","protectedSettings":"MIIB...base64...","publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
    );
    assert_eq!(
        settings.warnings,
        vec!["protectedSettings are ignored: KeyVaultForLinux needs none"]
    );
}

#[test]
fn nothing_to_do() {
    for text in [
        "",
        "  \n\t",
        "\u{feff}",
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":null}}]}"#,
        r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":null}}]}"#,
        r#"{"runtimeSettings":[{"handlerSettings":null}]}"#,
        r#"{"runtimeSettings":[{}]}"#,
    ] {
        match parse_settings_file(text) {
            Ok(Configured::Nothing { reason }) => assert!(!reason.is_empty()),
            other => panic!("{text:?}: expected Nothing, got {other:?}"),
        }
    }
}

#[test]
fn sovereign_cloud_host() {
    let settings = parse(
        json!({"secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.cn/secrets/x"]}}),
    );
    let certificate = &settings.observed_certificates[0];
    assert_eq!(certificate.vault_url.as_str(), "https://v.vault.azure.cn/");
    assert_eq!(certificate.secret.vault, "v");
    assert_eq!(certificate.secret.name, "x");
    assert_eq!(certificate.link_name, "v.x");
}

#[test]
fn pinned_version_url() {
    let settings = parse(
        json!({"secretsManagementSettings": {"observedCertificates": [
            "https://myvault.vault.azure.net/secrets/mycert/0123456789ABCDEF0123456789abcdef"
        ]}}),
    );
    let certificate = &settings.observed_certificates[0];
    assert_eq!(
        certificate.version.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        certificate.url.as_str(),
        "https://myvault.vault.azure.net/secrets/mycert/0123456789abcdef0123456789abcdef"
    );
    assert_eq!(certificate.link_name, "myvault.mycert");
}

#[test]
fn url_with_trailing_slash() {
    let settings = parse(
        json!({"secretsManagementSettings": {"observedCertificates": [
            "https://myvault.vault.azure.net/secrets/mycert/",
            "https://myvault.vault.azure.net/secrets/other/0123456789abcdef0123456789abcdef/"
        ]}}),
    );
    assert_eq!(
        settings.observed_certificates[0].url.as_str(),
        "https://myvault.vault.azure.net/secrets/mycert"
    );
    assert_eq!(settings.observed_certificates[0].version, None);
    assert_eq!(
        settings.observed_certificates[1].version.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
}

#[test]
fn vault_on_another_port_keeps_it() {
    let settings = parse(
        json!({"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net:8443/secrets/c"]}}),
    );
    let certificate = &settings.observed_certificates[0];
    assert_eq!(
        certificate.vault_url.as_str(),
        "https://myvault.vault.azure.net:8443/"
    );
    assert_eq!(
        certificate.url.as_str(),
        "https://myvault.vault.azure.net:8443/secrets/c"
    );
}

#[test]
fn arc_endpoint_is_accepted() {
    let settings = parse(json!({
        "secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/c"]},
        "authenticationSettings": {"msiEndpoint": "http://localhost:40342/metadata/identity"}
    }));
    assert_eq!(
        settings.msi_endpoint.as_ref().map(|u| u.as_str()),
        Some("http://localhost:40342/metadata/identity")
    );
}

#[test]
fn same_link_name_in_different_folders_is_fine() {
    let settings = parse(
        json!({"secretsManagementSettings": {"observedCertificates": [
            {"url": "https://v.vault.azure.net/secrets/a", "customSymbolicLinkName": "tls.pem", "certificateStoreLocation": "/etc/a"},
            {"url": "https://v.vault.azure.net/secrets/b", "customSymbolicLinkName": "tls.pem", "certificateStoreLocation": "/etc/b"}
        ]}}),
    );
    assert_eq!(settings.observed_certificates.len(), 2);
}

#[test]
fn post_install_commands_and_expiry_warning() {
    use kvvm::Hook;
    let settings = parse(json!({
        "secretsManagementSettings": {
            "postInstallCommand": "systemctl reload nginx",
            "expiryWarningDays": 30,
            "observedCertificates": [
                "https://v.vault.azure.net/secrets/a",
                {"url": "https://v.vault.azure.net/secrets/b", "postInstallCommand": {"shell": "nginx -s reload && logger ok", "timeoutInS": "20"}},
                {"url": "https://v.vault.azure.net/secrets/c", "postInstallCommand": []},
                {"url": "https://v.vault.azure.net/secrets/d", "postInstallCommand": {"command": ["/usr/bin/env", "A=1", "true"]}}
            ]
        }
    }));
    assert_eq!(settings.expiry_warning_days, 30);
    let hooks: Vec<Option<Hook>> = settings
        .observed_certificates
        .iter()
        .map(|c| c.post_install.clone())
        .collect();
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        hooks,
        vec![
            Some(Hook {
                argv: argv(&["systemctl", "reload", "nginx"]),
                shell: false,
                timeout: Duration::from_secs(60)
            }),
            Some(Hook {
                argv: argv(&["nginx -s reload && logger ok"]),
                shell: true,
                timeout: Duration::from_secs(20)
            }),
            None,
            Some(Hook {
                argv: argv(&["/usr/bin/env", "A=1", "true"]),
                shell: false,
                timeout: Duration::from_secs(60)
            }),
        ]
    );
    let defaults = parse(
        json!({"secretsManagementSettings": {"expiryWarningDays": 0, "observedCertificates": ["https://v.vault.azure.net/secrets/a"]}}),
    );
    assert_eq!(defaults.expiry_warning_days, 0);
    assert_eq!(defaults.observed_certificates[0].post_install, None);
    let defaults = parse(
        json!({"secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/a"]}}),
    );
    assert_eq!(defaults.expiry_warning_days, 14);
}

#[test]
fn metrics_file_is_off_by_default_and_normalised_when_given() {
    let off = parse(
        json!({"secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/a"]}}),
    );
    assert_eq!(off.metrics_file, None);
    let on = parse(json!({"secretsManagementSettings": {
        "metricsFile": "/var/lib/node_exporter//textfile_collector/./kvvm.prom",
        "observedCertificates": ["https://v.vault.azure.net/secrets/a"]}}));
    assert_eq!(
        on.metrics_file,
        Some(PathBuf::from(
            "/var/lib/node_exporter/textfile_collector/kvvm.prom"
        ))
    );
    assert!(on.warnings.is_empty(), "{:?}", on.warnings);
    let other = parse(json!({"secretsManagementSettings": {
        "metricsFile": "/run/kvvm/metrics.txt",
        "observedCertificates": ["https://v.vault.azure.net/secrets/a"]}}));
    assert_eq!(
        other.warnings,
        vec![
            "secretsManagementSettings.metricsFile: \"/run/kvvm/metrics.txt\" does not end in .prom, so node_exporter's textfile collector will not read it"
                .to_string()
        ]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Issue 13: additionalFormats and the forgiven mistakes (each with its exact warning).

const CERT: &str = "https://myvault.vault.azure.net/secrets/mycert";

#[test]
fn additional_formats_global_per_certificate_and_turned_off() {
    let settings = parse(json!({
        "secretsManagementSettings": {
            "additionalFormats": ["split"],
            "observedCertificates": [
                "https://v.vault.azure.net/secrets/a",
                {"url": "https://v.vault.azure.net/secrets/b", "additionalFormats": ["PFX", "split", "pfx"]},
                {"url": "https://v.vault.azure.net/secrets/c", "additionalFormats": []},
                {"url": "https://v.vault.azure.net/secrets/d"}
            ]
        }
    }));
    let formats: Vec<Formats> = settings
        .observed_certificates
        .iter()
        .map(|c| c.formats)
        .collect();
    let split = Formats {
        split: true,
        pfx: false,
    };
    assert_eq!(
        formats,
        vec![
            split,
            Formats {
                split: true,
                pfx: true
            },
            Formats::default(),
            split
        ]
    );
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    let none = parse(json!({"secretsManagementSettings": {"observedCertificates": [CERT]}}));
    assert_eq!(none.observed_certificates[0].formats, Formats::default());
    assert_eq!(
        Formats {
            split: true,
            pfx: true
        }
        .file_names(),
        [
            "cert.pem",
            "chain.pem",
            "fullchain.pem",
            "privkey.pem",
            "certificate.pfx"
        ]
    );
}

const STRING_WARNING: &str = "publicSettings is a JSON string holding the settings object; it was decoded and used, but pass the settings as a JSON object: in PowerShell give -Settings a hashtable (or -SettingString the output of ConvertTo-Json, converted once), with az give --settings the JSON text or @file.json once, without extra quoting";

#[test]
fn public_settings_as_a_json_string_are_decoded_with_a_warning() {
    let inner = json!({"secretsManagementSettings": {"observedCertificates": [CERT]}}).to_string();
    let settings = parse(Value::String(inner.clone()));
    assert_eq!(settings.observed_certificates[0].url.as_str(), CERT);
    assert_eq!(settings.warnings, vec![STRING_WARNING.to_string()]);
    // The same through a settings file, as waagent writes it with PowerShell's quoting.
    let file = settings_file(&serde_json::to_string(&inner).unwrap());
    let settings = parse_file(&file);
    assert_eq!(settings.observed_certificates[0].url.as_str(), CERT);
    assert_eq!(settings.warnings, vec![STRING_WARNING.to_string()]);
}

#[test]
fn object_id_and_resource_id_name_the_identity() {
    let auth = |a: Value| {
        parse(
            json!({"secretsManagementSettings": {"observedCertificates": [CERT]}, "authenticationSettings": a}),
        )
    };
    let s = auth(json!({"msiObjectId": "0A1B2C3D-1111-2222-3333-444444444444"}));
    assert_eq!(
        s.msi_identity,
        Some(UserIdentity::ObjectId(
            "0a1b2c3d-1111-2222-3333-444444444444".into()
        ))
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let rid = "/subscriptions/5f1c4f43-0000-0000-0000-000000000000/resourceGroups/rg-web/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-web";
    let s = auth(json!({"msiResourceId": rid}));
    assert_eq!(s.msi_identity, Some(UserIdentity::ResourceId(rid.into())));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // A resource ID given as msiClientId is used as msiResourceId, with a warning.
    let s = auth(json!({"msiClientId": rid}));
    assert_eq!(s.msi_identity, Some(UserIdentity::ResourceId(rid.into())));
    assert_eq!(
        s.warnings,
        vec!["authenticationSettings.msiClientId holds a resource ID, so it is used as msiResourceId; move it to \"msiResourceId\" (msiClientId takes the identity's client id, a GUID: az identity show -g <group> -n <name> --query clientId)".to_string()]
    );
}

#[test]
fn authentication_settings_inside_secrets_management_settings_are_used_with_a_warning() {
    let s = parse(json!({"secretsManagementSettings": {
        "observedCertificates": [CERT],
        "authenticationSettings": {"msiClientId": "c7373ae5-91c2-4165-8ab6-7381d6e75619"}
    }}));
    assert_eq!(
        s.msi_identity,
        Some(UserIdentity::ClientId(
            "c7373ae5-91c2-4165-8ab6-7381d6e75619".into()
        ))
    );
    assert_eq!(
        s.warnings,
        vec!["secretsManagementSettings.authenticationSettings is used, but authenticationSettings belongs at the top level of the settings, beside secretsManagementSettings: move it there".to_string()]
    );
    // In both places: the top-level one wins.
    let s = parse(json!({
        "secretsManagementSettings": {
            "observedCertificates": [CERT],
            "authenticationSettings": {"msiClientId": "c7373ae5-91c2-4165-8ab6-7381d6e75619"}
        },
        "authenticationSettings": {"msiObjectId": "00000000-1111-2222-3333-444444444444"}
    }));
    assert_eq!(
        s.msi_identity,
        Some(UserIdentity::ObjectId(
            "00000000-1111-2222-3333-444444444444".into()
        ))
    );
    assert_eq!(
        s.warnings,
        vec!["authenticationSettings is given both at the top level and as secretsManagementSettings.authenticationSettings; the top-level one is used and secretsManagementSettings.authenticationSettings is ignored: remove it".to_string()]
    );
}
