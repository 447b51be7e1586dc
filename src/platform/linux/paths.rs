//! Seam (c), paths: where things are on a Linux host. Every absolute path kvvm uses by default is here.

/// Where certificates go when neither the certificate nor `secretsManagementSettings` names a folder (the
/// Microsoft extension's store, so applications move over unchanged).
pub const DEFAULT_STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
/// The standalone service's settings file, unless `KVVM_SETTINGS` names another.
pub const SERVICE_SETTINGS: &str = "/etc/kvvm/settings.json";
/// The standalone service's state folder (locks, `state.json`, status, heartbeat), unless `KVVM_STATE_DIR`.
pub const SERVICE_STATE_DIR: &str = "/var/lib/kvvm";
/// The standalone service's log folder, unless `KVVM_LOG_DIR`.
pub const SERVICE_LOG_DIR: &str = "/var/log/kvvm";
/// How an administrator tells the standalone service its settings file changed.
pub(crate) const SERVICE_RELOAD: &str = "systemctl reload kvvm";
/// Where the trusted roots are, as messages name them.
pub(crate) const TRUST_STORE: &str = "/etc/ssl/certs, or SSL_CERT_FILE / SSL_CERT_DIR";
/// The folder where the Azure Arc agent writes the key files its challenge names.
pub(crate) const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";
