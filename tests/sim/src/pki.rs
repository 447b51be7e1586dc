//! Certificate fixtures built with the `openssl` command line, the way users and Key Vault produce them: a
//! root → intermediate → leaf chain for each key type Key Vault issues, exported as PFX in every encryption
//! variant and as PEM in every layout. Tests check kvvm's output with the same CLI, so the two never share
//! code.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A key Key Vault can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA with this many bits.
    Rsa(u32),
    /// EC on this curve (`P-256`, `P-384`, `P-521`).
    Ec(&'static str),
}

impl KeyType {
    /// Every key type Key Vault offers.
    pub const ALL: [KeyType; 6] = [
        KeyType::Rsa(2048),
        KeyType::Rsa(3072),
        KeyType::Rsa(4096),
        KeyType::Ec("P-256"),
        KeyType::Ec("P-384"),
        KeyType::Ec("P-521"),
    ];

    fn genpkey_args(self) -> Vec<String> {
        match self {
            KeyType::Rsa(bits) => vec![
                "-algorithm".into(),
                "RSA".into(),
                "-pkeyopt".into(),
                format!("rsa_keygen_bits:{bits}"),
            ],
            KeyType::Ec(curve) => vec![
                "-algorithm".into(),
                "EC".into(),
                "-pkeyopt".into(),
                format!("ec_paramgen_curve:{curve}"),
            ],
        }
    }

    /// A short label for file names and messages.
    pub fn label(self) -> String {
        match self {
            KeyType::Rsa(bits) => format!("rsa{bits}"),
            KeyType::Ec(curve) => format!("ec{}", curve.trim_start_matches("P-")),
        }
    }
}

/// How a PFX is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PfxVariant {
    /// As Key Vault writes it: SHA-1 MAC, 3DES for keys and certificates.
    KeyVault,
    /// OpenSSL 1.x default (`-legacy`): 3DES keys, RC2-40 certificate bags.
    LegacyRc2,
    /// OpenSSL 3 default: PBES2 / AES-256-CBC, HMAC-SHA256 MAC.
    Aes,
    /// Unencrypted bags (still MACed).
    Unencrypted,
    /// Certificates only — what a non-exportable key gives.
    NoKey,
}

impl PfxVariant {
    /// Every variant.
    pub const ALL: [PfxVariant; 5] = [
        PfxVariant::KeyVault,
        PfxVariant::LegacyRc2,
        PfxVariant::Aes,
        PfxVariant::Unencrypted,
        PfxVariant::NoKey,
    ];

    fn args(self) -> &'static [&'static str] {
        match self {
            PfxVariant::KeyVault => &[
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
            PfxVariant::LegacyRc2 => &["-legacy"],
            PfxVariant::Aes => &[],
            PfxVariant::Unencrypted => &["-keypbe", "NONE", "-certpbe", "NONE"],
            PfxVariant::NoKey => &["-nokeys"],
        }
    }
}

/// How the private key is written in a PEM value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKey {
    /// `PRIVATE KEY`.
    Pkcs8,
    /// `RSA PRIVATE KEY` / `EC PRIVATE KEY` (PKCS#1 / SEC1).
    Traditional,
    /// No key at all.
    None,
}

/// Layout of a PEM value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PemLayout {
    /// Key before the certificates (as Key Vault writes it) or after.
    pub key_first: bool,
    /// Key encoding.
    pub key: PemKey,
    /// Certificates root-first instead of leaf-first.
    pub reversed: bool,
    /// Windows line endings.
    pub crlf: bool,
}

impl Default for PemLayout {
    fn default() -> Self {
        PemLayout {
            key_first: true,
            key: PemKey::Pkcs8,
            reversed: false,
            crlf: false,
        }
    }
}

/// A root → intermediate → leaf chain on disk.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Folder holding the files.
    pub dir: PathBuf,
    /// Root certificate (PEM).
    pub root: PathBuf,
    /// Intermediate certificate (PEM).
    pub intermediate: PathBuf,
    /// Leaf certificate (PEM).
    pub leaf: PathBuf,
    /// Leaf key (PKCS#8 PEM).
    pub leaf_key: PathBuf,
    /// Leaf subject CN.
    pub cn: String,
}

/// Runs openssl with `args` in `dir`, failing with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> io::Result<Vec<u8>> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

fn genkey(dir: &Path, key: KeyType, out: &str) -> io::Result<()> {
    let mut args: Vec<String> = vec!["genpkey".into()];
    args.extend(key.genpkey_args());
    args.extend(["-out".into(), out.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &args).map(drop)
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
const LEAF_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nsubjectAltName=DNS:";

/// Signs `<name>.csr` with the CA files into `<name>.pem`, valid for `days` (-1: already expired).
fn sign(dir: &Path, name: &str, ca: (&str, &str), ext: &str, days: i32) -> io::Result<()> {
    fs::write(dir.join(format!("{name}.ext")), ext)?;
    let days = days.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            ca.0,
            "-CAkey",
            ca.1,
            "-set_serial",
            &format!("0x{:016X}", fastrand::u64(1..u64::MAX >> 1)),
            "-days",
            &days,
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    )
    .map(drop)
}

fn csr(dir: &Path, name: &str, key: &str, cn: &str) -> io::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &format!("{name}.csr"),
        ],
    )
    .map(drop)
}

impl Chain {
    /// A new chain in `dir` (created): a self-signed root, an intermediate, and a leaf for `cn` with a `key`
    /// key, valid for `days` days (-1 for one that is already expired). The CAs use EC P-256.
    pub fn generate(dir: &Path, cn: &str, key: KeyType, days: i32) -> io::Result<Chain> {
        fs::create_dir_all(dir)?;
        genkey(dir, KeyType::Ec("P-256"), "root.key")?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "root.key",
                "-subj",
                &format!("/CN=kvvm test root {cn}"),
                "-days",
                "3650",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "root.pem",
            ],
        )?;
        genkey(dir, KeyType::Ec("P-256"), "int.key")?;
        csr(
            dir,
            "int",
            "int.key",
            &format!("kvvm test intermediate {cn}"),
        )?;
        sign(dir, "int", ("root.pem", "root.key"), CA_EXT, 3650)?;
        genkey(dir, key, "leaf.key")?;
        csr(dir, "leaf", "leaf.key", cn)?;
        sign(
            dir,
            "leaf",
            ("int.pem", "int.key"),
            &format!("{LEAF_EXT}{cn}\n"),
            days,
        )?;
        Ok(Chain {
            dir: dir.to_path_buf(),
            root: dir.join("root.pem"),
            intermediate: dir.join("int.pem"),
            leaf: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
            cn: cn.to_string(),
        })
    }

    /// A new leaf for the same CAs (a renewal: new key, new serial), as another chain value.
    pub fn renew(&self, tag: &str, key: KeyType, days: i32) -> io::Result<Chain> {
        let key_file = format!("leaf-{tag}.key");
        let name = format!("leaf-{tag}");
        genkey(&self.dir, key, &key_file)?;
        csr(&self.dir, &name, &key_file, &self.cn)?;
        sign(
            &self.dir,
            &name,
            ("int.pem", "int.key"),
            &format!("{LEAF_EXT}{}\n", self.cn),
            days,
        )?;
        Ok(Chain {
            leaf: self.dir.join(format!("{name}.pem")),
            leaf_key: self.dir.join(key_file),
            ..self.clone()
        })
    }

    /// The PFX (DER) with an empty password, its chain given to openssl root-first (so bag order is not
    /// leaf → root).
    pub fn pfx(&self, variant: PfxVariant) -> io::Result<Vec<u8>> {
        self.pfx_with(variant, &[])
    }

    /// A PFX as [`Chain::pfx`] makes it, with more `openssl pkcs12 -export` arguments (e.g. `-CSP NAME`, which
    /// names the key's provider as Windows does when it exports a key).
    pub fn pfx_with(&self, variant: PfxVariant, extra: &[&str]) -> io::Result<Vec<u8>> {
        let certfile = self.dir.join("pfx-chain.pem");
        let mut chain = fs::read(&self.root)?;
        chain.extend(fs::read(&self.intermediate)?);
        fs::write(&certfile, chain)?;
        let out = self.dir.join("out.pfx");
        let mut args = vec![
            "pkcs12",
            "-export",
            "-passout",
            "pass:",
            "-in",
            self.leaf.to_str().unwrap(),
            "-certfile",
            certfile.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
        ];
        if variant != PfxVariant::NoKey {
            args.extend(["-inkey", self.leaf_key.to_str().unwrap()]);
        }
        args.extend(variant.args());
        args.extend(extra);
        openssl(&self.dir, &args)?;
        fs::read(out)
    }

    /// The key in the requested encoding (PEM text, empty for [`PemKey::None`]).
    pub fn key_pem(&self, key: PemKey) -> io::Result<String> {
        let path = self.leaf_key.to_str().unwrap();
        let out = match key {
            PemKey::None => Vec::new(),
            PemKey::Pkcs8 => openssl(&self.dir, &["pkey", "-in", path])?,
            PemKey::Traditional => openssl(&self.dir, &["pkey", "-traditional", "-in", path])?,
        };
        Ok(String::from_utf8(out).expect("PEM is ASCII"))
    }

    /// A PEM value laid out as asked.
    pub fn pem(&self, layout: PemLayout) -> io::Result<String> {
        let mut certs = vec![
            fs::read_to_string(&self.leaf)?,
            fs::read_to_string(&self.intermediate)?,
            fs::read_to_string(&self.root)?,
        ];
        if layout.reversed {
            certs.reverse();
        }
        let key = self.key_pem(layout.key)?;
        let mut text = String::new();
        if layout.key_first {
            text.push_str(&key);
        }
        for c in &certs {
            text.push_str(c);
        }
        if !layout.key_first {
            text.push_str(&key);
        }
        if layout.crlf {
            text = text.replace('\n', "\r\n");
        }
        Ok(text)
    }

    /// The leaf's serial as `openssl x509 -serial` prints it (upper-case hex).
    pub fn leaf_serial(&self) -> io::Result<String> {
        serial_of(&self.leaf)
    }
}

/// `openssl x509 -serial` of the first certificate in `pem_file`.
pub fn serial_of(pem_file: &Path) -> io::Result<String> {
    let dir = pem_file.parent().unwrap_or(Path::new("/"));
    let out = openssl(
        dir,
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            pem_file.to_str().unwrap(),
        ],
    )?;
    Ok(String::from_utf8_lossy(&out)
        .trim()
        .trim_start_matches("serial=")
        .to_string())
}

/// Subjects of every certificate in a PEM file, in file order (via `openssl storeutl`).
pub fn subjects_in(pem_file: &Path) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(pem_file)?;
    let mut subjects = Vec::new();
    let dir = tempdir_for(pem_file)?;
    for (i, block) in text
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .enumerate()
    {
        let end = block.find("-----END CERTIFICATE-----").ok_or_else(|| {
            io::Error::other(format!(
                "certificate {i} in {} is not closed",
                pem_file.display()
            ))
        })?;
        let one = dir.join(format!("c{i}.pem"));
        fs::write(
            &one,
            format!(
                "-----BEGIN CERTIFICATE-----{}-----END CERTIFICATE-----\n",
                &block[..end]
            ),
        )?;
        let out = openssl(
            &dir,
            &[
                "x509",
                "-noout",
                "-subject",
                "-nameopt",
                "oneline",
                "-in",
                one.to_str().unwrap(),
            ],
        )?;
        subjects.push(
            String::from_utf8_lossy(&out)
                .trim()
                .trim_start_matches("subject=")
                .trim()
                .to_string(),
        );
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(subjects)
}

fn tempdir_for(file: &Path) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kvvm-pki-{}-{:x}",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        fastrand::u64(..)
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Checks an installed PEM file with openssl: the first certificate verifies against `root` using the file's
/// other certificates as intermediates, and the file's private key is the first certificate's. Returns the
/// error text when either fails.
pub fn verify_installed(file: &Path, root: &Path) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let f = file.to_str().unwrap();
    let verify = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            f,
            f,
        ],
    )
    .map_err(|e| e.to_string())?;
    if !String::from_utf8_lossy(&verify).contains(": OK") {
        return Err(format!(
            "openssl verify: {}",
            String::from_utf8_lossy(&verify)
        ));
    }
    let cert_pub =
        openssl(dir, &["x509", "-noout", "-pubkey", "-in", f]).map_err(|e| e.to_string())?;
    let key_pub = openssl(dir, &["pkey", "-pubout", "-in", f]).map_err(|e| e.to_string())?;
    if cert_pub != key_pub {
        return Err("the private key is not the leaf's".to_string());
    }
    let text = fs::read_to_string(file).map_err(|e| e.to_string())?;
    let key_at = text
        .find("-----BEGIN PRIVATE KEY-----")
        .ok_or("no PKCS#8 key")?;
    if text[key_at..].contains("-----BEGIN CERTIFICATE-----") {
        return Err("the private key is not last".to_string());
    }
    Ok(())
}
