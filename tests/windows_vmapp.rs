//! The Windows VM Application end to end, under Wine in the VM-like namespace: the VM Application manager
//! downloads `dist/kvvm-vmapp-<version>.exe` as `kvvm.exe` with a configuration, and runs the manage actions of
//! docs/deploy/vmapp-windows/manage-actions.json as it does (`cmd /c` in the download folder). install puts the
//! program under Program Files and the settings under ProgramData, registers the service `kvvm` and returns once
//! the initial sync is done; an update with a new configuration reloads the service without a restart; an
//! invalid one changes nothing; the KeyVaultForWindows extension and the application refuse to take each
//! other's service; remove deletes the service and kvvm's files and keeps the certificates.

use std::path::Path;

use kvvm_sim::netns::run_isolated;
use kvvm_sim::vm::{Fakes, VAULT_HOST};
use kvvm_sim::windows::{
    Format, VmApplication, WindowsExtension, WineMachine, rsa_secret, thumbprint,
};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const APP: &str = "kvvm-windows";

fn url(name: &str) -> String {
    format!("https://{VAULT_HOST}/secrets/{name}")
}

fn has(machine: &WineMachine, store: &str, thumb: &str) -> bool {
    machine
        .certificates("LocalMachine", store)
        .iter()
        .any(|(t, _)| t == thumb)
}

#[test]
fn the_vm_application_registers_the_service_which_keeps_certificates_until_it_is_removed() {
    run_isolated(
        "the_vm_application_registers_the_service_which_keeps_certificates_until_it_is_removed",
        || {
            let fakes = Fakes::start(&[VAULT_HOST]);
            let pki = tempfile::tempdir().unwrap();
            let web = rsa_secret(&fakes, pki.path(), "mycert", "web.example.com", Format::Pem);
            let api = rsa_secret(&fakes, pki.path(), "api", "api.example.com", Format::Pfx);
            let (web1, api1) = (thumbprint(&web.leaf), thumbprint(&api.leaf));
            let machine = WineMachine::new();
            let package = kvvm_sim::dist(&format!("kvvm-vmapp-{VERSION}.exe"));
            let program = format!(r"C:\Program Files\kvvm\{VERSION}\kvvm.exe");
            let settings_file = machine.host_path(r"C:\ProgramData\kvvm\settings.json");
            let status = || {
                let ran = machine.run(&program, &["status", "--json"], Path::new("/"), &[]);
                serde_json::from_str::<Value>(&ran.stdout)
                    .unwrap_or_else(|e| panic!("kvvm status --json is JSON ({e}): {ran:#?}"))
            };

            // install, with the sample configuration users start from (a user-assigned identity): the initial
            // sync is done when it returns.
            let first: Value = serde_json::from_slice(
                &std::fs::read(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("docs/deploy/vmapp-windows/kvvm-settings.json"),
                )
                .unwrap(),
            )
            .unwrap();
            // The machine has the identity the sample names.
            fakes.imds.add_user_identity(
                first["authenticationSettings"]["msiClientId"]
                    .as_str()
                    .unwrap(),
            );
            let v1 = VmApplication::download(&machine, APP, "1.0.0", &package, &first);
            let installed = v1.run("install");
            installed.assert_success("install");
            assert!(
                installed
                    .stdout
                    .contains("ready: initial sync done, 1 of 1 certificate(s) installed"),
                "{installed:#?}"
            );
            assert!(machine.service_exists("kvvm"), "{installed:#?}");
            assert!(machine.host_path(&program).is_file(), "{installed:#?}");
            assert_eq!(
                serde_json::from_slice::<Value>(&std::fs::read(&settings_file).unwrap()).unwrap(),
                first
            );
            assert!(has(&machine, "MY", &web1), "{installed:#?}");
            let report = status();
            assert_eq!(report["worker"]["supervision"], "running", "{report}");
            let service_pid = report["worker"]["supervisorPid"].clone();

            // update with a new configuration: the running service reloads it (the same process) and installs
            // the new certificate before the action returns.
            let second = json!({"secretsManagementSettings": {
                "pollingIntervalInS": "2", "requireInitialSync": true,
                "observedCertificates": [
                    {"url": url("mycert"), "certificateStoreName": "MY", "certificateStoreLocation": "LocalMachine"},
                    {"url": url("api"), "certificateStoreName": "WebHosting",
                     "certificateStoreLocation": "LocalMachine"}]}});
            let v2 = VmApplication::download(&machine, APP, "1.0.1", &package, &second);
            let updated = v2.run("update");
            updated.assert_success("update");
            assert!(
                updated.stdout.contains("told it to reload its settings")
                    && updated
                        .stdout
                        .contains("ready: initial sync done, 2 of 2 certificate(s) installed"),
                "{updated:#?}"
            );
            assert!(has(&machine, "WebHosting", &api1), "{updated:#?}");
            assert_eq!(status()["worker"]["supervisorPid"], service_pid);

            // An invalid configuration (a Linux store path on Windows): the action fails, saying what to fix,
            // and changes nothing.
            v2.write_config(
                &json!({"secretsManagementSettings": {"observedCertificates": [
                {"url": url("mycert"), "certificateStoreName": "MY",
                 "certificateStoreLocation": "/var/lib/waagent/Microsoft.Azure.KeyVault.Store"}]}}),
            );
            let refused = v2.run("update");
            assert_eq!(refused.code, Some(1), "{refused:#?}");
            for words in [
                "nothing changed",
                "certificateStoreLocation",
                "/var/lib/waagent/Microsoft.Azure.KeyVault.Store",
                "LocalMachine",
            ] {
                assert!(refused.stderr.contains(words), "{words}: {refused:#?}");
            }
            assert_eq!(
                serde_json::from_slice::<Value>(&std::fs::read(&settings_file).unwrap()).unwrap(),
                second
            );
            assert_eq!(status()["worker"]["supervision"], "running");

            // A new build of the program (here: the same one with a byte appended, which Windows ignores): the
            // update stops the service, replaces the program and starts it again.
            let rebuilt = tempfile::tempdir().unwrap();
            let mut binary = std::fs::read(&package).unwrap();
            binary.push(0);
            std::fs::write(rebuilt.path().join("kvvm.exe"), &binary).unwrap();
            let v3 = VmApplication::download(
                &machine,
                APP,
                "1.0.2",
                &rebuilt.path().join("kvvm.exe"),
                &second,
            );
            let upgraded = v3.run("update");
            upgraded.assert_success("update to a new build");
            assert!(
                upgraded.stdout.contains("to change its program")
                    && upgraded.stdout.contains("ready: initial sync done"),
                "{upgraded:#?}"
            );
            assert_eq!(std::fs::read(machine.host_path(&program)).unwrap(), binary);
            let report = status();
            assert_eq!(report["worker"]["supervision"], "running", "{report}");
            assert_ne!(report["worker"]["supervisorPid"], service_pid, "{report}");
            let service_pid = report["worker"]["supervisorPid"].clone();

            // One kvvm per machine: the extension does not take over the application's service.
            let zip = kvvm_sim::dist(&format!(
                "{}-{VERSION}.zip",
                kvvm_sim::windows::HANDLER_NAME
            ));
            let ext = WindowsExtension::unpack(&machine, &zip, VERSION);
            ext.write_settings(0, first.clone());
            let taken = ext.run("enable", 0);
            assert_eq!(taken.code, Some(1), "{taken:#?}");
            assert!(
                taken.stdout.contains("the kvvm VM Application's"),
                "{taken:#?}"
            );
            assert_eq!(status()["worker"]["supervisorPid"], service_pid);

            // remove: the service and kvvm's files go; the certificates stay.
            let removed = v3.run("remove");
            removed.assert_success("remove");
            assert!(!machine.service_exists("kvvm"), "{removed:#?}");
            for gone in [r"C:\Program Files\kvvm", r"C:\ProgramData\kvvm"] {
                assert!(!machine.host_path(gone).exists(), "{gone}: {removed:#?}");
            }
            assert!(has(&machine, "MY", &web1) && has(&machine, "WebHosting", &api1));

            // And the other way round: the application does not take over the extension's service.
            ext.run("enable", 0).assert_success("enable");
            let taken = v1.run("install");
            assert_eq!(taken.code, Some(1), "{taken:#?}");
            assert!(
                taken.stderr.contains("KeyVaultForWindows extension"),
                "{taken:#?}"
            );
            assert!(
                !machine.host_path(r"C:\ProgramData\kvvm").exists(),
                "{taken:#?}"
            );
            ext.run("uninstall", 0).assert_success("uninstall");
        },
    );
}
