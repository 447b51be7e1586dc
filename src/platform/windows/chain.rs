//! Windows: the chain of a certificate for TLS server authentication is validated before it goes into any store,
//! as Microsoft's v4 does. Windows builds the chain (`CertGetCertificateChain`, with the vault's intermediates
//! as extra certificates, the location's chain engine, the server-auth usage asked for, and no network fetches);
//! what makes the certificate unusable for a TLS server — a signature that does not verify, an issuer that is
//! not a CA, a usage or name constraint it breaks, a validity that does not include now, a revoked or explicitly
//! distrusted certificate — refuses it, and what installed before stays. A root this machine does not trust, or
//! a chain Windows cannot complete, does not: trust stays the administrator's (kvvm never adds a root), and the
//! status says so. A certificate without the server-auth extended key usage is not checked (as in Microsoft's).
//!
//! What the bits mean is one pure function ([`problems`]), so every message is pinned by a test.

use super::last_error;
use std::ptr;

use windows_sys::Win32::Security::Cryptography::{
    CERT_CHAIN_CACHE_ONLY_URL_RETRIEVAL, CERT_CHAIN_CONTEXT, CERT_CHAIN_PARA, CERT_CONTEXT,
    CERT_STORE_ADD_USE_EXISTING, CERT_STORE_CREATE_NEW_FLAG, CERT_STORE_PROV_MEMORY,
    CERT_TRUST_HAS_EXCLUDED_NAME_CONSTRAINT, CERT_TRUST_HAS_NOT_DEFINED_NAME_CONSTRAINT,
    CERT_TRUST_HAS_NOT_PERMITTED_NAME_CONSTRAINT, CERT_TRUST_HAS_NOT_SUPPORTED_NAME_CONSTRAINT,
    CERT_TRUST_INVALID_BASIC_CONSTRAINTS, CERT_TRUST_INVALID_EXTENSION,
    CERT_TRUST_INVALID_NAME_CONSTRAINTS, CERT_TRUST_INVALID_POLICY_CONSTRAINTS,
    CERT_TRUST_IS_CYCLIC, CERT_TRUST_IS_EXPLICIT_DISTRUST, CERT_TRUST_IS_NOT_SIGNATURE_VALID,
    CERT_TRUST_IS_NOT_TIME_VALID, CERT_TRUST_IS_NOT_VALID_FOR_USAGE, CERT_TRUST_IS_PARTIAL_CHAIN,
    CERT_TRUST_IS_REVOKED, CERT_USAGE_MATCH, CTL_USAGE, CertAddEncodedCertificateToStore,
    CertCloseStore, CertFreeCertificateChain, CertFreeCertificateContext, CertGetCertificateChain,
    CertOpenStore, HCERTCHAINENGINE, HCERTSTORE, PKCS_7_ASN_ENCODING, USAGE_MATCH_TYPE_AND,
    X509_ASN_ENCODING, szOID_PKIX_KP_SERVER_AUTH,
};

/// The chain engine of `LocalMachine` (wincrypt.h's `HCCE_LOCAL_MACHINE`); null is the current user's.
const HCCE_LOCAL_MACHINE: HCERTCHAINENGINE = 1usize as HCERTCHAINENGINE;

/// Why a server-auth certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The chain does not validate: each problem with its fix, joined.
    #[error(
        "its chain does not validate for TLS server authentication, so it was not added: {problems} (Windows \
         builds the chain from the vault's certificates and this machine's stores, as Microsoft's v4 does)"
    )]
    Invalid {
        /// What is wrong, each problem with its fix, as [`problems`] says it.
        problems: String,
    },
    /// Windows could not build the chain at all, so nothing says it validates; it was not added.
    #[error(
        "Windows could not build its chain to validate it for TLS server authentication ({call}, error \
         {code:#x}), so it was not added; the check is tried again at the next poll"
    )]
    Build {
        /// The call that failed.
        call: &'static str,
        /// `GetLastError()`.
        code: u32,
    },
}

impl ChainError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "chain-invalid",
            Self::Build { .. } => "chain-build-failed",
        }
    }
}

/// The chain's error bits that make a certificate unusable for a TLS server, each with what to say of the
/// certificate that has it and the fix.
const REFUSED: [(u32, &str, &str); 14] = [
    (
        CERT_TRUST_IS_NOT_TIME_VALID,
        "is not valid at this time",
        "renew it in Key Vault, or check this machine's clock",
    ),
    (
        CERT_TRUST_IS_REVOKED,
        "is revoked",
        "issue a new certificate in Key Vault",
    ),
    (
        CERT_TRUST_IS_NOT_SIGNATURE_VALID,
        "has a signature that does not verify with its issuer's key",
        "import the certificate into Key Vault again with the chain its CA issued",
    ),
    (
        CERT_TRUST_IS_NOT_VALID_FOR_USAGE,
        "is not valid for its use here (a TLS server certificate, or a CA that signs one)",
        "issue the certificate with the serverAuth extended key usage (1.3.6.1.5.5.7.3.1), from CAs whose key \
         usage includes keyCertSign and whose extended key usages, if they list any, include serverAuth",
    ),
    (
        CERT_TRUST_IS_CYCLIC,
        "is part of a chain that loops",
        "import the certificate with the chain its CA issued",
    ),
    (
        CERT_TRUST_INVALID_EXTENSION,
        "has an extension Windows cannot accept",
        "issue it again from a CA Windows supports",
    ),
    (
        CERT_TRUST_INVALID_POLICY_CONSTRAINTS,
        "breaks its issuers' policy constraints",
        "issue it from a CA whose policies allow it",
    ),
    (
        CERT_TRUST_INVALID_BASIC_CONSTRAINTS,
        "breaks basic constraints (an issuer that is not a CA, or a path longer than a CA allows)",
        "issue it from a CA certificate (basicConstraints CA:TRUE)",
    ),
    (
        CERT_TRUST_INVALID_NAME_CONSTRAINTS,
        "has name constraints Windows cannot read",
        "issue it from a CA with valid name constraints",
    ),
    (
        CERT_TRUST_HAS_NOT_SUPPORTED_NAME_CONSTRAINT,
        "has a name constraint Windows does not support",
        "issue it from a CA with name constraints Windows supports",
    ),
    (
        CERT_TRUST_HAS_NOT_DEFINED_NAME_CONSTRAINT,
        "has a name its issuers' name constraints do not cover",
        "issue it for names its CA may certify",
    ),
    (
        CERT_TRUST_HAS_NOT_PERMITTED_NAME_CONSTRAINT,
        "has a name its issuers' name constraints do not permit",
        "issue it for names its CA may certify",
    ),
    (
        CERT_TRUST_HAS_EXCLUDED_NAME_CONSTRAINT,
        "has a name its issuers' name constraints exclude",
        "issue it for names its CA may certify",
    ),
    (
        CERT_TRUST_IS_EXPLICIT_DISTRUST,
        "is distrusted on this machine (in a Disallowed store)",
        "issue it from a CA this machine does not distrust, or ask its administrator",
    ),
];

/// What a validated chain says: `Err` with each problem that refuses the certificate and its fix, else the
/// remarks for the status (a chain Windows could not complete). `chain` is the chain's error bits, `elements`
/// each certificate's subject (leaf first) with its own bits. An untrusted root is not mentioned: the caller
/// says that in words of its own, with the root's thumbprint.
pub(crate) fn problems(chain: u32, elements: &[(String, u32)]) -> Result<Vec<String>, String> {
    let mut refused = Vec::new();
    for (bit, what, fix) in REFUSED {
        if chain & bit == 0 && elements.iter().all(|(_, bits)| bits & bit == 0) {
            continue;
        }
        let who: Vec<&str> = elements
            .iter()
            .filter(|(_, bits)| bits & bit != 0)
            .map(|(subject, _)| subject.as_str())
            .collect();
        let who = match who.as_slice() {
            [] => "a certificate of its chain".to_string(),
            [one] => format!("\"{one}\""),
            many => format!("\"{}\"", many.join("\", \"")),
        };
        refused.push(format!("{who} {what}: {fix}"));
    }
    if !refused.is_empty() {
        return Err(refused.join("; "));
    }
    let mut remarks = Vec::new();
    if chain & CERT_TRUST_IS_PARTIAL_CHAIN != 0 {
        let last = elements.last().map_or("its leaf", |(subject, _)| subject);
        remarks.push(format!(
            "Windows could not complete its chain: no issuer of \"{last}\" is in the vault's value or this \
             machine's stores, so clients that do not fetch it will not trust this certificate; add the \
             intermediate to the certificate in Key Vault"
        ));
    }
    Ok(remarks)
}

/// Validates the chain of `chain[0]` (a certificate for TLS server authentication; the rest are the certificates
/// the vault gave with it, intermediates and root) for that usage, with `machine`'s chain engine
/// (`LocalMachine`'s, else the current user's), which adds what this machine's stores hold and decides trust.
/// `Ok`: remarks for the status.
pub(crate) fn validate(chain: &[Vec<u8>], machine: bool) -> Result<Vec<String>, ChainError> {
    let failed = |call: &'static str, code: u32| ChainError::Build { call, code };
    // SAFETY: an in-memory store of the call's own, closed below.
    let extra = unsafe {
        CertOpenStore(
            CERT_STORE_PROV_MEMORY,
            0,
            0,
            CERT_STORE_CREATE_NEW_FLAG,
            ptr::null(),
        )
    };
    if extra.is_null() {
        return Err(failed("CertOpenStore", last_error()));
    }
    let extra = Store(extra);
    let mut leaf: *mut CERT_CONTEXT = ptr::null_mut();
    for (i, der) in chain.iter().enumerate() {
        let mut added: *mut CERT_CONTEXT = ptr::null_mut();
        // SAFETY: `der` outlives the call; Windows copies it into the store and hands back a context to free.
        let ok = unsafe {
            CertAddEncodedCertificateToStore(
                extra.0,
                X509_ASN_ENCODING | PKCS_7_ASN_ENCODING,
                der.as_ptr(),
                der.len() as u32,
                CERT_STORE_ADD_USE_EXISTING,
                &mut added,
            )
        };
        if ok == 0 {
            let code = last_error();
            // SAFETY: a context this function holds, freed once.
            unsafe { CertFreeCertificateContext(leaf) };
            return Err(failed("CertAddEncodedCertificateToStore", code));
        }
        if i == 0 {
            leaf = added;
        } else {
            // SAFETY: a context the call handed back, freed once.
            unsafe { CertFreeCertificateContext(added) };
        }
    }
    if leaf.is_null() {
        return Ok(Vec::new());
    }
    let mut usage = [szOID_PKIX_KP_SERVER_AUTH.cast_mut()];
    // SAFETY: a plain C structure, all zeroes being its empty value.
    let mut para: CERT_CHAIN_PARA = unsafe { std::mem::zeroed() };
    para.cbSize = std::mem::size_of::<CERT_CHAIN_PARA>() as u32;
    para.RequestedUsage = CERT_USAGE_MATCH {
        dwType: USAGE_MATCH_TYPE_AND,
        Usage: CTL_USAGE {
            cUsageIdentifier: 1,
            rgpszUsageIdentifier: usage.as_mut_ptr(),
        },
    };
    let engine = if machine {
        HCCE_LOCAL_MACHINE
    } else {
        ptr::null_mut()
    };
    let mut context: *mut CERT_CHAIN_CONTEXT = ptr::null_mut();
    // SAFETY: a live leaf context and store; `para` and `usage` outlive the call; the chain is freed below.
    let ok = unsafe {
        CertGetCertificateChain(
            engine,
            leaf,
            ptr::null(),
            extra.0,
            &para,
            CERT_CHAIN_CACHE_ONLY_URL_RETRIEVAL,
            ptr::null(),
            &mut context,
        )
    };
    let code = last_error();
    // SAFETY: the leaf's context, no longer used; freed once.
    unsafe { CertFreeCertificateContext(leaf) };
    if ok == 0 || context.is_null() {
        return Err(failed("CertGetCertificateChain", code));
    }
    // SAFETY: a chain context Windows returned, read before it is freed; its first simple chain is the leaf's.
    let (bits, elements) = unsafe {
        let chain = &*context;
        let mut elements = Vec::new();
        if chain.cChain > 0 {
            let simple = &**chain.rgpChain;
            for i in 0..simple.cElement as usize {
                let element = &**simple.rgpElement.add(i);
                let cert = &*element.pCertContext;
                let der =
                    std::slice::from_raw_parts(cert.pbCertEncoded, cert.cbCertEncoded as usize);
                elements.push((subject(der), element.TrustStatus.dwErrorStatus));
            }
        }
        let bits = chain.TrustStatus.dwErrorStatus;
        CertFreeCertificateChain(context);
        (bits, elements)
    };
    problems(bits, &elements).map_err(|problems| ChainError::Invalid { problems })
}

/// A store of this module's own, closed when dropped.
struct Store(HCERTSTORE);

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: a store this module opened, closed once.
        unsafe { CertCloseStore(self.0, 0) };
    }
}

/// A certificate's subject as a message names it.
fn subject(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_else(|_| "(a certificate Windows holds that kvvm cannot read)".to_string())
}

#[cfg(test)]
mod tests {
    //! The bits → words rule is pure; the chains themselves are built under Wine in `cert_store`'s tests.

    use super::*;

    fn leaf_and_ca(leaf: u32, ca: u32) -> Vec<(String, u32)> {
        vec![
            ("CN=web.example.com".to_string(), leaf),
            ("CN=Issuing CA".to_string(), ca),
        ]
    }

    #[test]
    fn a_clean_chain_says_nothing_and_an_untrusted_root_is_left_to_the_caller() {
        assert_eq!(problems(0, &leaf_and_ca(0, 0)), Ok(Vec::new()));
        // CERT_TRUST_IS_UNTRUSTED_ROOT (0x20), revocation unknown (0x40) and offline (0x1000000): no refusal.
        assert_eq!(
            problems(0x20 | 0x40 | 0x0100_0000, &leaf_and_ca(0x40, 0x20)),
            Ok(Vec::new())
        );
    }

    #[test]
    fn each_refusing_bit_names_the_certificate_and_the_fix() {
        assert_eq!(
            problems(
                CERT_TRUST_IS_NOT_VALID_FOR_USAGE,
                &leaf_and_ca(CERT_TRUST_IS_NOT_VALID_FOR_USAGE, 0)
            ),
            Err("\"CN=web.example.com\" is not valid for its use here (a TLS server certificate, or a CA that \
                 signs one): issue the certificate with the serverAuth extended key usage \
                 (1.3.6.1.5.5.7.3.1), from CAs whose key usage includes keyCertSign and whose extended key \
                 usages, if they list any, include serverAuth"
                .to_string())
        );
        assert_eq!(
            problems(
                CERT_TRUST_INVALID_BASIC_CONSTRAINTS,
                &leaf_and_ca(0, CERT_TRUST_INVALID_BASIC_CONSTRAINTS)
            ),
            Err("\"CN=Issuing CA\" breaks basic constraints (an issuer that is not a CA, or a path longer \
                 than a CA allows): issue it from a CA certificate (basicConstraints CA:TRUE)"
                .to_string())
        );
        // Set on the chain only: the chain is named; two problems, in the table's order, both said.
        let both = problems(
            CERT_TRUST_IS_NOT_SIGNATURE_VALID | CERT_TRUST_IS_NOT_TIME_VALID,
            &leaf_and_ca(CERT_TRUST_IS_NOT_TIME_VALID, 0),
        )
        .unwrap_err();
        assert_eq!(
            both,
            "\"CN=web.example.com\" is not valid at this time: renew it in Key Vault, or check this machine's \
             clock; a certificate of its chain has a signature that does not verify with its issuer's key: \
             import the certificate into Key Vault again with the chain its CA issued"
        );
        // Every refusing bit refuses.
        for (bit, what, _) in REFUSED {
            let said = problems(bit, &leaf_and_ca(bit, bit)).unwrap_err();
            assert!(
                said.starts_with("\"CN=web.example.com\", \"CN=Issuing CA\" ")
                    && said.contains(what),
                "{said}"
            );
        }
    }

    #[test]
    fn a_chain_windows_cannot_complete_is_a_remark_naming_the_last_certificate() {
        let remarks = problems(CERT_TRUST_IS_PARTIAL_CHAIN, &leaf_and_ca(0, 0)).unwrap();
        assert_eq!(remarks.len(), 1);
        assert!(
            remarks[0].starts_with(
                "Windows could not complete its chain: no issuer of \"CN=Issuing CA\" is in the vault's value"
            ),
            "{remarks:?}"
        );
    }
}
