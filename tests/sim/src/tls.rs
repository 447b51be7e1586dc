//! The test certificate authority: one CA per test run, trusted inside the test namespace through the bind-
//! mounted CA bundle, so the product verifies the fake vault's certificate exactly as it would Key Vault's.
//!
//! The outer test process generates it and writes it to a directory; the re-executed inner process loads it
//! from there (see [`crate::netns`]), so both sides agree on one CA.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key (test only, lives in a temporary directory).
pub const CA_KEY_FILE: &str = "ca.key";
/// System bundle + test CA, bind-mounted over `/etc/ssl/certs/ca-certificates.crt` in the namespace.
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The system CA bundle the test CA is appended to.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A throw-away certificate authority that signs leaf certificates for the fake servers.
pub struct TestCa {
    ca_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa { .. }")
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    // A name of its own: two test CAs in one bundle are two trust anchors, as two real CAs are (a verifier
    // picks its candidates by the issuer's name).
    p.distinguished_name.push(
        DnType::CommonName,
        format!("kvvm-sim test CA {:08x}", fastrand::u32(..)),
    );
    p.distinguished_name
        .push(DnType::OrganizationName, "kvvm tests");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TestCa {
    /// Generates a new CA (ECDSA P-256).
    pub fn generate() -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let cert = ca_params().self_signed(&key).expect("self-sign CA");
        TestCa {
            ca_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Loads a CA written by [`TestCa::write`].
    pub fn load(dir: &Path) -> io::Result<TestCa> {
        Ok(TestCa {
            ca_pem: std::fs::read_to_string(dir.join(CA_CERT_FILE))?,
            key_pem: std::fs::read_to_string(dir.join(CA_KEY_FILE))?,
        })
    }

    /// Writes `ca.pem`, `ca.key` and `bundle.pem` (system bundle, if readable, + this CA) into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CA_CERT_FILE), &self.ca_pem)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(CA_KEY_FILE))?;
            f.write_all(self.key_pem.as_bytes())?;
        }
        let mut bundle = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# kvvm-sim test CA\n");
        bundle.push_str(&self.ca_pem);
        std::fs::write(dir.join(BUNDLE_FILE), bundle)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("CA PEM parses")
    }

    /// Issues a server leaf certificate for `names` (DNS names or IP addresses), signed by the CA.
    /// Returns the chain (leaf only, as servers usually send when the CA is the root) and the key.
    pub fn issue_server_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_key = KeyPair::from_pem(&self.key_pem).expect("CA key parses");
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).expect("the CA certificate parses");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("valid DNS name")),
            })
            .collect();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = p.signed_by(&key, &issuer).expect("sign leaf");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A rustls server configuration (aws-lc-rs) presenting a leaf for `names`, signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.issue_server_cert(names);
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        Arc::new(cfg)
    }

    /// A rustls client configuration trusting only this CA (for tests that talk to the fakes directly).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("CA cert is a valid root");
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}
