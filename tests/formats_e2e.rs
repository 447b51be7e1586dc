//! `additionalFormats` and the forgiving settings, end to end: the packaged extension runs in the VM-like
//! namespace (fake IMDS on 169.254.169.254, fake Key Vault on `https://myvault.vault.azure.net`, fresh
//! `/var/lib/waagent`), and what it writes is checked with `openssl` and `keytool`, during rotations too.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{self, Chain, KeyType, PemLayout, PfxVariant};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::{Settings, StatusReport, StatusValue};
use serde_json::{Value, json};

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";

fn url(secret: &str) -> String {
    format!("https://{HOST}/secrets/{secret}")
}

fn installed(r: &StatusReport, secret: &str, version: &str) -> bool {
    r.substatus.iter().any(|s| {
        s.name == url(secret)
            && s.message.contains(&format!("version {version}"))
            && s.status != StatusValue::Transitioning
    })
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(pki::openssl(dir, args).unwrap_or_else(|e| panic!("{e}"))).unwrap()
}

fn pubkey_of_cert(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-in", file, "-noout", "-pubkey"])
}

fn pubkey_of_key(dir: &Path, file: &str) -> String {
    openssl(dir, &["pkey", "-in", file, "-pubout"])
}

/// Everything the issue asks of one version folder, checked with openssl and keytool.
fn check_folder(dir: &Path, chain: &Chain) {
    for name in [
        "cert.pem",
        "chain.pem",
        "fullchain.pem",
        "privkey.pem",
        "certificate.pfx",
    ] {
        let meta = fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
    }
    assert_eq!(fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    // The leaf, then intermediates and root without it, then all three.
    let serial = openssl(dir, &["x509", "-in", "cert.pem", "-noout", "-serial"]);
    assert_eq!(
        serial.trim(),
        format!("serial={}", chain.leaf_serial().unwrap())
    );
    assert_eq!(pki::subjects_in(&dir.join("cert.pem")).unwrap().len(), 1);
    let rest = pki::subjects_in(&dir.join("chain.pem")).unwrap();
    assert!(
        rest.len() == 2 && rest[0].contains("intermediate") && rest[1].contains("root"),
        "{rest:?}"
    );
    let full = pki::subjects_in(&dir.join("fullchain.pem")).unwrap();
    assert_eq!(full.len(), 3, "{full:?}");
    assert!(full[0].ends_with(&format!("CN = {}", chain.cn)), "{full:?}");
    assert_eq!(&full[1..], &rest[..]);
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            chain.root.to_str().unwrap(),
            "-untrusted",
            "chain.pem",
            "cert.pem",
        ],
    );
    // The key: PKCS#8, and the leaf's.
    assert!(
        fs::read_to_string(dir.join("privkey.pem"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(
        pubkey_of_key(dir, "privkey.pem"),
        pubkey_of_cert(dir, "cert.pem")
    );
    // The PFX: OpenSSL 3 without -legacy, and Java's keytool.
    let info = Command::new("openssl")
        .args([
            "pkcs12",
            "-info",
            "-noout",
            "-passin",
            "pass:",
            "-in",
            "certificate.pfx",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stderr);
    assert!(info.status.success(), "{text}");
    assert!(
        text.contains("MAC: sha256") && text.contains("AES-256-CBC"),
        "{text}"
    );
    let keytool = Command::new("keytool")
        .args([
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-storepass",
            "",
            "-keystore",
            "certificate.pfx",
        ])
        .current_dir(dir)
        .output()
        .expect("keytool (make deps installs default-jre-headless)");
    let text = String::from_utf8_lossy(&keytool.stdout);
    assert!(keytool.status.success(), "{text}");
    assert!(
        text.contains("Entry type: PrivateKeyEntry")
            && text.contains("Certificate chain length: 3"),
        "{text}"
    );
}

#[test]
fn split_and_pfx_verify_and_a_rotation_moves_the_d_link_without_a_mixed_pair() {
    run_isolated(
        "split_and_pfx_verify_and_a_rotation_moves_the_d_link_without_a_mixed_pair",
        || {
            let mut vm = Vm::new();
            let first = vm.chain("web1", KeyType::Ec("P-256"), 90);
            let v1 = vm.vault().put_secret(
                HOST,
                "web",
                SecretValue::pkcs12(&first.pfx(PfxVariant::KeyVault).unwrap()),
            );
            let hook_out = PathBuf::from("/var/lib/waagent/hook-env");
            vm.enable(Settings::public(json!({
            "secretsManagementSettings": {
                "pollingIntervalInS": "2",
                "retainedVersions": 2,
                "additionalFormats": ["split", "pfx"],
                "postInstallCommand": {"shell": format!("echo \"$KVVM_CERTIFICATE_DIR\" >> {}", hook_out.display())},
                "observedCertificates": [url("web")]
            }
        })));
            vm.wait(0, Duration::from_secs(30), "v1 installed", |r| {
                installed(r, "web", &v1)
            });
            let store = Path::new(STORE);
            let link = store.join("myvault.web.d");
            assert_eq!(
                fs::read_link(&link).unwrap(),
                PathBuf::from(format!("myvault.web.{v1}.d"))
            );
            check_folder(&store.join(format!("myvault.web.{v1}.d")), &first);
            // The combined PEM and its link are written as always.
            assert_eq!(
                fs::read_link(store.join("myvault.web")).unwrap(),
                PathBuf::from(format!("myvault.web.{v1}"))
            );

            // A reader loops through the .d link while the vault rotates twice (RSA, then EC again): each read
            // resolves the link once and copies cert.pem and privkey.pem; every pair is checked afterwards.
            let stop = AtomicBool::new(false);
            let pairs_dir = tempfile::tempdir().unwrap();
            let (v2, v3, second, third, pairs) = std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let dir = fs::File::open(&link).expect("the .d link always resolves");
                        let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                        let cert = fs::read(base.join("cert.pem")).expect("cert.pem");
                        let key = fs::read(base.join("privkey.pem")).expect("privkey.pem");
                        if pairs.last().is_none_or(|(c, _)| *c != cert) {
                            pairs.push((cert, key));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    pairs
                });
                let second = vm.chain("web2", KeyType::Rsa(2048), 90);
                let v2 = vm.vault().put_secret(
                    HOST,
                    "web",
                    SecretValue::pem(second.pem(PemLayout::default()).unwrap()),
                );
                vm.wait(0, Duration::from_secs(30), "v2 installed", |r| {
                    installed(r, "web", &v2)
                });
                let third = vm.chain("web3", KeyType::Ec("P-384"), 90);
                let v3 = vm.vault().put_secret(
                    HOST,
                    "web",
                    SecretValue::pkcs12(&third.pfx(PfxVariant::KeyVault).unwrap()),
                );
                vm.wait(0, Duration::from_secs(30), "v3 installed", |r| {
                    installed(r, "web", &v3)
                });
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
                (v2, v3, second, third, reader.join().unwrap())
            });
            assert!(
                pairs.len() >= 2,
                "the reader saw the rotation ({} distinct certificates)",
                pairs.len()
            );
            for (i, (cert, key)) in pairs.iter().enumerate() {
                let (c, k) = (format!("cert{i}.pem"), format!("key{i}.pem"));
                fs::write(pairs_dir.path().join(&c), cert).unwrap();
                fs::write(pairs_dir.path().join(&k), key).unwrap();
                assert_eq!(
                    pubkey_of_cert(pairs_dir.path(), &c),
                    pubkey_of_key(pairs_dir.path(), &k),
                    "read {i}: a certificate with another version's key"
                );
            }
            assert_eq!(
                fs::read_link(&link).unwrap(),
                PathBuf::from(format!("myvault.web.{v3}.d"))
            );
            check_folder(&store.join(format!("myvault.web.{v3}.d")), &third);
            check_folder(&store.join(format!("myvault.web.{v2}.d")), &second);
            // Retention (2 versions): v1's file and folder are gone.
            assert!(!store.join(format!("myvault.web.{v1}.d")).exists());
            assert!(!store.join(format!("myvault.web.{v1}")).exists());
            // The post-install command got the .d link.
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut seen = String::new();
            while Instant::now() < deadline {
                seen = fs::read_to_string(&hook_out).unwrap_or_default();
                if seen.lines().count() >= 3 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(seen.lines().count() >= 3, "{seen}\n{}", vm.log());
            assert!(seen.lines().all(|l| l == link.to_str().unwrap()), "{seen}");
        },
    );
}

const CLIENT: &str = "5b7d2a31-0000-4000-8000-00000000c11e";
const OBJECT: &str = "9f3e4c21-0000-4000-8000-0000000000b1";
const RID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-web";

/// A VM with no system-assigned identity and two user-assigned ones, the first known by all three names.
fn vm_with_two_identities() -> (Vm, String) {
    let vm = Vm::new();
    let chain = vm.chain("web", KeyType::Ec("P-256"), 90);
    let v = vm.vault().put_secret(
        HOST,
        "web",
        SecretValue::pkcs12(&chain.pfx(PfxVariant::KeyVault).unwrap()),
    );
    vm.imds().set_system_identity(None);
    vm.imds().add_user_identity_ids(CLIENT, OBJECT, RID);
    vm.imds()
        .add_user_identity("0c0c0c0c-0000-4000-8000-000000000002");
    (vm, v)
}

fn with_auth(auth: Value) -> Settings {
    Settings::public(json!({
        "secretsManagementSettings": {"pollingIntervalInS": "2", "observedCertificates": [url("web")]},
        "authenticationSettings": auth
    }))
}

#[test]
fn several_identities_and_none_named_the_status_names_the_setting_and_the_look_up() {
    run_isolated(
        "several_identities_and_none_named_the_status_names_the_setting_and_the_look_up",
        || {
            let (mut vm, _) = vm_with_two_identities();
            vm.enable(with_auth(json!({})));
            let r = vm.wait(0, Duration::from_secs(30), "the 400 reported", |r| {
                r.substatus
                    .iter()
                    .any(|s| s.message.contains("identity-not-assigned"))
            });
            let msg = &r
                .substatus
                .iter()
                .find(|s| s.name == url("web"))
                .unwrap()
                .message;
            assert!(
            msg.contains(
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
            ) && msg.contains(
                "this VM has several user-assigned identities and the settings name none of them; add authenticationSettings.msiClientId"
            ) && msg.contains("az identity show -g <group> -n <name> --query clientId"),
            "{msg}"
        );
        },
    );
}

#[test]
fn an_identity_that_is_not_assigned_is_named_in_the_status() {
    run_isolated(
        "an_identity_that_is_not_assigned_is_named_in_the_status",
        || {
            let (mut vm, _) = vm_with_two_identities();
            let missing = "11111111-2222-4333-8444-555555555555";
            vm.enable(with_auth(json!({"msiObjectId": missing})));
            let r = vm.wait(0, Duration::from_secs(30), "the 400 reported", |r| {
                r.substatus
                    .iter()
                    .any(|s| s.message.contains("identity-not-assigned"))
            });
            let msg = &r
                .substatus
                .iter()
                .find(|s| s.name == url("web"))
                .unwrap()
                .message;
            assert!(
                msg.contains("Identity not found")
                    && msg.contains(&format!(
                        "the identity with object id {missing} is not assigned to this VM"
                    ))
                    && msg.contains("fix authenticationSettings.msiObjectId"),
                "{msg}"
            );
            assert!(
                vm.imds()
                    .requests()
                    .iter()
                    .any(|q| q.path_and_query.contains(&format!("object_id={missing}")))
            );
        },
    );
}

/// Enables `settings` on a VM with two identities, waits for the certificate, and checks that IMDS saw
/// `query` and that the status holds `warning` (when given).
fn identity_reaches_imds(settings: Settings, query: &str, warning: Option<&str>) {
    let (mut vm, v) = vm_with_two_identities();
    vm.enable(settings);
    let r = vm.wait(0, Duration::from_secs(30), "installed", |r| {
        installed(r, "web", &v)
    });
    let queries: Vec<String> = vm
        .imds()
        .requests()
        .into_iter()
        .map(|q| q.path_and_query)
        .collect();
    assert!(
        queries.iter().any(|q| q.contains(query)),
        "{query}: {queries:?}"
    );
    if let Some(warning) = warning {
        let report = format!("{r:?}");
        assert!(report.contains(warning), "{report}");
    }
}

fn encoded_rid() -> String {
    url::form_urlencoded::byte_serialize(RID.as_bytes()).collect()
}

#[test]
fn msi_object_id_reaches_imds_as_object_id() {
    run_isolated("msi_object_id_reaches_imds_as_object_id", || {
        identity_reaches_imds(
            with_auth(json!({"msiObjectId": OBJECT.to_uppercase()})),
            &format!("object_id={OBJECT}"),
            None,
        );
    });
}

#[test]
fn msi_resource_id_reaches_imds_as_msi_res_id() {
    run_isolated("msi_resource_id_reaches_imds_as_msi_res_id", || {
        identity_reaches_imds(
            with_auth(json!({"msiResourceId": RID})),
            &format!("msi_res_id={}", encoded_rid()),
            None,
        );
    });
}

#[test]
fn a_resource_id_given_as_msi_client_id_is_sent_as_msi_res_id_with_a_warning() {
    run_isolated(
        "a_resource_id_given_as_msi_client_id_is_sent_as_msi_res_id_with_a_warning",
        || {
            identity_reaches_imds(
                with_auth(json!({"msiClientId": RID})),
                &format!("msi_res_id={}", encoded_rid()),
                Some("holds a resource ID, so it is used as msiResourceId"),
            );
        },
    );
}

#[test]
fn authentication_settings_inside_secrets_management_settings_are_used_with_a_warning() {
    run_isolated(
        "authentication_settings_inside_secrets_management_settings_are_used_with_a_warning",
        || {
            identity_reaches_imds(
                Settings::public(json!({"secretsManagementSettings": {
                    "pollingIntervalInS": "2",
                    "observedCertificates": [url("web")],
                    "authenticationSettings": {"msiClientId": CLIENT}
                }})),
                &format!("client_id={CLIENT}"),
                Some("authenticationSettings belongs at the top level"),
            );
        },
    );
}

#[test]
fn public_settings_as_a_json_string_are_used_with_a_warning() {
    run_isolated(
        "public_settings_as_a_json_string_are_used_with_a_warning",
        || {
            let inner = json!({
                "secretsManagementSettings": {"pollingIntervalInS": "2", "observedCertificates": [url("web")]},
                "authenticationSettings": {"msiClientId": CLIENT}
            });
            identity_reaches_imds(
                Settings::public(Value::String(inner.to_string())),
                &format!("client_id={CLIENT}"),
                Some("publicSettings is a JSON string holding the settings object"),
            );
        },
    );
}

#[test]
fn adding_additional_formats_later_builds_the_folder_for_the_installed_version() {
    run_isolated(
        "adding_additional_formats_later_builds_the_folder_for_the_installed_version",
        || {
            let mut vm = Vm::new();
            let chain = vm.chain("web", KeyType::Rsa(2048), 90);
            let v = vm.vault().put_secret(
                HOST,
                "web",
                SecretValue::pkcs12(&chain.pfx(PfxVariant::KeyVault).unwrap()),
            );
            let public = |formats: Value| {
                Settings::public(json!({"secretsManagementSettings": {
                    "pollingIntervalInS": "2",
                    "observedCertificates": [{"url": url("web"), "additionalFormats": formats}]
                }}))
            };
            let ext = vm.enable(public(json!([])));
            vm.wait(0, Duration::from_secs(30), "installed", |r| {
                installed(r, "web", &v)
            });
            let store = Path::new(STORE);
            assert!(!store.join("myvault.web.d").exists(), "[] writes no folder");

            let run = vm
                .agent
                .apply_settings(&ext, 1, &public(json!(["pfx"])))
                .unwrap();
            assert!(run.success(), "{}", run.output);
            let folder = store.join(format!("myvault.web.{v}.d"));
            // The folder is renamed into place first and its link moved after it: wait for the link.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !store.join("myvault.web.d/certificate.pfx").exists() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(
                fs::read_link(store.join("myvault.web.d")).unwrap(),
                PathBuf::from(format!("myvault.web.{v}.d")),
                "{}",
                vm.log()
            );
            let mut names: Vec<String> = fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["certificate.pfx"]);
            let info = Command::new("openssl")
                .args([
                    "pkcs12",
                    "-info",
                    "-noout",
                    "-passin",
                    "pass:",
                    "-in",
                    "certificate.pfx",
                ])
                .current_dir(&folder)
                .output()
                .unwrap();
            assert!(
                info.status.success(),
                "{}",
                String::from_utf8_lossy(&info.stderr)
            );
            vm.wait(1, Duration::from_secs(30), "settings 1 applied", |r| {
                installed(r, "web", &v)
            });
        },
    );
}
