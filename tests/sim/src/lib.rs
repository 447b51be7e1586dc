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
pub mod windows;
pub mod wireserver;

/// The file `name` that `make package` writes into `dist/` at the workspace root. Panics with the fix when it
/// is missing.
pub fn dist(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make package` first (make test does)",
        path.display()
    );
    path
}

/// The package `make package` builds: `dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-<version>.zip`,
/// `<version>` the workspace's (`[workspace.package]` in the root `Cargo.toml`, which this crate inherits).
/// Panics with the fix when it is missing.
pub fn built_package() -> std::path::PathBuf {
    dist(&format!(
        "Microsoft.Azure.KeyVault.KeyVaultForLinux-{}.zip",
        env!("CARGO_PKG_VERSION")
    ))
}
