//! The certificate's secret URL, checked part by part and normalised.

use std::path::PathBuf;

use url::{Host, Url};

use super::json::shown;
use super::{AclEntry, Formats, ObservedCertificate, SettingsError};

// ---------------------------------------------------------------------------------------------------------------
// Certificate URLs.

/// The parts of a validated secret URL.
pub(super) struct SecretUrl {
    pub(super) url: Url,
    pub(super) vault_url: Url,
    pub(super) vault_name: String,
    pub(super) secret_name: String,
    pub(super) version: Option<String>,
}

impl SecretUrl {
    pub(super) fn file_prefix(&self) -> String {
        format!("{}.{}", self.vault_name, self.secret_name)
    }

    pub(super) fn into_certificate(
        self,
        store_location: PathBuf,
        link_name: String,
        acls: Vec<AclEntry>,
        post_install: Option<crate::hook::Hook>,
        formats: Formats,
    ) -> ObservedCertificate {
        ObservedCertificate {
            url: self.url,
            vault_url: self.vault_url,
            vault_name: self.vault_name,
            secret_name: self.secret_name,
            version: self.version,
            store_location,
            link_name,
            acls,
            post_install,
            formats,
        }
    }
}

/// Validates `https://<vault>.<suffix>[:port]/secrets/<name>[/<version>][/]`.
pub(super) fn secret_url(text: &str, path: &str) -> Result<SecretUrl, SettingsError> {
    let setting = || path.to_string();
    let value = || shown(text);
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::EmptyHost) => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Err(e) => {
            return Err(SettingsError::UrlInvalid {
                setting: setting(),
                value: value(),
                detail: e.to_string(),
            });
        }
    };
    if empty_authority(text) {
        return Err(SettingsError::UrlNoHost {
            setting: setting(),
            value: value(),
        });
    }
    if url.scheme() != "https" {
        return Err(SettingsError::UrlNotHttps {
            setting: setting(),
            value: value(),
            scheme: url.scheme().to_string(),
        });
    }
    let host = match url.host() {
        None => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Some(Host::Domain("")) => {
            return Err(SettingsError::UrlNoHost {
                setting: setting(),
                value: value(),
            });
        }
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
            return Err(SettingsError::UrlHost {
                setting: setting(),
                value: value(),
                host: url.host_str().unwrap_or_default().to_string(),
                problem: "is an IP address, not a vault DNS name",
            });
        }
        Some(Host::Domain(host)) => host.to_string(),
    };
    let vault_name = match host.split_once('.') {
        Some((first, rest)) if !rest.is_empty() && !rest.starts_with('.') => first.to_string(),
        _ => {
            return Err(SettingsError::UrlHost {
                setting: setting(),
                value: value(),
                host,
                problem: "has no vault DNS suffix",
            });
        }
    };
    if vault_name.is_empty()
        || vault_name.len() > 63
        || !vault_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(SettingsError::UrlHost {
            setting: setting(),
            value: value(),
            host,
            problem: "does not start with a vault name (letters, digits and hyphens)",
        });
    }
    let extra = if !url.username().is_empty() || url.password().is_some() {
        Some("a user name or password")
    } else if url.query().is_some() {
        Some("a query (\"?...\")")
    } else if url.fragment().is_some() {
        Some("a fragment (\"#...\")")
    } else {
        None
    };
    if let Some(part) = extra {
        return Err(SettingsError::UrlExtra {
            setting: setting(),
            value: value(),
            part,
        });
    }

    let mut segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    if segments.len() > 1 && segments.last() == Some(&"") {
        segments.pop();
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let (collection, name, version) = match segments.as_slice() {
        [collection, name] => (*collection, *name, None),
        [collection, name, version] => (*collection, *name, Some(*version)),
        _ => {
            return Err(SettingsError::UrlPath {
                setting: setting(),
                value: value(),
            });
        }
    };
    if collection.eq_ignore_ascii_case("certificates") && !name.is_empty() {
        let mut corrected = format!("https://{authority}/secrets/{name}");
        if let Some(version) = version {
            corrected.push('/');
            corrected.push_str(version);
        }
        return Err(SettingsError::UrlCertificatesPath {
            setting: setting(),
            value: value(),
            corrected,
        });
    }
    if !collection.eq_ignore_ascii_case("secrets") || name.is_empty() {
        return Err(SettingsError::UrlPath {
            setting: setting(),
            value: value(),
        });
    }
    if !is_secret_name(name) {
        return Err(SettingsError::SecretName {
            setting: setting(),
            value: value(),
            name: shown(name),
        });
    }
    let version = match version {
        None => None,
        Some(v) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(v) => {
            return Err(SettingsError::Version {
                setting: setting(),
                value: value(),
                version: shown(v),
            });
        }
    };
    let mut normalised = format!("https://{authority}/secrets/{name}");
    if let Some(version) = &version {
        normalised.push('/');
        normalised.push_str(version);
    }
    let parse_back = |s: &str| {
        Url::parse(s).map_err(|e| SettingsError::UrlInvalid {
            setting: setting(),
            value: value(),
            detail: e.to_string(),
        })
    };
    Ok(SecretUrl {
        url: parse_back(&normalised)?,
        vault_url: parse_back(&format!("https://{authority}/"))?,
        vault_name,
        secret_name: name.to_string(),
        version,
    })
}

/// `scheme:///path`: the URL parser would take the first path segment as the host ("https:///secrets/x" has
/// host "secrets"), which hides what the user actually left out.
pub(super) fn empty_authority(text: &str) -> bool {
    text.trim_start()
        .split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with(['/', '\\']))
}

/// Key Vault's object name rule: 1–127 characters of `[0-9A-Za-z-]`.
pub(super) fn is_secret_name(name: &str) -> bool {
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
        assert_eq!(url.vault_name, "myvault");
        assert_eq!(url.secret_name, "MyCert");
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
