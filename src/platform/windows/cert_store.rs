//! Windows: a certificate store of `LocalMachine` or `CurrentUser` (crypt32). A version is imported from the
//! PFX kvvm makes of it (`CertificateBundle::to_pkcs12`), keys persisted (`CRYPT_MACHINE_KEYSET` or
//! `CRYPT_USER_KEYSET`); the leaf, which carries the key, goes to the named store, its intermediates to the
//! location's `CA` store, and a root never to `Root` (trust stays the administrator's). Imports are idempotent by
//! thumbprint (the SHA-1 of the leaf's DER, as Windows names certificates): a version already in the store is
//! not imported again, and a new one is added beside the old one, as Microsoft's v3 does.

use super::{from_wide, last_error, wide};
use std::ffi::c_void;
use std::ptr;

use windows_sys::Win32::Security::Cryptography::{
    CERT_CONTEXT, CERT_FIND_SHA1_HASH, CERT_KEY_PROV_INFO_PROP_ID, CERT_RENEWAL_PROP_ID,
    CERT_STORE_ADD_USE_EXISTING, CERT_STORE_PROV_SYSTEM_REGISTRY_W, CERT_STORE_PROV_SYSTEM_W,
    CERT_SYSTEM_STORE_CURRENT_USER, CERT_SYSTEM_STORE_LOCAL_MACHINE, CRYPT_EXPORTABLE,
    CRYPT_INTEGER_BLOB, CRYPT_MACHINE_KEYSET, CRYPT_USER_KEYSET, CertAddCertificateContextToStore,
    CertCloseStore, CertDeleteCertificateFromStore, CertEnumCertificatesInStore,
    CertFindCertificateInStore, CertFreeCertificateContext, CertGetCertificateContextProperty,
    CertOpenStore, CertSetCertificateContextProperty, HCERTSTORE, PFXImportCertStore,
    PKCS_7_ASN_ENCODING, PKCS12_PREFER_CNG_KSP, X509_ASN_ENCODING,
};

use crate::certificate::{CertificateBundle, CertificateError};
use crate::names::{LinkName, StoreLocation};
use crate::settings::KeyOptions;

/// Why a certificate store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertStoreError {
    /// The store could not be opened (or created).
    #[error(
        "cannot open the certificate store {location}\\{store} (Windows error {code:#x}); run kvvm as SYSTEM or an \
         administrator for LocalMachine stores"
    )]
    Open {
        /// `LocalMachine` or `CurrentUser`.
        location: &'static str,
        /// The store's name.
        store: String,
        /// `GetLastError()`.
        code: u32,
    },
    /// The PFX kvvm made of the version could not be imported.
    #[error(
        "{name}: Windows refused to import it (PFXImportCertStore with PKCS12_PREFER_CNG_KSP, {}; without it, \
         {}); what was installed stays. Check that Windows supports its key (RSA of 2048 bits or more, or EC on \
         P-256, P-384 or P-521)",
        windows_error(*code),
        windows_error(*retried)
    )]
    Import {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// `GetLastError()` of the import with `PKCS12_PREFER_CNG_KSP`.
        code: u32,
        /// `GetLastError()` of the import without it.
        retried: u32,
    },
    /// No PFX could be made of the version.
    #[error(transparent)]
    Pfx(CertificateError),
    /// The PFX held no certificate with a private key.
    #[error("{name}: the imported PFX holds no certificate with its private key")]
    NoLeaf {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
    },
    /// A certificate could not be added to a store.
    #[error("{name}: cannot add a certificate to {location}\\{store} (Windows error {code:#x})")]
    Add {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// `LocalMachine` or `CurrentUser`.
        location: &'static str,
        /// The store's name.
        store: String,
        /// `GetLastError()`.
        code: u32,
    },
    /// The key's access for `accounts` could not be set (an unknown account, or the key refused it); the
    /// certificate was not added to its store.
    #[error("{name}: {source}; the certificate was not added, and what was installed before stays")]
    KeyAcl {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What went wrong.
        source: super::key_acl::KeyAclError,
    },
    /// A certificate for TLS server authentication whose chain does not validate; nothing was added.
    #[error("{name}: {source}; what was installed before stays")]
    Chain {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What is wrong with the chain.
        source: super::chain::ChainError,
    },
    /// An older version could not be removed (`retainedVersions`); it stays in the store.
    #[error(
        "cannot remove the older version {thumbprint} from {location}\\{store} ({error}); it stays installed \
         beside the newer ones",
        error = windows_error(*code)
    )]
    Remove {
        /// Its thumbprint.
        thumbprint: String,
        /// `LocalMachine` or `CurrentUser`.
        location: &'static str,
        /// The store's name.
        store: String,
        /// `GetLastError()`.
        code: u32,
    },
    /// The previous version could not be marked as renewed by the new one (`linkOnRenewal`).
    #[error(
        "cannot mark {old} in {location}\\{store} as renewed by {new} (CERT_RENEWAL_PROP_ID, {error}); both \
         stay installed, but bindings that name {old} keep presenting it: rebind them to {new}",
        error = windows_error(*code)
    )]
    Renewal {
        /// The previous version's thumbprint.
        old: String,
        /// The new version's thumbprint.
        new: String,
        /// `LocalMachine` or `CurrentUser`.
        location: &'static str,
        /// The store's name.
        store: String,
        /// `GetLastError()` (0: the previous version is no longer in the store).
        code: u32,
    },
}

/// `GetLastError()` in words for a message: the code, or that Windows gave none.
fn windows_error(code: u32) -> String {
    match code {
        0 => "without an error code".to_string(),
        code => format!("error {code:#x}"),
    }
}

impl CertStoreError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Open { .. } => "cert-store-open",
            Self::Pfx(e) => e.reason(),
            Self::Import { .. } => "cert-store-import",
            Self::NoLeaf { .. } => "cert-store-no-key",
            Self::Add { .. } => "cert-store-add",
            Self::Renewal { .. } => "renewal-link-failed",
            Self::Remove { .. } => "cert-store-remove",
            Self::KeyAcl { source, .. } => source.reason(),
            Self::Chain { source, .. } => source.reason(),
        }
    }
}

/// What [`CertStore::import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Imported {
    /// The leaf's thumbprint (upper-case hex SHA-1 of its DER, as `certutil` and PowerShell show it).
    pub(crate) thumbprint: String,
    /// Whether the leaf was added now (`false`: it was in the store already, nothing was imported).
    pub(crate) added: bool,
    /// Thumbprints of the intermediates added to the location's `CA` store now.
    pub(crate) intermediates: Vec<String>,
    /// The thumbprint of the root the chain ends in, which was left out (never added to `Root`).
    pub(crate) root: Option<String>,
    /// Who keeps the new key, as `<provider> (CNG)` or `<provider> (CryptoAPI)`; `None` when nothing was added.
    pub(crate) key_provider: Option<String>,
    /// What the status should say about the new key (a provider Windows would not use, an export policy it
    /// would not set), each a sentence.
    pub(crate) remarks: Vec<String>,
}

/// What a PFX import fell back on when Windows refused the first one (`PKCS12_PREFER_CNG_KSP`, error `first`).
#[derive(Debug, Clone, Copy)]
enum Fallback {
    /// The same PFX, without the flag.
    WithoutCngFlag { first: u32 },
    /// A PFX that names no key provider, with the flag.
    WithoutProvider { first: u32 },
}

impl Fallback {
    /// The status's words for it: `named`, the provider the vault's PFX named; `kept`, who keeps the key.
    fn remark(self, named: Option<&str>, kept: &str) -> String {
        match self {
            Fallback::WithoutCngFlag { first } => format!(
                "Windows refused to import it with PKCS12_PREFER_CNG_KSP ({}), so its key is kept by the \
                 provider its import picks without that flag: {kept}",
                windows_error(first)
            ),
            Fallback::WithoutProvider { first } => format!(
                "Windows could not import it with the key provider its PFX names ({:?}: {}), so its key is \
                 kept by {kept}",
                named.unwrap_or_default(),
                windows_error(first)
            ),
        }
    }
}

/// An open system store. Closed when dropped.
#[derive(Debug)]
pub(crate) struct CertStore {
    handle: HCERTSTORE,
    location: StoreLocation,
    name: String,
}

// SAFETY: a store handle may be used from any thread (crypt32 serialises access to a store).
unsafe impl Send for CertStore {}

impl Drop for CertStore {
    fn drop(&mut self) {
        // SAFETY: the handle came from CertOpenStore and is closed once.
        unsafe { CertCloseStore(self.handle, 0) };
    }
}

/// One certificate context, freed when dropped.
struct Context(*const CERT_CONTEXT);

impl Drop for Context {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the context came from crypt32 and is freed once.
            unsafe { CertFreeCertificateContext(self.0) };
        }
    }
}

impl Context {
    fn der(&self) -> &[u8] {
        // SAFETY: a live context points at its encoded certificate of cbCertEncoded bytes.
        unsafe {
            let c = &*self.0;
            std::slice::from_raw_parts(c.pbCertEncoded, c.cbCertEncoded as usize)
        }
    }

    /// Who keeps the certificate's key, from its key-provider property: `<provider> (CNG)` (provider type 0)
    /// or `<provider> (CryptoAPI)`.
    fn key_provider(&self) -> Option<String> {
        use windows_sys::Win32::Security::Cryptography::CRYPT_KEY_PROV_INFO;
        let mut size = 0u32;
        // SAFETY: asks only for the property's size.
        let ok = unsafe {
            CertGetCertificateContextProperty(
                self.0,
                CERT_KEY_PROV_INFO_PROP_ID,
                ptr::null_mut(),
                &mut size,
            )
        };
        if ok == 0 || (size as usize) < std::mem::size_of::<CRYPT_KEY_PROV_INFO>() {
            return None;
        }
        // u64 cells: aligned for the structure at the buffer's start.
        let mut buffer = vec![0u64; (size as usize).div_ceil(8)];
        // SAFETY: a buffer of at least `size` bytes.
        let ok = unsafe {
            CertGetCertificateContextProperty(
                self.0,
                CERT_KEY_PROV_INFO_PROP_ID,
                buffer.as_mut_ptr().cast::<c_void>(),
                &mut size,
            )
        };
        if ok == 0 {
            return None;
        }
        // SAFETY: Windows wrote a CRYPT_KEY_PROV_INFO at the start, its strings inside the same buffer.
        let info = unsafe { &*buffer.as_ptr().cast::<CRYPT_KEY_PROV_INFO>() };
        let provider = if info.pwszProvName.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string inside the buffer.
            unsafe { from_wide(info.pwszProvName) }
        };
        let kind = if info.dwProvType == 0 {
            "CNG"
        } else {
            "CryptoAPI"
        };
        Some(format!("{provider} ({kind})"))
    }

    fn has_private_key(&self) -> bool {
        let mut size = 0u32;
        // SAFETY: asks only for the property's size.
        unsafe {
            CertGetCertificateContextProperty(
                self.0,
                CERT_KEY_PROV_INFO_PROP_ID,
                ptr::null_mut(),
                &mut size,
            ) != 0
        }
    }
}

/// The DACL a key gets for `accounts` (the version `name`), each account resolved to its SID first.
fn key_access(name: &str, accounts: &[String]) -> Result<String, CertStoreError> {
    let readers = accounts
        .iter()
        .map(|account| super::key_acl::resolve(account))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertStoreError::KeyAcl {
            name: name.to_string(),
            source,
        })?;
    Ok(super::key_acl::key_dacl_sddl(&readers))
}

/// Imports a PFX with an empty password into a temporary store; `Err`: `GetLastError()`.
fn pfx_import(pfx: &[u8], flags: u32, location: StoreLocation) -> Result<CertStore, u32> {
    let blob = CRYPT_INTEGER_BLOB {
        cbData: pfx.len() as u32,
        pbData: pfx.as_ptr().cast_mut(),
    };
    let empty = wide("");
    // SAFETY: the blob and the password outlive the call; the temporary store is closed by CertStore's Drop.
    let handle = unsafe { PFXImportCertStore(&blob, empty.as_ptr(), flags) };
    if handle.is_null() {
        return Err(last_error());
    }
    Ok(CertStore {
        handle,
        location,
        name: "(imported PFX)".to_string(),
    })
}

/// The thumbprint Windows gives a certificate: the upper-case hex SHA-1 of its DER.
pub(crate) fn thumbprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    hex_upper(digest.as_ref())
}

/// A hash as Windows shows it: upper-case hex (the reverse of [`unhex`]).
fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

const ENCODING: u32 = X509_ASN_ENCODING | PKCS_7_ASN_ENCODING;

impl CertStore {
    /// Opens the system store `name` of `location`, creating it if it does not exist (any name is a store, as
    /// `certutil -addstore` makes it).
    pub(crate) fn open(location: StoreLocation, name: &str) -> Result<CertStore, CertStoreError> {
        CertStore::open_with(CERT_STORE_PROV_SYSTEM_W, location, name)
    }

    /// Opens `name` of `location` with the store provider `provider` (the system store, or its registry part).
    fn open_with(
        provider: windows_sys::core::PCSTR,
        location: StoreLocation,
        name: &str,
    ) -> Result<CertStore, CertStoreError> {
        let flags = match location {
            StoreLocation::LocalMachine => CERT_SYSTEM_STORE_LOCAL_MACHINE,
            StoreLocation::CurrentUser => CERT_SYSTEM_STORE_CURRENT_USER,
        };
        let wide_name = wide(name);
        // SAFETY: the provider is the system store and its parameter a NUL-terminated UTF-16 name that
        // outlives the call.
        let handle =
            unsafe { CertOpenStore(provider, 0, 0, flags, wide_name.as_ptr().cast::<c_void>()) };
        if handle.is_null() {
            return Err(CertStoreError::Open {
                location: location.as_str(),
                store: name.to_string(),
                code: last_error(),
            });
        }
        Ok(CertStore {
            handle,
            location,
            name: name.to_string(),
        })
    }

    /// Whether a certificate with this thumbprint is in the store.
    pub(crate) fn contains(&self, thumbprint: &str) -> bool {
        self.find(thumbprint).is_some()
    }

    /// The certificate with this thumbprint, if the store holds it.
    fn find(&self, thumbprint: &str) -> Option<Context> {
        let hash = unhex(thumbprint)?;
        let blob = CRYPT_INTEGER_BLOB {
            cbData: hash.len() as u32,
            pbData: hash.as_ptr().cast_mut(),
        };
        // SAFETY: the blob points at the hash, which outlives the call; the result is freed by Context.
        let found = Context(unsafe {
            CertFindCertificateInStore(
                self.handle,
                ENCODING,
                0,
                CERT_FIND_SHA1_HASH,
                (&blob as *const CRYPT_INTEGER_BLOB).cast::<c_void>(),
                ptr::null(),
            )
        });
        (!found.0.is_null()).then_some(found)
    }

    /// The names (subjectAltName) of the certificate with this thumbprint; `None` when the store does not hold
    /// it.
    pub(crate) fn names_of(&self, thumbprint: &str) -> Option<Vec<String>> {
        self.find(thumbprint)
            .map(|c| crate::certificate::subject_alt_names(c.der()))
    }

    /// Removes the certificate `thumbprint` from the store; whether it was there. Its key stays where Windows
    /// keeps keys (as `certutil -delstore` leaves it).
    pub(crate) fn remove(&self, thumbprint: &str) -> Result<bool, CertStoreError> {
        // From the registry store the import added it to: a system store is a collection of physical stores,
        // and Wine's collection does not pass a removal on.
        let registry =
            CertStore::open_with(CERT_STORE_PROV_SYSTEM_REGISTRY_W, self.location, &self.name)?;
        let Some(context) = registry.find(thumbprint) else {
            return Ok(false);
        };
        // SAFETY: a live context, which the call frees whether it succeeds or not.
        let ok = unsafe { CertDeleteCertificateFromStore(context.0) };
        std::mem::forget(context);
        if ok == 0 {
            return Err(CertStoreError::Remove {
                thumbprint: thumbprint.to_string(),
                location: self.location.as_str(),
                store: self.name.clone(),
                code: last_error(),
            });
        }
        Ok(true)
    }

    /// The thumbprint the certificate `thumbprint` names as its renewal (`CERT_RENEWAL_PROP_ID`), if it has one.
    pub(crate) fn renewal_of(&self, thumbprint: &str) -> Option<String> {
        let context = self.find(thumbprint)?;
        let mut hash = [0u8; 20];
        let mut size = hash.len() as u32;
        // SAFETY: a live context; the buffer holds `size` bytes.
        let ok = unsafe {
            CertGetCertificateContextProperty(
                context.0,
                CERT_RENEWAL_PROP_ID,
                hash.as_mut_ptr().cast::<c_void>(),
                &mut size,
            )
        };
        (ok != 0 && size == 20).then(|| hex_upper(&hash))
    }

    /// Marks the certificate `old` as renewed by `new` (`CERT_RENEWAL_PROP_ID` = `new`'s SHA-1), so Schannel
    /// and http.sys bindings that name `old` present `new`. The store keeps the property with the certificate.
    pub(crate) fn link_renewal(&self, old: &str, new: &str) -> Result<(), CertStoreError> {
        let failed = |code| CertStoreError::Renewal {
            old: old.to_string(),
            new: new.to_string(),
            location: self.location.as_str(),
            store: self.name.clone(),
            code,
        };
        let context = self.find(old).ok_or_else(|| failed(0))?;
        let hash = unhex(new)
            .filter(|h| h.len() == 20)
            .ok_or_else(|| failed(0))?;
        let blob = CRYPT_INTEGER_BLOB {
            cbData: hash.len() as u32,
            pbData: hash.as_ptr().cast_mut(),
        };
        // SAFETY: a live context; the blob points at the hash, which outlives the call.
        let ok = unsafe {
            CertSetCertificateContextProperty(
                context.0,
                CERT_RENEWAL_PROP_ID,
                0,
                (&blob as *const CRYPT_INTEGER_BLOB).cast::<c_void>(),
            )
        };
        if ok == 0 {
            return Err(failed(last_error()));
        }
        Ok(())
    }

    /// The thumbprints of every certificate in the store.
    #[cfg(test)]
    pub(crate) fn thumbprints(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut previous: *const CERT_CONTEXT = ptr::null();
        loop {
            // SAFETY: enumeration frees the previous context and returns the next (null at the end).
            let next = unsafe { CertEnumCertificatesInStore(self.handle, previous) };
            if next.is_null() {
                return out;
            }
            // SAFETY: a live context from the enumeration.
            let der = unsafe {
                std::slice::from_raw_parts((*next).pbCertEncoded, (*next).cbCertEncoded as usize)
            };
            out.push(thumbprint(der));
            previous = next;
        }
    }

    /// Imports `bundle` (the version `name`): the leaf with its key into this store, with `friendly` as its
    /// friendly name, and its intermediates into `ca` (the location's `CA` store). Nothing is imported when the
    /// leaf's thumbprint is in this store already.
    pub(crate) fn import(
        &self,
        name: &str,
        bundle: &CertificateBundle,
        friendly: &LinkName,
        ca: &CertStore,
        key: &KeyOptions,
    ) -> Result<Imported, CertStoreError> {
        let chain = bundle.chain_der();
        let leaf_der = chain.first().ok_or_else(|| CertStoreError::NoLeaf {
            name: name.to_string(),
        })?;
        let leaf_thumbprint = thumbprint(leaf_der);
        if self.contains(&leaf_thumbprint) {
            return Ok(Imported {
                thumbprint: leaf_thumbprint,
                added: false,
                intermediates: Vec::new(),
                root: None,
                key_provider: None,
                remarks: Vec::new(),
            });
        }
        // Who may read the key, resolved before anything is imported: an unknown account changes nothing.
        let key_acl = if key.accounts.is_empty() {
            None
        } else {
            Some(key_access(name, &key.accounts)?)
        };
        // A certificate for TLS server authentication goes in only if its chain validates (Microsoft's v4):
        // checked before anything is imported, so a refused one leaves no key behind either.
        let mut chain_remarks = Vec::new();
        if crate::certificate::is_for_server_auth(leaf_der) {
            let machine = self.location == StoreLocation::LocalMachine;
            let remarks =
                super::chain::validate(chain, machine).map_err(|source| CertStoreError::Chain {
                    name: name.to_string(),
                    source,
                })?;
            chain_remarks = remarks;
        }
        // The PFX is kvvm's own (PBES2/AES, SHA-256 MAC, empty password), from whichever form the vault gave; it
        // names the provider the vault's PFX named for the key, if any.
        let pfx = bundle
            .to_pkcs12(name, friendly)
            .map_err(CertStoreError::Pfx)?;
        // The key persisted in the location's key set, exportable only when the settings ask, with the provider
        // Microsoft documents for PKCS12_PREFER_CNG_KSP: the one the PFX names (a CryptoAPI provider, from the
        // vault's PFX), otherwise the Microsoft Software Key Storage Provider (CNG).
        let mut flags = match self.location {
            StoreLocation::LocalMachine => CRYPT_MACHINE_KEYSET,
            StoreLocation::CurrentUser => CRYPT_USER_KEYSET,
        };
        if key.exportable {
            flags |= CRYPT_EXPORTABLE;
        }
        let (temp, fallback) = self.import_pfx(name, bundle, friendly, &pfx, flags)?;
        // Whether the chain the vault gave ends in a root, which is never added (whatever the PFX import does with
        // it: Windows returns it in the imported store, Wine leaves it out).
        let root = chain
            .iter()
            .skip(1)
            .find(|der| is_self_issued(der))
            .map(|der| thumbprint(der));
        let mut imported = Imported {
            thumbprint: leaf_thumbprint.clone(),
            added: false,
            intermediates: Vec::new(),
            root,
            key_provider: None,
            remarks: chain_remarks,
        };
        let mut previous: *const CERT_CONTEXT = ptr::null();
        loop {
            // SAFETY: as in `thumbprints`.
            let next = unsafe { CertEnumCertificatesInStore(temp.handle, previous) };
            if next.is_null() {
                break;
            }
            previous = next;
            let context = Context(next);
            let this = thumbprint(context.der());
            let target = if this == leaf_thumbprint && context.has_private_key() {
                // The new key gets its access before any store holds the certificate.
                if let Some(sddl) = &key_acl {
                    // SAFETY: a live context from the enumeration.
                    if let Err(source) = unsafe { super::key_acl::apply(context.0, sddl) } {
                        // The enumeration ends here: `context` frees the certificate it holds.
                        return Err(CertStoreError::KeyAcl {
                            name: name.to_string(),
                            source,
                        });
                    }
                }
                if key.exportable {
                    // SAFETY: a live context from the enumeration.
                    if let Err(why) = unsafe { super::key_acl::export_encrypted_only(context.0) } {
                        imported.remarks.push(format!(
                            "its key is exportable, but plaintext export could not be turned off: {why}"
                        ));
                    }
                }
                imported.key_provider = context.key_provider();
                self
            } else if this == leaf_thumbprint {
                // The leaf without its key: not what applications can use.
                std::mem::forget(context);
                continue;
            } else if is_self_issued(context.der()) {
                // A root: trust stays the administrator's.
                std::mem::forget(context);
                continue;
            } else {
                ca
            };
            if target.add(name, &context)? {
                if std::ptr::eq(target, self) {
                    imported.added = true;
                } else {
                    imported.intermediates.push(this);
                }
            }
            // The enumeration frees `previous` itself on the next call.
            std::mem::forget(context);
        }
        if let Some(fallback) = fallback
            && imported.added
        {
            imported.remarks.push(fallback.remark(
                bundle.key_provider(),
                imported.key_provider.as_deref().unwrap_or("unknown"),
            ));
        }
        if !imported.added && !self.contains(&leaf_thumbprint) {
            return Err(CertStoreError::NoLeaf {
                name: name.to_string(),
            });
        }
        Ok(imported)
    }

    /// Gives the private key of the certificate `thumbprint` (the version `name`, in this store) the access
    /// `accounts` asks for: SYSTEM and Administrators full control and each account read, nothing else (with no
    /// accounts, only SYSTEM and Administrators). For a version installed before its `accounts` changed.
    pub(crate) fn set_key_access(
        &self,
        name: &str,
        thumbprint: &str,
        accounts: &[String],
    ) -> Result<(), CertStoreError> {
        let sddl = key_access(name, accounts)?;
        let context = self
            .find(thumbprint)
            .ok_or_else(|| CertStoreError::NoLeaf {
                name: name.to_string(),
            })?;
        // SAFETY: a live context found in this open store.
        unsafe { super::key_acl::apply(context.0, &sddl) }.map_err(|source| {
            CertStoreError::KeyAcl {
                name: name.to_string(),
                source,
            }
        })
    }

    /// Imports kvvm's PFX of `bundle` (`pfx`, naming the vault's key provider if it named one) into a temporary
    /// store with `flags` and `PKCS12_PREFER_CNG_KSP`, Microsoft's provider rule. Where Windows refuses that:
    /// the same PFX without the flag, then one that names no provider with it (the named provider may not be
    /// one this machine has). What it fell back on, if anything.
    fn import_pfx(
        &self,
        name: &str,
        bundle: &CertificateBundle,
        friendly: &LinkName,
        pfx: &[u8],
        flags: u32,
    ) -> Result<(CertStore, Option<Fallback>), CertStoreError> {
        let first = match pfx_import(pfx, flags | PKCS12_PREFER_CNG_KSP, self.location) {
            Ok(temp) => return Ok((temp, None)),
            Err(code) => code,
        };
        let second = match pfx_import(pfx, flags, self.location) {
            Ok(temp) => return Ok((temp, Some(Fallback::WithoutCngFlag { first }))),
            Err(code) => code,
        };
        if bundle.key_provider().is_some() {
            let unnamed = bundle
                .to_pkcs12_without_key_provider(name, friendly)
                .map_err(CertStoreError::Pfx)?;
            if let Ok(temp) = pfx_import(&unnamed, flags | PKCS12_PREFER_CNG_KSP, self.location) {
                return Ok((temp, Some(Fallback::WithoutProvider { first })));
            }
        }
        Err(CertStoreError::Import {
            name: name.to_string(),
            code: first,
            retried: second,
        })
    }

    /// Adds `context` unless a certificate with its thumbprint is there; whether it was added.
    fn add(&self, name: &str, context: &Context) -> Result<bool, CertStoreError> {
        if self.contains(&thumbprint(context.der())) {
            return Ok(false);
        }
        // SAFETY: a live context; no copy is asked for.
        let ok = unsafe {
            CertAddCertificateContextToStore(
                self.handle,
                context.0,
                CERT_STORE_ADD_USE_EXISTING,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(CertStoreError::Add {
                name: name.to_string(),
                location: self.location.as_str(),
                store: self.name.clone(),
                code: last_error(),
            });
        }
        Ok(true)
    }
}

/// Whether a certificate names itself as its issuer (a root, or a self-signed leaf).
fn is_self_issued(der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(in crate::platform::windows) mod tests {
    //! Under Wine (scripts/windows.sh): Wine's crypt32 keeps its stores in its registry and implements the
    //! import, the stores and the look-ups these tests use. What it does not (every PFX key lands in one key
    //! container, LocalMachine key look-ups) only a real Windows machine shows: docs/windows/verify.ps1.

    use super::*;
    use crate::certificate::ContentKind;

    /// The PEM secret values scripts/windows/fixtures.sh made (`None`: not run through scripts/windows.sh).
    pub(in crate::platform::windows) fn fixture(name: &str) -> Option<CertificateBundle> {
        let Ok(dir) = std::env::var("KVVM_WINDOWS_FIXTURES") else {
            eprintln!("skipped: KVVM_WINDOWS_FIXTURES is not set (run scripts/windows.sh test)");
            return None;
        };
        let pem = std::fs::read_to_string(format!("{dir}\\{name}.pem")).expect("fixture");
        Some(CertificateBundle::from_secret(name, ContentKind::Pem, &pem).expect("bundle"))
    }

    /// A PFX secret value scripts/windows/fixtures.sh made (`<name>.b64`), as the vault gives it.
    fn fixture_pfx(name: &str) -> Option<CertificateBundle> {
        let dir = std::env::var("KVVM_WINDOWS_FIXTURES").ok()?;
        let value = std::fs::read_to_string(format!("{dir}\\{name}.b64")).expect("fixture");
        Some(CertificateBundle::from_secret(name, ContentKind::Pkcs12, &value).expect("bundle"))
    }

    /// The kind (`CNG`/`CAPI`) and DACL of the private key of the certificate `thumbprint` in `store`.
    pub(in crate::platform::windows) fn key_dacl_of(
        store: &CertStore,
        thumbprint: &str,
    ) -> (&'static str, String) {
        let context = store.find(thumbprint).expect("in the store");
        super::super::key_acl::tests::key_dacl(context.0).expect("the key's DACL")
    }

    /// Held by every test that imports a key. Wine's crypt32 puts every imported PFX key in one key container
    /// (REFERENCE.md §8), so a test that reads a key back (its export policy) must not see another test's
    /// import land in between.
    pub(in crate::platform::windows) fn one_key_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static KEYS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        KEYS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the private key of the certificate `thumbprint` in `store` can be exported: CryptoAPI's
    /// `CryptExportKey` of its `PRIVATEKEYBLOB` (Wine's `PFXExportCertStoreEx` is a stub).
    fn key_exports(store: &CertStore, thumbprint: &str) -> bool {
        use windows_sys::Win32::Security::Cryptography::{
            CRYPT_ACQUIRE_SILENT_FLAG, CryptAcquireCertificatePrivateKey, CryptDestroyKey,
            CryptExportKey, CryptGetUserKey, CryptReleaseContext, PRIVATEKEYBLOB,
        };
        let context = store.find(thumbprint).expect("in the store");
        // SAFETY: the context is live; every handle is released below; only the blob's size is asked for.
        unsafe {
            let (mut provider, mut spec, mut free) = (0usize, 0u32, 0i32);
            assert_ne!(
                CryptAcquireCertificatePrivateKey(
                    context.0,
                    CRYPT_ACQUIRE_SILENT_FLAG,
                    ptr::null(),
                    &mut provider,
                    &mut spec,
                    &mut free,
                ),
                0,
                "the certificate's key (error {:#x})",
                last_error()
            );
            let mut key = 0usize;
            // Wine may keep an imported key under the other key spec than the certificate's says.
            let found = [spec, 1, 2]
                .into_iter()
                .any(|spec| CryptGetUserKey(provider, spec, &mut key) != 0);
            assert!(
                found,
                "no key in the certificate's container (error {:#x})",
                last_error()
            );
            let mut size = 0u32;
            let exported =
                CryptExportKey(key, 0, PRIVATEKEYBLOB, 0, ptr::null_mut(), &mut size) != 0;
            eprintln!(
                "CryptExportKey of its private key: {}",
                if exported {
                    "exported".to_string()
                } else {
                    format!("refused ({:#x})", last_error())
                }
            );
            CryptDestroyKey(key);
            if free != 0 {
                CryptReleaseContext(provider, 0);
            }
            exported
        }
    }

    #[test]
    fn an_account_windows_does_not_know_is_named_and_nothing_is_added() {
        let Some(a) = fixture("a") else { return };
        let store = TestStore::new("account");
        let key = KeyOptions {
            accounts: vec!["Network Service".into(), "no-such-account-xyz".into()],
            ..KeyOptions::default()
        };
        let e = store.import("a", &a, &key).unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with(
                "myvault/web version a: accounts: \"no-such-account-xyz\" is not an account"
            ) && message
                .ends_with("the certificate was not added, and what was installed before stays"),
            "{message}"
        );
        assert_eq!(e.reason(), "key-acl-account-unknown");
        assert!(store.thumbprints().is_empty());
    }

    #[test]
    fn a_key_is_exportable_only_when_the_settings_ask() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b)) = (fixture("a"), fixture("b")) else {
            return;
        };
        let store = TestStore::new("export");
        let kept = store.import("a", &a, &KeyOptions::default()).unwrap();
        assert!(
            !key_exports(&store, &kept.thumbprint),
            "keyExportable is false by default"
        );
        let exportable = KeyOptions {
            exportable: true,
            ..KeyOptions::default()
        };
        let given = store.import("b", &b, &exportable).unwrap();
        assert!(
            key_exports(&store, &given.thumbprint),
            "keyExportable: true"
        );
    }

    /// A store of this test's own, so runs and tests do not see each other's certificates (Wine reuses pids, and
    /// its stores persist in the prefix's registry).
    #[test]
    fn each_fallback_says_what_windows_refused_and_who_keeps_the_key() {
        assert_eq!(
            Fallback::WithoutCngFlag { first: 0x8009_0016 }.remark(
                None,
                "Microsoft Enhanced Cryptographic Provider v1.0 (CryptoAPI)"
            ),
            "Windows refused to import it with PKCS12_PREFER_CNG_KSP (error 0x80090016), so its key is kept by \
             the provider its import picks without that flag: Microsoft Enhanced Cryptographic Provider v1.0 \
             (CryptoAPI)"
        );
        assert_eq!(
            Fallback::WithoutProvider { first: 0 }.remark(
                Some("Contoso HSM Provider"),
                "Microsoft Software Key Storage Provider (CNG)"
            ),
            "Windows could not import it with the key provider its PFX names (\"Contoso HSM Provider\": without \
             an error code), so its key is kept by Microsoft Software Key Storage Provider (CNG)"
        );
    }

    #[test]
    fn the_key_is_kept_by_the_provider_the_vault_names_and_otherwise_by_cng() {
        let _keys = one_key_at_a_time();
        let (Some(named), Some(unnamed)) = (fixture_pfx("c-capi"), fixture("a")) else {
            return;
        };
        assert_eq!(
            named.key_provider(),
            Some("Microsoft Enhanced RSA and AES Cryptographic Provider")
        );
        let store = TestStore::new("provider");
        // kvvm's PFX naming the vault's provider imports (its MAC computed again after naming it), with its key.
        let capi = store
            .import("capi", &named, &KeyOptions::default())
            .unwrap();
        eprintln!("named: {:?} {:?}", capi.key_provider, capi.remarks);
        assert!(capi.added);
        assert!(store.find(&capi.thumbprint).unwrap().has_private_key());
        assert!(
            capi.key_provider
                .as_deref()
                .is_some_and(|p| p.ends_with("(CryptoAPI)")),
            "{:?}",
            capi.key_provider
        );
        // A PFX naming none: CNG (PKCS12_PREFER_CNG_KSP), or, where Windows refuses that import (Wine 8 does),
        // the provider the import picks without it, and the status says why.
        let cng = store.import("a", &unnamed, &KeyOptions::default()).unwrap();
        eprintln!("unnamed: {:?} {:?}", cng.key_provider, cng.remarks);
        let provider = cng.key_provider.clone().expect("a key provider");
        let said: Vec<&String> = cng
            .remarks
            .iter()
            .filter(|r| r.contains("PKCS12_PREFER_CNG_KSP"))
            .collect();
        if provider.ends_with("(CNG)") {
            assert!(said.is_empty(), "{:?}", cng.remarks);
        } else {
            assert_eq!(said.len(), 1, "{:?}", cng.remarks);
            assert!(said[0].ends_with(&provider), "{:?}", cng.remarks);
        }
    }

    #[test]
    fn a_server_certificate_whose_chain_does_not_validate_is_refused_and_nothing_is_added() {
        let _keys = one_key_at_a_time();
        let Some(valid) = fixture("a") else {
            return;
        };
        let store = TestStore::new("chain");
        let refused = [
            (
                "e",
                "\"CN=kvvm Windows test intermediate without keyCertSign\" is not valid for its use here",
            ),
            (
                "f",
                "\"CN=web.example.com (c)\" breaks basic constraints (an issuer that is not a CA",
            ),
        ];
        for (leaf, said) in refused {
            let bundle = fixture(leaf).unwrap();
            let name = format!("myvault/web version {leaf}");
            let err = store
                .import(leaf, &bundle, &KeyOptions::default())
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, CertStoreError::Chain { .. }),
                "{leaf}: {text}"
            );
            assert_eq!(err.reason(), "chain-invalid");
            assert!(
                text.starts_with(&format!(
                    "{name}: its chain does not validate for TLS server authentication, so it was not added: "
                )) && text.contains(said)
                    && text.ends_with("; what was installed before stays"),
                "{leaf}: {text}"
            );
            // Nothing went in: not the leaf, not its issuer (in no other test's CA).
            assert!(!store.contains(&bundle_thumbprint(&bundle)), "{leaf}");
            let issuer = &bundle.chain_der()[1];
            let ca_now = CertStore::open(StoreLocation::CurrentUser, "CA").unwrap();
            assert!(
                !ca_now.contains(&thumbprint(issuer)),
                "{leaf}: its issuer went into CA"
            );
        }
        // A certificate for client authentication only is not checked: g (issued by c, no CA) goes in.
        let g = fixture("g").unwrap();
        let client = store.import("g", &g, &KeyOptions::default()).unwrap();
        assert!(client.added && store.contains(&client.thumbprint));
        // A valid server chain goes in, without a remark from the check (its root is only untrusted).
        let server = store.import("a", &valid, &KeyOptions::default()).unwrap();
        assert!(server.added && store.contains(&server.thumbprint));
        assert!(
            server.remarks.iter().all(|r| !r.contains("chain")),
            "{:?}",
            server.remarks
        );
    }

    fn test_store(tag: &str) -> String {
        format!("kvvm-test-{tag}-{:016x}", fastrand::u64(..))
    }

    /// A `CurrentUser` store of the test's own and that location's `CA` store, into which the test imports
    /// versions of `myvault/web` under the friendly name `myvault.web`. Reads as the store itself.
    struct TestStore {
        name: String,
        store: CertStore,
        ca: CertStore,
        friendly: LinkName,
    }

    impl TestStore {
        fn new(tag: &str) -> TestStore {
            let name = test_store(tag);
            TestStore {
                store: CertStore::open(StoreLocation::CurrentUser, &name).unwrap(),
                ca: CertStore::open(StoreLocation::CurrentUser, "CA").unwrap(),
                friendly: LinkName::parse("myvault.web").unwrap(),
                name,
            }
        }

        /// Imports `bundle` as `myvault/web version <version>`.
        fn import(
            &self,
            version: &str,
            bundle: &CertificateBundle,
            key: &KeyOptions,
        ) -> Result<Imported, CertStoreError> {
            let name = format!("myvault/web version {version}");
            self.store
                .import(&name, bundle, &self.friendly, &self.ca, key)
        }

        /// The same store through a handle opened anew: what crypt32 persisted, not the old handle's view.
        fn reopened(self) -> TestStore {
            let TestStore {
                name,
                store,
                ca,
                friendly,
            } = self;
            drop(store);
            TestStore {
                store: CertStore::open(StoreLocation::CurrentUser, &name).unwrap(),
                name,
                ca,
                friendly,
            }
        }
    }

    impl std::ops::Deref for TestStore {
        type Target = CertStore;

        fn deref(&self) -> &CertStore {
            &self.store
        }
    }

    fn bundle_thumbprint(bundle: &CertificateBundle) -> String {
        thumbprint(&bundle.chain_der()[0])
    }

    #[test]
    fn a_version_lands_in_the_named_store_once_and_its_intermediate_in_ca_but_never_its_root() {
        let _keys = one_key_at_a_time();
        let Some(a) = fixture("a") else { return };
        let store = TestStore::new("once");
        let root = CertStore::open(StoreLocation::CurrentUser, "Root").unwrap();
        let roots_before = root.thumbprints();

        let first = store.import("a", &a, &KeyOptions::default()).unwrap();
        assert!(first.added, "{first:?}");
        assert_eq!(first.thumbprint, bundle_thumbprint(&a));
        assert_eq!(store.thumbprints(), vec![first.thumbprint.clone()]);
        assert!(
            first.root.is_some(),
            "the chain's root is left out: {first:?}"
        );
        assert_eq!(root.thumbprints(), roots_before, "nothing is added to Root");
        // chain.pem's first certificate is the intermediate (the root follows it).
        let intermediate = thumbprint(&a.chain_der()[1]);
        assert!(
            store.ca.contains(&intermediate),
            "the intermediate is in CurrentUser\\CA"
        );
        assert!(
            first.intermediates.iter().all(|t| *t == intermediate),
            "only the intermediate went to CA: {first:?}"
        );

        // Read back through a store opened anew: what crypt32 persisted, not this handle's cache.
        let store = store.reopened();
        assert!(store.contains(&first.thumbprint));

        let again = store.import("a", &a, &KeyOptions::default()).unwrap();
        assert!(
            !again.added,
            "the same version is not imported twice: {again:?}"
        );
        assert_eq!(store.thumbprints().len(), 1);
    }

    #[test]
    fn a_new_version_is_added_beside_the_old_one() {
        let _keys = one_key_at_a_time();
        let (Some(a), Some(b)) = (fixture("a"), fixture("b")) else {
            return;
        };
        let store = TestStore::new("rotate");
        let old = store.import("a", &a, &KeyOptions::default()).unwrap();
        let new = store.import("b", &b, &KeyOptions::default()).unwrap();
        assert!(new.added);
        assert_ne!(old.thumbprint, new.thumbprint);
        let mut both = vec![old.thumbprint.clone(), new.thumbprint.clone()];
        both.sort();
        let mut found = store.thumbprints();
        found.sort();
        assert_eq!(found, both);
        assert!(
            new.intermediates.is_empty(),
            "the intermediate was there already: {new:?}"
        );
    }

    #[test]
    fn the_leaf_in_the_store_carries_its_private_key() {
        let _keys = one_key_at_a_time();
        let Some(b) = fixture("b") else { return };
        let store = TestStore::new("key");
        let imported = store.import("b", &b, &KeyOptions::default()).unwrap();
        let mut previous: *const CERT_CONTEXT = ptr::null();
        let mut with_key = Vec::new();
        loop {
            // SAFETY: as in `CertStore::thumbprints`.
            let next = unsafe { CertEnumCertificatesInStore(store.handle, previous) };
            if next.is_null() {
                break;
            }
            let context = Context(next);
            if context.has_private_key() {
                with_key.push(thumbprint(context.der()));
            }
            std::mem::forget(context);
            previous = next;
        }
        assert_eq!(with_key, vec![imported.thumbprint]);
    }

    #[test]
    fn thumbprints_are_the_upper_case_sha1_of_the_der() {
        // SHA-1 of the empty input.
        assert_eq!(thumbprint(b""), "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709");
    }
}
