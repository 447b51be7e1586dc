//! Test doubles that behave like the real services kvvm talks to: the Linux guest agent (waagent), the Azure
//! Instance Metadata Service / Azure Arc identity endpoint, and Azure Key Vault. Used by kvvm's integration
//! tests in-process, and by `make demo` through the `kvvm-sim` binary. `wireserver` and `realagent` let the
//! real guest agent (WALinuxAgent) drive the package instead of the simulator (tests/real_agent.rs); `vm` puts
//! them together into the one simulated VM every end-to-end suite uses.

pub mod httpserver;
pub mod imds;
pub mod machine;
pub mod meminfo;
pub mod netns;
pub mod pki;
pub mod realagent;
pub mod tls;
pub mod vault;
pub mod vm;
pub mod waagent;
pub mod wireserver;

/// The package `make package` builds: `dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-<version>.zip` at the
/// workspace root, `<version>` the workspace's (`[workspace.package]` in the root `Cargo.toml`, which this crate
/// inherits). Panics with the fix when it is missing.
pub fn built_package() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let zip = root.join(format!(
        "dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-{}.zip",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        zip.is_file(),
        "{} is missing: run `make package` first (make test does)",
        zip.display()
    );
    zip
}
