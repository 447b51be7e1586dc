//! Every deployment sample in docs/deploy passes settings that kvvm accepts as they are, after the tool's own
//! handling: tests/deploy/extract.py pulls the settings out of each sample the way its tool would (ARM JSON,
//! Bicep through a Bicep parser, Terraform's `jsonencode` through an HCL parser, bash samples run by bash with a
//! stub `az`, PowerShell here-strings, the settings file cloud-init writes) and checks the extension block
//! against a JSON schema; this test feeds each settings object through kvvm's own parser and wants no error and
//! no warning. A sample the product would reject, or one that hides a mistake users make (settings nested in
//! the wrong object, a resource id in msiClientId, quoting that stops the shell expanding a variable), fails
//! here rather than on a VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvvm::UserIdentity;
use kvvm::settings::{Configured, parse_public_settings, parse_settings_file};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the extractor over `dir`: its samples, its errors and the client id it put in for Azure expressions.
fn extract(dir: &Path) -> (Vec<Value>, Vec<String>, String) {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make deps` (it installs tests/requirements.txt)",
        python.display()
    );
    let out = Command::new(python)
        .arg(root().join("tests/deploy/extract.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "extract.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    (
        doc["samples"].as_array().unwrap().clone(),
        errors,
        doc["standInClientId"].as_str().unwrap().to_string(),
    )
}

/// What kvvm says of one extracted sample: `Err` with the rejection or the warnings.
fn check(sample: &Value) -> Result<kvvm::settings::Settings, String> {
    let settings = match sample["form"].as_str().unwrap() {
        "file" => match parse_settings_file(sample["settings"].as_str().unwrap()) {
            Ok(Configured::Settings(s)) => s,
            Ok(Configured::Nothing { reason }) => return Err(format!("no settings: {reason}")),
            Err(e) => return Err(format!("[{}] {e}", e.reason())),
        },
        _ => parse_public_settings(&sample["settings"])
            .map_err(|e| format!("[{}] {e}", e.reason()))?,
    };
    if !settings.warnings.is_empty() {
        return Err(format!("warnings: {:?}", settings.warnings));
    }
    if !matches!(settings.msi_identity, Some(UserIdentity::ClientId(_))) {
        return Err("no msiClientId: every sample uses a user-assigned identity".into());
    }
    Ok(settings)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_sample_passes_settings_kvvm_accepts() {
    let docs = root().join("docs/deploy");
    let (samples, errors, stand_in) = extract(&docs);
    assert!(
        errors.is_empty(),
        "samples that cannot be checked: {errors:#?}"
    );

    // Every file of docs/deploy is a sample, or what a sample reads (settings.json).
    let mut files = Vec::new();
    files_under(&docs, &mut files);
    for file in files {
        let rel = file
            .strip_prefix(&docs)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if rel == "README.md" {
            continue;
        }
        assert!(
            samples
                .iter()
                .any(|s| s["sources"].as_array().unwrap().iter().any(|f| f == &rel)),
            "{rel} is checked by no sample extraction: teach tests/deploy/extract.py its format"
        );
    }

    // Each tool the README names has its samples.
    let names: Vec<&str> = samples
        .iter()
        .map(|s| s["sample"].as_str().unwrap())
        .collect();
    for expected in [
        "arm/vm.json",
        "arm/vmss.json",
        "bicep/vm.bicep",
        "bicep/vmss.bicep",
        "terraform/vm.tf",
        "terraform/vmss.tf",
        "cli/az-vm.sh",
        "cli/az-vmss.sh",
        "cli/az-vm.ps1",
        "cli/Set-AzVMExtension.ps1",
        "cli/Add-AzVmssExtension.ps1",
        "cloud-init/cloud-init.yaml",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }

    let mut failures = Vec::new();
    for sample in &samples {
        let name = sample["sample"].as_str().unwrap();
        match check(sample) {
            Ok(settings) => {
                let cert = &settings.observed_certificates[0];
                assert_eq!(
                    cert.url.as_str(),
                    "https://myvault.vault.azure.net/secrets/mycert",
                    "{name}"
                );
                assert_eq!(cert.store_location, Path::new("/etc/ssl/kvvm"), "{name}");
                assert_eq!(cert.link_name, "mycert.pem", "{name}");
                assert!(settings.require_initial_sync, "{name}");
                let Some(UserIdentity::ClientId(id)) = &settings.msi_identity else {
                    unreachable!("checked by accept()")
                };
                assert!(
                    *id == stand_in || id == "c7373ae5-91c2-4165-8ab6-7381d6e75619",
                    "{name}: msiClientId {id}"
                );
            }
            Err(why) => failures.push(format!("{name} ({}): {why}", sample["how"])),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The check is only worth something if it catches the mistakes users make: each broken sample here is
/// refused, by the extractor (an expression that is not the client id, a schema violation) or by kvvm.
#[test]
fn the_mistakes_users_make_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path();
    let good = std::fs::read_to_string(root().join("docs/deploy/arm/vm.json")).unwrap();
    std::fs::create_dir_all(docs.join("arm")).unwrap();
    std::fs::create_dir_all(docs.join("cli")).unwrap();
    std::fs::create_dir_all(docs.join("terraform")).unwrap();
    // authenticationSettings nested inside secretsManagementSettings.
    let mut nested: Value = serde_json::from_str(&good).unwrap();
    let settings = &mut nested["resources"][0]["properties"]["settings"];
    let auth = settings["authenticationSettings"].take();
    settings
        .as_object_mut()
        .unwrap()
        .remove("authenticationSettings");
    settings["secretsManagementSettings"]["authenticationSettings"] = auth;
    std::fs::write(docs.join("arm/nested.json"), nested.to_string()).unwrap();
    // The identity's resource id where its client id belongs.
    std::fs::write(
        docs.join("arm/resource-id.json"),
        good.replace(
            "[reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', parameters('identityName')), '2023-01-31').clientId]",
            "[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', parameters('identityName'))]",
        ),
    )
    .unwrap();
    // Terraform: the identity's id, not its client_id.
    let tf = std::fs::read_to_string(root().join("docs/deploy/terraform/vm.tf")).unwrap();
    std::fs::write(
        docs.join("terraform/id.tf"),
        tf.replace("kvvm.client_id", "kvvm.id"),
    )
    .unwrap();
    // bash: single quotes keep "$client_id" from being expanded; kvvm gets the literal text.
    let sh = std::fs::read_to_string(root().join("docs/deploy/cli/az-vm.sh")).unwrap();
    std::fs::write(
        docs.join("cli/quoted.sh"),
        sh.replace("settings=$(cat <<JSON", "settings=$(cat <<'JSON'"),
    )
    .unwrap();
    // The Windows form of a certificate URL.
    std::fs::write(
        docs.join("cli/settings.json"),
        std::fs::read_to_string(root().join("docs/deploy/cli/settings.json"))
            .unwrap()
            .replace("/secrets/mycert", "/certificates/mycert"),
    )
    .unwrap();
    std::fs::copy(
        root().join("docs/deploy/cli/az-vmss.sh"),
        docs.join("cli/az-vmss.sh"),
    )
    .unwrap();

    let (samples, errors, _) = extract(docs);
    let refused_by_extractor = |name: &str| errors.iter().any(|e| e.starts_with(name));
    assert!(refused_by_extractor("arm/nested.json"), "{errors:#?}");
    assert!(refused_by_extractor("arm/resource-id.json"), "{errors:#?}");
    assert!(refused_by_extractor("terraform/id.tf"), "{errors:#?}");
    for (name, reason) in [
        ("cli/quoted.sh", "[msi-client-id-invalid]"),
        ("cli/az-vmss.sh", "[certificate-url-not-secret]"),
    ] {
        let sample = samples
            .iter()
            .find(|s| s["sample"] == name)
            .unwrap_or_else(|| panic!("{name} not extracted: {errors:#?}"));
        let why = check(sample).err().unwrap_or_default();
        assert!(why.starts_with(reason), "{name}: {why}");
    }
}

/// The cloud-init path really installs and starts kvvm: its install script, taken from the sample, run in the
/// VM-like namespace with the package zip as a file:// URL and a settings file for the fake vault (the sample's
/// own settings are checked above; its store folder is outside the namespace's scratch folders).
#[test]
fn the_cloud_init_install_script_installs_and_starts_kvvm() {
    use kvvm_sim::netns::run_isolated;
    use kvvm_sim::pki::{Chain, KeyType, PemLayout};
    use kvvm_sim::vault::SecretValue;
    use kvvm_sim::vm::Fakes;
    use std::time::{Duration, Instant};

    run_isolated(
        "the_cloud_init_install_script_installs_and_starts_kvvm",
        || {
            const HOST: &str = "myvault.vault.azure.net";
            let Fakes { imds: _imds, vault } = Fakes::start(&[HOST]);
            let tmp = tempfile::tempdir().unwrap();
            let chain = Chain::generate(
                &tmp.path().join("pki"),
                "web.example.com",
                KeyType::Ec("P-256"),
                30,
            )
            .unwrap();
            let version = vault.put_secret(
                HOST,
                "web",
                SecretValue::pem(chain.pem(PemLayout::default()).unwrap()),
            );

            let python = root().join(".venv/bin/python");
            let out = Command::new(python)
            .args([
                "-c",
                "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); \
                 print(next(f['content'] for f in d['write_files'] if f['path'] == '/usr/local/sbin/kvvm-install'), end='')",
            ])
            .arg(root().join("docs/deploy/cloud-init/cloud-init.yaml"))
            .output()
            .unwrap();
            assert!(out.status.success(), "{out:?}");
            let script = tmp.path().join("kvvm-install");
            std::fs::write(&script, &out.stdout).unwrap();
            let settings = tmp.path().join("0.settings");
            std::fs::write(
                &settings,
                serde_json::json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": {
                    "secretsManagementSettings": {
                        "pollingIntervalInS": "3",
                        "observedCertificates": [format!("https://{HOST}/secrets/web")]
                    }
                }}}]})
                .to_string(),
            )
            .unwrap();
            let run = Command::new("sh")
                .arg(&script)
                .env(
                    "KVVM_PACKAGE_URL",
                    format!("file://{}", kvvm_sim::built_package().display()),
                )
                .env("KVVM_SETTINGS", &settings)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "the install script failed: {}\n{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            );
            let dir = std::fs::canonicalize("/var/lib/waagent/kvvm-current").unwrap();
            let link =
                Path::new("/var/lib/waagent/Microsoft.Azure.KeyVault.Store").join("myvault.web");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::fs::read_link(&link).ok()
                != Some(PathBuf::from(format!("myvault.web.{version}")))
            {
                assert!(
                    Instant::now() < deadline,
                    "not installed; status: {:?}",
                    std::fs::read_to_string(dir.join("status/0.status"))
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            kvvm_sim::pki::verify_installed(&link, &chain.root).unwrap();
            let disable = Command::new(dir.join("handler"))
                .arg("disable")
                .current_dir(&dir)
                .env("ConfigSequenceNumber", "0")
                .output()
                .unwrap();
            assert!(disable.status.success(), "{disable:?}");
        },
    );
}
