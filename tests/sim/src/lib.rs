//! Test doubles that behave like the real services kvvm talks to: the Linux guest agent (waagent), the Azure
//! Instance Metadata Service / Azure Arc identity endpoint, and Azure Key Vault. Used by kvvm's integration
//! tests in-process, and by `make demo` through the `kvvm-sim` binary. `wireserver` and `realagent` let the
//! real guest agent (WALinuxAgent) drive the package instead of the simulator (tests/real_agent.rs).

pub mod httpserver;
pub mod imds;
pub mod meminfo;
pub mod netns;
pub mod pki;
pub mod realagent;
pub mod tls;
pub mod vault;
pub mod waagent;
pub mod wireserver;

/// The package `make package` builds: `dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-<version>.zip` at the
/// workspace root, `<version>` from the root `Cargo.toml`. Panics with the fix when it is missing.
pub fn built_package() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).expect("read the root Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("a version in the root Cargo.toml");
    let zip = root.join(format!(
        "dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-{version}.zip"
    ));
    assert!(
        zip.is_file(),
        "{} is missing: run `make package` first (make test does)",
        zip.display()
    );
    zip
}
