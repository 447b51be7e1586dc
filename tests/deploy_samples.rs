//! Every deployment sample in docs/deploy passes settings that kvvm accepts as they are, after the tool's own
//! handling: tests/deploy/extract.py pulls the settings out of each sample the way its tool would (ARM JSON,
//! Bicep through a Bicep parser, Terraform's `jsonencode` through an HCL parser, bash samples run by bash with a
//! stub `az`, PowerShell here-strings, the settings file cloud-init writes) and checks the extension block
//! against a JSON schema; this test feeds each settings object through kvvm's own parser and wants no error and
//! no warning. A sample the product would reject, or one that hides a mistake users make (settings nested in
//! the wrong object, a resource id in msiClientId, quoting that stops the shell expanding a variable), fails
//! here rather than on a VM.
//!
//! The VM Application samples (docs/deploy/vmapp for Linux, docs/deploy/vmapp-windows for Windows) are turned by
//! tests/deploy/vmapp.py into the REST bodies their tool sends and checked there against the published spec
//! (tests/deploy/vmapp-spec.json) and their folder's contract; the tests here want no error from that, check the
//! extracted bodies against the contract once more, and feed each folder's configuration file (kvvm-settings.json)
//! through kvvm's parser like the extension samples' settings (the Windows one as `check_windows` says).

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

/// What kvvm says of a Windows settings sample (`platform` Windows), with each certificate's store as
/// (`certificateStoreLocation`, `certificateStoreName`).
///
/// The parser picks the platform's store rules when kvvm is built (src/platform/target.rs, by `cfg`), and the
/// library has no public parser for another platform than its own; this test is built for Linux, where
/// `certificateStoreLocation` is a folder. So a Windows sample is checked in parts: (1) as it is, this build's
/// parser must refuse it for one reason only, that the store location names a Windows certificate store
/// location (kvvm's own recognition of `LocalMachine`/`CurrentUser`); (2) without its two Windows store settings
/// (`certificateStoreLocation`, `certificateStoreName`, wherever they are), it must pass with no error and no
/// warning, like every other sample; (3) the store settings taken out are returned for the caller to pin (the
/// Windows build takes exactly `LocalMachine` or `CurrentUser`, case-sensitive: src/names.rs); tests/windows_vmapp.rs installs
/// the file as it is with the Windows build, under Wine).
fn check_windows(
    sample: &Value,
) -> Result<(kvvm::settings::Settings, Vec<(String, String)>), String> {
    const LOCATION: &str = "certificateStoreLocation";
    const NAME: &str = "certificateStoreName";
    if sample["form"] != "public" {
        return Err(format!("a Windows sample in the {} form", sample["form"]));
    }
    match parse_public_settings(&sample["settings"]) {
        Ok(_) => {
            return Err(
                "this Linux build accepted it as it is: it names no Windows store location".into(),
            );
        }
        Err(e) => {
            if e.reason() != "store-location-invalid"
                || !e
                    .to_string()
                    .contains("names a Windows certificate store location")
            {
                return Err(format!(
                    "refused for something else than its Windows store location: [{}] {e}",
                    e.reason()
                ));
            }
        }
    }
    let mut rest = sample["settings"].clone();
    let Some(secrets) = rest
        .get_mut("secretsManagementSettings")
        .and_then(Value::as_object_mut)
    else {
        return Err("no secretsManagementSettings object".into());
    };
    let take = |map: &mut serde_json::Map<String, Value>, key: &str| {
        map.remove(key)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    };
    let default_location = take(secrets, LOCATION).unwrap_or_else(|| "LocalMachine".into());
    let default_name = take(secrets, NAME).unwrap_or_else(|| "MY".into());
    let mut stores = Vec::new();
    for cert in secrets
        .get_mut("observedCertificates")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let (location, name) = match cert.as_object_mut() {
            Some(cert) => (take(cert, LOCATION), take(cert, NAME)),
            None => (None, None),
        };
        stores.push((
            location.unwrap_or_else(|| default_location.clone()),
            name.unwrap_or_else(|| default_name.clone()),
        ));
    }
    let settings = check(&serde_json::json!({"form": "public", "settings": rest}))
        .map_err(|why| format!("without its Windows store settings: {why}"))?;
    Ok((settings, stores))
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
        "vmapp-windows/kvvm-settings.json",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }

    let mut failures = Vec::new();
    for sample in &samples {
        let name = sample["sample"].as_str().unwrap();
        if sample["platform"] == "Windows" {
            match check_windows(sample) {
                Ok((settings, stores)) => {
                    let cert = &settings.observed_certificates[0];
                    assert_eq!(
                        cert.url.as_str(),
                        "https://myvault.vault.azure.net/secrets/mycert",
                        "{name}"
                    );
                    assert_eq!(
                        stores,
                        [("LocalMachine".to_string(), "MY".to_string())],
                        "{name}: the Windows build takes exactly LocalMachine or CurrentUser"
                    );
                    assert!(settings.require_initial_sync, "{name}");
                    assert!(
                        matches!(&settings.msi_identity, Some(UserIdentity::ClientId(id))
                            if id == "c7373ae5-91c2-4165-8ab6-7381d6e75619"),
                        "{name}: {:?}",
                        settings.msi_identity
                    );
                }
                Err(why) => failures.push(format!("{name} ({}, Windows): {why}", sample["how"])),
            }
            continue;
        }
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

// ---- VM Applications (docs/deploy/vmapp, docs/deploy/vmapp-windows) ----------------------------------------

/// The contract every VM Application sample of one folder follows.
struct VmApp {
    /// The folder under docs/deploy.
    folder: &'static str,
    /// The gallery application and its `supportedOSType` (one OS per application).
    application: &'static str,
    os_type: &'static str,
    /// The manage actions (install, update, remove): the package's own commands.
    install: &'static str,
    update: &'static str,
    remove: &'static str,
    /// `settings.packageFileName`.
    package_file_name: &'static str,
}

/// Linux: the lead's vmapp.sh in the tarball takes these arguments.
const LINUX: VmApp = VmApp {
    folder: "vmapp",
    application: "kvvm",
    os_type: "Linux",
    install: "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json",
    update: "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json",
    remove: "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove",
    package_file_name: "kvvm.tar.gz",
};

/// Windows: the package is the one self-contained kvvm.exe, which the VM Application manager runs with cmd.exe
/// in the download folder.
const WINDOWS: VmApp = VmApp {
    folder: "vmapp-windows",
    application: "kvvm-windows",
    os_type: "Windows",
    install: "kvvm.exe vmapp install kvvm-settings.json",
    update: "kvvm.exe vmapp update kvvm-settings.json",
    remove: "kvvm.exe vmapp remove",
    package_file_name: "kvvm.exe",
};

const CONFIG_FILE_NAME: &str = "kvvm-settings.json";

/// The samples of each folder, with what they publish or attach: the same set in both folders.
const PUBLISHERS: [&str; 5] = [
    "arm/gallery.json",
    "bicep/gallery.bicep",
    "terraform/gallery.tf",
    "cli/az-vmapp.sh",
    "cli/New-AzGalleryApplicationVersion.ps1",
];
const ATTACHMENTS: [(&str, &[&str]); 8] = [
    ("arm/vm.json", &["vm"]),
    ("arm/vmss.json", &["vmss"]),
    ("bicep/vm.bicep", &["vm"]),
    ("bicep/vmss.bicep", &["vmss"]),
    ("terraform/vm.tf", &["vm"]),
    ("terraform/vmss.tf", &["vmss"]),
    ("cli/az-vmapp.sh", &["vm", "vmss"]),
    ("cli/New-AzGalleryApplicationVersion.ps1", &["vm", "vmss"]),
];
/// The files the samples read.
const READ_BY_SAMPLES: [&str; 2] = ["kvvm-settings.json", "manage-actions.json"];

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

/// The files of docs/deploy/`folder`, relative to it, sorted.
fn folder_files(folder: &str) -> Vec<String> {
    let dir = root().join("docs/deploy").join(folder);
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&dir).unwrap().to_str().unwrap().to_string())
        .collect();
    rel.sort();
    rel
}

/// Each VM Application sample of `c`'s folder publishes or attaches what its table row in docs/deploy/README.md
/// says, and the bodies tests/deploy/vmapp.py extracted (and already checked against the spec) keep `c`.
fn keep_the_contract(c: &VmApp) {
    let docs = root().join("docs/deploy");
    let Extracted { vmapp, errors, .. } = extract_all(&docs);
    assert!(
        errors.is_empty(),
        "samples that cannot be checked: {errors:#?}"
    );
    let sample = |file: &str| format!("{}/{file}", c.folder);

    // The folder holds these samples and the files they read, and nothing else.
    let mut expected: Vec<String> = PUBLISHERS
        .iter()
        .chain(ATTACHMENTS.iter().map(|(s, _)| s))
        .chain(&READ_BY_SAMPLES)
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(folder_files(c.folder), expected, "docs/deploy/{}", c.folder);

    // The one copy of the manage actions is the contract's.
    let canonical: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join(c.folder).join("manage-actions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        canonical,
        serde_json::json!({"install": c.install, "update": c.update, "remove": c.remove}),
        "{}/manage-actions.json",
        c.folder
    );
    assert_eq!(
        records(&vmapp, &sample("manage-actions.json"), "manage-actions").len(),
        1,
        "{}/manage-actions.json",
        c.folder
    );

    // Publishers: the application and one Major.Minor.Patch version of it.
    for sample in PUBLISHERS.map(sample) {
        let sample = sample.as_str();
        let apps = records(&vmapp, sample, "application");
        assert_eq!(apps.len(), 1, "{sample}: {apps:?}");
        assert_eq!(apps[0]["name"], c.application, "{sample}");
        assert_eq!(
            apps[0]["body"]["properties"]["supportedOSType"], c.os_type,
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
        for (action, command) in [
            ("install", c.install),
            ("update", c.update),
            ("remove", c.remove),
        ] {
            let got = profile["manageActions"][action]
                .as_str()
                .unwrap_or_default();
            assert_eq!(got, command, "{sample}: manage action {action}");
            assert!(got.chars().count() <= 4096, "{sample}: {action}");
        }
        assert_eq!(
            profile["settings"]["packageFileName"], c.package_file_name,
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

    // Attachments: the application on a VM or scale set with a user-assigned identity, order 1, and a failed
    // install failing the deployment wherever the tool can say so.
    for (file, targets) in ATTACHMENTS {
        let sample = sample(file);
        let sample = sample.as_str();
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
            assert_eq!(application, c.application, "{sample}");
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
            if file == "terraform/vmss.tf" {
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
        .filter(|s| s.starts_with(&format!("{}/", c.folder)))
        .collect();
    assert_eq!(cannot, [sample("terraform/vmss.tf")]);
}

#[test]
fn the_vm_application_samples_keep_the_contract() {
    keep_the_contract(&LINUX);
}

/// The Windows samples: the application `kvvm-windows` (Windows) beside Linux's `kvvm`, the same samples as Linux's
/// folder, and the same contract with the Windows package and commands.
#[test]
fn the_windows_vm_application_samples_keep_the_contract() {
    assert_eq!(
        folder_files(WINDOWS.folder),
        folder_files(LINUX.folder),
        "docs/deploy/vmapp-windows mirrors docs/deploy/vmapp"
    );
    keep_the_contract(&WINDOWS);
}

/// Copies docs/deploy/`folder`/`from` to `dir`/`folder`/`to`, after `edit`, which must change it.
fn broken_in(dir: &Path, folder: &str, from: &str, to: &str, edit: impl Fn(&str) -> String) {
    let good = std::fs::read_to_string(root().join("docs/deploy").join(folder).join(from)).unwrap();
    let bad = edit(&good);
    assert_ne!(bad, good, "the edit of {folder}/{from} changed nothing");
    let path = dir.join(folder).join(to);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bad).unwrap();
}

/// A broken Linux sample (docs/deploy/vmapp).
fn broken(dir: &Path, from: &str, to: &str, edit: impl Fn(&str) -> String) {
    broken_in(dir, LINUX.folder, from, to, edit);
}

/// A broken Windows sample (docs/deploy/vmapp-windows).
fn broken_windows(dir: &Path, from: &str, to: &str, edit: impl Fn(&str) -> String) {
    broken_in(dir, WINDOWS.folder, from, to, edit);
}

/// Each broken VM Application sample is refused by tests/deploy/vmapp.py, for the reason given.
#[test]
fn the_vm_application_mistakes_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path();
    for folder in [LINUX.folder, WINDOWS.folder] {
        std::fs::create_dir_all(docs.join(folder)).unwrap();
        for file in READ_BY_SAMPLES {
            std::fs::copy(
                root().join("docs/deploy").join(folder).join(file),
                docs.join(folder).join(file),
            )
            .unwrap();
        }
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
    let long = format!("'{} && {}'", LINUX.remove, "true && ".repeat(600));
    broken(
        docs,
        "bicep/gallery.bicep",
        "bicep/long-remove.bicep",
        |s| s.replace(&format!("'{}'", LINUX.remove), &long),
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

    // Windows: the application published as a Linux one (Windows VMs could not use it).
    broken_windows(docs, "arm/gallery.json", "arm/linux-os-type.json", |s| {
        s.replace(
            "\"supportedOSType\": \"Windows\"",
            "\"supportedOSType\": \"Linux\"",
        )
    });
    // Windows: the Linux install command copied over (it differs from vmapp-windows/manage-actions.json).
    broken_windows(
        docs,
        "bicep/gallery.bicep",
        "bicep/linux-install.bicep",
        |s| {
            s.replace(
                &format!("install: '{}'", WINDOWS.install),
                &format!("install: '{}'", LINUX.install),
            )
        },
    );
    // Windows: the Linux package file name (the manage actions run kvvm.exe, which would not be there).
    broken_windows(docs, "terraform/gallery.tf", "terraform/tarball.tf", |s| {
        s.replace(
            "package_file           = \"kvvm.exe\"",
            "package_file           = \"kvvm.tar.gz\"",
        )
    });
    // Windows: the Linux application attached to a Windows VM.
    broken_windows(docs, "arm/vm.json", "arm/linux-application.json", |s| {
        s.replace(
            "parameters('galleryName'), 'kvvm-windows', parameters('version'))]",
            "parameters('galleryName'), 'kvvm', parameters('version'))]",
        )
    });
    // Windows: the Windows application on a Linux VM (Terraform) and a Linux scale set (Bicep).
    broken_windows(docs, "terraform/vm.tf", "terraform/linux-vm.tf", |s| {
        s.replace(
            "resource \"azurerm_windows_virtual_machine\" \"web\"",
            "resource \"azurerm_linux_virtual_machine\" \"web\"",
        )
    });
    broken_windows(docs, "bicep/vmss.bicep", "bicep/linux-vmss.bicep", |s| {
        s.replace(
            "        windowsConfiguration: {\n          provisionVMAgent: true\n          enableAutomaticUpdates: true\n        }\n",
            "        linuxConfiguration: {\n          disablePasswordAuthentication: false\n        }\n",
        )
    });

    let Extracted { vmapp, errors, .. } = extract_all(docs);
    let refused_in = |folder: &str, name: &str, reason: &str| {
        let found: Vec<&String> = errors
            .iter()
            .filter(|e| e.starts_with(&format!("{folder}/{name}:")))
            .collect();
        assert!(
            found.iter().any(|e| e.contains(reason)),
            "{folder}/{name} should be refused for {reason:?}: {found:#?}"
        );
    };
    let refused = |name: &str, reason: &str| refused_in(LINUX.folder, name, reason);
    let refused_windows = |name: &str, reason: &str| refused_in(WINDOWS.folder, name, reason);
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
    refused_windows(
        "arm/linux-os-type.json",
        "supportedOSType is 'Linux', not 'Windows'",
    );
    refused_windows(
        "bicep/linux-install.bicep",
        "manage action install is 'tar -xzf kvvm.tar.gz",
    );
    refused_windows(
        "terraform/tarball.tf",
        "settings.packageFileName is 'kvvm.tar.gz', not 'kvvm.exe'",
    );
    refused_windows(
        "arm/linux-application.json",
        "attaches 0 kvvm-windows gallery applications",
    );
    refused_windows(
        "terraform/linux-vm.tf",
        "a Windows sample's machines are azurerm_windows_virtual_machine",
    );
    refused_windows(
        "bicep/linux-vmss.bicep",
        "has an osProfile.linuxConfiguration: it is a Linux machine",
    );
    // Nothing else was refused, and the unbroken files still pass.
    assert_eq!(errors.len(), 18, "{errors:#?}");
    for folder in [LINUX.folder, WINDOWS.folder] {
        assert!(
            vmapp
                .iter()
                .any(|r| r["sample"] == format!("{folder}/manage-actions.json")),
            "{vmapp:?}"
        );
    }
}
