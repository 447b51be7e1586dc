//! Uninstall and kvvm's state folder (`<waagent>/Microsoft.Azure.KeyVault.KeyVaultForLinux/`: worker lock,
//! pid, state.json, store-locks/): the uninstall that leaves no version of the extension installed removes it,
//! and the certificates stay; the old version's uninstall during an update (the new version's directory is
//! there) keeps it for the new worker.
//!
//! The packaged extension runs under the waagent simulator in the VM-like network namespace, as in
//! tests/lifecycle.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvvm::store::{Install, Store, lock_folder};
use kvvm_sim::netns::run_isolated;
use kvvm_sim::waagent::{Agent, Extension, Settings, Verb};
use serde_json::json;

const NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
const VERSION: &str = "0123456789abcdef0123456789abcdef";

/// waagent's folders in a temp dir; every worker started under it is killed at the end.
struct Vm {
    dir: tempfile::TempDir,
    agent: Agent,
}

impl Vm {
    fn new() -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::new(&dir.path().join("lib"), &dir.path().join("log"));
        Vm { dir, agent }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join(NAME)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn settings(&self) -> Settings {
        Settings::public(json!({
            "secretsManagementSettings": {
                "pollingIntervalInS": "3600",
                "certificateStoreLocation": self.store(),
                "observedCertificates": ["https://myvault.vault.azure.net/secrets/c1"],
            }
        }))
    }

    fn install(&self) -> Extension {
        let run = self
            .agent
            .install_and_enable(&kvvm_sim::built_package(), 0, &self.settings())
            .unwrap();
        assert!(run.ok(), "{}", run.describe());
        run.extension.unwrap()
    }

    /// A certificate installed the way the worker does it: the store's lock goes to the state folder.
    fn install_certificate(&self) -> PathBuf {
        let store = Store::open(&self.store(), &lock_folder(&self.data_dir())).unwrap();
        let done = store
            .install(&Install {
                file_prefix: "myvault.c1",
                link_name: "myvault.c1",
                version: VERSION,
                pem: b"-----BEGIN CERTIFICATE-----\n...\n",
                acls: &[],
                retained_versions: 2,
            })
            .unwrap();
        assert!(lock_folder(&self.data_dir()).is_dir());
        done.link
    }

    /// Live `kvvm worker` processes whose binary lives under this VM's root.
    fn workers(&self) -> Vec<u32> {
        let root = self.root();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.first().is_some_and(|a| {
                Path::new(std::str::from_utf8(a).unwrap_or("")).starts_with(&root)
            });
            let alive = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            });
            if ours && args.get(1) == Some(&&b"worker"[..]) && alive {
                found.push(pid);
            }
        }
        found
    }

    fn wait_workers(&self, count: usize) {
        for _ in 0..500 {
            if self.workers().len() == count {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("expected {count} worker(s), found {:?}", self.workers());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for pid in self.workers() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_last_uninstall_removes_the_state_folder_and_keeps_the_certificates() {
    run_isolated(
        "the_last_uninstall_removes_the_state_folder_and_keeps_the_certificates",
        || {
            let vm = Vm::new();
            let ext = vm.install();
            vm.wait_workers(1);
            let link = vm.install_certificate();
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
            let vm = Vm::new();
            let old = vm.install();
            vm.wait_workers(1);
            let link = vm.install_certificate();
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
                .update_unpacked(&old, new, 0, &vm.settings())
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
