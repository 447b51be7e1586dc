//! One function per parser of outside input, shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/`) and by
//! the replay test (`tests/fuzz_replay.rs`), which runs every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the same function on the stable toolchain: a crash the fuzzer found is
//! kept as a regression file and stays fixed. Each function must never panic, whatever the bytes.

#![allow(dead_code)]

use kvvm::{CertificateBundle, ContentKind};

/// A harness: feeds one input to one parser.
pub type Harness = fn(&[u8]);

/// The names of the targets, as in `fuzz/Cargo.toml`, with their functions.
pub const TARGETS: &[(&str, Harness)] = &[
    ("settings_file", settings_file),
    ("handler_environment", handler_environment),
    ("secret_pem", secret_pem),
    ("secret_pkcs12", secret_pkcs12),
    ("vault_answers", vault_answers),
    ("identity_answers", identity_answers),
    ("fluentd_ack", fluentd_ack),
];

/// `config/<n>.settings`, as waagent writes it, and the service's `/etc/kvvm/settings.json` (public settings, or
/// a whole settings file): any text, users write the settings.
pub fn settings_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kvvm::settings::parse_settings_file(text);
        let _ = kvvm::parse::parse_service_settings(text);
    }
}

/// `HandlerEnvironment.json`.
pub fn handler_environment(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kvvm::HandlerEnvironment::parse(text);
    }
}

/// A secret of content type `application/x-pem-file`; a bundle that decodes is also written out.
pub fn secret_pem(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bundle) = CertificateBundle::from_secret("fuzz", ContentKind::Pem, text)
    {
        let _ = bundle.to_pem();
    }
}

/// A secret of content type `application/x-pkcs12`: the bytes are the PFX, given to the decoder as Key Vault
/// sends it (base64).
pub fn secret_pkcs12(data: &[u8]) {
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(bundle) = CertificateBundle::from_secret("fuzz", ContentKind::Pkcs12, &value) {
        let _ = bundle.to_pem();
    }
}

/// Key Vault's answers: a secret bundle, an error body, and the `WWW-Authenticate` challenge.
pub fn vault_answers(data: &[u8]) {
    let _ = kvvm::parse::parse_bundle(data, "myvault", "cert");
    let _ = kvvm::parse::kv_error(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(challenge) = kvvm::parse::parse_challenge(text)
    {
        let _ = kvvm::parse::token_allowed("myvault.vault.azure.net", &challenge);
    }
}

/// IMDS and Azure Arc answers: a token reply, and Arc's `Basic realm=` challenge.
pub fn identity_answers(data: &[u8]) {
    let _ = kvvm::parse::parse_token(
        data,
        "http://169.254.169.254/metadata/identity/oauth2/token",
    );
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kvvm::parse::basic_realm(text);
    }
}

/// A Fluentd Forward acknowledgement (msgpack).
pub fn fluentd_ack(data: &[u8]) {
    let _ = kvvm::parse::parse_ack(data);
}
