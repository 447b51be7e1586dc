//! Windows: the certificate replace notification, which IIS's "Enable Automatic Rebind of Renewed Certificate"
//! follows. IIS 8.5+ registers a scheduled task (`\Microsoft\Windows\CertificateServicesClient\IIS-AutoCertRebind`)
//! on event 1001 of `Microsoft-Windows-CertificateServicesClient-Lifecycle-System/Operational` ("a certificate
//! has been replaced", with the old and the new thumbprints), which runs `appcmd renew binding /oldcert:<old>
//! /newcert:<new>`. The supported way for software other than autoenrollment to raise that event is the PKI
//! module's `Switch-Certificate -NotifyOnly` ("generates a replacement notification without changing a renewal
//! property of the old certificate": kvvm sets the renewal property itself, `linkOnRenewal`), so kvvm runs it
//! with Windows PowerShell, by its full path, with a timeout.
//!
//! The script is a constant; the two certificates reach it through its environment, never spliced into it.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::names::StoreLocation;

/// How long `Switch-Certificate` may take (loading the PKI module is most of it) before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variables that hand the script the two certificates' paths: given as data, never spliced
/// into the script, so no store name can change what PowerShell runs.
pub(crate) const OLD_VAR: &str = "KVVM_REPLACED_CERTIFICATE";
/// See [`OLD_VAR`].
pub(crate) const NEW_VAR: &str = "KVVM_REPLACING_CERTIFICATE";

/// The PowerShell that raises the replace notification for the certificates at `$env:` [`OLD_VAR`] and
/// [`NEW_VAR`] (drive paths, as [`cert_path`] makes them), then writes [`DONE`]: any error stops it before.
pub(crate) const SWITCH_SCRIPT: &str = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; \
     Import-Module PKI; Switch-Certificate -OldCert (Get-Item -LiteralPath $env:KVVM_REPLACED_CERTIFICATE) \
     -NewCert (Get-Item -LiteralPath $env:KVVM_REPLACING_CERTIFICATE) -NotifyOnly -Confirm:$false; \
     Write-Output 'kvvm: the replace notification is raised'";

/// What [`SWITCH_SCRIPT`] writes once `Switch-Certificate` returned. An exit code of 0 alone proves nothing: a
/// `powershell.exe` that is not Windows PowerShell (Wine's is a stub that runs nothing) exits 0 too.
pub(crate) const DONE: &str = "kvvm: the replace notification is raised";

/// A certificate's path on PowerShell's certificate drive.
pub(crate) fn cert_path(location: StoreLocation, store: &str, thumbprint: &str) -> String {
    format!("Cert:\\{}\\{store}\\{thumbprint}", location.as_str())
}

/// Windows PowerShell, by its full path (never found through `PATH`: kvvm runs as SYSTEM).
pub(super) fn powershell() -> PathBuf {
    let root = std::env::var_os("SystemRoot").unwrap_or_else(|| "C:\\Windows".into());
    PathBuf::from(root).join("System32\\WindowsPowerShell\\v1.0\\powershell.exe")
}

/// Raises the replace notification for `old` → `new` in `location\store`. `Err`: why not, for the status.
pub(crate) fn notify_replaced(
    location: StoreLocation,
    store: &str,
    old: &str,
    new: &str,
) -> Result<(), String> {
    let program = powershell();
    let mut child = Command::new(&program)
        .args([
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-Command",
            SWITCH_SCRIPT,
        ])
        .env(OLD_VAR, cert_path(location, store, old))
        .env(NEW_VAR, cert_path(location, store, new))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{} could not be started: {e}", program.display()))?;
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .map(|stream| {
        std::thread::spawn(move || {
            // Read to the end (a full pipe would stall PowerShell), keep the start; lossy: PowerShell may write
            // in the console's code page.
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes.truncate(4096);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    match status {
        Some(status) if status.success() && stdout.lines().any(|l| l.trim() == DONE) => Ok(()),
        Some(status) if status.success() => Err(format!(
            "{} exited without running Switch-Certificate (it did not write what the script writes after it{}{})",
            program.display(),
            if stderr.is_empty() { "" } else { ": " },
            stderr
        )),
        Some(status) => Err(format!(
            "Switch-Certificate -NotifyOnly failed ({status}{}{stderr})",
            if stderr.is_empty() { "" } else { ": " }
        )),
        None => Err(format!(
            "Switch-Certificate -NotifyOnly did not finish within {} s and was stopped",
            TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_takes_both_certificates_from_its_environment() {
        assert!(SWITCH_SCRIPT.ends_with(&format!("Write-Output '{DONE}'")));
        assert!(SWITCH_SCRIPT.contains(&format!(
            "Switch-Certificate -OldCert (Get-Item -LiteralPath $env:{OLD_VAR}) -NewCert (Get-Item -LiteralPath \
             $env:{NEW_VAR}) -NotifyOnly -Confirm:$false"
        )));
        assert_eq!(
            cert_path(StoreLocation::LocalMachine, "MY", "AA11"),
            "Cert:\\LocalMachine\\MY\\AA11"
        );
        // A store's name is data: quotes of any kind stay in the path.
        assert_eq!(
            cert_path(StoreLocation::CurrentUser, "Bob\u{2019}s 'web'", "AA"),
            "Cert:\\CurrentUser\\Bob\u{2019}s 'web'\\AA"
        );
    }
}
