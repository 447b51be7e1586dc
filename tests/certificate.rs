//! Decoding, ordering and checking certificate secrets: every PFX variant and PEM layout, every key type Key
//! Vault issues, and every way a value can be wrong. Fixtures come from the openssl CLI; output is checked
//! with it too.

use std::fs;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kvvm::{CertificateBundle, CertificateError, ContentKind};
use kvvm_sim::pki::{self, Chain, KeyType, PemKey, PemLayout, PfxVariant};

fn chains() -> &'static Vec<(KeyType, Chain)> {
    static CHAINS: OnceLock<Vec<(KeyType, Chain)>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        let base = tempfile::tempdir().unwrap().keep();
        KeyType::ALL
            .iter()
            .map(|&k| {
                let chain = Chain::generate(
                    &base.join(k.label()),
                    &format!("{}.example.com", k.label()),
                    k,
                    90,
                )
                .unwrap();
                (k, chain)
            })
            .collect()
    })
}

fn fixture(key: KeyType) -> &'static Chain {
    &chains().iter().find(|(k, _)| *k == key).unwrap().1
}

/// Writes the bundle's PEM next to the chain and checks it with openssl; returns the file.
fn check_with_openssl(bundle: &CertificateBundle, chain: &Chain, tag: &str) -> std::path::PathBuf {
    let out = chain.dir.join(format!("installed-{tag}.pem"));
    fs::write(&out, &*bundle.to_pem()).unwrap();
    pki::verify_installed(&out, &chain.root).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let subjects = pki::subjects_in(&out).unwrap();
    assert_eq!(subjects.len(), 3, "{tag}: {subjects:?}");
    assert!(
        subjects[0].ends_with(&format!("CN = {}", chain.cn)),
        "{tag}: {subjects:?}"
    );
    assert!(subjects[1].contains("intermediate"), "{tag}: {subjects:?}");
    assert!(subjects[2].contains("root"), "{tag}: {subjects:?}");
    assert_eq!(bundle.serial_hex(), chain.leaf_serial().unwrap(), "{tag}");
    out
}

#[test]
fn every_pfx_variant_and_key_type_installs_leaf_first_with_the_key_last() {
    for (key, chain) in chains() {
        for variant in PfxVariant::ALL {
            if variant == PfxVariant::NoKey {
                continue;
            }
            let tag = format!("{}-{variant:?}", key.label());
            let value = STANDARD.encode(chain.pfx(variant).unwrap());
            let bundle = CertificateBundle::from_secret(&tag, ContentKind::Pkcs12, &value)
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
            check_with_openssl(&bundle, chain, &tag);
        }
    }
}

#[test]
fn every_pem_layout_installs_leaf_first_with_a_pkcs8_key_last() {
    for (key, chain) in chains() {
        for key_first in [true, false] {
            for key_format in [PemKey::Pkcs8, PemKey::Traditional] {
                for reversed in [false, true] {
                    for crlf in [false, true] {
                        let layout = PemLayout {
                            key_first,
                            key: key_format,
                            reversed,
                            crlf,
                        };
                        let tag = format!("{}-{layout:?}", key.label())
                            .replace([' ', '{', '}', ':', ','], "");
                        let value = chain.pem(layout).unwrap();
                        let bundle = CertificateBundle::from_secret(&tag, ContentKind::Pem, &value)
                            .unwrap_or_else(|e| panic!("{tag}: {e}"));
                        check_with_openssl(&bundle, chain, &tag);
                    }
                }
            }
        }
    }
}

#[test]
fn a_traditional_key_is_written_as_pkcs8_and_equals_the_original() {
    for key in [KeyType::Rsa(2048), KeyType::Ec("P-521")] {
        let chain = fixture(key);
        let value = chain
            .pem(PemLayout {
                key: PemKey::Traditional,
                ..PemLayout::default()
            })
            .unwrap();
        assert!(
            value.contains("-----BEGIN RSA PRIVATE KEY-----")
                || value.contains("-----BEGIN EC PRIVATE KEY-----")
        );
        let bundle = CertificateBundle::from_secret("t", ContentKind::Pem, &value).unwrap();
        let out = chain.dir.join("trad.pem");
        fs::write(&out, &*bundle.to_pem()).unwrap();
        // openssl reads the PKCS#8 key and prints the same private key as the original.
        let ours = pki::openssl(&chain.dir, &["pkey", "-in", out.to_str().unwrap()]).unwrap();
        let original = pki::openssl(
            &chain.dir,
            &["pkey", "-in", chain.leaf_key.to_str().unwrap()],
        )
        .unwrap();
        assert_eq!(ours, original, "{key:?}");
    }
}

#[test]
fn an_ec_key_with_its_parameters_block_is_read() {
    // `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
    let chain = fixture(KeyType::Ec("P-384"));
    let params = pki::openssl(&chain.dir, &["ecparam", "-name", "secp384r1"]).unwrap();
    let value = format!(
        "{}{}",
        String::from_utf8(params).unwrap(),
        chain
            .pem(PemLayout {
                key: PemKey::Traditional,
                ..PemLayout::default()
            })
            .unwrap()
    );
    let bundle = CertificateBundle::from_secret("t", ContentKind::Pem, &value).unwrap();
    check_with_openssl(&bundle, chain, "ecparams");
}

fn err(kind: ContentKind, value: &str) -> CertificateError {
    CertificateBundle::from_secret("myvault/web version 0123", kind, value)
        .expect_err("must be rejected")
}

#[test]
fn a_certificate_without_its_key_names_the_certificate_and_the_exportable_fix() {
    let chain = fixture(KeyType::Rsa(2048));
    let e = err(
        ContentKind::Pkcs12,
        &STANDARD.encode(chain.pfx(PfxVariant::NoKey).unwrap()),
    );
    assert_eq!(e.reason(), "no-private-key");
    let text = e.to_string();
    assert!(text.starts_with("myvault/web version 0123: "), "{text}");
    assert!(text.contains("exportable"), "{text}");
    let e = err(
        ContentKind::Pem,
        &chain
            .pem(PemLayout {
                key: PemKey::None,
                ..PemLayout::default()
            })
            .unwrap(),
    );
    assert_eq!(e.reason(), "no-private-key");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let chain = fixture(KeyType::Ec("P-256"));
    let other = fixture(KeyType::Ec("P-384"));
    let value = format!(
        "{}{}{}{}",
        other.key_pem(PemKey::Pkcs8).unwrap(),
        fs::read_to_string(&chain.leaf).unwrap(),
        fs::read_to_string(&chain.intermediate).unwrap(),
        fs::read_to_string(&chain.root).unwrap()
    );
    let e = err(ContentKind::Pem, &value);
    assert_eq!(e.reason(), "key-mismatch", "{e}");
    let text = e.to_string();
    assert!(
        text.contains("does not match any of its 3 certificate(s)"),
        "{text}"
    );
    assert!(text.contains(&chain.cn), "{text}");
    assert!(text.contains("previous version stays current"), "{text}");
}

/// P-521 keys are matched to their leaf by computing the public point from the private scalar (ring, the TLS
/// provider, cannot load them): another P-521 key, of the same curve and size, matches nothing.
#[test]
fn a_p521_key_of_another_p521_certificate_is_refused() {
    let chain = fixture(KeyType::Ec("P-521"));
    let dir = tempfile::tempdir().unwrap();
    let other =
        Chain::generate(dir.path(), "other521.example.com", KeyType::Ec("P-521"), 90).unwrap();
    for key in [PemKey::Pkcs8, PemKey::Traditional] {
        let value = format!(
            "{}{}{}{}",
            other.key_pem(key).unwrap(),
            fs::read_to_string(&chain.leaf).unwrap(),
            fs::read_to_string(&chain.intermediate).unwrap(),
            fs::read_to_string(&chain.root).unwrap()
        );
        let e = err(ContentKind::Pem, &value);
        assert_eq!(e.reason(), "key-mismatch", "{key:?}: {e}");
        assert!(e.to_string().contains(&chain.cn), "{e}");
        // Its own key still matches, in either form.
        let own = format!(
            "{}{}",
            chain.key_pem(key).unwrap(),
            fs::read_to_string(&chain.leaf).unwrap()
        );
        CertificateBundle::from_secret("t", ContentKind::Pem, &own).unwrap();
    }
}

#[test]
fn a_certificate_outside_the_leafs_chain_is_refused() {
    let chain = fixture(KeyType::Rsa(2048));
    let stranger = fixture(KeyType::Ec("P-256"));
    let value = format!(
        "{}{}",
        chain.pem(PemLayout::default()).unwrap(),
        fs::read_to_string(&stranger.root).unwrap()
    );
    let e = err(ContentKind::Pem, &value);
    assert_eq!(e.reason(), "chain-disjoint", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("kvvm test root {}", stranger.cn)),
        "{e}"
    );
}

#[test]
fn issuers_that_loop_are_refused() {
    // A is issued by B and B by A; the leaf is issued by A.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| pki::openssl(d, args).unwrap();
    for n in ["a", "b", "leaf"] {
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{n}.key"),
        ]);
    }
    for n in ["a", "b"] {
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{n}.key"),
            "-subj",
            &format!("/CN={n}"),
            "-out",
            &format!("{n}0.pem"),
        ]);
        run(&[
            "req",
            "-new",
            "-key",
            &format!("{n}.key"),
            "-subj",
            &format!("/CN={n}"),
            "-out",
            &format!("{n}.csr"),
        ]);
    }
    fs::write(
        d.join("ca.ext"),
        "basicConstraints=CA:TRUE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    run(&[
        "x509", "-req", "-in", "a.csr", "-CA", "b0.pem", "-CAkey", "b.key", "-extfile", "ca.ext",
        "-out", "a.pem",
    ]);
    run(&[
        "x509", "-req", "-in", "b.csr", "-CA", "a0.pem", "-CAkey", "a.key", "-extfile", "ca.ext",
        "-out", "b.pem",
    ]);
    run(&[
        "req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr",
    ]);
    run(&[
        "x509", "-req", "-in", "leaf.csr", "-CA", "a.pem", "-CAkey", "a.key", "-out", "leaf.pem",
    ]);
    let read = |f: &str| fs::read_to_string(d.join(f)).unwrap();
    let value = format!(
        "{}{}{}{}",
        read("leaf.key"),
        read("b.pem"),
        read("leaf.pem"),
        read("a.pem")
    );
    let e = err(ContentKind::Pem, &value);
    assert_eq!(e.reason(), "chain-cycle", "{e}");
    assert!(e.to_string().contains("loops back to"), "{e}");
}

#[test]
fn unreadable_values_say_what_is_wrong() {
    let e = err(ContentKind::Pkcs12, "not base64 at all!");
    assert_eq!(e.reason(), "certificate-unreadable");
    assert!(e.to_string().contains("not base64"), "{e}");

    let e = err(
        ContentKind::Pkcs12,
        &STANDARD.encode(b"\x30\x03\x02\x01\x03"),
    );
    assert!(
        e.to_string()
            .contains("PKCS#12 (PFX) value cannot be read with an empty password"),
        "{e}"
    );

    // A PFX with a password (Key Vault never has one).
    let chain = fixture(KeyType::Rsa(2048));
    let out = chain.dir.join("pw.pfx");
    pki::openssl(
        &chain.dir,
        &[
            "pkcs12",
            "-export",
            "-passout",
            "pass:secret",
            "-in",
            chain.leaf.to_str().unwrap(),
            "-inkey",
            chain.leaf_key.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    let e = err(
        ContentKind::Pkcs12,
        &STANDARD.encode(fs::read(&out).unwrap()),
    );
    assert_eq!(e.reason(), "certificate-unreadable", "{e}");

    let e = err(ContentKind::Pem, "just text");
    assert_eq!(e.reason(), "no-certificate", "{e}");

    let encrypted = pki::openssl(
        &chain.dir,
        &[
            "pkey",
            "-aes256",
            "-passout",
            "pass:x",
            "-in",
            chain.leaf_key.to_str().unwrap(),
        ],
    )
    .unwrap();
    let value = format!(
        "{}{}",
        String::from_utf8(encrypted).unwrap(),
        fs::read_to_string(&chain.leaf).unwrap()
    );
    let e = err(ContentKind::Pem, &value);
    assert!(e.to_string().contains("encrypted"), "{e}");

    let value = format!(
        "{}{}",
        chain.key_pem(PemKey::Pkcs8).unwrap(),
        "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"
    );
    let e = err(ContentKind::Pem, &value);
    assert_eq!(e.reason(), "bad-certificate", "{e}");
}

#[test]
fn several_keys_are_refused() {
    let chain = fixture(KeyType::Ec("P-256"));
    let value = format!(
        "{}{}",
        chain.pem(PemLayout::default()).unwrap(),
        fixture(KeyType::Ec("P-384"))
            .key_pem(PemKey::Pkcs8)
            .unwrap()
    );
    let e = err(ContentKind::Pem, &value);
    assert_eq!(e.reason(), "several-private-keys", "{e}");
}

#[test]
fn a_leaf_alone_is_fine_and_duplicates_are_dropped() {
    let chain = fixture(KeyType::Rsa(2048));
    let leaf = fs::read_to_string(&chain.leaf).unwrap();
    let value = format!("{}{leaf}{leaf}", chain.key_pem(PemKey::Pkcs8).unwrap());
    let bundle = CertificateBundle::from_secret("t", ContentKind::Pem, &value).unwrap();
    assert!(bundle.chain_pem().is_empty());
    assert_eq!(bundle.fullchain_pem(), bundle.leaf_pem());
    let pem = String::from_utf8(bundle.fullchain_pem()).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1, "{pem}");
}

#[test]
fn expired_and_not_yet_valid_leaves_are_installed_with_a_warning() {
    let base = fixture(KeyType::Ec("P-256"));
    let expired = base.renew("expired", KeyType::Ec("P-256"), -1).unwrap();
    let value = expired.pem(PemLayout::default()).unwrap();
    let bundle = CertificateBundle::from_secret("t", ContentKind::Pem, &value).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let warning = bundle.validity_warning(now).expect("expired");
    assert!(warning.contains("expired on"), "{warning}");

    let fresh = CertificateBundle::from_secret(
        "t",
        ContentKind::Pem,
        &base.pem(PemLayout::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(fresh.validity_warning(now), None);
    let before = fresh.not_before() - time::Duration::days(1);
    assert!(
        fresh
            .validity_warning(before)
            .unwrap()
            .contains("not valid before")
    );
    assert!(fresh.not_after() > now + time::Duration::days(89));
}

#[test]
fn debug_output_never_shows_the_key() {
    let chain = fixture(KeyType::Rsa(2048));
    let bundle = CertificateBundle::from_secret(
        "t",
        ContentKind::Pem,
        &chain.pem(PemLayout::default()).unwrap(),
    )
    .unwrap();
    let debug = format!("{bundle:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let key_b64 = chain.key_pem(PemKey::Pkcs8).unwrap();
    let some_key_line = key_b64.lines().nth(2).unwrap();
    assert!(!debug.contains(some_key_line));
}

/// DER: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

fn oid(dotted_der: &[u8]) -> Vec<u8> {
    der(0x06, dotted_der)
}

/// A PFX written by hand the way minimal tools do: no MAC, unencrypted bags, no attributes at all (so no
/// localKeyId linking key and certificate), certificates root first.
fn bare_pfx(key_pkcs8: &[u8], certs: &[Vec<u8>]) -> Vec<u8> {
    // 1.2.840.113549.1.7.1 (data), 1.2.840.113549.1.12.10.1.1 (keyBag), …10.1.3 (certBag),
    // 1.2.840.113549.1.9.22.1 (x509Certificate).
    let data = oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]);
    let key_bag = oid(&[
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x01,
    ]);
    let cert_bag = oid(&[
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x03,
    ]);
    let x509 = oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x16, 0x01]);
    let mut bags = Vec::new();
    for c in certs {
        let value = seq(&[x509.clone(), der(0xa0, &der(0x04, c))]);
        bags.push(seq(&[cert_bag.clone(), der(0xa0, &value)]));
    }
    bags.push(seq(&[key_bag, der(0xa0, key_pkcs8)]));
    let safe_contents = seq(&bags);
    let content_info = seq(&[data.clone(), der(0xa0, &der(0x04, &safe_contents))]);
    let auth_safe = seq(&[content_info]);
    seq(&[
        der(0x02, &[3]),
        seq(&[data, der(0xa0, &der(0x04, &auth_safe))]),
    ])
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

#[test]
fn a_pfx_without_mac_attributes_or_local_key_ids_in_any_order_installs() {
    for key in [KeyType::Rsa(2048), KeyType::Ec("P-384")] {
        let chain = fixture(key);
        let key_der = pem_der(&chain.leaf_key);
        let certs = vec![
            pem_der(&chain.root),
            pem_der(&chain.leaf),
            pem_der(&chain.intermediate),
        ];
        let value = STANDARD.encode(bare_pfx(&key_der, &certs));
        // openssl reads it too (so the fixture is a real PFX).
        let file = chain.dir.join("bare.pfx");
        fs::write(&file, bare_pfx(&key_der, &certs)).unwrap();
        pki::openssl(
            &chain.dir,
            &[
                "pkcs12",
                "-in",
                file.to_str().unwrap(),
                "-passin",
                "pass:",
                "-nomacver",
                "-noout",
            ],
        )
        .unwrap();
        let bundle = CertificateBundle::from_secret("bare", ContentKind::Pkcs12, &value)
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        check_with_openssl(&bundle, chain, &format!("bare-{}", key.label()));
    }
}

/// A PFX of `chain` made by openssl with `-iter 32768` (3 bytes as a DER INTEGER: `02 03 00 80 00`) and `args`.
fn pfx_with_32768_iterations(chain: &Chain, tag: &str, args: &[&str]) -> Vec<u8> {
    let out = chain.dir.join(format!("iter-{tag}.pfx"));
    let mut all = vec![
        "pkcs12",
        "-export",
        "-passout",
        "pass:",
        "-iter",
        "32768",
        "-in",
        chain.leaf.to_str().unwrap(),
        "-inkey",
        chain.leaf_key.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
    ];
    all.extend(args);
    pki::openssl(&chain.dir, &all).unwrap();
    fs::read(out).unwrap()
}

/// Where `OCTET STRING (8-byte salt), INTEGER 32768` sits: every iteration count openssl wrote.
fn iteration_counts_at(pfx: &[u8]) -> Vec<usize> {
    (10..pfx.len().saturating_sub(4))
        .filter(|&i| {
            pfx[i..i + 5] == [0x02, 0x03, 0x00, 0x80, 0x00] && pfx[i - 10..i - 8] == [0x04, 0x08]
        })
        .collect()
}

/// DER TLV header length and content length at `at`.
fn tlv(der: &[u8], at: usize) -> (usize, usize) {
    let first = der[at + 1];
    if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        let len = der[at + 2..at + 2 + n]
            .iter()
            .fold(0, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    }
}

fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The PFX with its MAC iteration count (the last field: PFX { version, authSafe, MacData { mac, salt, n } })
/// re-encoded as `n`, lengths fixed up. The MAC no longer verifies, which does not matter: the count is judged
/// before any derivation runs.
fn with_mac_iterations(pfx: &[u8], n: u32) -> Vec<u8> {
    let (outer_header, outer_len) = tlv(pfx, 0);
    assert_eq!(outer_header + outer_len, pfx.len());
    let mut at = outer_header;
    let mut fields = Vec::new();
    while at < pfx.len() {
        let (h, l) = tlv(pfx, at);
        fields.push(&pfx[at..at + h + l]);
        at += h + l;
    }
    let [version, auth_safe, mac_data] = fields.as_slice() else {
        panic!("{} PFX fields", fields.len());
    };
    let (h, _) = tlv(mac_data, 0);
    let mut at = h;
    let mut mac_fields = Vec::new();
    while at < mac_data.len() {
        let (fh, fl) = tlv(mac_data, at);
        mac_fields.push(&mac_data[at..at + fh + fl]);
        at += fh + fl;
    }
    let mut count = n.to_be_bytes().to_vec();
    while count.len() > 1 && count[0] == 0 && count[1] & 0x80 == 0 {
        count.remove(0);
    }
    if count[0] & 0x80 != 0 {
        count.insert(0, 0);
    }
    let mut mac_content = mac_fields[0].to_vec();
    mac_content.extend_from_slice(mac_fields[1]);
    mac_content.extend(der_wrap(0x02, &count));
    let mut content = version.to_vec();
    content.extend_from_slice(auth_safe);
    content.extend(der_wrap(0x30, &mac_content));
    der_wrap(0x30, &content)
}

#[test]
fn a_pfx_with_an_absurd_iteration_count_is_refused_naming_the_count() {
    let chain = fixture(KeyType::Rsa(2048));
    let pfx = pfx_with_32768_iterations(chain, "aes", &[]);
    // The counts openssl wrote are read fine: 32768 is under the limit.
    let ok = CertificateBundle::from_secret("ok", ContentKind::Pkcs12, &STANDARD.encode(&pfx));
    assert!(ok.is_ok(), "{:?}", ok.err());

    // 2^31-1 for the MAC: the message names the count, the limit, and how to re-export.
    let value = STANDARD.encode(with_mac_iterations(&pfx, i32::MAX as u32));
    let e = err(ContentKind::Pkcs12, &value);
    assert_eq!(e.reason(), "pkcs12-iterations", "{e}");
    assert_eq!(
        e.to_string(),
        "myvault/web version 0123: the PKCS#12 (PFX) value asks for 2147483647 key-derivation iterations for its \
         integrity MAC, above the limit of 1000000 kvvm accepts (opening it would burn CPU for minutes or \
         longer); Key Vault writes PFX files with about 2,000 iterations, so this one was not made by Key \
         Vault. Re-export it with a normal count, e.g. `openssl pkcs12 -export -iter 2048 -in cert.pem -inkey \
         key.pem -passout pass: -out cert.pfx` (-iter also sets the MAC's count; OpenSSL 1.1 needs -maciter \
         too), and import that with `az keyvault certificate import`"
    );
    assert!(matches!(
        e,
        CertificateError::Pkcs12Iterations {
            iterations: 2147483647,
            limit: 1_000_000,
            ..
        }
    ));

    // PBES2/PBKDF2 (AES) and PKCS#12 PBE (3DES, as Key Vault writes) counts of the key and certificate bags.
    for (tag, args) in [
        ("aes", &[][..]),
        (
            "3des",
            &[
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ][..],
        ),
    ] {
        let mut pfx = pfx_with_32768_iterations(chain, tag, args);
        let at = iteration_counts_at(&pfx);
        assert_eq!(at.len(), 3, "{tag}: certificates, key and MAC: {at:?}");
        // 8388607 = 0x7fffff, the largest count that fits the same three bytes.
        for &i in &at[..2] {
            pfx[i + 2..i + 5].copy_from_slice(&[0x7f, 0xff, 0xff]);
        }
        let e = err(ContentKind::Pkcs12, &STANDARD.encode(&pfx));
        assert_eq!(e.reason(), "pkcs12-iterations", "{tag}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("asks for 8388607 key-derivation iterations for its "),
            "{tag}: {text}"
        );
        assert!(text.contains("not made by Key Vault"), "{tag}: {text}");
        // Only the key's count: the message says it is the private key's.
        let mut pfx = pfx_with_32768_iterations(chain, tag, args);
        let at = iteration_counts_at(&pfx);
        let key = at[1];
        pfx[key + 2..key + 5].copy_from_slice(&[0x7f, 0xff, 0xff]);
        let e = err(ContentKind::Pkcs12, &STANDARD.encode(&pfx));
        assert!(
            e.to_string()
                .contains("8388607 key-derivation iterations for its private key"),
            "{tag}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// additionalFormats: the split PEM files and the PFX, checked with openssl and keytool.

/// The public key of a PEM certificate or key file, as openssl prints it.
fn public_key_of(dir: &std::path::Path, file: &str, is_key: bool) -> Vec<u8> {
    if is_key {
        pki::openssl(dir, &["pkey", "-in", file, "-pubout"]).unwrap()
    } else {
        pki::openssl(dir, &["x509", "-in", file, "-noout", "-pubkey"]).unwrap()
    }
}

#[test]
fn split_files_hold_the_leaf_the_chain_without_it_the_full_chain_and_a_pkcs8_key() {
    for (key, chain) in chains() {
        let tag = format!("split-{}", key.label());
        let value = STANDARD.encode(chain.pfx(PfxVariant::KeyVault).unwrap());
        let bundle = CertificateBundle::from_secret(&tag, ContentKind::Pkcs12, &value).unwrap();
        let dir = chain.dir.join(&tag);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cert.pem"), bundle.leaf_pem()).unwrap();
        fs::write(dir.join("chain.pem"), bundle.chain_pem()).unwrap();
        fs::write(dir.join("fullchain.pem"), bundle.fullchain_pem()).unwrap();
        fs::write(dir.join("privkey.pem"), &*bundle.key_pem()).unwrap();

        let leaf = pki::subjects_in(&dir.join("cert.pem")).unwrap();
        assert_eq!(leaf.len(), 1, "{tag}: {leaf:?}");
        assert!(
            leaf[0].ends_with(&format!("CN = {}", chain.cn)),
            "{tag}: {leaf:?}"
        );
        let rest = pki::subjects_in(&dir.join("chain.pem")).unwrap();
        assert_eq!(rest.len(), 2, "{tag}: {rest:?}");
        assert!(
            rest[0].contains("intermediate") && rest[1].contains("root"),
            "{tag}: {rest:?}"
        );
        let full = pki::subjects_in(&dir.join("fullchain.pem")).unwrap();
        assert_eq!(full, [leaf.clone(), rest.clone()].concat(), "{tag}");
        // openssl verify: the leaf against the root with chain.pem as the untrusted intermediates.
        pki::openssl(
            &dir,
            &[
                "verify",
                "-CAfile",
                chain.root.to_str().unwrap(),
                "-untrusted",
                "chain.pem",
                "cert.pem",
            ],
        )
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let key_text = fs::read_to_string(dir.join("privkey.pem")).unwrap();
        assert!(
            key_text.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{tag}: PKCS#8"
        );
        assert_eq!(key_text.matches("-----BEGIN").count(), 1, "{tag}");
        pki::openssl(&dir, &["pkey", "-in", "privkey.pem", "-check", "-noout"])
            .or_else(|_| pki::openssl(&dir, &["pkey", "-in", "privkey.pem", "-noout"]))
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(
            public_key_of(&dir, "privkey.pem", true),
            public_key_of(&dir, "cert.pem", false),
            "{tag}: the key matches the leaf"
        );
    }
}

#[test]
fn a_leaf_alone_gives_an_empty_chain_pem() {
    let chain = fixture(KeyType::Ec("P-256"));
    let leaf = fs::read_to_string(&chain.leaf).unwrap();
    let value = format!("{}{leaf}", chain.key_pem(PemKey::Pkcs8).unwrap());
    let bundle = CertificateBundle::from_secret("alone", ContentKind::Pem, &value).unwrap();
    assert!(bundle.chain_pem().is_empty());
    assert_eq!(bundle.fullchain_pem(), bundle.leaf_pem());
}

#[test]
fn the_pfx_reads_with_openssl_3_without_legacy_and_keytool_accepts_it() {
    for (key, chain) in chains() {
        let tag = format!("pfx-{}", key.label());
        let value = STANDARD.encode(chain.pfx(PfxVariant::KeyVault).unwrap());
        let bundle = CertificateBundle::from_secret(&tag, ContentKind::Pkcs12, &value).unwrap();
        let pfx = bundle.to_pkcs12(&tag, "myvault.mycert").unwrap();
        let dir = chain.dir.join(&tag);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("certificate.pfx"), &*pfx).unwrap();

        // -info prints the algorithms on stderr; no -legacy, so RC2/3DES would fail here.
        let out = std::process::Command::new("openssl")
            .args([
                "pkcs12",
                "-info",
                "-noout",
                "-passin",
                "pass:",
                "-in",
                "certificate.pfx",
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{tag}: {info}");
        assert!(info.contains("MAC: sha256"), "{tag}: {info}");
        assert!(
            info.contains("PBES2, PBKDF2, AES-256-CBC")
                && !info.contains("3DES")
                && !info.contains("RC2"),
            "{tag}: {info}"
        );
        assert!(info.contains("PRF hmacWithSHA256"), "{tag}: {info}");

        // The key and the chain, leaf first, come back out; the key matches the leaf.
        pki::openssl(
            &dir,
            &[
                "pkcs12",
                "-in",
                "certificate.pfx",
                "-passin",
                "pass:",
                "-nokeys",
                "-out",
                "certs.pem",
            ],
        )
        .unwrap();
        pki::openssl(
            &dir,
            &[
                "pkcs12",
                "-in",
                "certificate.pfx",
                "-passin",
                "pass:",
                "-nocerts",
                "-nodes",
                "-out",
                "key.pem",
            ],
        )
        .unwrap();
        let subjects = pki::subjects_in(&dir.join("certs.pem")).unwrap();
        assert_eq!(subjects.len(), 3, "{tag}: {subjects:?}");
        assert!(
            subjects[0].ends_with(&format!("CN = {}", chain.cn)),
            "{tag}: {subjects:?}"
        );
        assert!(subjects[1].contains("intermediate"), "{tag}: {subjects:?}");
        assert!(subjects[2].contains("root"), "{tag}: {subjects:?}");
        pki::openssl(&dir, &["x509", "-in", "certs.pem", "-out", "leaf.pem"]).unwrap();
        assert_eq!(
            public_key_of(&dir, "key.pem", true),
            public_key_of(&dir, "leaf.pem", false),
            "{tag}"
        );

        // Java reads it as a PKCS12 keystore with an empty password: one PrivateKeyEntry, chain of 3.
        let Ok(out) = std::process::Command::new("keytool")
            .args([
                "-list",
                "-v",
                "-storetype",
                "PKCS12",
                "-storepass",
                "",
                "-keystore",
                "certificate.pfx",
            ])
            .current_dir(&dir)
            .output()
        else {
            panic!("keytool is not installed: make deps installs default-jre-headless");
        };
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{tag}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Entry type: PrivateKeyEntry"),
            "{tag}: {text}"
        );
        assert!(
            text.contains("Certificate chain length: 3"),
            "{tag}: {text}"
        );
        assert!(text.contains("Alias name: myvault.mycert"), "{tag}: {text}");
    }
}

#[test]
fn the_pfx_is_read_back_by_kvvm_itself() {
    let chain = fixture(KeyType::Rsa(2048));
    let value = STANDARD.encode(chain.pfx(PfxVariant::Aes).unwrap());
    let bundle = CertificateBundle::from_secret("again", ContentKind::Pkcs12, &value).unwrap();
    let pfx = bundle.to_pkcs12("again", "alias").unwrap();
    let again =
        CertificateBundle::from_secret("again", ContentKind::Pkcs12, &STANDARD.encode(&*pfx))
            .unwrap();
    assert_eq!(*again.to_pem(), *bundle.to_pem());
}

// The key's provider (Windows' bag attribute 1.3.6.1.4.1.311.17.1, which `openssl pkcs12 -CSP` writes too).

const CAPI_PROVIDER: &str = "Microsoft Enhanced RSA and AES Cryptographic Provider";

#[test]
fn the_provider_a_pfx_names_for_its_key_is_read_and_carried_into_kvvms_pfx() {
    let chain = fixture(KeyType::Rsa(2048));
    for variant in [
        PfxVariant::KeyVault,
        PfxVariant::Aes,
        PfxVariant::Unencrypted,
    ] {
        let tag = format!("csp-{variant:?}");
        let pfx = chain.pfx_with(variant, &["-CSP", CAPI_PROVIDER]).unwrap();
        let bundle =
            CertificateBundle::from_secret(&tag, ContentKind::Pkcs12, &STANDARD.encode(&pfx))
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(bundle.key_provider(), Some(CAPI_PROVIDER), "{tag}");
        // kvvm's own PFX names it on its key bag, and its MAC still verifies (openssl checks it first).
        let ours = bundle.to_pkcs12(&tag, "web").unwrap();
        let file = chain.dir.join(format!("{tag}.pfx"));
        fs::write(&file, &*ours).unwrap();
        let info = pki::openssl(
            &chain.dir,
            &[
                "pkcs12",
                "-in",
                file.to_str().unwrap(),
                "-passin",
                "pass:",
                "-nocerts",
                "-nodes",
            ],
        )
        .unwrap_or_else(|e| panic!("{tag}: openssl refused kvvm's PFX: {e}"));
        let info = String::from_utf8_lossy(&info);
        assert!(
            info.contains(&format!("Microsoft CSP Name: {CAPI_PROVIDER}")),
            "{tag}: {info}"
        );
        assert!(info.contains("BEGIN PRIVATE KEY"), "{tag}: {info}");
        // Read again, it is the same certificate naming the same provider.
        let again =
            CertificateBundle::from_secret(&tag, ContentKind::Pkcs12, &STANDARD.encode(&*ours))
                .unwrap();
        assert_eq!(again.key_provider(), Some(CAPI_PROVIDER), "{tag}");
        assert_eq!(again.serial_hex(), bundle.serial_hex(), "{tag}");
        assert_eq!(*again.to_pem(), *bundle.to_pem(), "{tag}");
    }
}

#[test]
fn a_pfx_or_pem_that_names_no_provider_gives_a_pfx_that_names_none() {
    let chain = fixture(KeyType::Ec("P-256"));
    let from_pfx = CertificateBundle::from_secret(
        "plain",
        ContentKind::Pkcs12,
        &STANDARD.encode(chain.pfx(PfxVariant::KeyVault).unwrap()),
    )
    .unwrap();
    let from_pem = CertificateBundle::from_secret(
        "pem",
        ContentKind::Pem,
        &chain.pem(PemLayout::default()).unwrap(),
    )
    .unwrap();
    for bundle in [from_pfx, from_pem] {
        assert_eq!(bundle.key_provider(), None);
        let ours = bundle.to_pkcs12("plain", "web").unwrap();
        let again =
            CertificateBundle::from_secret("again", ContentKind::Pkcs12, &STANDARD.encode(&*ours))
                .unwrap();
        assert_eq!(again.key_provider(), None);
    }
}
