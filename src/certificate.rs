//! Turns the value of a certificate-backed Key Vault secret into what applications read: the chain ordered leaf
//! → intermediates → root and the private key, checked before anything touches the disk.
//!
//! * `application/x-pkcs12`: base64 PFX with an empty password (SHA-1 MAC + 3DES as Key Vault writes it, PBES2/AES,
//!   RC2-40 certificate bags, unencrypted bags; certificates in any order, bags with or without localKeyId).
//! * `application/x-pem-file`: certificates and one key in any order, the key as PKCS#8, PKCS#1 or SEC1, CRLF or LF.
//!
//! The chain is ordered by subject/issuer names and key identifiers (RFC 5246 §7.4.2); a certificate that is not
//! part of the leaf's chain, or a chain that loops, is rejected. The leaf is the certificate whose public key is
//! the private key's; a key that matches no certificate is rejected. The key is always written as PKCS#8.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cms::encrypted_data::EncryptedData;
use der::asn1::{AnyRef, ObjectIdentifier, OctetString, OctetStringRef};
use der::{Decode as _, Encode as _};
use pkcs8::PrivateKeyInfoRef;
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pbes2Params, Pbkdf2Params, Pkcs12PbeParams};
use pkcs12::safe_bag::SafeContents;
use pkcs12::{AuthenticatedSafe, Pfx};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
use zeroize::Zeroizing;

/// How the secret's value is encoded (from its `contentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// `application/x-pkcs12`: base64 of a PFX with an empty password.
    Pkcs12,
    /// `application/x-pem-file`: PEM text.
    Pem,
}

/// Why a secret's value cannot be installed. `name` is `<vault>/<certificate> version <v>`.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The PKCS#12 value is not base64.
    #[error(
        "{name}: the secret's value is not base64 ({detail}) although its contentType is application/x-pkcs12; \
         re-import the certificate into Key Vault"
    )]
    Base64 {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What the decoder reported.
        detail: String,
    },
    /// The PFX cannot be read with the empty password Key Vault uses.
    #[error(
        "{name}: the PKCS#12 (PFX) value cannot be read with an empty password ({detail}); Key Vault stores \
         certificates without a password, so re-import it with `az keyvault certificate import` (which removes \
         the password) rather than as a plain secret"
    )]
    Pkcs12 {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What the decoder reported.
        detail: String,
    },
    /// The PFX asks for more key-derivation iterations than kvvm runs (a PFX made to stall whoever opens it,
    /// or by a tool with an absurd setting; Key Vault writes about 2,000).
    #[error(
        "{name}: the PKCS#12 (PFX) value asks for {iterations} key-derivation iterations for {part}, above the \
         limit of {limit} kvvm accepts (opening it would burn CPU for minutes or longer); Key Vault writes PFX \
         files with about 2,000 iterations, so this one was not made by Key Vault. Re-export it with a normal count, \
         e.g. `openssl pkcs12 -export -iter 2048 -in cert.pem -inkey key.pem -passout pass: -out cert.pfx` (-iter \
         also sets the MAC's count; OpenSSL 1.1 needs -maciter too), and import that with `az keyvault certificate \
         import`"
    )]
    Pkcs12Iterations {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What the count protects: "its integrity MAC", "its encrypted certificates", "its private key".
        part: &'static str,
        /// The count the PFX asks for.
        iterations: u64,
        /// The most kvvm runs.
        limit: u64,
    },
    /// A PEM section is malformed, or the key is encrypted.
    #[error(
        "{name}: the PEM value cannot be read ({detail}); re-import the certificate into Key Vault"
    )]
    Pem {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What the decoder reported.
        detail: String,
    },
    /// No certificate at all.
    #[error(
        "{name}: the value holds no certificate; observe the secret of a Key Vault certificate"
    )]
    NoCertificate {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
    },
    /// No private key: the certificate's key is not exportable.
    #[error(
        "{name}: the value holds no private key, so the certificate cannot be used for TLS; make the key \
         exportable in the certificate policy (keyProperties.exportable: true) and create a new version"
    )]
    NoPrivateKey {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
    },
    /// More than one private key.
    #[error(
        "{name}: the value holds {count} private keys; a Key Vault certificate has exactly one, so re-import it \
         with only the leaf's key"
    )]
    SeveralKeys {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// How many private keys it holds.
        count: usize,
    },
    /// A key of a type or size that cannot be used.
    #[error(
        "{name}: the private key cannot be used ({detail}); Key Vault certificates use RSA 2048/3072/4096 or EC \
         P-256/P-384/P-521 keys"
    )]
    UnsupportedKey {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What is wrong with the key.
        detail: String,
    },
    /// A certificate cannot be parsed.
    #[error("{name}: certificate {index} of the value is not a valid X.509 certificate ({detail})")]
    BadCertificate {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// Its position in the value, from 1.
        index: usize,
        /// What the X.509 parser reported.
        detail: String,
    },
    /// The key belongs to none of the certificates.
    #[error(
        "{name}: the private key does not match any of its {count} certificate(s) (leaf subject {subject}); \
         nothing was installed and the previous version stays current — re-import the certificate with its own key"
    )]
    KeyMismatch {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// How many certificates it holds.
        count: usize,
        /// The subject of the certificate taken for the leaf.
        subject: String,
    },
    /// Certificates that are not part of the leaf's chain.
    #[error(
        "{name}: certificate(s) {extra} are not part of the chain of the leaf {leaf}; re-import the certificate \
         with only its own chain"
    )]
    Disjoint {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// The leaf's subject.
        leaf: String,
        /// The subjects of the certificates outside the chain.
        extra: String,
    },
    /// Issuers that loop.
    #[error(
        "{name}: the chain loops back to {subject}; re-import the certificate with a proper chain"
    )]
    Cycle {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// The certificate the chain loops back to.
        subject: String,
    },
    /// Writing the PKCS#12 file for `additionalFormats: ["pfx"]` failed (the certificate was read fine).
    #[error(
        "{name}: writing certificate.pfx failed ({detail}); the certificate itself is fine — remove \"pfx\" from \
         additionalFormats to install it without a PFX, and report this as a kvvm bug"
    )]
    Pkcs12Write {
        /// The certificate, as `<vault>/<certificate> version <v>`.
        name: String,
        /// What the PKCS#12 writer reported.
        detail: String,
    },
}

impl CertificateError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Base64 { .. } | Self::Pkcs12 { .. } | Self::Pem { .. } => {
                "certificate-unreadable"
            }
            Self::Pkcs12Iterations { .. } => "pkcs12-iterations",
            Self::NoCertificate { .. } => "no-certificate",
            Self::NoPrivateKey { .. } => "no-private-key",
            Self::SeveralKeys { .. } => "several-private-keys",
            Self::UnsupportedKey { .. } => "unsupported-key",
            Self::BadCertificate { .. } => "bad-certificate",
            Self::KeyMismatch { .. } => "key-mismatch",
            Self::Disjoint { .. } => "chain-disjoint",
            Self::Cycle { .. } => "chain-cycle",
            Self::Pkcs12Write { .. } => "pkcs12-write",
        }
    }
}

/// A checked certificate: its chain in order and its PKCS#8 key.
pub struct CertificateBundle {
    chain: Vec<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
    subject: String,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The provider the vault's PFX names for its key (Windows' key-provider bag attribute), if it names one.
    key_provider: Option<String>,
}

impl std::fmt::Debug for CertificateBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateBundle")
            .field("subject", &self.subject)
            .field("serial", &self.serial)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What the parser needs from one certificate.
struct Parsed {
    der: Vec<u8>,
    subject: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    spki: Vec<u8>,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Parsed {
    fn new(name: &str, index: usize, der: Vec<u8>) -> Result<Self, CertificateError> {
        let bad = |detail: String| CertificateError::BadCertificate {
            name: name.to_string(),
            index: index + 1,
            detail,
        };
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after its end", rest.len())));
        }
        let mut ski = None;
        let mut aki = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(id) => {
                    aki = id.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        let serial = serial_hex(cert.raw_serial());
        let parsed = Parsed {
            subject: cert.subject().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            ski,
            aki,
            spki: cert.public_key().raw.to_vec(),
            serial,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            der: Vec::new(),
        };
        Ok(Parsed { der, ..parsed })
    }

    /// Whether `issuer` issued `self` (names match, and key identifiers too when both are present).
    fn issued_by(&self, issuer: &Parsed) -> bool {
        self.issuer_raw == issuer.subject_raw
            && match (&self.aki, &issuer.ski) {
                (Some(a), Some(s)) => a == s,
                _ => true,
            }
    }

    fn self_issued(&self) -> bool {
        self.issued_by(self)
    }

    fn label(&self) -> String {
        if self.subject.is_empty() {
            format!("(empty subject, serial {})", self.serial)
        } else {
            format!("\"{}\"", self.subject)
        }
    }
}

/// Upper-case hex of a serial number without leading zero bytes, as `openssl x509 -serial` prints it.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// Public key of a private key, as the algorithm OID plus the subjectPublicKey bits (so two encodings of the
/// same AlgorithmIdentifier still compare equal), and that AlgorithmIdentifier's DER.
fn key_identity(spki_der: &[u8]) -> Option<(String, Vec<u8>, Vec<u8>)> {
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    let alg = spki.algorithm.oid;
    let params = match (alg, &spki.algorithm.parameters) {
        // EC: the curve is part of the key's identity.
        (OID_EC_PUBLIC_KEY, Some(p)) => p.value().to_vec(),
        _ => Vec::new(),
    };
    Some((
        format!("{alg}:{}", hex_lower(&params)),
        spki.subject_public_key.raw_bytes().to_vec(),
        spki.algorithm.to_der().ok()?,
    ))
}

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The private key as found, before its public half is known.
enum FoundKey {
    /// A PKCS#8 `PrivateKeyInfo` (any key type).
    Pkcs8(Zeroizing<Vec<u8>>),
    /// A PKCS#1 `RSAPrivateKey`.
    Pkcs1(Zeroizing<Vec<u8>>),
    /// A SEC1 `ECPrivateKey`.
    Sec1(Zeroizing<Vec<u8>>),
}

impl FoundKey {
    fn der(&self) -> PrivateKeyDer<'_> {
        match self {
            FoundKey::Pkcs8(d) => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(d.as_slice())),
            FoundKey::Pkcs1(d) => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(d.as_slice())),
            FoundKey::Sec1(d) => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(d.as_slice())),
        }
    }
}

/// The SubjectPublicKeyInfo (DER) of a private key, derived from the private key itself, so that a key that
/// does not hold together is refused rather than matched by a public key stored beside it. RSA, P-256 and
/// P-384 go through ring (the TLS provider, which checks the key's consistency as it loads it); P-521, which
/// ring cannot load, through the pure-Rust `p521` crate: its public point is computed from the scalar.
fn public_key_of(key: &FoundKey) -> Result<Vec<u8>, String> {
    let ring_error = match rustls::crypto::ring::sign::any_supported_type(&key.der()) {
        Ok(signing) => {
            return signing
                .public_key()
                .map(|spki| spki.as_ref().to_vec())
                .ok_or_else(|| "its public key cannot be derived".to_string());
        }
        Err(e) => e.to_string(),
    };
    use p521::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    let p521 = match key {
        FoundKey::Pkcs8(der) => p521::SecretKey::from_pkcs8_der(der).ok(),
        FoundKey::Sec1(der) => p521::SecretKey::from_sec1_der(der).ok(),
        FoundKey::Pkcs1(_) => None,
    };
    match p521 {
        Some(secret) => secret
            .public_key()
            .to_public_key_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| format!("its P-521 public key cannot be encoded ({e})")),
        None => Err(ring_error),
    }
}

impl CertificateBundle {
    /// Decodes and checks a secret's value. `name` identifies the certificate in error messages.
    pub fn from_secret(
        name: &str,
        kind: ContentKind,
        value: &str,
    ) -> Result<CertificateBundle, CertificateError> {
        let (certs, keys, key_provider) = match kind {
            ContentKind::Pkcs12 => read_pkcs12(name, value)?,
            ContentKind::Pem => {
                let (certs, keys) = read_pem(name, value)?;
                (certs, keys, None)
            }
        };
        let mut bundle = Self::assemble(name, certs, keys)?;
        bundle.key_provider = key_provider;
        Ok(bundle)
    }

    /// The provider the vault's PFX names for its key (the bag attribute Windows writes when it exports a key,
    /// e.g. `Microsoft Enhanced RSA and AES Cryptographic Provider`); `None` for PEM and for PFX files that name
    /// none. Windows keeps the key with that provider; kvvm's own PFX carries it on (`to_pkcs12`).
    pub fn key_provider(&self) -> Option<&str> {
        self.key_provider.as_deref()
    }

    fn assemble(
        name: &str,
        ders: Vec<Vec<u8>>,
        mut keys: Vec<FoundKey>,
    ) -> Result<CertificateBundle, CertificateError> {
        // The same certificate may appear in several bags.
        let mut unique: Vec<Vec<u8>> = Vec::with_capacity(ders.len());
        for der in ders {
            if !unique.contains(&der) {
                unique.push(der);
            }
        }
        if unique.is_empty() {
            return Err(CertificateError::NoCertificate {
                name: name.to_string(),
            });
        }
        let key = match keys.len() {
            0 => {
                return Err(CertificateError::NoPrivateKey {
                    name: name.to_string(),
                });
            }
            1 => keys.remove(0),
            count => {
                return Err(CertificateError::SeveralKeys {
                    name: name.to_string(),
                    count,
                });
            }
        };
        let certs = unique
            .into_iter()
            .enumerate()
            .map(|(i, der)| Parsed::new(name, i, der))
            .collect::<Result<Vec<_>, _>>()?;

        let public = public_key_of(&key).map_err(|detail| CertificateError::UnsupportedKey {
            name: name.to_string(),
            detail,
        })?;
        let (key_alg, key_bits, key_alg_der) =
            key_identity(&public).ok_or_else(|| CertificateError::UnsupportedKey {
                name: name.to_string(),
                detail: "its public key cannot be encoded".to_string(),
            })?;
        let matches: Vec<usize> = certs
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                key_identity(&c.spki).is_some_and(|(a, b, _)| a == key_alg && b == key_bits)
            })
            .map(|(i, _)| i)
            .collect();
        // With several certificates for the same key (rare), the leaf is the one that issued nothing.
        let leaf = matches
            .iter()
            .copied()
            .find(|&i| {
                !certs
                    .iter()
                    .enumerate()
                    .any(|(j, c)| j != i && c.issued_by(&certs[i]))
            })
            .or(matches.first().copied());
        let Some(leaf) = leaf else {
            // Name what the certificate that looks like the leaf is, so the user can tell what was uploaded.
            let guess = certs
                .iter()
                .find(|c| !certs.iter().any(|o| !std::ptr::eq(*c, o) && o.issued_by(c)))
                .unwrap_or(&certs[0]);
            return Err(CertificateError::KeyMismatch {
                name: name.to_string(),
                count: certs.len(),
                subject: guess.label(),
            });
        };

        let order = order_chain(name, &certs, leaf)?;
        let leaf_cert = &certs[leaf];
        let key = match key {
            FoundKey::Pkcs8(der) => der,
            FoundKey::Pkcs1(der) | FoundKey::Sec1(der) => wrap_pkcs8(&key_alg_der, &der)
                .ok_or_else(|| CertificateError::UnsupportedKey {
                    name: name.to_string(),
                    detail: "it cannot be re-encoded as PKCS#8".to_string(),
                })?,
        };
        let (subject, serial, not_before, not_after) = (
            leaf_cert.subject.clone(),
            leaf_cert.serial.clone(),
            leaf_cert.not_before,
            leaf_cert.not_after,
        );
        let mut certs: Vec<Option<Parsed>> = certs.into_iter().map(Some).collect();
        let chain = order
            .into_iter()
            .filter_map(|i| certs[i].take().map(|c| c.der))
            .collect();
        Ok(CertificateBundle {
            chain,
            key,
            subject,
            serial,
            not_before,
            not_after,
            key_provider: None,
        })
    }

    /// The PEM file's content: every certificate (leaf first) then the PKCS#8 private key.
    pub fn to_pem(&self) -> Zeroizing<Vec<u8>> {
        let size: usize = self
            .chain
            .iter()
            .chain(std::iter::once(&*self.key))
            .map(|d| d.len() * 4 / 3 + d.len() / 48 + 80)
            .sum();
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        for der in &self.chain {
            pem_section(&mut out, "CERTIFICATE", der);
        }
        pem_section(&mut out, "PRIVATE KEY", &self.key);
        out
    }

    /// `cert.pem`: the leaf alone.
    pub fn leaf_pem(&self) -> Vec<u8> {
        let mut out = Vec::new();
        pem_section(&mut out, "CERTIFICATE", &self.chain[0]);
        out
    }

    /// The chain as DER, leaf first, then the intermediates and the root in order.
    #[cfg_attr(unix, allow(dead_code, reason = "Windows' certificate store reads it"))]
    pub(crate) fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// `chain.pem`: the intermediates then the root, without the leaf (empty when the leaf stands alone).
    pub fn chain_pem(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for der in &self.chain[1..] {
            pem_section(&mut out, "CERTIFICATE", der);
        }
        out
    }

    /// `fullchain.pem`: the leaf, the intermediates and the root.
    pub fn fullchain_pem(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for der in &self.chain {
            pem_section(&mut out, "CERTIFICATE", der);
        }
        out
    }

    /// `privkey.pem`: the private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn key_pem(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.key.len() * 4 / 3 + 80));
        pem_section(&mut out, "PRIVATE KEY", &self.key);
        out
    }

    /// `certificate.pfx`: the key and the full chain as PKCS#12 with an empty password, key and certificates
    /// encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and a SHA-256 MAC, so that OpenSSL 3 reads it
    /// without `-legacy` and Java's keytool accepts it. `name` identifies the certificate in an error; `alias`
    /// is the entry's friendly name (Java shows it as the alias).
    pub fn to_pkcs12(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CertificateError> {
        self.pkcs12_naming(name, alias, self.key_provider.as_deref())
    }

    /// [`to_pkcs12`](Self::to_pkcs12) without the key provider the vault's PFX named (for a machine where that
    /// provider cannot keep the key).
    #[cfg_attr(unix, allow(dead_code, reason = "Windows' import falls back on it"))]
    pub(crate) fn to_pkcs12_without_key_provider(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CertificateError> {
        self.pkcs12_naming(name, alias, None)
    }

    fn pkcs12_naming(
        &self,
        name: &str,
        alias: &str,
        provider: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, CertificateError> {
        let err = |e: p12_keystore::error::Error| CertificateError::Pkcs12Write {
            name: name.to_string(),
            detail: e.to_string(),
        };
        let key = p12_keystore::PrivateKey::from_der(&self.key).map_err(err)?;
        let certs = self
            .chain
            .iter()
            .map(|der| p12_keystore::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        // The localKeyId ties the key bag to the leaf's bag; any stable bytes do, so use the leaf's serial.
        let key_id = self.serial.as_bytes().to_vec();
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            alias,
            p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                key_id, key, certs,
            )),
        );
        let der = Zeroizing::new(
            store
                .writer("")
                .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
                .encryption_iterations(PFX_ITERATIONS)
                .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
                .mac_iterations(PFX_ITERATIONS)
                .write()
                .map_err(err)?,
        );
        match provider {
            None => Ok(der),
            Some(provider) => {
                name_key_provider(&der, provider).map_err(|e| CertificateError::Pkcs12Write {
                    name: name.to_string(),
                    detail: format!("naming its key's provider {provider:?}: {e}"),
                })
            }
        }
    }

    /// The leaf's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The leaf's serial number in upper-case hex (as `openssl x509 -serial` prints it).
    pub fn serial_hex(&self) -> String {
        self.serial.clone()
    }

    /// The leaf's notBefore.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The leaf's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A sentence when the leaf is expired or not yet valid at `now` (it is installed anyway).
    pub fn validity_warning(&self, now: OffsetDateTime) -> Option<String> {
        let fmt = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        if now > self.not_after {
            Some(format!(
                "the certificate expired on {} (installed anyway: it is the vault's current version); renew it in Key Vault",
                fmt(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {} (installed anyway: it is the vault's current version)",
                fmt(self.not_before)
            ))
        } else {
            None
        }
    }
}

/// Orders the certificates from `leaf` up by issuer; every certificate must be on that path.
fn order_chain(name: &str, certs: &[Parsed], leaf: usize) -> Result<Vec<usize>, CertificateError> {
    let mut order = vec![leaf];
    let mut current = leaf;
    while !certs[current].self_issued() {
        let next =
            (0..certs.len()).find(|&i| !order.contains(&i) && certs[current].issued_by(&certs[i]));
        match next {
            Some(i) => {
                order.push(i);
                current = i;
            }
            None => {
                if let Some(&looped) = order
                    .iter()
                    .find(|&&i| i != current && certs[current].issued_by(&certs[i]))
                {
                    return Err(CertificateError::Cycle {
                        name: name.to_string(),
                        subject: certs[looped].label(),
                    });
                }
                break;
            }
        }
    }
    if order.len() < certs.len() {
        let extra: Vec<String> = (0..certs.len())
            .filter(|i| !order.contains(i))
            .map(|i| certs[i].label())
            .collect();
        return Err(CertificateError::Disjoint {
            name: name.to_string(),
            leaf: certs[leaf].label(),
            extra: extra.join(", "),
        });
    }
    Ok(order)
}

/// Key-derivation iterations of the PFX kvvm writes (OpenSSL 3's and Java's default is 2048 / 10000; the
/// password is empty, so the count only has to be one every reader accepts).
const PFX_ITERATIONS: u32 = 2048;

fn pem_section(out: &mut Vec<u8>, label: &str, der: &[u8]) {
    let mut b64 = Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
    STANDARD.encode_string(der, &mut b64);
    out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
}

/// PKCS#8 PrivateKeyInfo { version 0, algorithm, OCTET STRING key } around a PKCS#1 or SEC1 key.
fn wrap_pkcs8(algorithm_der: &[u8], key: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let algorithm = AlgorithmIdentifierRef::from_der(algorithm_der).ok()?;
    let info = PrivateKeyInfoRef::new(algorithm, OctetStringRef::new(key).ok()?);
    // Encoded straight into a buffer that is wiped when dropped: no unwiped copy of the key is left behind.
    let mut out = Zeroizing::new(vec![0; usize::try_from(info.encoded_len().ok()?).ok()?]);
    info.encode_to_slice(&mut out).ok()?;
    Some(out)
}

/// What a PFX holds: its certificates, its keys and the provider it names for its key.
type Pkcs12Content = (Vec<Vec<u8>>, Vec<FoundKey>, Option<String>);

fn read_pkcs12(name: &str, value: &str) -> Result<Pkcs12Content, CertificateError> {
    let compact: Zeroizing<String> =
        Zeroizing::new(value.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    let der = Zeroizing::new(STANDARD.decode(compact.as_bytes()).map_err(|e| {
        CertificateError::Base64 {
            name: name.to_string(),
            detail: e.to_string(),
        }
    })?);
    // p12-keystore refuses such files too, but only says "Invalid parameters".
    if let Some((part, iterations)) = pkcs12_iterations(&der)
        .into_iter()
        .filter(|(_, n)| *n > PKCS12_MAX_ITERATIONS)
        .max_by_key(|(_, n)| *n)
    {
        return Err(CertificateError::Pkcs12Iterations {
            name: name.to_string(),
            part,
            iterations,
            limit: PKCS12_MAX_ITERATIONS,
        });
    }
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&der, "").map_err(|e| {
        CertificateError::Pkcs12 {
            name: name.to_string(),
            detail: e.to_string(),
        }
    })?;
    let certs = archive
        .certs
        .iter()
        .map(|bag| bag.cert.as_der().to_vec())
        .collect();
    let keys = archive
        .keys
        .iter()
        .map(|bag| FoundKey::Pkcs8(Zeroizing::new(bag.key.as_der().to_vec())))
        .collect();
    Ok((certs, keys, pkcs12_key_provider(&der)))
}

/// The most key-derivation iterations kvvm runs for one part of a PFX: p12-keystore's own cap, well above what
/// any real tool writes (Key Vault about 2,000, OpenSSL 2,048, Windows 2,000 to 10,000).
pub(crate) const PKCS12_MAX_ITERATIONS: u64 = 1_000_000;

const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const OID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const OID_PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const OID_PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// The pkcs-12PbeIds (RFC 7292 appendix C), whose parameters are { salt, iterations }.
const OIDS_PKCS12_PBE: [ObjectIdentifier; 6] = [
    pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC4,
    pkcs12::PKCS_12_PBE_WITH_SHAAND40_BIT_RC4,
    pkcs12::PKCS_12_PBE_WITH_SHAAND3_KEY_TRIPLE_DES_CBC,
    pkcs12::PKCS_12_PBE_WITH_SHAAND2_KEY_TRIPLE_DES_CBC,
    pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC2_CBC,
    pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC,
];

/// The iteration count of a password-based AlgorithmIdentifier (PKCS#12 PBE or PBES2 with PBKDF2).
fn pbe_iterations(algorithm: &AlgorithmIdentifierOwned) -> Option<u64> {
    let params = algorithm.parameters.as_ref()?;
    if OIDS_PKCS12_PBE.contains(&algorithm.oid) {
        let params: Pkcs12PbeParams = params.decode_as().ok()?;
        return u64::try_from(params.iterations).ok();
    }
    if algorithm.oid == OID_PBES2 {
        let params: Pbes2Params = params.decode_as().ok()?;
        if params.kdf.oid != OID_PBKDF2 {
            return None;
        }
        let kdf: Pbkdf2Params = params.kdf.parameters?.decode_as().ok()?;
        return Some(u64::from(kdf.iteration_count));
    }
    None
}

/// The ContentInfos of a PFX's AuthenticatedSafe (its `data` content), if it decodes.
fn authenticated_safe(pfx: &Pfx) -> Option<AuthenticatedSafe<'static>> {
    if pfx.auth_safe.content_type != OID_DATA {
        return None;
    }
    let safes = pfx.auth_safe.content.decode_as::<OctetString>().ok()?;
    AuthenticatedSafe::from_der(safes.as_bytes()).ok()
}

/// The bags of an unencrypted (`data`) ContentInfo; `None` for encrypted ones and what does not decode.
fn plain_bags(content_info: &cms::content_info::ContentInfo) -> Option<SafeContents> {
    if content_info.content_type != OID_DATA {
        return None;
    }
    let bags = content_info.content.decode_as::<OctetString>().ok()?;
    SafeContents::from_der(bags.as_bytes()).ok()
}

/// Every key-derivation iteration count a PFX declares, with what it protects, read before any derivation
/// runs. What does not decode (BER indefinite lengths, odd layouts) is skipped: p12-keystore judges it.
fn pkcs12_iterations(pfx: &[u8]) -> Vec<(&'static str, u64)> {
    let mut found = Vec::new();
    let Ok(pfx) = Pfx::from_der(pfx) else {
        return found;
    };
    if let Some(mac) = &pfx.mac_data
        && let Ok(n) = u64::try_from(mac.iterations)
    {
        found.push(("its integrity MAC", n));
    }
    for content_info in authenticated_safe(&pfx).unwrap_or_default() {
        if content_info.content_type == OID_ENCRYPTED_DATA {
            if let Ok(data) = content_info.content.decode_as::<EncryptedData>()
                && let Some(n) = pbe_iterations(&data.enc_content_info.content_enc_alg)
            {
                found.push(("its encrypted certificates", n));
            }
            continue;
        }
        for bag in plain_bags(&content_info).unwrap_or_default() {
            // bagValue is kept whole: the [0] wrapper around an EncryptedPrivateKeyInfo.
            if bag.bag_id == pkcs12::PKCS_12_PKCS8_KEY_BAG_OID
                && let Ok(value) = AnyRef::from_der(&bag.bag_value)
                && let Ok(key) = EncryptedPrivateKeyInfo::from_der(value.value())
                && let Some(n) = pbe_iterations(&key.encryption_algorithm)
            {
                found.push(("its private key", n));
            }
        }
    }
    found
}

/// szOID_PKCS_12_KEY_PROVIDER_NAME_ATTR: the bag attribute (a BMPString) in which Windows names the provider
/// that keeps a PFX's key; its PFX import keeps the key with that provider.
const OID_KEY_PROVIDER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.17.1");

/// Whether a bag holds a private key (shrouded, as every real tool writes it, or plain).
fn is_key_bag(bag: &pkcs12::safe_bag::SafeBag) -> bool {
    bag.bag_id == pkcs12::PKCS_12_PKCS8_KEY_BAG_OID || bag.bag_id == pkcs12::PKCS_12_KEY_BAG_OID
}

/// The provider a PFX names for its key, from the first key bag that carries the attribute.
fn pkcs12_key_provider(pfx: &[u8]) -> Option<String> {
    let pfx = Pfx::from_der(pfx).ok()?;
    authenticated_safe(&pfx)?
        .iter()
        .filter_map(plain_bags)
        .flatten()
        .filter(is_key_bag)
        .flat_map(|bag| bag.bag_attributes.unwrap_or_default().into_vec())
        .filter(|attribute| attribute.oid == OID_KEY_PROVIDER)
        .flat_map(|attribute| attribute.values.into_vec())
        .find_map(|value| value.decode_as::<der::asn1::BmpString>().ok())
        .map(|name| name.to_string())
        .filter(|name| !name.is_empty())
}

/// `pfx` (kvvm's own, empty password) with `provider` named on its key bags, its MAC computed again. Only the
/// bag attributes change: the encrypted key and certificates are carried over as they are.
fn name_key_provider(pfx: &[u8], provider: &str) -> Result<Zeroizing<Vec<u8>>, der::Error> {
    use der::asn1::{Any, BmpString, SetOfVec};
    use hmac::{KeyInit as _, Mac as _};
    let mut pfx = Pfx::from_der(pfx)?;
    let mut safes = authenticated_safe(&pfx).ok_or(der::ErrorKind::Failed)?;
    let attribute = cms::cert::x509::attr::Attribute {
        oid: OID_KEY_PROVIDER,
        values: SetOfVec::try_from(vec![Any::encode_from(&BmpString::from_utf8(provider)?)?])?,
    };
    let mut named = false;
    for content_info in &mut safes {
        let Some(mut bags) = plain_bags(content_info) else {
            continue;
        };
        if !bags.iter().any(is_key_bag) {
            continue;
        }
        // The decoder keeps bagValue with its [0] wrapper, the encoder adds one: unwrap it first.
        for bag in &mut bags {
            bag.bag_value = AnyRef::from_der(&bag.bag_value)?.value().to_vec();
        }
        let mut changed = false;
        for bag in bags.iter_mut().filter(|bag| is_key_bag(bag)) {
            let mut attributes = bag.bag_attributes.take().unwrap_or_default().into_vec();
            attributes.retain(|a| a.oid != OID_KEY_PROVIDER);
            attributes.push(attribute.clone());
            bag.bag_attributes = Some(SetOfVec::try_from(attributes)?);
            changed = true;
        }
        if changed {
            let encoded = Zeroizing::new(bags.to_der()?);
            content_info.content = Any::encode_from(&OctetString::new(encoded.as_slice())?)?;
            named = true;
        }
    }
    if !named {
        return Err(der::ErrorKind::Failed.into());
    }
    // The key bag is encrypted under the empty password, so every copy is wiped like the key itself.
    let content = Zeroizing::new(safes.to_der()?);
    let mac = pfx.mac_data.as_mut().ok_or(der::ErrorKind::Failed)?;
    // The PKCS#12 MAC (RFC 7292 appendix B) kvvm's writer uses: HMAC-SHA-256 under a key derived from the
    // empty password with the MAC's own salt and iteration count.
    if mac.mac.algorithm.oid != OID_SHA256 {
        return Err(der::ErrorKind::Failed.into());
    }
    let key = pkcs12::kdf::derive_key_utf8::<sha2::Sha256>(
        "",
        mac.mac_salt.as_bytes(),
        pkcs12::kdf::Pkcs12KeyType::Mac,
        mac.iterations,
        32,
    )?;
    let mut hmac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|_| der::ErrorKind::Failed)?;
    hmac.update(content.as_slice());
    mac.mac.digest = OctetString::new(hmac.finalize().into_bytes().to_vec())?;
    pfx.auth_safe.content = Any::encode_from(&OctetString::new(content.as_slice())?)?;
    pfx.to_der().map(Zeroizing::new)
}

fn read_pem(name: &str, value: &str) -> Result<(Vec<Vec<u8>>, Vec<FoundKey>), CertificateError> {
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    let bad = |detail: String| CertificateError::Pem {
        name: name.to_string(),
        detail,
    };
    if value.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || value.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(bad(
            "the private key is encrypted; Key Vault keeps PEM keys unencrypted".to_string(),
        ));
    }
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(value.as_bytes()) {
        let (kind, der) = section.map_err(|e| bad(e.to_string()))?;
        let der = Zeroizing::new(der);
        match kind {
            SectionKind::Certificate => certs.push(der.to_vec()),
            SectionKind::PrivateKey => keys.push(FoundKey::Pkcs8(der)),
            SectionKind::RsaPrivateKey => keys.push(FoundKey::Pkcs1(der)),
            SectionKind::EcPrivateKey => keys.push(FoundKey::Sec1(der)),
            // CRLs, public keys, EC PARAMETERS (as `openssl ecparam -genkey` writes) and the like.
            _ => {}
        }
    }
    Ok((certs, keys))
}

/// The names a certificate is for, from its subjectAltName extension, each as `DNS:<name>` (lower-case),
/// `IP:<address>`, `email:<address>` or `URI:<uri>` (other kinds as `other:` and their encoding); empty when it
/// has none or cannot be read.
#[cfg_attr(unix, allow(dead_code, reason = "Windows' renewal links use it"))]
pub(crate) fn subject_alt_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{}", dns.to_ascii_lowercase()),
            GeneralName::IPAddress(ip) => match <[u8; 4]>::try_from(*ip) {
                Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*ip) {
                    Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                    Err(_) => format!("IP:{}", hex_lower(ip)),
                },
            },
            GeneralName::RFC822Name(mail) => format!("email:{}", mail.to_ascii_lowercase()),
            GeneralName::URI(uri) => format!("URI:{uri}"),
            other => format!("other:{other:?}"),
        })
        .collect()
}

/// Whether a certificate names TLS server authentication (1.3.6.1.5.5.7.3.1) among its extended key usages:
/// the certificates whose chain Windows validates before they are added (as Microsoft's v4 does). One without
/// the extension, or that cannot be read, is not one of them.
#[cfg_attr(unix, allow(dead_code, reason = "Windows' chain validation uses it"))]
pub(crate) fn is_for_server_auth(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, cert)| {
            cert.extended_key_usage()
                .ok()
                .flatten()
                .map(|eku| eku.value.server_auth)
        })
        .unwrap_or(false)
}

/// Whether a certificate for the names `new` renews one for `old` (Microsoft's rule for renewal links: every
/// name of the old one is in the new one). A certificate with no names renews nothing: nothing would say that
/// the new one serves what the old one served.
#[cfg_attr(unix, allow(dead_code, reason = "Windows' renewal links use it"))]
pub(crate) fn names_carry_over(old: &[String], new: &[String]) -> bool {
    !old.is_empty() && old.iter().all(|name| new.contains(name))
}

#[cfg(test)]
mod renewal_tests {
    use super::names_carry_over;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_renewal_keeps_every_name_of_the_old_certificate() {
        let web = names(&["DNS:web.example.com"]);
        let web_www = names(&["DNS:www.example.com", "DNS:web.example.com"]);
        let other = names(&["DNS:other.example.com"]);
        // The same names, or more: a renewal.
        assert!(names_carry_over(&web, &web));
        assert!(names_carry_over(&web, &web_www));
        // A name dropped, or other names: not a renewal.
        assert!(!names_carry_over(&web_www, &web));
        assert!(!names_carry_over(&web, &other));
        // No names at all says nothing.
        assert!(!names_carry_over(&[], &web));
        assert!(!names_carry_over(&web, &[]));
        // Kinds are not mixed: an address is not a DNS name.
        assert!(!names_carry_over(
            &names(&["IP:10.0.0.1"]),
            &names(&["DNS:10.0.0.1"])
        ));
    }
}
