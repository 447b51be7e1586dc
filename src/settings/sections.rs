//! The smaller sections of `secretsManagementSettings` and of each certificate: the numbers (polling interval,
//! retained versions, expiry warning), `acls`, `postInstallCommand` and `additionalFormats`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::SettingsErrorKind;
use super::json::{
    MAX_SHOWN, boolean, expect_array, expect_object, found, is_zero, json_text, not_a, section,
    shown, string, truncate, whole_number,
};
use super::raw::{RawAcl, RawHook};
use super::{
    AclEntry, DEFAULT_EXPIRY_WARNING_DAYS, DEFAULT_HOOK_TIMEOUT, DEFAULT_POLLING_INTERVAL,
    DEFAULT_RETAINED_VERSIONS, Formats, KeyOptions, SettingsError,
};
use crate::hook::Hook;

/// Longest polling interval accepted, in seconds (keeps `Instant + interval` far from overflow).
pub(super) const MAX_POLLING_SECONDS: u64 = u32::MAX as u64;
/// Longest post-install command timeout accepted (one hour).
const MAX_HOOK_SECONDS: u64 = 3600;
/// Longest expiry warning accepted, in days (a hundred years).
const MAX_EXPIRY_WARNING_DAYS: u64 = 36_500;

const EXPECT_ACLS: &str =
    "a list of objects such as [{\"user\": \"app1\", \"group\": \"appgroup\"}]";
const EXPECT_ACL: &str = "an object such as {\"user\": \"app1\", \"group\": \"appgroup\"}";
const EXPECT_USER: &str = "a user name string such as \"app1\"";
const EXPECT_GROUP: &str = "a group name string such as \"appgroup\"";
const EXPECT_ACCOUNTS: &str =
    "a list of account names such as [\"Network Service\", \"IIS_IUSRS\"]";
const EXPECT_ACCOUNT: &str =
    "an account name string such as \"Network Service\" or \"CONTOSO\\\\web\"";
const EXPECT_FORMATS: &str = "a list of format names such as [\"split\", \"pfx\"]";
const EXPECT_HOOK: &str = "a list such as [\"systemctl\", \"reload\", \"nginx\"], or an object such as {\"command\": [\"systemctl\", \"reload\", \"nginx\"], \"timeoutInS\": 60} or {\"shell\": \"nginx -s reload && logger renewed\"}";
const FIX_HOOK: &str = "give the program and its arguments as a list, e.g. [\"systemctl\", \"reload\", \"nginx\"], or {\"shell\": \"...\"} to run a shell command line";

/// `pollingIntervalInS`: whole seconds, 1 to [`MAX_POLLING_SECONDS`].
pub(super) fn polling_interval(
    value: Option<&Value>,
    path: &str,
) -> Result<Duration, SettingsError> {
    let Some(v) = value else {
        return Ok(DEFAULT_POLLING_INTERVAL);
    };
    match whole_number(v, MAX_POLLING_SECONDS) {
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(SettingsErrorKind::PollingInterval {
            value: json_text(v),
        }
        .at(path)),
    }
}

/// `retainedVersions`: a positive whole number.
pub(super) fn retained_versions(value: Option<&Value>, path: &str) -> Result<u32, SettingsError> {
    let Some(v) = value else {
        return Ok(DEFAULT_RETAINED_VERSIONS);
    };
    whole_number(v, u64::from(u32::MAX))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            SettingsErrorKind::RetainedVersions {
                value: json_text(v),
            }
            .at(path)
        })
}

/// `expiryWarningDays`: whole days; 0 turns the warning off.
pub(super) fn expiry_warning_days(value: Option<&Value>, path: &str) -> Result<u32, SettingsError> {
    match value {
        None => Ok(DEFAULT_EXPIRY_WARNING_DAYS),
        Some(v) if is_zero(v) => Ok(0),
        Some(v) => whole_number(v, MAX_EXPIRY_WARNING_DAYS)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                SettingsErrorKind::ExpiryWarningDays {
                    value: json_text(v),
                }
                .at(path)
            }),
    }
}

/// `acls`: a list of `{"user": …, "group": …}` entries, each naming at least one of them.
pub(super) fn acl_list(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<AclEntry>, SettingsError> {
    let list = expect_array(value, path, EXPECT_ACLS)?;
    let mut acls = Vec::with_capacity(list.len());
    for (index, element) in list.iter().enumerate() {
        let entry_path = format!("{path}[{index}]");
        let raw: RawAcl = section(
            expect_object(element, &entry_path, EXPECT_ACL)?,
            &entry_path,
            warnings,
        )?;
        let user = acl_name(
            raw.user.as_ref(),
            &format!("{entry_path}.user"),
            "user",
            EXPECT_USER,
        )?;
        let group = acl_name(
            raw.group.as_ref(),
            &format!("{entry_path}.group"),
            "group",
            EXPECT_GROUP,
        )?;
        if user.is_none() && group.is_none() {
            return Err(SettingsErrorKind::AclEmpty.at(entry_path));
        }
        acls.push(AclEntry { user, group });
    }
    Ok(acls)
}

/// A user or group name; an empty string counts as absent (templates fill unused parameters with "").
fn acl_name(
    value: Option<&Value>,
    path: &str,
    account: &'static str,
    expected: &'static str,
) -> Result<Option<String>, SettingsError> {
    match string(value, path, expected)? {
        None => Ok(None),
        Some("") => Ok(None),
        Some(name) if plausible_account_name(name) => Ok(Some(name.to_string())),
        Some(name) => Err(SettingsErrorKind::AclName {
            value: shown(name),
            account,
        }
        .at(path)),
    }
}

/// Plausible POSIX (or directory-service) account name: what `setfacl` could resolve. Rejects what would break
/// the ACL text syntax (`:` `,`), paths, whitespace and control characters, and option-like names.
fn plausible_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/'))
}

/// `postInstallCommand`: `[program, args…]`; a plain string of words (no shell syntax); or an object with
/// `command` (a list) or `shell` (a command line for /bin/sh), and `timeoutInS`. An empty list means "none"
/// (a certificate can opt out of the global command).
pub(super) fn post_install_command(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Hook>, SettingsError> {
    let setting = HookSetting { value, path };
    match value {
        Value::Array(_) => setting.read_list(),
        Value::String(text) => setting.read_words(text),
        Value::Object(map) => setting.read_object(map, warnings),
        other => Err(SettingsErrorKind::WrongType {
            expected: EXPECT_HOOK,
            found: found(other),
        }
        .at(path)),
    }
}

/// A `postInstallCommand` being read: every complaint quotes the whole value at its path.
struct HookSetting<'a> {
    value: &'a Value,
    path: &'a str,
}

impl HookSetting<'_> {
    fn bad(&self, problem: &str) -> SettingsError {
        SettingsErrorKind::PostInstallCommand {
            value: json_text(self.value),
            problem: problem.to_string(),
            fix: FIX_HOOK,
        }
        .at(self.path)
    }

    /// `[program, args…]`.
    fn read_list(&self) -> Result<Option<Hook>, SettingsError> {
        let argv = self.argv(self.value)?;
        if argv.first().is_some_and(|p| p.trim().is_empty()) {
            return Err(self.bad("starts with an empty program name"));
        }
        Ok(hook(argv, false, DEFAULT_HOOK_TIMEOUT))
    }

    /// `"program args…"`, split at white space: no shell runs it, so shell syntax is refused.
    fn read_words(&self, text: &str) -> Result<Option<Hook>, SettingsError> {
        if text
            .chars()
            .any(|c| "|&;<>()$`\\\"'*?[]#~=%{}!\n".contains(c))
        {
            return Err(self.bad("contains shell syntax, but the command runs without a shell"));
        }
        let argv = text.split_whitespace().map(str::to_string).collect();
        Ok(hook(argv, false, DEFAULT_HOOK_TIMEOUT))
    }

    /// `{"command": [...]}` or `{"shell": "..."}`, with an optional `timeoutInS`.
    fn read_object(
        &self,
        map: &Map<String, Value>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Hook>, SettingsError> {
        let raw: RawHook = section(map, self.path, warnings)?;
        let timeout = match &raw.timeout_in_s {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => Duration::from_secs(whole_number(t, MAX_HOOK_SECONDS).ok_or_else(|| {
                self.bad("has a timeoutInS that is not a whole number of seconds from 1 to 3600")
            })?),
        };
        match (&raw.command, &raw.shell) {
            (Some(_), Some(_)) => Err(self.bad("has both command and shell")),
            (Some(command), None) => {
                let argv = self.argv(command)?;
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err(self.bad("has an empty command"));
                }
                Ok(hook(argv, false, timeout))
            }
            (None, Some(Value::String(line))) if !line.trim().is_empty() => {
                Ok(hook(vec![line.clone()], true, timeout))
            }
            (None, Some(_)) => Err(self.bad("has a shell value that is not a non-empty string")),
            (None, None) => Err(self.bad("has neither command nor shell")),
        }
    }

    /// A list of strings (without NUL).
    fn argv(&self, list: &Value) -> Result<Vec<String>, SettingsError> {
        expect_array(list, self.path, EXPECT_HOOK)?
            .iter()
            .map(|a| match a {
                Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                _ => Err(self.bad("has an element that is not a string")),
            })
            .collect()
    }
}

/// The hook, or `None` for an empty command.
fn hook(argv: Vec<String>, shell: bool, timeout: Duration) -> Option<Hook> {
    (!argv.is_empty()).then_some(Hook {
        argv,
        shell,
        timeout,
    })
}

/// `additionalFormats`: a list of known format names (any case; repeats are harmless); `[]` means none.
pub(super) fn additional_formats(value: &Value, path: &str) -> Result<Formats, SettingsError> {
    let list = expect_array(value, path, EXPECT_FORMATS)?;
    let mut formats = Formats::default();
    for (index, element) in list.iter().enumerate() {
        match element {
            Value::String(s) if s.trim().eq_ignore_ascii_case("split") => formats.split = true,
            Value::String(s) if s.trim().eq_ignore_ascii_case("pfx") => formats.pfx = true,
            other => {
                return Err(SettingsErrorKind::UnknownFormat {
                    value: truncate(&json_text(other), MAX_SHOWN),
                }
                .at(format!("{path}[{index}]")));
            }
        }
    }
    Ok(formats)
}

/// A certificate's Windows key options at `path`: `keyExportable` (a boolean, default false) and `accounts` (a
/// list of account names, or one name as a string; empty names are skipped, as templates fill unused
/// parameters with ""). Where keys are files (Linux) both are ignored, with a warning each.
pub(super) fn key_options(
    exportable: Option<&Value>,
    accounts: Option<&Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<KeyOptions, SettingsError> {
    if !crate::platform::target::KEY_STORE_OPTIONS {
        for (key, value) in [("keyExportable", exportable), ("accounts", accounts)] {
            if value.is_some() {
                warnings.push(format!(
                    "{path}.{key} is ignored on Linux: it is a Windows private-key option; on Linux, give users \
                     and groups read access with acls (and aclEnabled)"
                ));
            }
        }
        return Ok(KeyOptions::default());
    }
    let exportable = boolean(exportable, &format!("{path}.keyExportable"), false)?;
    let path = format!("{path}.accounts");
    let list: Vec<(String, &Value)> = match accounts {
        None | Some(Value::Null) => Vec::new(),
        Some(one @ Value::String(_)) => vec![(path.clone(), one)],
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{path}[{i}]"), v))
            .collect(),
        Some(other) => return Err(not_a(other, &path, EXPECT_ACCOUNTS, false)),
    };
    let mut names: Vec<String> = Vec::new();
    for (at, value) in list {
        let name = string(Some(value), &at, EXPECT_ACCOUNT)?
            .unwrap_or_default()
            .trim();
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_string());
        }
    }
    Ok(KeyOptions {
        exportable,
        accounts: names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for good in [
            "www-data",
            "app1",
            "_svc",
            "user@contoso.com",
            "DOMAIN\\user",
            "1000",
            "svc$",
        ] {
            assert!(plausible_account_name(good), "{good:?}");
        }
        for bad in [
            "",
            "-rf",
            "a:b",
            "a,b",
            "a b",
            "a/b",
            "a\nb",
            &"a".repeat(257),
        ] {
            assert!(!plausible_account_name(bad), "{bad:?}");
        }
    }
}
