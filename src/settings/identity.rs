//! `authenticationSettings`: which managed identity endpoint to ask, and which user-assigned identity (by
//! client id, object id or ARM resource ID) to ask for. Users often put the section inside
//! `secretsManagementSettings`, or a resource ID into `msiClientId`: both are accepted with a warning that says
//! where it belongs.

use serde_json::Value;
use url::Url;

use super::SettingsError;
use super::error::SettingsErrorKind;
use super::json::{expect_object, section, shown, string};
use super::raw::RawAuthentication;
use super::url::empty_authority;
use crate::identity::{ARC_PORT, UserIdentity};

const EXPECT_AUTHENTICATION: &str =
    "an object such as {\"msiEndpoint\": \"http://169.254.169.254/metadata/identity\"}";
const EXPECT_MSI_ENDPOINT: &str =
    "a URL string such as \"http://169.254.169.254/metadata/identity\"";
const EXPECT_MSI_CLIENT_ID: &str = "a GUID string such as \"c7373ae5-91c2-4165-8ab6-7381d6e75619\"";
const EXPECT_MSI_RESOURCE_ID: &str = "a resource ID string such as \"/subscriptions/<subscription>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>\"";

/// The managed identity endpoint (`None`: IMDS's default) and the user-assigned identity (`None`: the
/// system-assigned one).
pub(super) type Authentication = (Option<Url>, Option<UserIdentity>);

/// `authenticationSettings`, given at the top level (`top`) or, by a common mistake, inside
/// `secretsManagementSettings` (`nested`): the nested one is used with a warning; the top-level one wins when
/// both are given.
pub(super) fn authentication_settings(
    top: Option<&Value>,
    nested: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<Authentication, SettingsError> {
    let nested_path = "secretsManagementSettings.authenticationSettings";
    let chosen = match (top, nested) {
        (Some(top), Some(_)) => {
            warnings.push(format!(
                "authenticationSettings is given both at the top level and as {nested_path}; the top-level one is \
                 used and {nested_path} is ignored: remove it"
            ));
            Some((top, "authenticationSettings"))
        }
        (Some(top), None) => Some((top, "authenticationSettings")),
        (None, Some(nested)) => {
            warnings.push(format!(
                "{nested_path} is used, but authenticationSettings belongs at the top level of the settings, beside \
                 secretsManagementSettings: move it there"
            ));
            Some((nested, nested_path))
        }
        (None, None) => None,
    };
    match chosen {
        None => Ok((None, None)),
        Some((value, path)) => authentication(value, path, warnings),
    }
}

/// One `authenticationSettings` object at `path`.
fn authentication(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Authentication, SettingsError> {
    let raw: RawAuthentication = section(
        expect_object(value, path, EXPECT_AUTHENTICATION)?,
        path,
        warnings,
    )?;
    let endpoint = endpoint_setting(raw.msi_endpoint.as_ref(), path, warnings)?;
    let mut given: Vec<UserIdentity> = Vec::new();
    given.extend(client_id(raw.msi_client_id.as_ref(), path, warnings)?);
    given.extend(object_id(raw.msi_object_id.as_ref(), path, warnings)?);
    given.extend(resource_id(raw.msi_resource_id.as_ref(), path, warnings)?);
    // A resource ID given as msiClientId counts as msiClientId when it clashes with another.
    let name = |i: &UserIdentity, index: usize| -> &'static str {
        if index == 0 && raw.msi_client_id.is_some() && matches!(i, UserIdentity::ResourceId(_)) {
            "msiClientId"
        } else {
            i.setting()
        }
    };
    if given.len() > 1 {
        return Err(SettingsErrorKind::SeveralIdentities {
            first: name(&given[0], 0),
            second: name(&given[1], 1),
        }
        .at(path));
    }
    if let (Some(url), Some(id)) = (&endpoint, given.first())
        && url.port_or_known_default() == Some(ARC_PORT)
    {
        return Err(SettingsErrorKind::ArcUserAssigned {
            value: id.value().to_string(),
            endpoint: url.to_string(),
        }
        .at(format!("{path}.{}", name(id, 0))));
    }
    Ok((endpoint, given.pop()))
}

/// `msiEndpoint`; an empty string means the default.
fn endpoint_setting(
    value: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Url>, SettingsError> {
    let endpoint_path = format!("{path}.msiEndpoint");
    match string(value, &endpoint_path, EXPECT_MSI_ENDPOINT)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!(
                "{endpoint_path} is empty and is ignored; the default IMDS endpoint is used"
            ));
            Ok(None)
        }
        Some(s) => msi_endpoint(s, &endpoint_path).map(Some),
    }
}

/// The string of an identity setting, `None` when absent or empty (an empty one draws a warning ending in
/// `empty_note`).
fn identity_text<'a>(
    value: Option<&'a Value>,
    setting: &str,
    expected: &'static str,
    empty_note: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<&'a str>, SettingsError> {
    match string(value, setting, expected)? {
        Some(s) if s.trim().is_empty() => {
            warnings.push(format!("{setting} is empty and is ignored{empty_note}"));
            Ok(None)
        }
        other => Ok(other),
    }
}

/// `msiClientId`: a GUID; a resource ID is taken as `msiResourceId`, with a warning.
fn client_id(
    value: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<UserIdentity>, SettingsError> {
    let setting = format!("{path}.msiClientId");
    let note = "; the system-assigned identity is used";
    let Some(s) = identity_text(value, &setting, EXPECT_MSI_CLIENT_ID, note, warnings)? else {
        return Ok(None);
    };
    if is_guid(s.trim()) {
        return Ok(Some(UserIdentity::ClientId(s.trim().to_ascii_lowercase())));
    }
    if is_identity_resource_id(s.trim()) {
        warnings.push(format!(
            "{setting} holds a resource ID, so it is used as msiResourceId; move it to \"msiResourceId\" \
             (msiClientId takes the identity's client id, a GUID: az identity show -g <group> -n <name> --query \
             clientId)"
        ));
        return Ok(Some(UserIdentity::ResourceId(s.trim().to_string())));
    }
    Err(SettingsErrorKind::MsiClientId { value: shown(s) }.at(setting))
}

/// `msiObjectId`: a GUID.
fn object_id(
    value: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<UserIdentity>, SettingsError> {
    let setting = format!("{path}.msiObjectId");
    let Some(s) = identity_text(value, &setting, EXPECT_MSI_CLIENT_ID, "", warnings)? else {
        return Ok(None);
    };
    if is_guid(s.trim()) {
        return Ok(Some(UserIdentity::ObjectId(s.trim().to_ascii_lowercase())));
    }
    Err(SettingsErrorKind::MsiObjectId { value: shown(s) }.at(setting))
}

/// `msiResourceId`: a user-assigned identity's ARM resource ID.
fn resource_id(
    value: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<UserIdentity>, SettingsError> {
    let setting = format!("{path}.msiResourceId");
    let Some(s) = identity_text(value, &setting, EXPECT_MSI_RESOURCE_ID, "", warnings)? else {
        return Ok(None);
    };
    if is_identity_resource_id(s.trim()) {
        return Ok(Some(UserIdentity::ResourceId(s.trim().to_string())));
    }
    Err(SettingsErrorKind::MsiResourceId { value: shown(s) }.at(setting))
}

/// `/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`
/// (fixed segments in any case, as ARM compares them).
fn is_identity_resource_id(text: &str) -> bool {
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

/// `msiEndpoint`: an http(s) URL with a host.
fn msi_endpoint(text: &str, path: &str) -> Result<Url, SettingsError> {
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
    Err(SettingsErrorKind::MsiEndpoint {
        value: shown(text),
        problem,
    }
    .at(path))
}

/// 8-4-4-4-12 hexadecimal digits, without braces or a `urn:uuid:` prefix (the hyphenated form is the only
/// 36-character one `uuid` reads).
fn is_guid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
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
