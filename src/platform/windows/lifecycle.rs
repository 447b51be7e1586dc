//! Windows: the certificate replace notification, which IIS's "Enable Automatic Rebind of Renewed Certificate"
//! follows. IIS 8.5+ registers a scheduled task (`\Microsoft\Windows\CertificateServicesClient\IIS-AutoCertRebind`)
//! on event 1001 of `Microsoft-Windows-CertificateServicesClient-Lifecycle-System/Operational` ("a certificate
//! has been replaced", with the old and the new thumbprints), which runs `appcmd renew binding /oldcert:<old>
//! /newcert:<new>`. The supported way for software other than autoenrollment to raise that event is the PKI
//! module's `Switch-Certificate -NotifyOnly` ("generates a replacement notification without changing a renewal
//! property of the old certificate": kvvm sets the renewal property itself, `linkOnRenewal`), so kvvm runs it
//! with Windows PowerShell, by its full path, with a timeout.
//!
//! The script is one pure function ([`switch_script`]) so its exact text is pinned by a test.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::names::StoreLocation;

/// How long `Switch-Certificate` may take (loading the PKI module is most of it) before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A single-quoted PowerShell string of `text` (a quote is written twice).
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PowerShell that raises the replace notification for `old` → `new` (thumbprints) in `location\store`.
pub(crate) fn switch_script(location: StoreLocation, store: &str, old: &str, new: &str) -> String {
    let path = |thumbprint: &str| {
        quoted(&format!(
            "Cert:\\{}\\{store}\\{thumbprint}",
            location.as_str()
        ))
    };
    format!(
        "$ErrorActionPreference = 'Stop'; Import-Module PKI; Switch-Certificate -OldCert (Get-Item -LiteralPath \
         {}) -NewCert (Get-Item -LiteralPath {}) -NotifyOnly -Confirm:$false",
        path(old),
        path(new)
    )
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
        ])
        .arg(switch_script(location, store, old, new))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{} could not be started: {e}", program.display()))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(4096).read_to_string(&mut text);
        }
        text
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
    let stderr = reader.join().unwrap_or_default();
    let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    match status {
        Some(status) if status.success() => Ok(()),
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
    fn the_script_names_both_certificates_by_their_drive_paths() {
        assert_eq!(
            switch_script(StoreLocation::LocalMachine, "MY", "AA11", "BB22"),
            "$ErrorActionPreference = 'Stop'; Import-Module PKI; Switch-Certificate -OldCert (Get-Item \
             -LiteralPath 'Cert:\\LocalMachine\\MY\\AA11') -NewCert (Get-Item -LiteralPath \
             'Cert:\\LocalMachine\\MY\\BB22') -NotifyOnly -Confirm:$false"
        );
        // A quote in a store's name stays inside its string.
        assert!(
            switch_script(StoreLocation::CurrentUser, "it's", "AA", "BB")
                .contains("'Cert:\\CurrentUser\\it''s\\AA'")
        );
    }
}
