//! The package's aarch64 (arm64) build, checked for function on this x86_64 machine: it runs under
//! `qemu-aarch64-static` (Debian's qemu-user-static, installed by `make deps`), says which build it is, and
//! `kvvm sync --once` installs a real certificate from the fake Key Vault in the VM-like network namespace with
//! a token from the fake IMDS, exactly as the x86_64 build does in tests/worker_e2e.rs. And `bin/kvvm`, which
//! `handler` execs, picks the build by `uname -m` (x86_64, aarch64) and refuses any other architecture with a
//! message and exit code 3.
//!
//! Memory is measured on x86_64 only (`make bench`): under qemu an aarch64 process's RSS is qemu's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{Chain, KeyType, PfxVariant};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Fakes;
use kvvm_sim::waagent::{Agent, Extension};
use serde_json::json;

const HOST: &str = "myvault.vault.azure.net";
const QEMU: &str = "qemu-aarch64-static";

fn qemu() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(QEMU);
        if p.is_file() {
            return p;
        }
    }
    panic!("{QEMU} is missing: run `make deps` (it installs Debian's qemu-user-static)");
}

/// The package unpacked into a fresh directory (modes as waagent leaves them: u+x on every file).
fn unpacked(root: &Path) -> Extension {
    let agent = Agent::new(&root.join("lib"), &root.join("log"));
    agent.unpack(&kvvm_sim::built_package()).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn version_line(arch: &str) -> String {
    format!("kvvm {} ({arch})", env!("CARGO_PKG_VERSION"))
}

#[test]
fn the_aarch64_build_runs_under_qemu_and_names_its_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let ext = unpacked(dir.path());
    let bin = ext.dir.join("bin/kvvm-aarch64");
    let elf = fs::read(&bin).unwrap();
    // ELF e_machine (offset 18, little endian): 183 = EM_AARCH64.
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "not an aarch64 ELF"
    );
    let out = Command::new(qemu())
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        version_line("aarch64")
    );
}

/// One foreground cycle of the aarch64 build, as an operator runs it on an Arm64 VM: token from IMDS at
/// 169.254.169.254, the vault's challenge, TLS to the vault with the OS trust store, a P-521 Key Vault PFX (the
/// key type ring cannot load) and a P-256 PEM decoded, matched to their leaves and installed.
#[test]
fn the_aarch64_build_installs_real_certificates_with_sync_once() {
    run_isolated(
        "the_aarch64_build_installs_real_certificates_with_sync_once",
        || {
            let Fakes { imds, vault } = Fakes::start(&[HOST]);
            let pki = tempfile::tempdir().unwrap();
            let p521 = Chain::generate(
                &pki.path().join("p521"),
                "p521.example.com",
                KeyType::Ec("P-521"),
                90,
            )
            .unwrap();
            let p256 = Chain::generate(
                &pki.path().join("p256"),
                "p256.example.com",
                KeyType::Ec("P-256"),
                90,
            )
            .unwrap();
            let v521 = vault.put_secret(
                HOST,
                "arm521",
                SecretValue::pkcs12(&p521.pfx(PfxVariant::KeyVault).unwrap()),
            );
            let v256 = vault.put_secret(
                HOST,
                "arm256",
                SecretValue::pem(p256.pem(Default::default()).unwrap()),
            );

            let agent = Agent::new(Path::new("/var/lib/waagent"), Path::new("/var/log/azure"));
            let ext = agent.unpack(&kvvm_sim::built_package()).unwrap();
            agent.write_handler_environment(&ext).unwrap();
            let store = Path::new("/var/lib/waagent/kvvm-arm64-store");
            let public = json!({"secretsManagementSettings": {
                "pollingIntervalInS": "3600",
                "certificateStoreLocation": store,
                "observedCertificates": [
                    format!("https://{HOST}/secrets/arm521"),
                    format!("https://{HOST}/secrets/arm256"),
                ],
            }});
            agent.write_settings(&ext, 0, Some(&public), None).unwrap();

            let out = Command::new(qemu())
                .arg(ext.dir.join("bin/kvvm-aarch64"))
                .args(["sync", "--once"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let said = String::from_utf8_lossy(&out.stdout);
            for name in ["arm521", "arm256"] {
                assert!(
                    said.contains(&format!("OK      https://{HOST}/secrets/{name}")),
                    "{}",
                    text(&out)
                );
            }
            for (name, version, chain) in [("arm521", &v521, &p521), ("arm256", &v256, &p256)] {
                let link = store.join(format!("myvault.{name}"));
                assert_eq!(
                    fs::read_link(&link).unwrap(),
                    PathBuf::from(format!("myvault.{name}.{version}"))
                );
                // What was installed is the vault's chain and key, checked by openssl.
                let verify = Command::new("openssl")
                    .args(["verify", "-CAfile"])
                    .arg(&chain.root)
                    .arg("-untrusted")
                    .arg(&chain.intermediate)
                    .arg(&link)
                    .output()
                    .unwrap();
                assert!(verify.status.success(), "{}", text(&verify));
                let installed_key = Command::new("openssl")
                    .args(["pkey", "-pubout", "-in"])
                    .arg(&link)
                    .output()
                    .unwrap();
                let leaf_key = Command::new("openssl")
                    .args(["x509", "-noout", "-pubkey", "-in"])
                    .arg(&chain.leaf)
                    .output()
                    .unwrap();
                assert!(installed_key.status.success(), "{}", text(&installed_key));
                assert_eq!(installed_key.stdout, leaf_key.stdout, "{name}: key ≠ leaf");
            }
            assert!(imds.stats().token_requests >= 1);
        },
    );
}

/// Runs the packaged `handler` with `uname -m` answering `machine` (a `uname` first on PATH, as a machine of
/// that architecture would have).
fn handler_on(ext: &Extension, fake_bin: &Path, machine: &str, args: &[&str]) -> Output {
    fs::create_dir_all(fake_bin).unwrap();
    let uname = fake_bin.join("uname");
    fs::write(
        &uname,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -m ]; then echo {machine}; else exec /bin/uname \"$@\"; fi\n"
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&uname)
        .status()
        .unwrap();
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("'{}' \"$@\"", ext.dir.join("handler").display()))
        .arg("handler")
        .args(args)
        .current_dir("/")
        .env("PATH", format!("{}:/usr/bin:/bin", fake_bin.display()))
        .output()
        .unwrap()
}

#[test]
fn handler_runs_the_build_for_the_machine_and_refuses_other_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let ext = unpacked(dir.path());
    let fake = dir.path().join("fake-bin");

    for machine in ["x86_64", "amd64"] {
        let out = handler_on(&ext, &fake.join(machine), machine, &["--version"]);
        assert!(out.status.success(), "{machine}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            version_line("x86_64")
        );
    }

    // On aarch64 the handler execs bin/kvvm-aarch64. This x86_64 kernel runs it only where binfmt_misc hands
    // aarch64 ELF files to qemu; otherwise the exec fails, naming the file it tried.
    let out = handler_on(&ext, &fake.join("aarch64"), "aarch64", &["--version"]);
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    if binfmt {
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            version_line("aarch64")
        );
    } else {
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bin/kvvm-aarch64"), "{}", text(&out));
        assert!(!err.contains("no build"), "{}", text(&out));
        assert!(
            out.stdout.is_empty(),
            "the x86_64 build ran: {}",
            text(&out)
        );
    }

    for machine in ["ppc64le", "s390x", "armv7l", "riscv64"] {
        let out = handler_on(&ext, &fake.join(machine), machine, &["enable"]);
        assert_eq!(out.status.code(), Some(3), "{machine}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!(
                "kvvm: no build for this machine's architecture '{machine}' (uname -m): this package has \
                 x86_64 and aarch64 (arm64) builds only; use an x86_64 or Arm64 VM size"
            )
        );
        assert!(out.stdout.is_empty());
    }

    // A package that lost the build it needs says so instead of failing obscurely.
    fs::remove_file(ext.dir.join("bin/kvvm-aarch64")).unwrap();
    let out = handler_on(&ext, &fake.join("aarch64-missing"), "aarch64", &["enable"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "kvvm-aarch64 is missing: this package is incomplete; reinstall the extension"
        ),
        "{}",
        text(&out)
    );
}
