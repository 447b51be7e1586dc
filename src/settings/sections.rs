//! The smaller sections: acls, postInstallCommand, additionalFormats, loggingSettings, paths and names.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use url::{Host, Url};

use super::json::{
    MAX_SHOWN, expect_array, expect_object, found, json_text, section, shown, string, truncate,
    whole_number,
};
use super::raw::{ACL_KEYS, HOOK_KEYS, LOGGING_KEYS, RawAcl, RawHook, RawLogging};
use super::{
    AclEntry, DEFAULT_FLUENTD_ENDPOINT, DEFAULT_FLUENTD_PORT, DEFAULT_HOOK_TIMEOUT,
    DEFAULT_SERVICE_NAME, Formats, LoggingSettings, MAX_HOOK_SECONDS, SettingsError,
};

pub(super) const EXPECT_ACLS: &str =
    "a list of objects such as [{\"user\": \"app1\", \"group\": \"appgroup\"}]";
pub(super) const EXPECT_ACL: &str =
    "an object such as {\"user\": \"app1\", \"group\": \"appgroup\"}";
pub(super) const EXPECT_USER: &str = "a user name string such as \"app1\"";
pub(super) const EXPECT_GROUP: &str = "a group name string such as \"appgroup\"";
pub(super) const EXPECT_FORMATS: &str = "a list of format names such as [\"split\", \"pfx\"]";
pub(super) const EXPECT_LOGGING: &str =
    "an object such as {\"logger\": \"fluentd\", \"endpoint\": \"tcp://localhost:24224\"}";
pub(super) const EXPECT_LOGGER: &str = "the string \"fluentd\"";
pub(super) const EXPECT_ENDPOINT: &str = "a string such as \"tcp://localhost:24224\"";
pub(super) const EXPECT_FORMAT: &str = "the string \"forward\"";
pub(super) const EXPECT_SERVICE_NAME: &str = "a string such as \"akvvm_service\"";
pub(super) const EXAMPLE_LOGGER: &str = "add \"logger\": \"fluentd\" or remove loggingSettings";
pub(super) const EXPECT_METRICS: &str =
    "a file path string such as \"/var/lib/node_exporter/textfile_collector/kvvm.prom\"";

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
            ACL_KEYS,
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
            return Err(SettingsError::AclEmpty {
                setting: entry_path,
            });
        }
        acls.push(AclEntry { user, group });
    }
    Ok(acls)
}

/// A user or group name; an empty string counts as absent (templates fill unused parameters with "").
pub(super) fn acl_name(
    value: Option<&Value>,
    path: &str,
    kind: &'static str,
    expected: &'static str,
) -> Result<Option<String>, SettingsError> {
    match string(value, path, expected)? {
        None => Ok(None),
        Some("") => Ok(None),
        Some(name) if plausible_account_name(name) => Ok(Some(name.to_string())),
        Some(name) => Err(SettingsError::AclName {
            setting: path.to_string(),
            value: shown(name),
            kind,
        }),
    }
}

/// Plausible POSIX (or directory-service) account name: what `setfacl` could resolve. Rejects what would break
/// the ACL text syntax (`:` `,`), paths, whitespace and control characters, and option-like names.
pub(super) fn plausible_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/'))
}

pub(super) const EXPECT_HOOK: &str = "a list such as [\"systemctl\", \"reload\", \"nginx\"], or an object such as {\"command\": [\"systemctl\", \"reload\", \"nginx\"], \"timeoutInS\": 60} or {\"shell\": \"nginx -s reload && logger renewed\"}";
pub(super) const FIX_HOOK: &str = "give the program and its arguments as a list, e.g. [\"systemctl\", \"reload\", \"nginx\"], or {\"shell\": \"...\"} to run a shell command line";

/// `postInstallCommand`: `[program, args…]`; a plain string of words (no shell syntax); or an object with
/// `command` (a list) or `shell` (a command line for /bin/sh), and `timeoutInS`. An empty list means "none"
/// (a certificate can opt out of the global command).
pub(super) fn post_install_command(
    value: &Value,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::hook::Hook>, SettingsError> {
    let bad = |problem: &str| SettingsError::PostInstallCommand {
        setting: path.to_string(),
        value: json_text(value),
        problem: problem.to_string(),
        fix: FIX_HOOK,
    };
    let argv_of = |v: &Value| -> Result<Vec<String>, SettingsError> {
        let list = expect_array(v, path, EXPECT_HOOK)?;
        list.iter()
            .map(|a| match a {
                Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                _ => Err(bad("has an element that is not a string")),
            })
            .collect()
    };
    let hook = |argv: Vec<String>, shell: bool, timeout: Duration| {
        Ok((!argv.is_empty()).then_some(crate::hook::Hook {
            argv,
            shell,
            timeout,
        }))
    };
    match value {
        Value::Array(_) => {
            let argv = argv_of(value)?;
            if argv.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(bad("starts with an empty program name"));
            }
            hook(argv, false, DEFAULT_HOOK_TIMEOUT)
        }
        Value::String(text) => {
            if text
                .chars()
                .any(|c| "|&;<>()$`\\\"'*?[]#~=%{}!\n".contains(c))
            {
                return Err(bad(
                    "contains shell syntax, but the command runs without a shell",
                ));
            }
            hook(
                text.split_whitespace().map(str::to_string).collect(),
                false,
                DEFAULT_HOOK_TIMEOUT,
            )
        }
        Value::Object(map) => {
            let raw: RawHook = section(map, path, HOOK_KEYS, warnings)?;
            let timeout = match &raw.timeout_in_s {
                None => DEFAULT_HOOK_TIMEOUT,
                Some(t) => {
                    Duration::from_secs(whole_number(t, MAX_HOOK_SECONDS).ok_or_else(|| {
                        bad("has a timeoutInS that is not a whole number of seconds from 1 to 3600")
                    })?)
                }
            };
            match (&raw.command, &raw.shell) {
                (Some(_), Some(_)) => Err(bad("has both command and shell")),
                (Some(c), None) => {
                    let argv = argv_of(c)?;
                    if argv.is_empty() || argv[0].trim().is_empty() {
                        return Err(bad("has an empty command"));
                    }
                    hook(argv, false, timeout)
                }
                (None, Some(Value::String(line))) if !line.trim().is_empty() => {
                    hook(vec![line.clone()], true, timeout)
                }
                (None, Some(_)) => Err(bad("has a shell value that is not a non-empty string")),
                (None, None) => Err(bad("has neither command nor shell")),
            }
        }
        other => Err(SettingsError::WrongType {
            setting: path.to_string(),
            expected: EXPECT_HOOK,
            found: found(other),
        }),
    }
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
                return Err(SettingsError::UnknownFormat {
                    setting: format!("{path}[{index}]"),
                    value: truncate(&json_text(other), MAX_SHOWN),
                });
            }
        }
    }
    Ok(formats)
}

pub(super) fn logging(
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<LoggingSettings>, SettingsError> {
    let path = "loggingSettings";
    let map = expect_object(value, path, EXPECT_LOGGING)?;
    if map.is_empty() {
        return Ok(None);
    }
    let raw: RawLogging = section(map, path, LOGGING_KEYS, warnings)?;
    let logger_path = format!("{path}.logger");
    match string(raw.logger.as_ref(), &logger_path, EXPECT_LOGGER)? {
        None => {
            return Err(SettingsError::Missing {
                setting: logger_path,
                fix: EXAMPLE_LOGGER,
            });
        }
        Some(s) if s.trim().eq_ignore_ascii_case("fluentd") => {}
        Some(s) => {
            return Err(SettingsError::UnknownLogger {
                setting: logger_path,
                value: shown(s),
            });
        }
    }
    let format_path = format!("{path}.format");
    if let Some(format) = string(raw.format.as_ref(), &format_path, EXPECT_FORMAT)?
        && !format.trim().eq_ignore_ascii_case("forward")
    {
        return Err(SettingsError::FluentdFormat {
            setting: format_path,
            value: shown(format),
        });
    }
    let endpoint_path = format!("{path}.endpoint");
    let endpoint = string(raw.endpoint.as_ref(), &endpoint_path, EXPECT_ENDPOINT)?
        .unwrap_or(DEFAULT_FLUENTD_ENDPOINT);
    let (endpoint_host, endpoint_port) =
        fluentd_endpoint(endpoint.trim()).ok_or_else(|| SettingsError::FluentdEndpoint {
            setting: endpoint_path,
            value: shown(endpoint),
        })?;
    let service_path = format!("{path}.servicename");
    let service_name = string(raw.servicename.as_ref(), &service_path, EXPECT_SERVICE_NAME)?
        .unwrap_or(DEFAULT_SERVICE_NAME);
    if service_name.is_empty()
        || service_name.len() > 256
        || service_name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SettingsError::ServiceName {
            setting: service_path,
            value: shown(service_name),
        });
    }
    Ok(Some(LoggingSettings {
        endpoint_host,
        endpoint_port,
        service_name: service_name.to_string(),
    }))
}

/// `tcp://host[:port][/]` → (host, port); the port defaults to fluentd's 24224.
pub(super) fn fluentd_endpoint(text: &str) -> Option<(String, u16)> {
    let url = Url::parse(text).ok()?;
    if url.scheme() != "tcp"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || !(url.path().is_empty() || url.path() == "/")
    {
        return None;
    }
    let host = match url.host()? {
        Host::Domain(d) if !d.is_empty() && !d.contains('%') => d.to_string(),
        Host::Domain(_) => return None,
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => a.to_string(),
    };
    let port = url.port().unwrap_or(DEFAULT_FLUENTD_PORT);
    (port != 0).then_some((host, port))
}

// ---------------------------------------------------------------------------------------------------------------
// Paths and names.

/// An absolute folder without `..`, normalised (no `.` components, no trailing slash).
pub(super) fn store_location(text: &str, path: &str) -> Result<PathBuf, SettingsError> {
    let fail = |problem| SettingsError::StoreLocation {
        setting: path.to_string(),
        value: shown(text),
        problem,
    };
    if text.is_empty() {
        return Err(fail("is empty"));
    }
    if text.contains('\0') {
        return Err(fail("contains a NUL character"));
    }
    let given = Path::new(text);
    if !given.is_absolute() {
        return Err(fail("is not an absolute path"));
    }
    let mut normalised = PathBuf::new();
    for component in given.components() {
        match component {
            Component::RootDir => normalised.push("/"),
            Component::Normal(part) => normalised.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(fail("contains a \"..\" component")),
            Component::Prefix(_) => return Err(fail("is not an absolute path")),
        }
    }
    if normalised == Path::new("/") {
        return Err(fail(
            "is the filesystem root, which cannot hold certificates",
        ));
    }
    Ok(normalised)
}

/// `metricsFile`: an absolute file path without `..`, normalised like a store location. node_exporter's textfile
/// collector reads only `*.prom` files, so another name is accepted with a warning.
pub(super) fn metrics_file(
    text: &str,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, SettingsError> {
    let fail = |problem| SettingsError::MetricsFile {
        setting: path.to_string(),
        value: shown(text),
        problem,
    };
    if text.ends_with('/') || text.ends_with("/.") {
        return Err(fail("names a folder, not a file"));
    }
    let normalised = store_location(text, path).map_err(|e| match e {
        SettingsError::StoreLocation { problem, .. } => fail(problem),
        other => other,
    })?;
    if normalised.extension().is_none_or(|e| e != "prom") {
        warnings.push(format!(
            "{path}: {:?} does not end in .prom, so node_exporter's textfile collector will not read it",
            shown(text)
        ));
    }
    Ok(normalised)
}

/// A plain file name usable as a symlink in the store folder.
pub(super) fn link_name(text: &str, path: &str) -> Result<(), SettingsError> {
    let problem = if text.is_empty() {
        "is empty"
    } else if text.contains('/') {
        "contains \"/\""
    } else if text == "." || text == ".." {
        "is not a file name"
    } else if text.contains('\0') {
        "contains a NUL character"
    } else if text.len() > 255 {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(SettingsError::LinkName {
        setting: path.to_string(),
        value: shown(text),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_are_normalised() {
        assert_eq!(
            store_location("/etc/ssl//certs/./", "p").unwrap(),
            PathBuf::from("/etc/ssl/certs")
        );
        for (bad, reason) in [
            ("", "store-location-invalid"),
            ("relative/dir", "store-location-invalid"),
            ("/a/../b", "store-location-invalid"),
            ("/", "store-location-invalid"),
            ("//", "store-location-invalid"),
            ("/a\0b", "store-location-invalid"),
            ("LocalMachine", "store-location-invalid"),
        ] {
            assert_eq!(
                store_location(bad, "p").unwrap_err().reason(),
                reason,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn link_names() {
        assert!(link_name("nginx.pem", "p").is_ok());
        assert!(link_name(".hidden", "p").is_ok());
        assert!(link_name(&"a".repeat(255), "p").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b"] {
            assert!(link_name(bad, "p").is_err(), "{bad:?}");
        }
        assert!(link_name(&"é".repeat(128), "p").is_err());
    }

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

    #[test]
    fn fluentd_endpoints() {
        assert_eq!(
            fluentd_endpoint("tcp://localhost:24224"),
            Some(("localhost".into(), 24224))
        );
        assert_eq!(
            fluentd_endpoint("tcp://10.0.0.4:5000/"),
            Some(("10.0.0.4".into(), 5000))
        );
        assert_eq!(
            fluentd_endpoint("tcp://[::1]:5000"),
            Some(("::1".into(), 5000))
        );
        assert_eq!(
            fluentd_endpoint("tcp://fluent"),
            Some(("fluent".into(), 24224))
        );
        for bad in [
            "udp://localhost:24224",
            "localhost:24224",
            "tcp://:24224",
            "tcp://localhost:0",
            "tcp://localhost:24224/path",
            "tcp://localhost:24224?x",
            "tcp://localhost:99999",
            "http://localhost:24224",
        ] {
            assert_eq!(fluentd_endpoint(bad), None, "{bad:?}");
        }
    }
}
