//! Windows: certificates go into a certificate store ([`cert_store`], behind [`Destination`]); the host's paths
//! ([`paths`]); the worker's Windows service, as the service control manager sees it ([`service`]) and as it
//! runs (`keeper`: the service's own side, which keeps the poller running); the poller's process tuning
//! ([`process`]).

mod cert_destination;
pub(crate) mod cert_store;
pub(crate) mod chain;
mod keeper;
pub(crate) mod key_acl;
mod lifecycle;
pub(crate) mod paths;
pub(crate) mod process;
pub(crate) mod service;
pub(crate) mod vmapp;

pub(crate) use cert_destination::{Destination, DestinationError};
pub(crate) use keeper::{Keeper, KeeperError as KeepAliveError};

/// `GetLastError()`.
fn last_error() -> u32 {
    // SAFETY: no preconditions.
    unsafe { windows_sys::Win32::Foundation::GetLastError() }
}

/// `text` as a NUL-terminated UTF-16 string.
fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The text of a NUL-terminated UTF-16 string.
///
/// # Safety
/// `text` points at a NUL-terminated UTF-16 string.
unsafe fn from_wide(text: *const u16) -> String {
    let mut len = 0;
    // SAFETY: reads up to the caller's NUL terminator.
    while unsafe { *text.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units before the terminator.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) })
}

#[cfg(test)]
mod tests {
    //! The whole path a certificate takes on Windows, short of the worker: a managed-identity token from IMDS,
    //! Key Vault's challenge answered over TLS trusted through Windows' Root store, the secret fetched and
    //! decoded, and the version imported into the certificate store its settings name, by the same check
    //! (`sync::check`) the Linux worker runs. scripts/windows.sh runs this under Wine in the VM-like network
    //! namespace, with the fake IMDS at 169.254.169.254 and the fake vault at https://myvault.vault.azure.net
    //! (kvvm-sim), and sets KVVM_WINDOWS_VAULT to that vault.

    use std::sync::Arc;

    use super::Destination;
    use super::cert_store::CertStore;
    use crate::http::Stop;
    use crate::identity::Identity;
    use crate::platform::CertificateDestination;
    use crate::settings::parse_public_settings;
    use crate::sync::{Known, SyncOptions, check};
    use crate::vault::VaultClient;

    #[test]
    fn a_certificate_from_the_vault_lands_in_the_store_its_settings_name() {
        let _keys = super::cert_store::tests::one_key_at_a_time();
        let Ok(vault) = std::env::var("KVVM_WINDOWS_VAULT") else {
            eprintln!(
                "skipped: KVVM_WINDOWS_VAULT is not set (scripts/windows.sh sets it when it runs the fakes)"
            );
            return;
        };
        let store_name = format!("kvvm-test-vault-{:016x}", fastrand::u64(..));
        let settings = parse_public_settings(&serde_json::json!({
            "secretsManagementSettings": {
                "certificateStoreLocation": "CurrentUser",
                "certificateStoreName": store_name,
                "observedCertificates": [format!("{}/secrets/web", vault.trim_end_matches('/'))],
            }
        }))
        .unwrap();
        let cert = &settings.observed_certificates[0];
        let identity = Identity::for_user(None, None).unwrap();
        let client = VaultClient::new(Arc::new(identity)).unwrap();
        let state = tempfile::tempdir().unwrap();
        let options = SyncOptions {
            acl_enabled: false,
            retained_versions: u32::MAX,
            lock_dir: Destination::lock_folder(state.path()),
            link_on_renewal: false,
        };

        let first = check(&client, cert, Known::default(), &options, &Stop::default()).unwrap();
        assert_eq!(first.version.len(), 32, "{}", first.version);
        assert!(first.changed, "{first:?}");
        assert!(first.not_after.is_some(), "decoded: {first:?}");
        let store = format!(r"Cert:\CurrentUser\{store_name}");
        assert_eq!(first.link.display().to_string(), store);
        let file = first.file.display().to_string();
        let thumbprint = file.strip_prefix(&format!(r"{store}\")).unwrap();
        let opened = CertStore::open(cert.store_location.location, &store_name).unwrap();
        assert_eq!(opened.thumbprints(), vec![thumbprint.to_string()]);

        // The next check of the same version finds it in the store: nothing decoded, nothing imported.
        let known = Known {
            version: Some(&first.version),
            has_not_after: true,
        };
        let second = check(&client, cert, known, &options, &Stop::default()).unwrap();
        assert!(!second.changed, "{second:?}");
        assert_eq!(second.not_after, None, "not decoded again: {second:?}");
        assert_eq!(second.file, first.file);
        assert_eq!(opened.thumbprints().len(), 1);
    }
}
