//! Small checked types for the names that end up in paths: a Key Vault [`Version`] and a [`LinkName`]. Each is
//! built only through its `parse`, so code that holds one need not check it again, and a name that could
//! escape the store folder cannot reach a path by mistake (the way rustls's pki-types has `ServerName`). Beside
//! them, the [`SecretRef`] that settings build for each certificate, from which its file names and log name come,
//! and a Windows [`StoreLocation`].

use std::fmt;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};

/// What each checked name type has besides its `parse`: it reads as its text (`Display`, `Deref<Target = str>`)
/// and compares with plain strings, so code and tests that only read the text need no conversion.
macro_rules! string_type {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

/// A Key Vault object version: exactly 32 hex digits (the last segment of a secret id), kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// `Some` when `text` is 32 hex digits (either case).
    pub fn parse(text: &str) -> Option<Version> {
        (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Version(text.to_string()))
    }

    /// The version's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_type!(Version);

/// The longest file name Linux filesystems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// The file name of a link in a store folder: a plain file name (not empty, not `.` or `..`, without `/` or NUL)
/// of at most 255 bytes. The store refuses its own reserved names on top of this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkName(String);

impl LinkName {
    /// `Some` when `text` is a plain file name no longer than a filesystem takes.
    pub fn parse(text: &str) -> Option<LinkName> {
        (is_plain_file_name(text) && text.len() <= NAME_MAX).then(|| LinkName(text.to_string()))
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_type!(LinkName);

/// A secret in Key Vault as the settings name it: the vault's name and the secret's. The pair names the
/// certificate everywhere kvvm speaks of it: the store names its files and default link after it
/// (`store::default_link_name`), and `<vault>/<secret>` is how the log names it (`Display`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// First DNS label of the vault's host, lower case.
    pub vault: String,
    /// The secret's name as written (Key Vault names are case-insensitive).
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vault, self.name)
    }
}

impl SecretRef {
    /// How messages name one version of the secret: `<vault>/<secret> version <v>`.
    pub(crate) fn version_label(&self, version: &str) -> String {
        format!("{self} version {version}")
    }
}

/// A Windows certificate store location (KeyVaultForWindows' `certificateStoreLocation`): `LocalMachine` or
/// `CurrentUser`, spelled as Microsoft's documentation spells them (its extension compares them case-sensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// Public through the Windows settings (`ObservedCertificate::store_location`); on Linux nothing outside reaches it.
#[cfg_attr(unix, allow(unreachable_pub))]
pub enum StoreLocation {
    /// `LocalMachine`: the machine's stores, keys in the machine key set (services, IIS).
    LocalMachine,
    /// `CurrentUser`: the stores of the account kvvm runs as.
    CurrentUser,
}

impl StoreLocation {
    /// The setting's value.
    #[cfg_attr(unix, allow(unreachable_pub))]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreLocation::LocalMachine => "LocalMachine",
            StoreLocation::CurrentUser => "CurrentUser",
        }
    }

    /// The location `text` names, in any case or spacing (`localmachine`, `Local Machine`): for messages that
    /// say what was meant.
    pub(crate) fn recognize(text: &str) -> Option<StoreLocation> {
        let folded: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        match folded.as_str() {
            "localmachine" => Some(StoreLocation::LocalMachine),
            "currentuser" => Some(StoreLocation::CurrentUser),
            _ => None,
        }
    }

    /// `certificateStoreLocation` on Windows: exactly `LocalMachine` or `CurrentUser`. The error says what is
    /// wrong and what to write instead.
    #[cfg_attr(
        all(unix, not(test)),
        expect(
            dead_code,
            reason = "the Windows build's settings (issue 25) read it; its tests pin its messages"
        )
    )]
    pub(crate) fn parse(text: &str) -> Result<StoreLocation, String> {
        match text {
            "LocalMachine" => return Ok(StoreLocation::LocalMachine),
            "CurrentUser" => return Ok(StoreLocation::CurrentUser),
            _ => {}
        }
        if let Some(meant) = StoreLocation::recognize(text) {
            return Err(format!(
                "{text:?} is not spelled as Windows expects; write {:?} (the location names are case-sensitive)",
                meant.as_str()
            ));
        }
        if text.starts_with('/') || text.contains('\\') || text.contains(':') {
            return Err(format!(
                "{text:?} is a folder path; on Windows certificates go into a certificate store: set \
                 certificateStoreLocation to \"LocalMachine\" or \"CurrentUser\" and certificateStoreName to the \
                 store (e.g. \"MY\")"
            ));
        }
        Err(format!(
            "{text:?} is not a certificate store location; write \"LocalMachine\" (the machine's stores, for \
             services and IIS) or \"CurrentUser\""
        ))
    }
}

/// A Windows certificate store: a location and a store name (`MY`, `WebHosting`, any name), as
/// `certificateStoreLocation` and `certificateStoreName` give them. Shown as `LocalMachine\MY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
// Public through the Windows settings, as `StoreLocation` is.
#[cfg_attr(unix, allow(unreachable_pub, dead_code))]
pub struct CertificateStore {
    /// `LocalMachine` or `CurrentUser`.
    pub location: StoreLocation,
    /// The store's name.
    pub name: String,
}

impl Default for CertificateStore {
    /// Microsoft's defaults: the machine's personal store, `LocalMachine\MY`.
    fn default() -> CertificateStore {
        CertificateStore {
            location: StoreLocation::LocalMachine,
            name: "MY".to_string(),
        }
    }
}

impl fmt::Display for CertificateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\\{}", self.location.as_str(), self.name)
    }
}

/// `text` as an absolute path without `..`, normalised; or what is wrong with it.
pub(crate) fn absolute_path(text: &str) -> Result<PathBuf, &'static str> {
    if text.is_empty() {
        return Err("is empty");
    }
    if text.contains('\0') {
        return Err("contains a NUL character");
    }
    let given = Path::new(text);
    if !given.is_absolute() {
        return Err("is not an absolute path");
    }
    let mut normalised = PathBuf::new();
    for component in given.components() {
        match component {
            Component::RootDir => normalised.push("/"),
            Component::Normal(part) => normalised.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains a \"..\" component"),
            Component::Prefix(_) => return Err("is not an absolute path"),
        }
    }
    if normalised == Path::new("/") {
        return Err("is the filesystem root, which cannot hold certificates");
    }
    Ok(normalised)
}

/// Whether `name` names an entry directly inside a folder: not empty, not `.` or `..`, and without `/` or NUL.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names() {
        for good in ["a", "web.pem", ".hidden", "...", "a b"] {
            assert!(is_plain_file_name(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b", "dir/"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_32_hex_digits() {
        let v = Version::parse("0123456789abcdefABCDEF0123456789").unwrap();
        assert_eq!(v.as_str(), "0123456789abcdefABCDEF0123456789");
        assert_eq!(v.to_string(), v.as_str());
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "../../etc/passwd",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn link_names_are_plain_and_bounded() {
        assert_eq!(LinkName::parse("web.pem").unwrap().as_str(), "web.pem");
        assert!(LinkName::parse(&"a".repeat(255)).is_some());
        for bad in ["", ".", "..", "a/b", "a\0b", &"a".repeat(256)] {
            assert_eq!(LinkName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_microsofts_spelling_is_accepted_and_every_other_says_what_to_write() {
        assert_eq!(
            StoreLocation::parse("LocalMachine"),
            Ok(StoreLocation::LocalMachine)
        );
        assert_eq!(
            StoreLocation::parse("CurrentUser"),
            Ok(StoreLocation::CurrentUser)
        );
        let e = StoreLocation::parse("localmachine").unwrap_err();
        assert_eq!(
            e,
            "\"localmachine\" is not spelled as Windows expects; write \"LocalMachine\" (the location names are \
             case-sensitive)"
        );
        assert!(
            StoreLocation::parse("Current User")
                .unwrap_err()
                .contains("write \"CurrentUser\"")
        );
        for path in [
            "/var/lib/waagent/Microsoft.Azure.KeyVault.Store",
            "C:\\certs",
            "D:",
        ] {
            let e = StoreLocation::parse(path).unwrap_err();
            assert!(e.contains("is a folder path"), "{path}: {e}");
            assert!(e.contains("certificateStoreName"), "{path}: {e}");
        }
        assert!(
            StoreLocation::parse("MY")
                .unwrap_err()
                .contains("is not a certificate store location")
        );
        assert!(StoreLocation::parse("").is_err());
    }

    #[test]
    fn recognizing_ignores_case_and_spacing_only() {
        assert_eq!(
            StoreLocation::recognize("LOCAL_MACHINE"),
            Some(StoreLocation::LocalMachine)
        );
        assert_eq!(
            StoreLocation::recognize(" currentuser "),
            Some(StoreLocation::CurrentUser)
        );
        assert_eq!(StoreLocation::recognize("LocalMachine2"), None);
        assert_eq!(StoreLocation::recognize("/LocalMachine"), None);
    }
}
