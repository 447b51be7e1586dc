//! Windows: who may use a certificate's private key (`accounts`). SYSTEM and Administrators always keep Full
//! Control and each listed account gets read, as one protected DACL: on the key's own security descriptor for a
//! CNG key (`NCRYPT_SECURITY_DESCR_PROPERTY`), on its container's for a CAPI key (`PP_KEYSET_SEC_DESCR`).
//!
//! The descriptor is built as SDDL by one pure function ([`key_dacl_sddl`]) so its exact text is pinned by tests;
//! accounts become SIDs first ([`resolve`]), the service accounts by their well-known SIDs because Windows
//! localizes their names ("Network Service" is "Netzwerkdienst" on a German VM).

use super::{from_wide, last_error, wide};
use std::ffi::c_void;
use std::ptr;

use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, ERROR_NONE_MAPPED, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    ConvertStringSidToSidW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::Cryptography::{
    CERT_CONTEXT, CERT_NCRYPT_KEY_SPEC, CRYPT_ACQUIRE_ALLOW_NCRYPT_KEY_FLAG,
    CRYPT_ACQUIRE_SILENT_FLAG, CryptAcquireCertificatePrivateKey, CryptReleaseContext,
    CryptSetProvParam, NCRYPT_ALLOW_EXPORT_FLAG, NCRYPT_EXPORT_POLICY_PROPERTY,
    NCRYPT_PERSIST_FLAG, NCRYPT_SECURITY_DESCR_PROPERTY, NCryptFreeObject, NCryptGetProperty,
    NCryptSetProperty, PP_KEYSET_SEC_DESCR,
};
use windows_sys::Win32::Security::{
    DACL_SECURITY_INFORMATION, GetSecurityDescriptorLength, LookupAccountNameW,
    PSECURITY_DESCRIPTOR, PSID, SID_NAME_USE, SidTypeDeletedAccount, SidTypeDomain, SidTypeInvalid,
    SidTypeUnknown,
};

/// Why a private key's ACL could not be set. The caller adds which certificate it was.
#[derive(Debug, thiserror::Error)]
pub enum KeyAclError {
    /// An account in `accounts` that Windows cannot resolve to a SID.
    #[error(
        "accounts: {account:?} is not an account Windows knows ({}); give a local or domain account or group \
         Windows knows, e.g. \"Network Service\", \"IIS_IUSRS\" or \"CONTOSO\\\\web\"",
        windows_error(*code)
    )]
    UnknownAccount {
        /// The account, as written in the settings.
        account: String,
        /// `GetLastError()` of the look-up; `ERROR_NONE_MAPPED` when the name is a domain's or a deleted
        /// account's, which Windows resolves but which cannot be given access.
        code: u32,
    },
    /// The certificate's private key could not be opened.
    #[error(
        "cannot open the private key to set who may use it ({action}, {}); run kvvm as SYSTEM or an \
         administrator, and check that the certificate in the store still has its key",
        windows_error(*code)
    )]
    OpenKey {
        /// The call that failed.
        action: &'static str,
        /// `GetLastError()`.
        code: u32,
    },
    /// The key's security descriptor could not be built or set.
    #[error(
        "cannot set who may use the private key ({call}, {}); {}",
        windows_error(*code),
        set_fix(call)
    )]
    SetDescriptor {
        /// The call that failed: `NCryptSetProperty` (CNG), `CryptSetProvParam` (CAPI), or the SDDL conversion.
        call: &'static str,
        /// `GetLastError()`, or the `HRESULT` NCrypt returned.
        code: u32,
    },
}

impl KeyAclError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownAccount { .. } => "key-acl-account-unknown",
            Self::OpenKey { .. } => "key-acl-open-key",
            Self::SetDescriptor { .. } => "key-acl-set",
        }
    }
}

/// A CNG key imported exportable (`keyExportable`) gets the export policy `NCRYPT_ALLOW_EXPORT_FLAG` alone:
/// exportable in encrypted form (a password-protected PFX, as `Export-PfxCertificate` writes), never in
/// plaintext, which Windows' PFX import grants as well for persisted keys on some versions. A CAPI key has no
/// such distinction and is left as it is.
///
/// `Ok(true)`: a CNG key, whose policy reads back as encrypted export only. `Err(text)`: why the policy could not
/// be set (the key stays exportable as the import left it), for the status.
///
/// # Safety
/// `cert` is a live certificate context for the duration of the call.
pub(crate) unsafe fn export_encrypted_only(cert: *const CERT_CONTEXT) -> Result<bool, String> {
    // SAFETY: the caller's live context.
    let key = unsafe { PrivateKey::acquire(cert) }.map_err(|e| e.to_string())?;
    let PrivateKey::Cng { handle, .. } = key else {
        return Ok(false);
    };
    let policy: u32 = NCRYPT_ALLOW_EXPORT_FLAG;
    // SAFETY: a live key handle; the 4-byte policy outlives the call.
    let status = unsafe {
        NCryptSetProperty(
            handle,
            NCRYPT_EXPORT_POLICY_PROPERTY,
            (&policy as *const u32).cast::<u8>(),
            4,
            NCRYPT_PERSIST_FLAG,
        )
    };
    let mut read = 0u32;
    let mut size = 0u32;
    // SAFETY: a live key handle; a 4-byte buffer for the 4-byte property.
    let got = unsafe {
        NCryptGetProperty(
            handle,
            NCRYPT_EXPORT_POLICY_PROPERTY,
            (&mut read as *mut u32).cast::<u8>(),
            4,
            &mut size,
            0,
        )
    };
    match (status, got) {
        // What counts is the policy the key has now, whatever the setting call said.
        (_, 0) if read == policy => Ok(true),
        (0, 0) => Err(format!(
            "Windows kept its export policy {read:#x} instead of encrypted export only ({policy:#x})"
        )),
        (_, 0) => Err(format!(
            "NCryptSetProperty(NCRYPT_EXPORT_POLICY_PROPERTY) failed ({}); its export policy is {read:#x}",
            windows_error(status as u32)
        )),
        (_, code) => Err(format!(
            "its export policy could not be read back (NCryptGetProperty, {})",
            windows_error(code as u32)
        )),
    }
}

/// What to do when a descriptor could not be set: only the key's owner may; a descriptor Windows cannot parse is
/// kvvm's own bug.
fn set_fix(call: &str) -> &'static str {
    match call {
        "ConvertStringSecurityDescriptorToSecurityDescriptorW" => {
            "kvvm built a descriptor Windows rejects: please report this message as a bug"
        }
        _ => "run kvvm as SYSTEM or an administrator",
    }
}

/// A Windows error code in words for a message.
fn windows_error(code: u32) -> String {
    match code {
        0 => "without an error code".to_string(),
        code => format!("Windows error {code:#x}"),
    }
}

/// SYSTEM's SID, which SDDL calls `SY`.
const SYSTEM: &str = "S-1-5-18";
/// BUILTIN\Administrators' SID, which SDDL calls `BA`.
const ADMINISTRATORS: &str = "S-1-5-32-544";

/// The SDDL of the DACL a private key gets: protected (nothing inherited), Full Control (`GA`) for SYSTEM and
/// Administrators, then read (`GR`) for each of `readers` (SID strings, as [`resolve`] gives them) in their
/// order, each once, SYSTEM and Administrators not again. For example, with Network Service:
/// `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;S-1-5-20)`.
pub(crate) fn key_dacl_sddl(readers: &[String]) -> String {
    let mut sddl = String::from("D:P(A;;GA;;;SY)(A;;GA;;;BA)");
    let mut seen: Vec<String> = vec![SYSTEM.to_string(), ADMINISTRATORS.to_string()];
    for reader in readers {
        let sid = reader.trim().to_ascii_uppercase();
        debug_assert!(
            sid.starts_with("S-1-")
                && sid
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b'S'),
            "not a SID string: {reader:?}"
        );
        if seen.contains(&sid) {
            continue;
        }
        sddl.push_str(&format!("(A;;GR;;;{sid})"));
        seen.push(sid);
    }
    sddl
}

/// The well-known accounts kvvm resolves by SID, not by name (their names are localized): Network Service,
/// Local Service and SYSTEM, as `"Network Service"`, `"NetworkService"` or `"NT AUTHORITY\Network Service"`, in
/// any case.
fn well_known(account: &str) -> Option<&'static str> {
    let name = account.trim().to_lowercase();
    let name = name.strip_prefix(r"nt authority\").unwrap_or(&name);
    match name {
        "network service" | "networkservice" => Some("S-1-5-20"),
        "local service" | "localservice" => Some("S-1-5-19"),
        "system" | "local system" | "localsystem" => Some(SYSTEM),
        _ => None,
    }
}

/// The SID string (`S-1-5-20`) of `account`: a well-known service account by its SID, a SID string as it is
/// (once Windows has checked it), any other name as `LookupAccountNameW` resolves it (local, then domain).
pub(crate) fn resolve(account: &str) -> Result<String, KeyAclError> {
    if let Some(sid) = well_known(account) {
        return Ok(sid.to_string());
    }
    let unknown = |code: u32| KeyAclError::UnknownAccount {
        account: account.to_string(),
        code,
    };
    let trimmed = account.trim();
    if trimmed.is_empty() {
        return Err(unknown(ERROR_NONE_MAPPED));
    }
    if trimmed
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("S-1-"))
    {
        let text = wide(trimmed);
        let mut sid: PSID = ptr::null_mut();
        // SAFETY: a NUL-terminated UTF-16 string that outlives the call; the SID is LocalFree'd by `Local`.
        if unsafe { ConvertStringSidToSidW(text.as_ptr(), &mut sid) } == 0 {
            return Err(unknown(last_error()));
        }
        let sid = Local(sid);
        // SAFETY: a valid SID from ConvertStringSidToSidW.
        return unsafe { sid_string(sid.0) }.map_err(unknown);
    }
    let name = wide(trimmed);
    let mut sid_len = 0u32;
    let mut domain_len = 0u32;
    let mut kind: SID_NAME_USE = 0;
    // SAFETY: asks only for the sizes (null buffers of length 0).
    let sized = unsafe {
        LookupAccountNameW(
            ptr::null(),
            name.as_ptr(),
            ptr::null_mut(),
            &mut sid_len,
            ptr::null_mut(),
            &mut domain_len,
            &mut kind,
        )
    };
    if sized == 0 {
        let code = last_error();
        if code != ERROR_INSUFFICIENT_BUFFER || sid_len == 0 {
            return Err(unknown(code));
        }
    }
    // A SID's sub-authorities are u32s: a u32 buffer keeps it aligned.
    let mut sid = vec![0u32; (sid_len as usize).div_ceil(4)];
    let mut domain = vec![0u16; domain_len.max(1) as usize];
    // SAFETY: the buffers are at least as long as the sizes passed, which the first call asked for.
    let found = unsafe {
        LookupAccountNameW(
            ptr::null(),
            name.as_ptr(),
            sid.as_mut_ptr().cast::<c_void>(),
            &mut sid_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if found == 0 {
        return Err(unknown(last_error()));
    }
    if [
        SidTypeDomain,
        SidTypeDeletedAccount,
        SidTypeInvalid,
        SidTypeUnknown,
    ]
    .contains(&kind)
    {
        return Err(unknown(ERROR_NONE_MAPPED));
    }
    // SAFETY: LookupAccountNameW wrote a valid SID into the buffer.
    unsafe { sid_string(sid.as_mut_ptr().cast::<c_void>()) }.map_err(unknown)
}

/// `sid` as a SID string (`ConvertSidToStringSidW`), or the error code.
///
/// # Safety
/// `sid` points at a valid SID.
unsafe fn sid_string(sid: PSID) -> Result<String, u32> {
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: the caller's valid SID; the string is LocalFree'd by `Local`.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(last_error());
    }
    let text = Local(text.cast::<c_void>());
    // SAFETY: a NUL-terminated UTF-16 string from ConvertSidToStringSidW, alive until `text` is dropped.
    Ok(unsafe { from_wide(text.0.cast::<u16>()) })
}

/// Sets the DACL `sddl` (as [`key_dacl_sddl`] builds it) on the private key of `cert`: the key's own descriptor
/// for a CNG key, its container's for a CAPI key.
///
/// # Safety
/// `cert` is a live certificate context for the duration of the call.
pub(crate) unsafe fn apply(cert: *const CERT_CONTEXT, sddl: &str) -> Result<(), KeyAclError> {
    let descriptor = Descriptor::from_sddl(sddl)?;
    // SAFETY: the caller's live context.
    let key = unsafe { PrivateKey::acquire(cert) }?;
    match key {
        PrivateKey::Cng { handle, .. } => {
            // SAFETY: a live key handle; the descriptor of `len` bytes outlives the call.
            let status = unsafe {
                NCryptSetProperty(
                    handle,
                    NCRYPT_SECURITY_DESCR_PROPERTY,
                    descriptor.pointer.0.cast::<u8>(),
                    descriptor.len,
                    DACL_SECURITY_INFORMATION,
                )
            };
            if status != 0 {
                return Err(KeyAclError::SetDescriptor {
                    call: "NCryptSetProperty",
                    code: status as u32,
                });
            }
        }
        PrivateKey::Capi { handle, .. } => {
            // SAFETY: a live provider handle on the key's container; the descriptor outlives the call.
            let ok = unsafe {
                CryptSetProvParam(
                    handle,
                    PP_KEYSET_SEC_DESCR,
                    descriptor.pointer.0.cast::<u8>(),
                    DACL_SECURITY_INFORMATION,
                )
            };
            if ok == 0 {
                return Err(KeyAclError::SetDescriptor {
                    call: "CryptSetProvParam",
                    code: last_error(),
                });
            }
        }
    }
    Ok(())
}

/// A self-relative security descriptor made from SDDL, freed when dropped.
struct Descriptor {
    pointer: Local,
    len: u32,
}

impl Descriptor {
    fn from_sddl(sddl: &str) -> Result<Descriptor, KeyAclError> {
        let text = wide(sddl);
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        let mut len = 0u32;
        // SAFETY: a NUL-terminated UTF-16 string that outlives the call; the descriptor is LocalFree'd by `Local`.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                &mut len,
            )
        };
        if ok == 0 {
            return Err(KeyAclError::SetDescriptor {
                call: "ConvertStringSecurityDescriptorToSecurityDescriptorW",
                code: last_error(),
            });
        }
        let pointer = Local(descriptor);
        if len == 0 {
            // SAFETY: a valid descriptor from the conversion.
            len = unsafe { GetSecurityDescriptorLength(pointer.0) };
        }
        Ok(Descriptor { pointer, len })
    }
}

/// A certificate's private key, opened by `CryptAcquireCertificatePrivateKey`; released when dropped if the
/// call said the caller frees it.
enum PrivateKey {
    /// A CNG key handle (`CERT_NCRYPT_KEY_SPEC`).
    Cng { handle: usize, free: bool },
    /// A CAPI provider handle on the key's container.
    Capi { handle: usize, free: bool },
}

impl PrivateKey {
    /// # Safety
    /// `cert` is a live certificate context.
    unsafe fn acquire(cert: *const CERT_CONTEXT) -> Result<PrivateKey, KeyAclError> {
        let mut handle = 0usize;
        let mut spec = 0u32;
        let mut free = 0;
        // SAFETY: the caller's live context; the out-parameters are locals.
        let ok = unsafe {
            CryptAcquireCertificatePrivateKey(
                cert,
                CRYPT_ACQUIRE_ALLOW_NCRYPT_KEY_FLAG | CRYPT_ACQUIRE_SILENT_FLAG,
                ptr::null(),
                &mut handle,
                &mut spec,
                &mut free,
            )
        };
        if ok == 0 {
            return Err(KeyAclError::OpenKey {
                action: "CryptAcquireCertificatePrivateKey",
                code: last_error(),
            });
        }
        let free = free != 0;
        Ok(if spec == CERT_NCRYPT_KEY_SPEC {
            PrivateKey::Cng { handle, free }
        } else {
            PrivateKey::Capi { handle, free }
        })
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        match *self {
            // SAFETY: handles the caller must free, freed once, each by its own API.
            PrivateKey::Cng { handle, free: true } => unsafe {
                NCryptFreeObject(handle);
            },
            PrivateKey::Capi { handle, free: true } => unsafe {
                CryptReleaseContext(handle, 0);
            },
            _ => {}
        }
    }
}

/// Memory Windows allocated for the caller (a SID, a string, a descriptor), `LocalFree`'d when dropped.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: memory from a call that says to LocalFree it, freed once.
            unsafe { LocalFree(self.0) };
        }
    }
}

#[cfg(test)]
pub(in crate::platform::windows) mod tests {
    //! The SDDL is pinned exactly (pure); the account look-ups and the descriptor are Wine's advapi32, which
    //! implements them; the ACL on an imported key is Wine's rsaenh (CAPI). What only a real Windows machine
    //! shows (CNG key files, LocalMachine keys, localized names): docs/windows/verify.ps1.

    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use windows_sys::Win32::Security::Cryptography::{
        AT_KEYEXCHANGE, CERT_KEY_PROV_INFO_PROP_ID, CRYPT_DELETEKEYSET, CRYPT_KEY_PROV_INFO,
        CRYPT_NEWKEYSET, CRYPT_SILENT, CertCreateCertificateContext, CertFreeCertificateContext,
        CertSetCertificateContextProperty, CryptAcquireContextW, CryptDestroyKey, CryptGenKey,
        MS_ENHANCED_PROV_W, PKCS_7_ASN_ENCODING, PROV_RSA_FULL, X509_ASN_ENCODING,
    };

    use super::*;

    fn sids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_dacl_pins_full_control_for_system_and_administrators_and_read_for_each_reader() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
            (
                &["S-1-5-20"],
                "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;S-1-5-20)",
            ),
            (
                &["S-1-5-20", "S-1-5-32-568"],
                "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;S-1-5-20)(A;;GR;;;S-1-5-32-568)",
            ),
            (
                &["S-1-5-32-568", "S-1-5-20", "s-1-5-32-568", "S-1-5-20"],
                "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;S-1-5-32-568)(A;;GR;;;S-1-5-20)",
            ),
            (
                &["S-1-5-18", "S-1-5-19", "S-1-5-32-544"],
                "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;S-1-5-19)",
            ),
        ];
        for (readers, expected) in cases {
            assert_eq!(key_dacl_sddl(&sids(readers)), *expected, "{readers:?}");
        }
    }

    #[test]
    fn the_service_accounts_resolve_by_their_well_known_sids_in_any_spelling() {
        let cases = [
            ("Network Service", "S-1-5-20"),
            ("network service", "S-1-5-20"),
            (r"NT AUTHORITY\Network Service", "S-1-5-20"),
            (r"nt authority\NETWORK SERVICE", "S-1-5-20"),
            ("NetworkService", "S-1-5-20"),
            ("Local Service", "S-1-5-19"),
            (r"NT AUTHORITY\LocalService", "S-1-5-19"),
            ("LocalService", "S-1-5-19"),
            ("System", "S-1-5-18"),
            ("Local System", "S-1-5-18"),
            (r"NT AUTHORITY\SYSTEM", "S-1-5-18"),
        ];
        for (account, sid) in cases {
            assert_eq!(well_known(account), Some(sid), "{account}");
            assert_eq!(resolve(account).unwrap(), sid, "{account}");
        }
        assert_eq!(well_known("IIS_IUSRS"), None);
        assert_eq!(well_known(r"CONTOSO\Network Service"), None);
    }

    #[test]
    fn a_sid_string_is_taken_once_windows_has_checked_it() {
        assert_eq!(resolve("S-1-5-32-568").unwrap(), "S-1-5-32-568");
        assert_eq!(
            resolve("s-1-5-21-1-2-3-1001").unwrap(),
            "S-1-5-21-1-2-3-1001"
        );
        let err = resolve("S-1-five").unwrap_err();
        eprintln!("Wine: S-1-five: {err}");
        assert!(
            matches!(&err, KeyAclError::UnknownAccount { account, code } if account == "S-1-five" && *code != 0),
            "{err:?}"
        );
    }

    #[test]
    fn names_resolve_through_windows_and_an_unknown_one_is_an_error_naming_it() {
        let administrators = resolve("Administrators").unwrap();
        assert_eq!(administrators, ADMINISTRATORS);
        let user = current_user();
        let sid = resolve(&user).unwrap();
        eprintln!("Wine: the current user {user:?} is {sid}");
        assert!(sid.starts_with("S-1-5-"), "{user}: {sid}");

        let err = resolve("no-such-account-xyz").unwrap_err();
        eprintln!("Wine: no-such-account-xyz: {err}");
        let KeyAclError::UnknownAccount { account, code } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(account, "no-such-account-xyz");
        assert_eq!(*code, ERROR_NONE_MAPPED, "{err}");
        assert_eq!(err.reason(), "key-acl-account-unknown");
        assert_eq!(
            err.to_string(),
            "accounts: \"no-such-account-xyz\" is not an account Windows knows (Windows error 0x534); give a \
             local or domain account or group Windows knows, e.g. \"Network Service\", \"IIS_IUSRS\" or \
             \"CONTOSO\\\\web\""
        );
        for odd in ["  ", "S-1-", "Ärger-ÄÄ"] {
            assert!(
                matches!(resolve(odd), Err(KeyAclError::UnknownAccount { ref account, .. }) if account == odd),
                "{odd:?}"
            );
        }
    }

    fn current_user() -> String {
        use windows_sys::Win32::System::WindowsProgramming::GetUserNameW;
        let mut buffer = [0u16; 257];
        let mut len = buffer.len() as u32;
        // SAFETY: a buffer of `len` units.
        assert_ne!(unsafe { GetUserNameW(buffer.as_mut_ptr(), &mut len) }, 0);
        // SAFETY: GetUserNameW wrote a NUL-terminated name.
        unsafe { from_wide(buffer.as_ptr()) }
    }

    #[test]
    fn windows_reads_the_sddl_back_as_built() {
        use windows_sys::Win32::Security::Authorization::ConvertSecurityDescriptorToStringSecurityDescriptorW;
        let sddl = key_dacl_sddl(&sids(&["S-1-5-20", "S-1-5-21-1-2-3-1001"]));
        let descriptor = Descriptor::from_sddl(&sddl).unwrap();
        assert!(descriptor.len > 20, "{}", descriptor.len);
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: a valid descriptor; the string is LocalFree'd by `Local`.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                descriptor.pointer.0,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                ptr::null_mut(),
            )
        };
        assert_ne!(ok, 0, "{:#x}", last_error());
        let text = Local(text.cast::<c_void>());
        // SAFETY: a NUL-terminated string from the conversion.
        let back = unsafe { from_wide(text.0.cast::<u16>()) };
        // Windows writes well-known SIDs by their aliases (Network Service is NS), others as they are.
        assert_eq!(
            back,
            "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;NS)(A;;GR;;;S-1-5-21-1-2-3-1001)"
        );

        let err = Descriptor::from_sddl("D:P(A;;GA;;;nobody)").err().unwrap();
        eprintln!("Wine: bad SDDL: {err}");
        assert!(
            matches!(err, KeyAclError::SetDescriptor { call: "ConvertStringSecurityDescriptorToSecurityDescriptorW", code } if code != 0),
            "{err:?}"
        );
        assert_eq!(err.reason(), "key-acl-set");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "cannot set who may use the private key \
                 (ConvertStringSecurityDescriptorToSecurityDescriptorW, Windows error 0x"
            ) && text.ends_with(
                "; kvvm built a descriptor Windows rejects: please report this message as a bug"
            ),
            "{text}"
        );
    }

    /// The private key of `cert`, `"CNG"` or `"CAPI"`, and its DACL as SDDL, read back the way `apply` set it
    /// (`Err`: the call that failed and its code).
    pub(in crate::platform::windows) fn key_dacl(
        cert: *const CERT_CONTEXT,
    ) -> Result<(&'static str, String), (&'static str, u32)> {
        use windows_sys::Win32::Security::Authorization::ConvertSecurityDescriptorToStringSecurityDescriptorW;
        use windows_sys::Win32::Security::Cryptography::{CryptGetProvParam, NCryptGetProperty};
        // SAFETY: the test's live context.
        let key = unsafe { PrivateKey::acquire(cert) }.map_err(|e| match e {
            KeyAclError::OpenKey { action, code } => (action, code),
            e => panic!("{e:?}"),
        })?;
        let mut buffer = vec![0u32; 1024];
        let mut len = (buffer.len() * 4) as u32;
        let kind = match key {
            PrivateKey::Cng { .. } => "CNG",
            PrivateKey::Capi { .. } => "CAPI",
        };
        match key {
            PrivateKey::Cng { handle, .. } => {
                let mut got = 0u32;
                // SAFETY: a live key handle and a buffer of `len` bytes.
                let status = unsafe {
                    NCryptGetProperty(
                        handle,
                        NCRYPT_SECURITY_DESCR_PROPERTY,
                        buffer.as_mut_ptr().cast::<u8>(),
                        len,
                        &mut got,
                        DACL_SECURITY_INFORMATION,
                    )
                };
                if status != 0 {
                    return Err(("NCryptGetProperty", status as u32));
                }
            }
            PrivateKey::Capi { handle, .. } => {
                // SAFETY: a live provider handle and a buffer of `len` bytes.
                let ok = unsafe {
                    CryptGetProvParam(
                        handle,
                        PP_KEYSET_SEC_DESCR,
                        buffer.as_mut_ptr().cast::<u8>(),
                        &mut len,
                        DACL_SECURITY_INFORMATION,
                    )
                };
                if ok == 0 {
                    return Err(("CryptGetProvParam", last_error()));
                }
            }
        }
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: the descriptor the key gave; the string is LocalFree'd by `Local`.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                buffer.as_mut_ptr().cast::<c_void>(),
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err((
                "ConvertSecurityDescriptorToStringSecurityDescriptorW",
                last_error(),
            ));
        }
        let text = Local(text.cast::<c_void>());
        // SAFETY: a NUL-terminated string from the conversion.
        Ok((kind, unsafe { from_wide(text.0.cast::<u16>()) }))
    }

    /// A fixture's leaf whose key properties name a CAPI key container of the test's own, with a key in it: what
    /// the PFX import leaves (a certificate whose `CERT_KEY_PROV_INFO_PROP_ID` names its key's container), but
    /// in a container no other test shares. Wine imports every PFX key into one container, named for the user,
    /// and keeps generic rights unmapped in a DACL it is given (GA does not grant WRITE_DAC there), so a DACL set
    /// on that container would lock every later import in the prefix out of it.
    struct KeyOfItsOwn {
        leaf: *const CERT_CONTEXT,
        container: Vec<u16>,
    }

    impl Drop for KeyOfItsOwn {
        fn drop(&mut self) {
            let mut prov = 0usize;
            // SAFETY: the context is freed once; deleting the container frees no handle (`prov` stays 0).
            // Wine may refuse to delete a container whose DACL it set; it is then left in the prefix, named as
            // the test's own.
            unsafe {
                CertFreeCertificateContext(self.leaf);
                CryptAcquireContextW(
                    &mut prov,
                    self.container.as_ptr(),
                    MS_ENHANCED_PROV_W,
                    PROV_RSA_FULL,
                    CRYPT_DELETEKEYSET | CRYPT_SILENT,
                );
            }
        }
    }

    fn key_of_its_own(name: &str) -> Option<KeyOfItsOwn> {
        let bundle = super::super::cert_store::tests::fixture(name)?;
        let der = CertificateDer::from_pem_slice(&bundle.leaf_pem()).unwrap();
        let mut container = wide(&format!("kvvm-test-acl-{:016x}", fastrand::u64(..)));
        let mut provider = wide(&from_wide_slice(MS_ENHANCED_PROV_W));
        // SAFETY: NUL-terminated names that outlive the calls; the key and the provider are released here, the
        // context by KeyOfItsOwn's Drop; the key properties are copied by crypt32.
        unsafe {
            let mut prov = 0usize;
            let made = CryptAcquireContextW(
                &mut prov,
                container.as_ptr(),
                MS_ENHANCED_PROV_W,
                PROV_RSA_FULL,
                CRYPT_NEWKEYSET | CRYPT_SILENT,
            );
            assert_ne!(made, 0, "CryptAcquireContextW: {:#x}", last_error());
            let mut key = 0usize;
            let generated = CryptGenKey(prov, AT_KEYEXCHANGE, 0, &mut key);
            let code = last_error();
            if generated != 0 {
                CryptDestroyKey(key);
            }
            CryptReleaseContext(prov, 0);
            assert_ne!(generated, 0, "CryptGenKey: {code:#x}");

            let leaf = CertCreateCertificateContext(
                X509_ASN_ENCODING | PKCS_7_ASN_ENCODING,
                der.as_ptr(),
                der.len() as u32,
            );
            assert!(!leaf.is_null(), "{:#x}", last_error());
            let info = CRYPT_KEY_PROV_INFO {
                pwszContainerName: container.as_mut_ptr(),
                pwszProvName: provider.as_mut_ptr(),
                dwProvType: PROV_RSA_FULL,
                dwFlags: 0,
                cProvParam: 0,
                rgProvParam: ptr::null_mut(),
                dwKeySpec: AT_KEYEXCHANGE,
            };
            let set = CertSetCertificateContextProperty(
                leaf,
                CERT_KEY_PROV_INFO_PROP_ID,
                0,
                (&info as *const CRYPT_KEY_PROV_INFO).cast::<c_void>(),
            );
            assert_ne!(
                set,
                0,
                "CertSetCertificateContextProperty: {:#x}",
                last_error()
            );
            Some(KeyOfItsOwn { leaf, container })
        }
    }

    /// A NUL-terminated UTF-16 constant as a string.
    fn from_wide_slice(text: *const u16) -> String {
        // SAFETY: windows-sys's w!() constants are NUL-terminated.
        unsafe { from_wide(text) }
    }

    #[test]
    fn a_certificates_key_gets_the_dacl() {
        let Some(cert) = key_of_its_own("a") else {
            return;
        };
        let before = key_dacl(cert.leaf).unwrap();
        eprintln!("Wine: the key ({}) had {}", before.0, before.1);

        let sddl = key_dacl_sddl(&sids(&["S-1-5-20", ADMINISTRATORS]));
        // SAFETY: a live context.
        unsafe { apply(cert.leaf, &sddl) }.unwrap();
        let (kind, after) = key_dacl(cert.leaf).unwrap();
        eprintln!("Wine: set {sddl} on the {kind} key, read back {after}");
        // Read back in Windows' own words: Network Service as NS. Wine keeps the rights as given (GA, GR) and
        // drops the DACL's protection (SE_DACL_PROTECTED); Windows maps generic rights to the key file's when it
        // sets them (FA, FR), and keeps the protection (verify.ps1 checks both there).
        let aces = aces(&after).replace(";FA;", ";GA;").replace(";FR;", ";GR;");
        assert_eq!(aces, "(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;NS)", "{after}");
    }

    /// The ACEs of a DACL's SDDL, whether it is marked protected or not.
    fn aces(sddl: &str) -> &str {
        let aces = sddl.strip_prefix("D:").expect(sddl);
        aces.strip_prefix('P').unwrap_or(aces)
    }

    #[test]
    fn a_certificate_without_its_key_is_an_error_naming_the_call() {
        let Some(bundle) = super::super::cert_store::tests::fixture("b") else {
            return;
        };
        let der = CertificateDer::from_pem_slice(&bundle.leaf_pem()).unwrap();
        // SAFETY: the DER outlives the call; the context (with no key properties) is freed below.
        let cert = unsafe {
            CertCreateCertificateContext(
                X509_ASN_ENCODING | PKCS_7_ASN_ENCODING,
                der.as_ptr(),
                der.len() as u32,
            )
        };
        assert!(!cert.is_null(), "{:#x}", last_error());
        // SAFETY: a live context.
        let result = unsafe { apply(cert, &key_dacl_sddl(&[])) };
        // SAFETY: freed once.
        unsafe { CertFreeCertificateContext(cert) };
        let err = result.unwrap_err();
        eprintln!("Wine: no key: {err}");
        let KeyAclError::OpenKey { action, code } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*action, "CryptAcquireCertificatePrivateKey");
        assert_ne!(*code, 0);
        assert_eq!(err.reason(), "key-acl-open-key");
        assert!(
            err.to_string().starts_with(
                "cannot open the private key to set who may use it (CryptAcquireCertificatePrivateKey, Windows \
                 error 0x"
            ),
            "{err}"
        );
    }
}
