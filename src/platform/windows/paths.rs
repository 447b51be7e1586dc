//! Seam (c), paths: where things are on a Windows host.

/// The folder where the Azure Arc agent (himds) writes the key files its challenge names:
/// `%ProgramData%\AzureConnectedMachineAgent\Tokens`.
pub(crate) const ARC_KEY_DIR: &str = r"C:\ProgramData\AzureConnectedMachineAgent\Tokens";
