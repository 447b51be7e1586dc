//! The Windows package end to end (issue 25's "done means"): a simulated Windows guest agent installs and
//! enables `dist/Microsoft.Azure.KeyVault.KeyVaultForWindows-<version>.zip` under Wine in the VM-like
//! namespace; the service runs; certificates from the fake vault land in the stores their settings name (read
//! back through crypt32 and in Wine's registry); a rotation adds the new thumbprint beside the old one; bad
//! settings get the Linux-quality error while the service keeps running; disable stops the service and
//! uninstall deletes it, and the certificates stay.

use std::path::Path;
use std::time::Duration;

use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{KeyType, PemLayout};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::{Fakes, VAULT_HOST};
use kvvm_sim::windows::{
    Format, WindowsExtension, WineMachine, registry_certificates, rsa_secret, thumbprint, wait_for,
};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the service may take to install what the settings ask for (it polls every 2 s here).
const PATIENCE: Duration = Duration::from_secs(90);

fn url(name: &str) -> String {
    format!("https://{VAULT_HOST}/secrets/{name}")
}

/// The substatus message of certificate `name` in `status`, once it is installed.
fn installed(status: &Value, name: &str) -> Option<String> {
    let item = status[0]["status"]["substatus"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == url(name))?;
    (item["status"] == "success").then(|| {
        item["formattedMessage"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    })
}

/// `kvvm status --json`'s `worker`.
fn worker(ext: &WindowsExtension<'_>) -> Value {
    let ran = ext.kvvm(&["status", "--json"]);
    let report: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("kvvm status --json is JSON ({e}): {ran:#?}"));
    report["worker"].clone()
}

fn supervision(ext: &WindowsExtension<'_>) -> String {
    worker(ext)["supervision"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_windows_agent_installs_the_package_whose_service_keeps_certificates_in_their_stores() {
    run_isolated(
        "the_windows_agent_installs_the_package_whose_service_keeps_certificates_in_their_stores",
        || {
            let fakes = Fakes::start(&[VAULT_HOST]);
            let pki = tempfile::tempdir().unwrap();
            // RSA keys: Wine's PFX import refuses EC keys, which Windows imports (docs/windows/verify.ps1).
            let web = rsa_secret(&fakes, pki.path(), "web", "web.example.com", Format::Pem);
            let api = rsa_secret(&fakes, pki.path(), "api", "api.example.com", Format::Pfx);
            let (web1, api1) = (thumbprint(&web.leaf), thumbprint(&api.leaf));

            let machine = WineMachine::new();
            let zip = kvvm_sim::dist(&format!(
                "{}-{VERSION}.zip",
                kvvm_sim::windows::HANDLER_NAME
            ));
            let ext = WindowsExtension::unpack(&machine, &zip, VERSION);
            // v3 objects, one per store; the machine's stores, as a web server's certificates are.
            ext.write_settings(
                0,
                json!({"secretsManagementSettings": {
                    "pollingIntervalInS": "2",
                    "linkOnRenewal": true,
                    "observedCertificates": [
                        {"url": url("web"), "certificateStoreName": "MY", "certificateStoreLocation": "LocalMachine"},
                        {"url": url("api"), "certificateStoreName": "WebHosting",
                         "certificateStoreLocation": "LocalMachine"},
                    ]}}),
            );
            let context = || {
                format!(
                    "status: {:?}\nhandler.log:\n{}\nsupervisor.log:\n{}\nkvvm.log:\n{}\nworker.stderr.log:\n{}",
                    ext.status(0),
                    ext.log("handler.log"),
                    ext.log("supervisor.log"),
                    ext.log("kvvm.log"),
                    ext.log("worker.stderr.log")
                )
            };

            ext.run("install", 0).assert_success("install");
            let enabled = ext.run("enable", 0);
            enabled.assert_success("enable");
            assert!(enabled.stdout.contains("worker started"), "{enabled:#?}");
            assert!(machine.service_exists("kvvm"), "enable creates the service");

            // The service installs both: the leaf with its key in the named store, named by its thumbprint.
            let (web_message, api_message) = wait_for(
                "both certificates installed",
                PATIENCE,
                || {
                    let status = ext.status(0)?;
                    Some((installed(&status, "web")?, installed(&status, "api")?))
                },
                context,
            );
            assert!(
                web_message.contains(&format!(r"Cert:\LocalMachine\MY\{web1}")),
                "{web_message}"
            );
            assert!(
                api_message.contains(&format!(r"Cert:\LocalMachine\WebHosting\{api1}")),
                "{api_message}"
            );
            // The test chains' roots are not trusted on this machine (kvvm never adds one): the status says so.
            assert!(
                web_message.contains(&format!(
                    r"its chain's root ({}) is not in LocalMachine\Root",
                    thumbprint(&web.root)
                )),
                "{web_message}"
            );
            assert_eq!(supervision(&ext), "running");
            let my = machine.certificates("LocalMachine", "MY");
            assert!(
                my.contains(&(web1.clone(), true)),
                "MY holds the leaf with its key: {my:?}"
            );
            let hosting = machine.certificates("LocalMachine", "WebHosting");
            assert_eq!(
                hosting.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                vec![&api1],
                "{hosting:?}"
            );
            // Intermediates go to CA; a root is never added to Root (trust stays the administrator's).
            let ca = machine.certificates("LocalMachine", "CA");
            assert!(
                ca.iter().any(|(t, _)| *t == thumbprint(&web.intermediate)),
                "{ca:?}"
            );
            let root = machine.certificates("LocalMachine", "Root");
            assert!(
                !root.iter().any(|(t, _)| *t == thumbprint(&web.root)),
                "{root:?}"
            );

            // A rotation: the new version goes beside the old one, and the status names the new one.
            let renewed = web.renew("2", KeyType::Rsa(2048), 180).unwrap();
            fakes.vault.put_secret(
                VAULT_HOST,
                "web",
                SecretValue::pem(renewed.pem(PemLayout::default()).unwrap()),
            );
            let web2 = thumbprint(&renewed.leaf);
            let rotated = wait_for(
                "the renewed certificate installed",
                PATIENCE,
                || installed(&ext.status(0)?, "web").filter(|m| m.contains(&web2)),
                context,
            );
            // The status names both thumbprints.
            assert!(
                rotated.contains(&format!(
                    r"file Cert:\LocalMachine\MY\{web2}; replaced Cert:\LocalMachine\MY\{web1}"
                )),
                "{rotated}"
            );
            // linkOnRenewal: the old version now names the new one as its renewal; the replace notification IIS
            // follows needs PowerShell, which this machine lacks, so the status gives the appcmd line instead.
            assert!(
                rotated.contains(&format!("linked as the renewal of {web1} (linkOnRenewal)"))
                    && rotated.contains("the certificate replace notification was not raised (")
                    && rotated.contains(&format!(
                        "appcmd renew binding /oldcert:{web1} /newcert:{web2}"
                    )),
                "{rotated}"
            );
            let my = machine.certificates("LocalMachine", "MY");
            for thumb in [&web1, &web2] {
                assert!(my.iter().any(|(t, _)| t == thumb), "{thumb} in MY: {my:?}");
            }

            // A poller that dies is restarted by the service, and installs nothing again.
            let poller = worker(&ext)["pollerPid"].as_u64().unwrap().to_string();
            machine
                .run(
                    "taskkill.exe",
                    &["/F", "/PID", &poller],
                    Path::new("/"),
                    &[],
                )
                .assert_success("taskkill");
            let restarted = wait_for(
                "the poller restarted",
                PATIENCE,
                || {
                    let now = worker(&ext);
                    (now["restarts"] == 1 && now["pollerPid"] != poller.parse::<u64>().unwrap())
                        .then_some(now)
                },
                context,
            );
            assert!(
                restarted["lastExit"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("exited with code"),
                "{restarted}"
            );
            let before = machine.certificates("LocalMachine", "MY");
            wait_for(
                "a check by the new poller",
                PATIENCE,
                || (worker(&ext)["updated"] != restarted["updated"]).then_some(()),
                context,
            );
            assert_eq!(machine.certificates("LocalMachine", "MY"), before);

            // Bad settings: the error names the setting, the value and the fix; the service keeps running.
            ext.write_settings(
                1,
                json!({"secretsManagementSettings": {"observedCertificates": [
                    {"url": url("web"), "certificateStoreName": "MY", "certificateStoreLocation": "localmachine"}]}}),
            );
            let refused = ext.run("enable", 1);
            assert_eq!(refused.code, Some(1), "{refused:#?}");
            for words in ["certificateStoreLocation", "localmachine", "LocalMachine"] {
                assert!(refused.stdout.contains(words), "{words}: {refused:#?}");
            }
            let status = ext.status(1).expect("Status\\1.status");
            assert_eq!(status[0]["status"]["status"], "error", "{status}");
            assert_eq!(
                supervision(&ext),
                "running",
                "the service keeps the old settings"
            );

            // disable stops the service; uninstall deletes it. Certificates stay.
            let disabled = ext.run("disable", 1);
            disabled.assert_success("disable");
            assert_eq!(supervision(&ext), "stopped", "{disabled:#?}");
            assert!(machine.service_exists("kvvm"), "disable keeps the service");
            ext.run("uninstall", 1).assert_success("uninstall");
            assert!(
                !machine.service_exists("kvvm"),
                "uninstall deletes the service"
            );
            let my = machine.certificates("LocalMachine", "MY");
            for thumb in [&web1, &web2] {
                assert!(my.iter().any(|(t, _)| t == thumb), "{thumb} kept: {my:?}");
            }

            // And in Wine's registry, as Windows keeps a store.
            let system = machine.shut_down();
            let registry = registry_certificates(&system, "MY");
            for thumb in [&web1, &web2] {
                assert!(
                    registry.contains(thumb),
                    "{thumb} in system.reg: {registry:?}"
                );
            }
            assert!(registry_certificates(&system, "WebHosting").contains(&api1));
        },
    );
}
