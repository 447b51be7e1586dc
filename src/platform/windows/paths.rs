//! Seam (c), paths: where things are on a Windows host. The standalone service's files (a VM Application's
//! kvvm, outside the guest agent) live in `%ProgramData%\kvvm`, where Windows keeps services' data.

/// The standalone service's settings file, unless `KVVM_SETTINGS` names another.
pub const SERVICE_SETTINGS: &str = r"C:\ProgramData\kvvm\settings.json";
/// The standalone service's state folder (locks, `state.json`, status, heartbeat), unless `KVVM_STATE_DIR`.
pub const SERVICE_STATE_DIR: &str = r"C:\ProgramData\kvvm\state";
/// The standalone service's log folder, unless `KVVM_LOG_DIR`.
pub const SERVICE_LOG_DIR: &str = r"C:\ProgramData\kvvm\logs";
/// How an administrator tells the standalone service its settings file changed.
pub(crate) const SERVICE_RELOAD: &str = "sc.exe control kvvm paramchange";

/// Where the trusted roots are, as messages name them.
pub(crate) const TRUST_STORE: &str =
    r"the LocalMachine\Root store, or SSL_CERT_FILE / SSL_CERT_DIR";

/// The folder where the Azure Arc agent (himds) writes the key files its challenge names:
/// `%ProgramData%\AzureConnectedMachineAgent\Tokens`.
pub(crate) const ARC_KEY_DIR: &str = r"C:\ProgramData\AzureConnectedMachineAgent\Tokens";
