//! The certificate's secret URL, `https://<vault>.<vault DNS suffix>[:port]/secrets/<name>[/<version>]`,
//! checked one part at a time so that each mistake users make (http, an IP address, `/certificates/`, a query,
//! a version that is not one) gets its own message, and normalised so that one certificate has one URL.

use url::{Host, Url};

use super::error::SettingsErrorKind;
use super::json::shown;
use super::{AclEntry, Formats, ObservedCertificate, SettingsError};
use crate::names::{LinkName, SecretRef, Version};

/// The parts of a validated secret URL.
pub(super) struct SecretUrl {
    /// `https://<host>[:port]/secrets/<name>[/<version>]`.
    pub(super) url: Url,
    /// `https://<host>[:port]/`.
    pub(super) vault_url: Url,
    /// The vault's name (first DNS label of the host) and the secret's name as written.
    pub(super) secret: SecretRef,
    /// The pinned version, lower case.
    pub(super) version: Option<Version>,
}

impl SecretUrl {
    /// The certificate this URL observes, with the rest of its settings.
    pub(super) fn into_certificate(
        self,
        store_location: super::StoreTarget,
        link_name: LinkName,
        acls: Vec<AclEntry>,
        post_install: Option<crate::hook::Hook>,
        formats: Formats,
        key: super::KeyOptions,
    ) -> ObservedCertificate {
        ObservedCertificate {
            url: self.url,
            vault_url: self.vault_url,
            secret: self.secret,
            version: self.version,
            store_location,
            link_name,
            acls,
            post_install,
            formats,
            key,
        }
    }
}

/// Validates `https://<vault>.<suffix>[:port]/secrets/<name>[/<version>][/]`, the setting at `path`.
pub(super) fn secret_url(text: &str, path: &str) -> Result<SecretUrl, SettingsError> {
    checked_secret_url(text).map_err(|kind| kind.at(path))
}

/// The checks of [`secret_url`], in the order their messages take precedence.
fn checked_secret_url(text: &str) -> Result<SecretUrl, SettingsErrorKind> {
    let url = https_url(text)?;
    let host = domain_host(&url, text)?;
    let vault_name = vault_name(&host, text)?;
    no_extra_parts(&url, text)?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let (name, version) = secret_path(&url, &authority, text)?;
    let version = version.map(|v| pinned_version(v, text)).transpose()?;
    Ok(SecretUrl {
        url: parsed(&secret_url_text(&authority, name, version.as_deref()), text)?,
        vault_url: parsed(&format!("https://{authority}/"), text)?,
        secret: SecretRef {
            vault: vault_name,
            name: name.to_string(),
        },
        version,
    })
}

/// The URL parsed, with a host part and the https scheme.
fn https_url(text: &str) -> Result<Url, SettingsErrorKind> {
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::EmptyHost) => return Err(no_host(text)),
        Err(e) => return Err(invalid(text, &e)),
    };
    if empty_authority(text) {
        return Err(no_host(text));
    }
    if url.scheme() != "https" {
        return Err(SettingsErrorKind::UrlNotHttps {
            value: shown(text),
            scheme: url.scheme().to_string(),
        });
    }
    Ok(url)
}

/// The host, which must be a DNS name.
fn domain_host(url: &Url, text: &str) -> Result<String, SettingsErrorKind> {
    match url.host() {
        None | Some(Host::Domain("")) => Err(no_host(text)),
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Err(bad_host(
            text,
            url.host_str().unwrap_or_default(),
            "is an IP address, not a vault DNS name",
        )),
        Some(Host::Domain(host)) => Ok(host.to_string()),
    }
}

/// The host's first label, which must be a vault name followed by a DNS suffix.
fn vault_name(host: &str, text: &str) -> Result<String, SettingsErrorKind> {
    let name = match host.split_once('.') {
        Some((first, rest)) if !rest.is_empty() && !rest.starts_with('.') => first,
        _ => return Err(bad_host(text, host, "has no vault DNS suffix")),
    };
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad_host(
            text,
            host,
            "does not start with a vault name (letters, digits and hyphens)",
        ));
    }
    Ok(name.to_string())
}

/// No credentials, query or fragment.
fn no_extra_parts(url: &Url, text: &str) -> Result<(), SettingsErrorKind> {
    let part = if !url.username().is_empty() || url.password().is_some() {
        "a user name or password"
    } else if url.query().is_some() {
        "a query (\"?...\")"
    } else if url.fragment().is_some() {
        "a fragment (\"#...\")"
    } else {
        return Ok(());
    };
    Err(SettingsErrorKind::UrlExtra {
        value: shown(text),
        part,
    })
}

/// The secret's name and version from `/secrets/<name>[/<version>][/]`; `/certificates/…` is answered with the
/// secret URL of the same certificate.
fn secret_path<'u>(
    url: &'u Url,
    authority: &str,
    text: &str,
) -> Result<(&'u str, Option<&'u str>), SettingsErrorKind> {
    let mut segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    if segments.len() > 1 && segments.last() == Some(&"") {
        segments.pop();
    }
    let bad_path = || SettingsErrorKind::UrlPath { value: shown(text) };
    let (collection, name, version) = match segments.as_slice() {
        [collection, name] => (*collection, *name, None),
        [collection, name, version] => (*collection, *name, Some(*version)),
        _ => return Err(bad_path()),
    };
    if collection.eq_ignore_ascii_case("certificates") && !name.is_empty() {
        return Err(SettingsErrorKind::UrlCertificatesPath {
            value: shown(text),
            corrected: secret_url_text(authority, name, version),
        });
    }
    if !collection.eq_ignore_ascii_case("secrets") || name.is_empty() {
        return Err(bad_path());
    }
    if !is_secret_name(name) {
        return Err(SettingsErrorKind::SecretName {
            value: shown(text),
            name: shown(name),
        });
    }
    Ok((name, version))
}

/// A pinned version: a Key Vault [`Version`], kept in lower case.
fn pinned_version(version: &str, text: &str) -> Result<Version, SettingsErrorKind> {
    match Version::parse(&version.to_ascii_lowercase()) {
        Some(version) => Ok(version),
        None => Err(SettingsErrorKind::Version {
            value: shown(text),
            version: shown(version),
        }),
    }
}

/// `https://<authority>/secrets/<name>[/<version>]`.
fn secret_url_text(authority: &str, name: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("https://{authority}/secrets/{name}/{version}"),
        None => format!("https://{authority}/secrets/{name}"),
    }
}

/// A URL built from checked parts, parsed back.
fn parsed(built: &str, text: &str) -> Result<Url, SettingsErrorKind> {
    Url::parse(built).map_err(|e| invalid(text, &e))
}

fn invalid(text: &str, error: &url::ParseError) -> SettingsErrorKind {
    SettingsErrorKind::UrlInvalid {
        value: shown(text),
        detail: error.to_string(),
    }
}

fn no_host(text: &str) -> SettingsErrorKind {
    SettingsErrorKind::UrlNoHost { value: shown(text) }
}

fn bad_host(text: &str, host: &str, problem: &'static str) -> SettingsErrorKind {
    SettingsErrorKind::UrlHost {
        value: shown(text),
        host: host.to_string(),
        problem,
    }
}

/// `scheme:///path`: the URL parser would take the first path segment as the host ("https:///secrets/x" has
/// host "secrets"), which hides what the user actually left out.
pub(super) fn empty_authority(text: &str) -> bool {
    text.trim_start()
        .split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with(['/', '\\']))
}

/// Key Vault's object name rule: 1–127 characters of `[0-9A-Za-z-]`.
fn is_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        assert!(is_secret_name("a"));
        assert!(is_secret_name("My-Cert-01"));
        assert!(is_secret_name(&"a".repeat(127)));
        assert!(!is_secret_name(&"a".repeat(128)));
        assert!(!is_secret_name(""));
        assert!(!is_secret_name("my_cert"));
        assert!(!is_secret_name("my%20cert"));
    }

    #[test]
    fn secret_urls() {
        let url = secret_url(
            "HTTPS://MyVault.Vault.Azure.Net:443/Secrets/MyCert/ABCDEF0123456789ABCDEF0123456789/",
            "p",
        )
        .unwrap();
        assert_eq!(
            url.url.as_str(),
            "https://myvault.vault.azure.net/secrets/MyCert/abcdef0123456789abcdef0123456789"
        );
        assert_eq!(url.vault_url.as_str(), "https://myvault.vault.azure.net/");
        assert_eq!(url.secret.vault, "myvault");
        assert_eq!(url.secret.name, "MyCert");
        let with_port = secret_url("https://myvault.vault.azure.net:8443/secrets/c", "p").unwrap();
        assert_eq!(
            with_port.vault_url.as_str(),
            "https://myvault.vault.azure.net:8443/"
        );
        for (bad, reason) in [
            ("https://127.0.0.1/secrets/c", "certificate-url-bad-host"),
            ("https://[::1]/secrets/c", "certificate-url-bad-host"),
            ("https://localhost/secrets/c", "certificate-url-bad-host"),
            (
                "https://my_vault.vault.azure.net/secrets/c",
                "certificate-url-bad-host",
            ),
            (
                "https://u:p@v.vault.azure.net/secrets/c",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/c#x",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/c?",
                "certificate-url-extra-parts",
            ),
            (
                "https://v.vault.azure.net/secrets/",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets",
                "certificate-url-bad-path",
            ),
            ("https://v.vault.azure.net/", "certificate-url-bad-path"),
            (
                "https://v.vault.azure.net/secrets//c",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets/a/b/c",
                "certificate-url-bad-path",
            ),
            (
                "https://v.vault.azure.net/secrets/c/versions",
                "certificate-version-invalid",
            ),
            (
                "myvault.vault.azure.net/secrets/c",
                "certificate-url-invalid",
            ),
            (
                "ftp://v.vault.azure.net/secrets/c",
                "certificate-url-not-https",
            ),
        ] {
            assert_eq!(
                secret_url(bad, "p").map(|_| ()).unwrap_err().reason(),
                reason,
                "{bad:?}"
            );
        }
    }
}
