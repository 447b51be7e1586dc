//! `authenticationSettings`: the managed identity endpoint and the user-assigned identity.

use serde_json::Value;
use url::Url;

use super::SettingsError;
use super::json::{expect_object, section, shown, string};
use super::raw::{AUTHENTICATION_KEYS, RawAuthentication};
use super::url::empty_authority;

pub(super) const EXPECT_AUTHENTICATION: &str =
    "an object such as {\"msiEndpoint\": \"http://169.254.169.254/metadata/identity\"}";
pub(super) const EXPECT_MSI_ENDPOINT: &str =
    "a URL string such as \"http://169.254.169.254/metadata/identity\"";
pub(super) const EXPECT_MSI_CLIENT_ID: &str =
    "a GUID string such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\"";
pub(super) const EXPECT_MSI_RESOURCE_ID: &str = "a resource ID string such as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\"";

pub(super) fn authentication(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<(Option<Url>, Option<crate::identity::UserIdentity>), SettingsError> {
    use crate::identity::UserIdentity;
    let raw: RawAuthentication = section(
        expect_object(value, path, EXPECT_AUTHENTICATION)?,
        path,
        AUTHENTICATION_KEYS,
        warnings,
    )?;
    let endpoint_path = format!("{path}.msiEndpoint");
    let endpoint = match string(
        raw.msi_endpoint.as_ref(),
        &endpoint_path,
        EXPECT_MSI_ENDPOINT,
    )? {
        None => None,
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!(
                "{endpoint_path} is empty and is ignored; the default IMDS endpoint is used"
            ));
            None
        }
        Some(s) => Some(msi_endpoint(s, &endpoint_path)?),
    };
    let mut given: Vec<UserIdentity> = Vec::new();
    let client_path = format!("{path}.msiClientId");
    match string(
        raw.msi_client_id.as_ref(),
        &client_path,
        EXPECT_MSI_CLIENT_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => warnings.push(format!(
            "{client_path} is empty and is ignored; the system-assigned identity is used"
        )),
        Some(s) if is_guid(s.trim()) => {
            given.push(UserIdentity::ClientId(s.trim().to_ascii_lowercase()));
        }
        Some(s) if is_identity_resource_id(s.trim()) => {
            warnings.push(format!(
                "{client_path} holds a resource ID, so it is used as msiResourceId; move it to \"msiResourceId\" \
                 (msiClientId takes the identity's client id, a GUID: az identity show -g <group> -n <name> --query \
                 clientId)"
            ));
            given.push(UserIdentity::ResourceId(s.trim().to_string()));
        }
        Some(s) => {
            return Err(SettingsError::MsiClientId {
                setting: client_path,
                value: shown(s),
            });
        }
    }
    let object_path = format!("{path}.msiObjectId");
    match string(
        raw.msi_object_id.as_ref(),
        &object_path,
        EXPECT_MSI_CLIENT_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!("{object_path} is empty and is ignored"))
        }
        Some(s) if is_guid(s.trim()) => {
            given.push(UserIdentity::ObjectId(s.trim().to_ascii_lowercase()));
        }
        Some(s) => {
            return Err(SettingsError::MsiObjectId {
                setting: object_path,
                value: shown(s),
            });
        }
    }
    let resource_path = format!("{path}.msiResourceId");
    match string(
        raw.msi_resource_id.as_ref(),
        &resource_path,
        EXPECT_MSI_RESOURCE_ID,
    )? {
        None => {}
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!("{resource_path} is empty and is ignored"))
        }
        Some(s) if is_identity_resource_id(s.trim()) => {
            given.push(UserIdentity::ResourceId(s.trim().to_string()));
        }
        Some(s) => {
            return Err(SettingsError::MsiResourceId {
                setting: resource_path,
                value: shown(s),
            });
        }
    }
    // A resource ID given as msiClientId counts as msiClientId when it clashes with another.
    let name = |i: &UserIdentity, index: usize| -> &'static str {
        if index == 0 && raw.msi_client_id.is_some() && matches!(i, UserIdentity::ResourceId(_)) {
            "msiClientId"
        } else {
            i.setting()
        }
    };
    if given.len() > 1 {
        return Err(SettingsError::SeveralIdentities {
            setting: path.to_string(),
            first: name(&given[0], 0),
            second: name(&given[1], 1),
        });
    }
    Ok((endpoint, given.pop()))
}

/// `/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`
/// (fixed segments in any case, as ARM compares them).
pub(super) fn is_identity_resource_id(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let fixed = [
        (0, "subscriptions"),
        (2, "resourceGroups"),
        (4, "providers"),
        (5, "Microsoft.ManagedIdentity"),
        (6, "userAssignedIdentities"),
    ];
    parts.len() == 8
        && fixed
            .iter()
            .all(|(i, word)| parts[*i].eq_ignore_ascii_case(word))
        && [1, 3, 7].iter().all(|i| {
            !parts[*i].is_empty()
                && !parts[*i]
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '&'))
        })
}

pub(super) fn msi_endpoint(text: &str, path: &str) -> Result<Url, SettingsError> {
    let problem = match Url::parse(text.trim()) {
        Err(url::ParseError::EmptyHost) => "has no host".to_string(),
        Ok(_) if empty_authority(text) => "has no host".to_string(),
        Err(e) => format!("is not a URL ({e})"),
        Ok(url) if url.scheme() != "http" && url.scheme() != "https" => {
            format!("uses {}, not http or https", url.scheme())
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => "has no host".to_string(),
        Ok(url) => return Ok(url),
    };
    Err(SettingsError::MsiEndpoint {
        setting: path.to_string(),
        value: shown(text),
        problem,
    })
}

/// 8-4-4-4-12 hexadecimal digits.
pub(super) fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids() {
        assert!(is_guid("c7373ae5-91c2-4165-8ab6-7381d6e75619"));
        assert!(is_guid("C7373AE5-91C2-4165-8AB6-7381D6E75619"));
        assert!(!is_guid("c7373ae591c241658ab67381d6e75619"));
        assert!(!is_guid("{c7373ae5-91c2-4165-8ab6-7381d6e75619}"));
        assert!(!is_guid("c7373ae5-91c2-4165-8ab6-7381d6e7561"));
        assert!(!is_guid("g7373ae5-91c2-4165-8ab6-7381d6e75619"));
        assert!(!is_guid("c7373ae5-91c2-4165-8ab6-7381d6e75619-"));
    }
}
