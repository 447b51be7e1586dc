//! Windows: certificates go into a certificate store ([`cert_store`]); the host's paths ([`paths`]). The
//! worker's keep-alive (a Windows service) comes with the layers above it.

pub(crate) mod cert_store;
pub(crate) mod paths;

#[cfg(test)]
mod tests {
    //! The whole path a certificate takes on Windows, short of the worker: a managed-identity token from IMDS,
    //! Key Vault's challenge answered over TLS trusted through Windows' Root store, the secret fetched and
    //! decoded, and the version imported into a certificate store. scripts/windows.sh runs this under Wine in
    //! the VM-like network namespace, with the fake IMDS at 169.254.169.254 and the fake vault at
    //! https://myvault.vault.azure.net (kvvm-sim), and sets KVVM_WINDOWS_VAULT to that vault.

    use std::sync::Arc;

    use url::Url;

    use super::cert_store::{CertStore, thumbprint};
    use crate::certificate::{CertificateBundle, ContentKind};
    use crate::http::{CHECK_DEADLINE, Deadline, Stop};
    use crate::identity::Identity;
    use crate::names::{LinkName, StoreLocation};
    use crate::vault::{SecretKind, VaultClient};

    #[test]
    fn a_certificate_from_the_vault_lands_in_the_store() {
        let Ok(vault) = std::env::var("KVVM_WINDOWS_VAULT") else {
            eprintln!(
                "skipped: KVVM_WINDOWS_VAULT is not set (scripts/windows.sh sets it when it runs the fakes)"
            );
            return;
        };
        let vault = Url::parse(&vault).unwrap();
        let identity = Identity::for_user(None, None).unwrap();
        let client = VaultClient::new(Arc::new(identity)).unwrap();
        let fetch = || {
            client
                .get_secret(
                    &vault,
                    "web",
                    None,
                    Deadline::after(CHECK_DEADLINE),
                    &Stop::default(),
                )
                .unwrap()
        };
        let secret = fetch();
        assert_eq!(secret.kind(), SecretKind::Pem);
        assert_eq!(secret.version.len(), 32, "{}", secret.version);
        let name = format!("myvault/web version {}", secret.version);
        let bundle =
            CertificateBundle::from_secret(&name, ContentKind::Pem, secret.value()).unwrap();

        let store_name = format!("kvvm-test-vault-{:016x}", fastrand::u64(..));
        let store = CertStore::open(StoreLocation::CurrentUser, &store_name).unwrap();
        let ca = CertStore::open(StoreLocation::CurrentUser, "CA").unwrap();
        let friendly = LinkName::parse("myvault.web").unwrap();
        let imported = store.import(&name, &bundle, &friendly, &ca).unwrap();
        assert!(imported.added);
        drop(store);
        let store = CertStore::open(StoreLocation::CurrentUser, &store_name).unwrap();
        assert_eq!(store.thumbprints(), vec![imported.thumbprint.clone()]);

        // The same version again: a second check finds it and imports nothing.
        let again = fetch();
        assert_eq!(again.version, secret.version);
        let leaf = CertificateBundle::from_secret(&name, ContentKind::Pem, again.value()).unwrap();
        let second = store.import(&name, &leaf, &friendly, &ca).unwrap();
        assert!(!second.added);
        assert_eq!(second.thumbprint, imported.thumbprint);
        let pem = leaf.leaf_pem();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
            .map(|d: rustls_pki_types::CertificateDer<'_>| thumbprint(&d))
            .unwrap();
        assert_eq!(der, imported.thumbprint);
    }
}
