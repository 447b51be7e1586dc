//! Small checked types for the names that end up in paths: a Key Vault [`Version`] and a [`LinkName`]. Each is
//! built only through its `parse`, so code that holds one need not check it again, and a name that could
//! escape the store folder cannot reach a path by mistake (the way rustls's pki-types has `ServerName`). Beside
//! them, the [`SecretRef`] that settings build for each certificate, from which its file names and log name come.

use std::fmt;
use std::ops::Deref;

use crate::files::is_plain_file_name;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
