//! Every deployment sample in docs/deploy passes settings that kvvm accepts as they are, after the tool's own
//! handling: tests/deploy/extract.py pulls the settings out of each sample the way its tool would (ARM JSON,
//! Bicep through a Bicep parser, Terraform's `jsonencode` through an HCL parser, bash samples run by bash with a
//! stub `az`, PowerShell here-strings, the settings file cloud-init writes) and checks the extension block
//! against a JSON schema; this test feeds each settings object through kvvm's own parser and wants no error and
//! no warning. A sample the product would reject, or one that hides a mistake users make (settings nested in
//! the wrong object, a resource id in msiClientId, quoting that stops the shell expanding a variable), fails
//! here rather than on a VM.
//!
//! The VM Application samples (docs/deploy/vmapp) are turned by tests/deploy/vmapp.py into the REST bodies their
//! tool sends and checked there against the published spec (tests/deploy/vmapp-spec.json) and the contract; the
//! tests here want no error from that, check the extracted bodies against the contract once more, and feed the
//! configuration file (vmapp/kvvm-settings.json) through kvvm's parser like the extension samples' settings.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvvm::UserIdentity;
use kvvm::settings::{Configured, parse_public_settings, parse_settings_file};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the extractor found in a folder: the settings samples, the VM Application records (`kind`:
/// application, version, attachment, manage-actions), the errors, and the client id it put in for Azure
/// expressions.
struct Extracted {
    samples: Vec<Value>,
    vmapp: Vec<Value>,
    errors: Vec<String>,
    stand_in: String,
}

/// Runs the extractor over `dir`: its samples, its errors and the client id it put in for Azure expressions.
fn extract(dir: &Path) -> (Vec<Value>, Vec<String>, String) {
    let all = extract_all(dir);
    (all.samples, all.errors, all.stand_in)
}

fn extract_all(dir: &Path) -> Extracted {
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
    Extracted {
        samples: doc["samples"].as_array().unwrap().clone(),
        vmapp: doc["vmapp"].as_array().unwrap().clone(),
        errors,
        stand_in: doc["standInClientId"].as_str().unwrap().to_string(),
    }
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
    let Extracted {
        samples,
        vmapp,
        errors,
        stand_in,
    } = extract_all(&docs);
    assert!(
        errors.is_empty(),
        "samples that cannot be checked: {errors:#?}"
    );

    // Every file of docs/deploy is a sample, or what a sample reads (settings.json, manage-actions.json).
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
            samples.iter().chain(&vmapp).any(|s| s["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == &rel)),
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
        "vmapp/kvvm-settings.json",
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

// ---- VM Applications (docs/deploy/vmapp) -------------------------------------------------------------------

/// The contract every VM Application sample follows (the lead's vmapp.sh takes these arguments).
const INSTALL: &str = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json";
const UPDATE: &str = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json";
const REMOVE: &str = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove";
const PACKAGE_FILE_NAME: &str = "kvvm.tar.gz";
const CONFIG_FILE_NAME: &str = "kvvm-settings.json";

fn records<'a>(vmapp: &'a [Value], sample: &str, kind: &str) -> Vec<&'a Value> {
    vmapp
        .iter()
        .filter(|r| r["sample"] == sample && r["kind"] == kind)
        .collect()
}

fn is_major_minor_patch(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<i32>().is_ok()
        })
}

/// Each VM Application sample publishes or attaches what its table row in docs/deploy/README.md says, and the
/// bodies tests/deploy/vmapp.py extracted (and already checked against the spec) keep the contract.
#[test]
fn the_vm_application_samples_keep_the_contract() {
    let docs = root().join("docs/deploy");
    let Extracted { vmapp, errors, .. } = extract_all(&docs);
    assert!(
        errors.is_empty(),
        "samples that cannot be checked: {errors:#?}"
    );

    // The one copy of the manage actions is the contract's.
    let canonical: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("vmapp/manage-actions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        canonical,
        serde_json::json!({"install": INSTALL, "update": UPDATE, "remove": REMOVE})
    );

    // Publishers: the application kvvm and one Major.Minor.Patch version of it.
    for sample in [
        "vmapp/arm/gallery.json",
        "vmapp/bicep/gallery.bicep",
        "vmapp/terraform/gallery.tf",
        "vmapp/cli/az-vmapp.sh",
        "vmapp/cli/New-AzGalleryApplicationVersion.ps1",
    ] {
        let apps = records(&vmapp, sample, "application");
        assert_eq!(apps.len(), 1, "{sample}: {apps:?}");
        assert_eq!(apps[0]["name"], "kvvm", "{sample}");
        assert_eq!(
            apps[0]["body"]["properties"]["supportedOSType"], "Linux",
            "{sample}"
        );
        let versions = records(&vmapp, sample, "version");
        assert_eq!(versions.len(), 1, "{sample}: {versions:?}");
        let version = versions[0];
        assert!(
            is_major_minor_patch(version["name"].as_str().unwrap()),
            "{sample}: version {}",
            version["name"]
        );
        let profile = &version["body"]["properties"]["publishingProfile"];
        for (action, command) in [("install", INSTALL), ("update", UPDATE), ("remove", REMOVE)] {
            let got = profile["manageActions"][action]
                .as_str()
                .unwrap_or_default();
            assert_eq!(got, command, "{sample}: manage action {action}");
            assert!(got.chars().count() <= 4096, "{sample}: {action}");
        }
        assert_eq!(
            profile["settings"]["packageFileName"], PACKAGE_FILE_NAME,
            "{sample}"
        );
        assert_eq!(
            profile["settings"]["configFileName"], CONFIG_FILE_NAME,
            "{sample}"
        );
        assert!(profile["source"]["mediaLink"].is_string(), "{sample}");
        assert!(
            profile["source"]["defaultConfigurationLink"].is_string(),
            "{sample}"
        );
        assert!(
            !profile["targetRegions"].as_array().unwrap().is_empty(),
            "{sample}: no target regions"
        );
    }

    // Attachments: kvvm on a VM or scale set with a user-assigned identity, order 1, and a failed install
    // failing the deployment wherever the tool can say so.
    for (sample, targets) in [
        ("vmapp/arm/vm.json", &["vm"][..]),
        ("vmapp/arm/vmss.json", &["vmss"][..]),
        ("vmapp/bicep/vm.bicep", &["vm"][..]),
        ("vmapp/bicep/vmss.bicep", &["vmss"][..]),
        ("vmapp/terraform/vm.tf", &["vm"][..]),
        ("vmapp/terraform/vmss.tf", &["vmss"][..]),
        ("vmapp/cli/az-vmapp.sh", &["vm", "vmss"][..]),
        (
            "vmapp/cli/New-AzGalleryApplicationVersion.ps1",
            &["vm", "vmss"][..],
        ),
    ] {
        let attached = records(&vmapp, sample, "attachment");
        let got: Vec<&str> = attached
            .iter()
            .map(|a| a["target"].as_str().unwrap())
            .collect();
        assert_eq!(got, targets, "{sample}");
        for a in attached {
            let apps = a["profile"]["galleryApplications"].as_array().unwrap();
            assert_eq!(apps.len(), 1, "{sample}: {apps:?}");
            let app = &apps[0];
            let reference = app["packageReferenceId"].as_str().unwrap();
            let (application, version) = reference
                .split_once("/applications/")
                .and_then(|(_, rest)| rest.split_once("/versions/"))
                .unwrap_or_else(|| panic!("{sample}: packageReferenceId {reference}"));
            assert_eq!(application, "kvvm", "{sample}");
            assert!(
                version == "latest" || is_major_minor_patch(version),
                "{sample}: version {version}"
            );
            assert_eq!(app["order"], 1, "{sample}");
            let cannot: Vec<&str> = a["cannot_set"]
                .as_array()
                .map(|c| c.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            for prop in ["treatFailureAsDeploymentFailure", "enableAutomaticUpgrade"] {
                if cannot.contains(&prop) {
                    assert!(app[prop].is_null(), "{sample}: {prop} cannot be set there");
                } else {
                    assert_eq!(app[prop], true, "{sample}: {prop}");
                }
            }
            assert!(
                a["identity"]["type"]
                    .as_str()
                    .is_some_and(|t| t.contains("UserAssigned")),
                "{sample}: {}",
                a["identity"]
            );
            if sample == "vmapp/terraform/vmss.tf" {
                assert_eq!(
                    version, "latest",
                    "{sample}: gallery_application forces a new scale set"
                );
            }
        }
    }
    // Only Terraform's scale set lacks the arguments.
    let cannot: Vec<&str> = vmapp
        .iter()
        .filter(|r| r["cannot_set"].is_array())
        .map(|r| r["sample"].as_str().unwrap())
        .collect();
    assert_eq!(cannot, ["vmapp/terraform/vmss.tf"]);
}

/// Copies docs/deploy/vmapp/`from` to `dir`/vmapp/`to`, after `edit`, which must change it.
fn broken(dir: &Path, from: &str, to: &str, edit: impl Fn(&str) -> String) {
    let good = std::fs::read_to_string(root().join("docs/deploy/vmapp").join(from)).unwrap();
    let bad = edit(&good);
    assert_ne!(bad, good, "the edit of {from} changed nothing");
    let path = dir.join("vmapp").join(to);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bad).unwrap();
}

/// Each broken VM Application sample is refused by tests/deploy/vmapp.py, for the reason given.
#[test]
fn the_vm_application_mistakes_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path();
    std::fs::create_dir_all(docs.join("vmapp")).unwrap();
    for file in ["manage-actions.json", "kvvm-settings.json"] {
        std::fs::copy(
            root().join("docs/deploy/vmapp").join(file),
            docs.join("vmapp").join(file),
        )
        .unwrap();
    }
    // A changed install command (the settings file not passed).
    broken(docs, "arm/gallery.json", "arm/changed-install.json", |s| {
        s.replace(
            "vmapp.sh install kvvm-settings.json\"",
            "vmapp.sh install\"",
        )
    });
    // No config file name: the file lands as kvvm_config (or kvvm-config), which the commands do not read.
    broken(
        docs,
        "terraform/gallery.tf",
        "terraform/no-config-file.tf",
        |s| s.replace("  config_file            = \"kvvm-settings.json\"\n", ""),
    );
    broken(
        docs,
        "bicep/gallery.bicep",
        "bicep/no-config-file.bicep",
        |s| s.replace("        configFileName: 'kvvm-settings.json'\n", ""),
    );
    // A manage action over the 4096 characters Azure takes.
    let long = format!("'{REMOVE} && {}'", "true && ".repeat(600));
    broken(
        docs,
        "bicep/gallery.bicep",
        "bicep/long-remove.bicep",
        |s| s.replace(&format!("'{REMOVE}'"), &long),
    );
    // The flag some Azure docs give for the default configuration, which az does not have.
    broken(docs, "cli/az-vmapp.sh", "cli/doc-flag.sh", |s| {
        s.replace(
            "  --default-file-link \"$CONFIG_URL\"",
            "  --default-configuration-file-link \"$CONFIG_URL\"",
        )
    });
    // A failed install that would not fail the deployment.
    broken(docs, "arm/vm.json", "arm/no-failure.json", |s| {
        s.replace(
            "\"treatFailureAsDeploymentFailure\": true",
            "\"treatFailureAsDeploymentFailure\": false",
        )
    });
    // A Terraform scale set pinned to a version (every change would replace the scale set).
    broken(docs, "terraform/vmss.tf", "terraform/pinned.tf", |s| {
        s.replace("/versions/latest\"", "/versions/1.0.0\"")
    });
    // The VM's argument on a Terraform scale set, whose gallery_application block does not have it.
    broken(docs, "terraform/vmss.tf", "terraform/vm-argument.tf", |s| {
        s.replace(
            "    order      = 1\n",
            "    order      = 1\n    treat_failure_as_deployment_failure_enabled = true\n",
        )
    });
    // A scale set without the identity kvvm authenticates with.
    broken(docs, "bicep/vmss.bicep", "bicep/no-identity.bicep", |s| {
        let start = s.find("  identity: {").unwrap();
        let end = start + s[start..].find("\n  }\n").unwrap() + 5;
        format!("{}{}", &s[..start], &s[end..])
    });
    // A version that is not Major.Minor.Patch.
    broken(docs, "bicep/gallery.bicep", "bicep/two-part.bicep", |s| {
        s.replace(
            "param version string = '1.0.0'",
            "param version string = '1.0'",
        )
    });
    // A true after a switch (as a Microsoft doc writes it): PowerShell takes it as a positional argument.
    broken(
        docs,
        "cli/New-AzGalleryApplicationVersion.ps1",
        "cli/switch-value.ps1",
        |s| {
            s.replace(
                "-Order 1 -TreatFailureAsDeploymentFailure\n",
                "-Order 1 -TreatFailureAsDeploymentFailure true\n",
            )
        },
    );
    // A misspelt property, which Azure would ignore: the spec does not name it.
    broken(docs, "arm/gallery.json", "arm/misspelt.json", |s| {
        s.replace("\"configFileName\"", "\"configFilename\"")
    });

    let Extracted { vmapp, errors, .. } = extract_all(docs);
    let refused = |name: &str, reason: &str| {
        let found: Vec<&String> = errors
            .iter()
            .filter(|e| e.starts_with(&format!("vmapp/{name}:")))
            .collect();
        assert!(
            found.iter().any(|e| e.contains(reason)),
            "vmapp/{name} should be refused for {reason:?}: {found:#?}"
        );
    };
    refused("arm/changed-install.json", "manage action install is");
    refused(
        "terraform/no-config-file.tf",
        "settings.configFileName is None",
    );
    refused(
        "bicep/no-config-file.bicep",
        "settings.configFileName is None",
    );
    refused("bicep/long-remove.bicep", "(over 4096 characters)");
    refused(
        "cli/doc-flag.sh",
        "unrecognized arguments: --default-configuration-file-link",
    );
    refused(
        "arm/no-failure.json",
        "treatFailureAsDeploymentFailure is False, not true",
    );
    refused("terraform/pinned.tf", "must reference versions/latest");
    refused(
        "terraform/vm-argument.tf",
        "gallery_application has no argument treat_failure_as_deployment_failure_enabled",
    );
    refused("bicep/no-identity.bicep", "has no user-assigned identity");
    refused("bicep/two-part.bicep", "is not Major.Minor.Patch");
    refused("cli/switch-value.ps1", "a positional argument 'true'");
    refused("arm/misspelt.json", "('configFilename' was unexpected)");
    // Nothing else was refused, and the unbroken files still pass.
    assert_eq!(errors.len(), 12, "{errors:#?}");
    assert!(
        vmapp
            .iter()
            .any(|r| r["sample"] == "vmapp/manage-actions.json"),
        "{vmapp:?}"
    );
}
