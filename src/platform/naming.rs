//! Seam (a), names: the store folder's naming scheme, in one place (shared: the settings check names by it on
//! every platform, and Windows names a certificate's friendly name after its link). A certificate's versions are
//! `<vault>.<secret>.<version>`, its link `<vault>.<secret>` (or `customSymbolicLinkName`), and with
//! `additionalFormats` its version folders and their link end in `.d`. The store writes by it; the settings check
//! by it that two certificates of one folder do not take the same names.

use crate::names::{LinkName, SecretRef};

/// The suffix of a version's folder and of its link.
pub(crate) const FOLDER_SUFFIX: &str = ".d";

/// The prefix of a certificate's version files, `<vault>.<secret>`: a DNS label, a dot and a Key Vault name,
/// so always a plain file name.
pub(crate) fn file_prefix(secret: &SecretRef) -> String {
    format!("{}.{}", secret.vault, secret.name)
}

/// The link a certificate gets when the settings name none (`customSymbolicLinkName`): `<vault>.<secret>`,
/// as Microsoft's extension names it.
pub(crate) fn default_link_name(secret: &SecretRef) -> String {
    file_prefix(secret)
}

/// The names a certificate's links take in its store folder: the link, and with `additionalFormats` the
/// link to its version folder, `<link>.d`. Two certificates of one folder must not share any of them.
pub(crate) fn links_taken(link_name: &LinkName, with_folder: bool) -> Vec<String> {
    let mut links = vec![link_name.to_string()];
    if with_folder {
        links.push(format!("{link_name}{FOLDER_SUFFIX}"));
    }
    links
}
