//! Uninstall and kvvm's state folder (`<waagent>/Microsoft.Azure.KeyVault.KeyVaultForLinux/`: worker lock,
//! pid, state.json, store-locks/): the uninstall that leaves no version of the extension installed removes it,
//! and the certificates stay; the old version's uninstall during an update (the new version's directory is
//! there) keeps it for the new worker.
//!
//! The packaged extension runs under the waagent simulator in the VM-like network namespace, as in
//! tests/lifecycle.rs; the last test has the worker fetch a real certificate from the fake vault, as in
//! tests/worker_e2e.rs, so the store lock the worker takes is the one checked.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvvm::{
    Install, LEGACY_LOCK_FILE, LinkName, SecretRef, Store, Version, lock_file_name, lock_folder,
};
use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::KeyType;
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::{Settings, StatusValue, Verb};
use serde_json::json;

const NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
const VERSION: &str = "0123456789abcdef0123456789abcdef";

/// A certificate installed the way the worker does it: the store's lock goes to the state folder.
fn install_certificate(vm: &Vm) -> PathBuf {
    let store = Store::open(&vm.store(), &lock_folder(&vm.data_dir())).unwrap();
    let done = store
        .install(&Install {
            secret: &SecretRef {
                vault: "myvault".into(),
                name: "c1".into(),
            },
            link_name: &LinkName::parse("myvault.c1").unwrap(),
            version: &Version::parse(VERSION).unwrap(),
            pem: b"-----BEGIN CERTIFICATE-----\n...\n",
            acls: &[],
            retained_versions: 2,
            folder: &[],
        })
        .unwrap();
    assert!(lock_folder(&vm.data_dir()).is_dir());
    done.link
}

#[test]
fn the_last_uninstall_removes_the_state_folder_and_keeps_the_certificates() {
    run_isolated(
        "the_last_uninstall_removes_the_state_folder_and_keeps_the_certificates",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            vm.wait_workers(1);
            let link = install_certificate(&vm);
            let data = vm.data_dir();
            assert!(data.join("worker.lock").exists());

            let run = vm.agent.uninstall(&ext, 0).unwrap();
            assert!(run.ok(), "{}", run.describe());
            assert!(run.ignored.is_empty(), "{}", run.describe());
            let uninstall = run.result(&ext.version, Verb::Uninstall).unwrap();
            assert!(
                uninstall.stdout.contains(&format!(
                    "no other version is installed, so kvvm's state folder {} was removed",
                    data.display()
                )),
                "{}",
                uninstall.output
            );
            assert!(vm.workers().is_empty());
            assert!(!ext.dir.exists());
            assert!(!data.exists(), "the state folder is left behind");
            // Nothing else of kvvm's under waagent's folder.
            let left: Vec<String> = fs::read_dir(vm.root())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NAME))
                .collect();
            assert!(left.is_empty(), "{left:?}");
            // The certificates stay, link and file.
            assert_eq!(
                fs::read(&link).unwrap(),
                b"-----BEGIN CERTIFICATE-----\n...\n"
            );
            assert!(vm.store().join(format!("myvault.c1.{VERSION}")).is_file());
        },
    );
}

#[test]
fn the_old_versions_uninstall_during_an_update_keeps_the_state_folder() {
    run_isolated(
        "the_old_versions_uninstall_during_an_update_keeps_the_state_folder",
        || {
            let vm = Vm::offline();
            let old = vm.install(0);
            vm.wait_workers(1);
            let link = install_certificate(&vm);
            let data = vm.data_dir();
            let locks_before: Vec<_> = fs::read_dir(lock_folder(&data))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();

            let new = vm
                .agent
                .unpack_as(&kvvm_sim::built_package(), "99.0.0")
                .unwrap();
            let run = vm
                .agent
                .update_unpacked(
                    &old,
                    new,
                    0,
                    &vm.idle_settings(&["https://myvault.vault.azure.net/secrets/c1"]),
                )
                .unwrap();
            assert!(run.ok(), "{}", run.describe());
            let uninstall = run.result(&old.version, Verb::Uninstall).unwrap();
            assert!(
                uninstall.exit_code == Some(0) && !uninstall.stdout.contains("state folder"),
                "{}",
                uninstall.output
            );
            assert!(!old.dir.exists(), "waagent removed the old directory");
            assert!(data.is_dir(), "the update lost the state folder");
            let locks_after: Vec<_> = fs::read_dir(lock_folder(&data))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(locks_before, locks_after);
            // The new version's worker runs from it.
            vm.wait_workers(1);
            assert!(data.join("worker.lock").exists());

            // Then the new version is removed too: that is the last uninstall.
            let new = run.extension.unwrap();
            let run = vm.agent.uninstall(&new, 0).unwrap();
            assert!(run.ok(), "{}", run.describe());
            assert!(!data.exists(), "the state folder is left behind");
            assert!(fs::read(&link).is_ok(), "certificates stay");
        },
    );
}

#[test]
fn the_workers_store_lock_is_in_the_state_folder_and_goes_with_it() {
    run_isolated(
        "the_workers_store_lock_is_in_the_state_folder_and_goes_with_it",
        || {
            const HOST: &str = "myvault.vault.azure.net";
            // /var/lib/waagent is the namespace's own tmpfs: the agent and the store live there.
            let vm = Vm::new();
            let agent = &vm.agent;
            let chain = vm.chain("web", KeyType::Rsa(2048), 90);
            let version = vm.put_pem("web", &chain);
            let data = Path::new("/var/lib/waagent").join(NAME);
            let store = Path::new("/var/lib/waagent/ssl/kvvm");
            fs::create_dir_all(store).unwrap();
            // What an older kvvm left in the store.
            fs::write(store.join(LEGACY_LOCK_FILE), "").unwrap();
            let settings = Settings::public(json!({
                "secretsManagementSettings": {
                    "pollingIntervalInS": "3600",
                    "requireInitialSync": true,
                    "certificateStoreLocation": store,
                    "observedCertificates": [format!("https://{HOST}/secrets/web")],
                }
            }));
            let run = agent
                .install_and_enable(&kvvm_sim::built_package(), 0, &settings)
                .unwrap();
            assert!(run.ok(), "{}", run.describe());
            let ext = run.extension.unwrap();
            let status = agent
                .wait_status(&ext, 0, Duration::from_secs(30), |r| {
                    r.status != StatusValue::Transitioning
                })
                .unwrap();
            assert_eq!(status.status, StatusValue::Success, "{status:#?}");

            let mut names: Vec<String> = fs::read_dir(store)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(
                names,
                vec!["myvault.web".to_string(), format!("myvault.web.{version}")],
                "only the certificate and its link are in the store"
            );
            let lock = lock_folder(&data).join(lock_file_name(store));
            assert_eq!(
                fs::read_to_string(&lock).unwrap(),
                format!("{}\n", store.display())
            );

            let run = agent.uninstall(&ext, 0).unwrap();
            assert!(run.ok(), "{}", run.describe());
            assert!(!data.exists(), "the state folder is left behind");
            assert!(store.join("myvault.web").is_file(), "certificates stay");
            assert!(store.join(format!("myvault.web.{version}")).is_file());
        },
    );
}
