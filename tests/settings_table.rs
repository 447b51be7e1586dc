//! Every settings rejection, with its exact message: the message is what a user sees in the portal, so it
//! must name the setting, the bad value and the fix. Plus every accepted shape of the KeyVaultForLinux schema.

use std::path::PathBuf;
use std::time::Duration;

use kvvm::settings::{
    AclEntry, Configured, DEFAULT_STORE, Settings, parse_public_settings, parse_settings_file,
};
use serde_json::json;

/// (settings file text, reason, exact message)
const REJECTIONS: &[(&str, &str, &str)] = &[
    (
        r#"not json"#,
        "settings-not-json",
        r#"the settings file is not JSON (expected ident at line 1 column 2); waagent writes it from the extension's settings: check the JSON you deployed"#,
    ),
    (
        r#""{\"secretsManagementSettings\":{\"observedCertificates\":[\"https://v.vault.azure.net/secrets/c\"]}}""#,
        "settings-escaped-json",
        r#"the settings file is a string that holds JSON ({"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure....), not a JSON object: the settings were escaped twice, as happens when PowerShell passes a JSON string to Set-AzVMExtension -SettingString or -Settings. Pass an object instead (a hashtable for -Settings, or the unescaped JSON text for -SettingString)"#,
    ),
    (
        r#"{"runtimeSettings":[]}"#,
        "settings-wrong-type",
        r#"runtimeSettings must be a list with exactly one element, not []; waagent writes one runtimeSettings element per settings file"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":"{\"secretsManagementSettings\":{}}"}}]}"#,
        "settings-escaped-json",
        r#"publicSettings is a string that holds JSON ({"secretsManagementSettings":{}}), not a JSON object: the settings were escaped twice, as happens when PowerShell passes a JSON string to Set-AzVMExtension -SettingString or -Settings. Pass an object instead (a hashtable for -Settings, or the unescaped JSON text for -SettingString)"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{}}}]}"#,
        "settings-missing",
        r#"secretsManagementSettings is missing; add {"secretsManagementSettings": {"observedCertificates": ["https://<vault>.vault.azure.net/secrets/<name>"]}}"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":"x"}}}]}"#,
        "settings-wrong-type",
        r#"secretsManagementSettings must be a JSON object, not "x"; write {"secretsManagementSettings": {...}} as an object"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{}}}}]}"#,
        "settings-missing",
        r#"secretsManagementSettings.observedCertificates is missing; list the certificates to install, e.g. ["https://myvault.vault.azure.net/secrets/mycert"]"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[]}}}}]}"#,
        "settings-no-certificates",
        r#"secretsManagementSettings.observedCertificates is an empty list: add the URL of at least one certificate's secret, e.g. "https://myvault.vault.azure.net/secrets/mycert""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":"https://v.vault.azure.net/secrets/c"}}}}]}"#,
        "settings-wrong-type",
        r#"secretsManagementSettings.observedCertificates must be a list, not "https://v.vault.azure.net/secrets/c"; write ["https://myvault.vault.azure.net/secrets/mycert"] (or a list of {"url": ...} objects)"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[42]}}}}]}"#,
        "settings-wrong-type",
        r#"secretsManagementSettings.observedCertificates[0] must be a URL string or an object with "url", not 42; write "https://myvault.vault.azure.net/secrets/mycert" or {"url": "https://myvault.vault.azure.net/secrets/mycert"}"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["http://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "http://v.vault.azure.net/secrets/c": not an https URL; Key Vault is only reached over https, so the token is never sent in clear text: write https://"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https:///secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "https:///secrets/c": the URL has no host; use https://<vault>.vault.azure.net/secrets/<certificate name>, optionally followed by /<version>"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/certificates/c"]}}}}]}"#,
        "settings-certificates-endpoint",
        r#"secretsManagementSettings.observedCertificates[0] is "https://v.vault.azure.net/certificates/c": it names the certificate endpoint (/certificates/), which has no private key. Use the secret endpoint of the same certificate: "https://v.vault.azure.net/secrets/c""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/keys/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "https://v.vault.azure.net/keys/c": the path is not /secrets/<name>; use https://<vault>.vault.azure.net/secrets/<certificate name>, optionally followed by /<version>"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/my_cert"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "https://v.vault.azure.net/secrets/my_cert": the certificate name is not a Key Vault name; names are 1-127 letters, digits and dashes"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c/latest"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "https://v.vault.azure.net/secrets/c/latest": the version is not a Key Vault version; versions are 32 hexadecimal characters; leave the version out to follow the newest"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c?api-version=7.4"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0] is "https://v.vault.azure.net/secrets/c?api-version=7.4": the URL has a query or fragment; remove it; use https://<vault>.vault.azure.net/secrets/<certificate name>, optionally followed by /<version>"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[{"url":"https://v.vault.azure.net/secrets/c","certificateStoreLocation":"certs"}]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0].certificateStoreLocation is "certs": a relative path; use an absolute folder path such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"certificateStoreLocation":"","observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.certificateStoreLocation is "": empty; use an absolute folder path such as "/var/lib/waagent/Microsoft.Azure.KeyVault.Store""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[{"url":"https://v.vault.azure.net/secrets/c","customSymbolicLinkName":"../x"}]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0].customSymbolicLinkName is "../x": not a plain file name; use a plain file name such as "mycert.pem": the link is created inside the store folder"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"pollingIntervalInS":"abc","observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.pollingIntervalInS is "abc": not a positive whole number; write a whole number of seconds, e.g. "3600""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"pollingIntervalInS":0,"observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.pollingIntervalInS is "0": not a positive whole number; write a whole number of seconds, e.g. "3600""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"pollingIntervalInS":1.5,"observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.pollingIntervalInS is "1.5": not a positive whole number; write a whole number of seconds, e.g. "3600""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"pollingIntervalInS":"-5","observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.pollingIntervalInS is "-5": not a positive whole number; write a whole number of seconds, e.g. "3600""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"retainedVersions":0,"observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.retainedVersions is "0": not a positive whole number; write a whole number of files per certificate, e.g. 2"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"requireInitialSync":"yes","observedCertificates":["https://v.vault.azure.net/secrets/c"]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.requireInitialSync is "yes": not a boolean; write true or false"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"authenticationSettings":{"msiEndpoint":"169.254.169.254/metadata/identity"}}}}]}"#,
        "settings-bad-value",
        r#"authenticationSettings.msiEndpoint is "169.254.169.254/metadata/identity": not a URL; use http://169.254.169.254/metadata/identity (Azure VMs) or http://localhost:40342/metadata/identity (Azure Arc)"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"authenticationSettings":{"msiEndpoint":"ftp://169.254.169.254/metadata/identity"}}}}]}"#,
        "settings-bad-value",
        r#"authenticationSettings.msiEndpoint is "ftp://169.254.169.254/metadata/identity": not an http(s) URL with a host; use http://169.254.169.254/metadata/identity (Azure VMs) or http://localhost:40342/metadata/identity (Azure Arc)"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"authenticationSettings":{"msiClientId":"not-a-guid"}}}}]}"#,
        "settings-bad-value",
        r#"authenticationSettings.msiClientId is "not-a-guid": not a GUID; use the client ID of the user-assigned identity (a GUID such as c7373ae5-91c2-4165-8ab6-7381d6e75619), or leave it out for the system-assigned identity"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"loggingSettings":{"logger":"syslog"}}}}]}"#,
        "settings-bad-value",
        r#"loggingSettings.logger is "syslog": not a known logger; the only logger is "fluentd"; leave loggingSettings out to log to files only"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"loggingSettings":{"logger":"fluentd","endpoint":"localhost:24224"}}}}]}"#,
        "settings-bad-value",
        r#"loggingSettings.endpoint is "localhost:24224": not a tcp://host:port address; write tcp://<host>:<port>, e.g. "tcp://localhost:24224""#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]},"loggingSettings":{"logger":"fluentd","format":"json"}}}}]}"#,
        "settings-bad-value",
        r#"loggingSettings.format is "json": not a known format; the only format is "forward" (the Fluentd Forward protocol)"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[{"url":"https://v.vault.azure.net/secrets/c","acls":[{}]}]}}}}]}"#,
        "settings-bad-value",
        r#"secretsManagementSettings.observedCertificates[0].acls[0] is "{}": names neither a user nor a group; give "user", "group", or both"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c","https://v.vault.azure.net/secrets/C"]}}}}]}"#,
        "settings-duplicate-certificate",
        r#"secretsManagementSettings.observedCertificates[1] and secretsManagementSettings.observedCertificates[0] both observe v.vault.azure.net/C; list each certificate once"#,
    ),
    (
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[{"url":"https://v.vault.azure.net/secrets/a","customSymbolicLinkName":"x.pem"},{"url":"https://v.vault.azure.net/secrets/b","customSymbolicLinkName":"x.pem"}]}}}}]}"#,
        "settings-duplicate-link",
        r#"secretsManagementSettings.observedCertificates[1] and secretsManagementSettings.observedCertificates[0] both use the link name "x.pem" in /var/lib/waagent/Microsoft.Azure.KeyVault.Store; give one of them another customSymbolicLinkName"#,
    ),
];

#[test]
fn every_rejection_has_its_exact_message() {
    let mut failures = Vec::new();
    for (text, reason, message) in REJECTIONS {
        match parse_settings_file(text) {
            Ok(ok) => failures.push(format!("accepted {text}: {ok:?}")),
            Err(e) if e.reason() != *reason || e.to_string() != *message => failures.push(format!(
                "{text}\n  got  [{}] {e}\n  want [{reason}] {message}",
                e.reason()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rejections_name_their_setting() {
    let e = parse_settings_file(REJECTIONS[20].0).unwrap_err();
    assert_eq!(e.setting(), "secretsManagementSettings.pollingIntervalInS");
}

fn settings(public: serde_json::Value) -> Settings {
    parse_public_settings(&public).unwrap()
}

#[test]
fn v1_string_list_with_global_store_and_string_values() {
    let s = settings(json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "600",
            "certificateStoreName": "MY",
            "linkOnRenewal": false,
            "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault",
            "requireInitialSync": "true",
            "observedCertificates": ["https://myvault.vault.azure.net/secrets/mycert", "https://other.vault.azure.net/secrets/web-1/"]
        },
        "authenticationSettings": {
            "msiEndpoint": "http://169.254.169.254/metadata/identity",
            "msiClientId": "C7373AE5-91C2-4165-8AB6-7381D6E75619"
        }
    }));
    assert_eq!(s.polling_interval, Duration::from_secs(600));
    assert!(s.require_initial_sync);
    assert!(!s.acl_enabled);
    assert_eq!(s.retained_versions, 2);
    assert_eq!(
        s.msi_client_id.as_deref(),
        Some("c7373ae5-91c2-4165-8ab6-7381d6e75619")
    );
    assert_eq!(
        s.msi_endpoint.unwrap().as_str(),
        "http://169.254.169.254/metadata/identity"
    );
    let c = &s.observed_certificates[0];
    assert_eq!(c.vault_name, "myvault");
    assert_eq!(c.secret_name, "mycert");
    assert_eq!(c.version, None);
    assert_eq!(c.vault_url.as_str(), "https://myvault.vault.azure.net/");
    assert_eq!(
        c.store_location,
        PathBuf::from("/var/lib/waagent/Microsoft.Azure.KeyVault")
    );
    assert_eq!(c.link_name, "myvault.mycert");
    assert_eq!(c.file_prefix(), "myvault.mycert");
    assert_eq!(s.observed_certificates[1].secret_name, "web-1");
    assert_eq!(
        s.warnings,
        [
            "secretsManagementSettings.certificateStoreName is a Windows setting and is ignored on Linux.",
            "secretsManagementSettings.linkOnRenewal is a Windows setting and is ignored on Linux.",
        ]
    );
}

#[test]
fn v3_objects_mixed_with_strings_and_defaults() {
    let s = settings(json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": 3600,
            "requireInitialSync": true,
            "aclEnabled": true,
            "retainedVersions": "3",
            "observedCertificates": [
                {"url": "https://myvault.vault.azure.net/secrets/mycert", "certificateStoreLocation": "/etc/ssl/kvvm/",
                 "customSymbolicLinkName": "web.pem", "acls": [{"user": "www-data"}, {"group": "ssl-cert", "user": "app1"}]},
                "https://myvault.vault.azure.cn/secrets/china/0123456789ABCDEF0123456789abcdef"
            ]
        },
        "loggingSettings": {"logger": "fluentd", "endpoint": "tcp://collector:24225", "format": "forward", "servicename": "mysvc"},
        "someFutureKey": 1
    }));
    assert_eq!(s.polling_interval, Duration::from_secs(3600));
    assert!(s.acl_enabled && s.require_initial_sync);
    assert_eq!(s.retained_versions, 3);
    let c = &s.observed_certificates[0];
    assert_eq!(c.store_location, PathBuf::from("/etc/ssl/kvvm"));
    assert_eq!(c.link_name, "web.pem");
    assert_eq!(
        c.acls,
        [
            AclEntry {
                user: Some("www-data".into()),
                group: None
            },
            AclEntry {
                user: Some("app1".into()),
                group: Some("ssl-cert".into())
            },
        ]
    );
    let pinned = &s.observed_certificates[1];
    assert_eq!(pinned.vault_name, "myvault");
    assert_eq!(pinned.vault_url.as_str(), "https://myvault.vault.azure.cn/");
    assert_eq!(
        pinned.version.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(pinned.store_location, PathBuf::from(DEFAULT_STORE));
    let l = s.logging.unwrap();
    assert_eq!(
        (
            l.endpoint_host.as_str(),
            l.endpoint_port,
            l.service_name.as_str()
        ),
        ("collector", 24225, "mysvc")
    );
    assert_eq!(
        s.warnings,
        ["Unknown setting \"someFutureKey\" is ignored."]
    );
}

#[test]
fn logging_defaults_match_the_original_extension() {
    let s = settings(json!({
        "secretsManagementSettings": {"observedCertificates": ["https://v.vault.azure.net/secrets/c"]},
        "loggingSettings": {"logger": "fluentd"}
    }));
    let l = s.logging.unwrap();
    assert_eq!(
        (
            l.endpoint_host.as_str(),
            l.endpoint_port,
            l.service_name.as_str()
        ),
        ("localhost", 24224, "akvvm_service")
    );
}

#[test]
fn empty_null_and_protected_settings() {
    for text in [
        "",
        "  \n",
        r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":null}}]}"#,
        r#"{"runtimeSettings":[{"handlerSettings":{}}]}"#,
    ] {
        assert!(
            matches!(parse_settings_file(text), Ok(Configured::Nothing { .. })),
            "{text:?}"
        );
    }
    let text = json!({"runtimeSettings":[{"handlerSettings":{
        "publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://v.vault.azure.net/secrets/c"]}},
        "protectedSettings":"MIIB...","protectedSettingsCertThumbprint":"ABC"}}]}).to_string();
    let Ok(Configured::Settings(s)) = parse_settings_file(&text) else {
        panic!()
    };
    assert_eq!(
        s.warnings,
        ["protectedSettings are ignored: KeyVaultForLinux needs none."]
    );
    assert_eq!(s.polling_interval, Duration::from_secs(3600));
}
