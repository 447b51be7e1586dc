//! `kvvm vmapp` on Linux: the Linux VM Application's actions are a script, `kvvm/vmapp.sh` in
//! `kvvm-vmapp-<version>.tar.gz`, which installs the .deb/.rpm package and lets systemd run `kvvm.service`.

use std::path::Path;

use crate::host::Service;

/// Why a VM Application action failed.
#[derive(Debug, thiserror::Error)]
pub enum VmAppError {
    /// Linux's VM Application is a script.
    #[error(
        "kvvm vmapp is the Windows VM Application's action; on Linux the application runs kvvm/vmapp.sh from \
         kvvm-vmapp-<version>.tar.gz (see docs/deploy/vmapp)"
    )]
    NotOnLinux,
}

impl VmAppError {
    /// A short fixed identifier for the log.
    pub fn reason(&self) -> &'static str {
        "vmapp-not-on-linux"
    }
}

/// See the Windows `vmapp::install`.
pub(crate) fn install(_config: &Path, _files: &Service) -> Result<Vec<String>, VmAppError> {
    Err(VmAppError::NotOnLinux)
}

/// See the Windows `vmapp::remove`.
pub(crate) fn remove(_files: &Service) -> Result<Vec<String>, VmAppError> {
    Err(VmAppError::NotOnLinux)
}
