//! `loggingSettings`: where to send the extension's log with the fluentd Forward protocol. An empty object
//! means no forwarding, as if the section were absent.

use serde_json::Value;
use url::{Host, Url};

use super::error::SettingsErrorKind;
use super::json::{expect_object, section, shown, string};
use super::raw::RawLogging;
use super::{
    DEFAULT_FLUENTD_ENDPOINT, DEFAULT_FLUENTD_PORT, DEFAULT_SERVICE_NAME, LoggingSettings,
    SettingsError,
};

const PATH: &str = "loggingSettings";
const EXPECT_LOGGING: &str =
    "an object such as {\"logger\": \"fluentd\", \"endpoint\": \"tcp://localhost:24224\"}";
const EXPECT_LOGGER: &str = "the string \"fluentd\"";
const EXPECT_ENDPOINT: &str = "a string such as \"tcp://localhost:24224\"";
const EXPECT_FORMAT: &str = "the string \"forward\"";
const EXPECT_SERVICE_NAME: &str = "a string such as \"akvvm_service\"";
const EXAMPLE_LOGGER: &str = "add \"logger\": \"fluentd\" or remove loggingSettings";

/// `loggingSettings`; `None` for an empty object.
pub(super) fn logging(
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<LoggingSettings>, SettingsError> {
    let map = expect_object(value, PATH, EXPECT_LOGGING)?;
    if map.is_empty() {
        return Ok(None);
    }
    let raw: RawLogging = section(map, PATH, warnings)?;
    logger(raw.logger.as_ref())?;
    format(raw.format.as_ref())?;
    let (endpoint_host, endpoint_port) = endpoint(raw.endpoint.as_ref())?;
    Ok(Some(LoggingSettings {
        endpoint_host,
        endpoint_port,
        service_name: service_name(raw.servicename.as_ref())?,
    }))
}

/// `logger`: required, and "fluentd".
fn logger(value: Option<&Value>) -> Result<(), SettingsError> {
    let path = format!("{PATH}.logger");
    match string(value, &path, EXPECT_LOGGER)? {
        None => Err(SettingsErrorKind::Missing {
            fix: EXAMPLE_LOGGER,
        }
        .at(path)),
        Some(s) if s.trim().eq_ignore_ascii_case("fluentd") => Ok(()),
        Some(s) => Err(SettingsErrorKind::UnknownLogger { value: shown(s) }.at(path)),
    }
}

/// `format`: "forward" when given.
fn format(value: Option<&Value>) -> Result<(), SettingsError> {
    let path = format!("{PATH}.format");
    match string(value, &path, EXPECT_FORMAT)? {
        Some(format) if !format.trim().eq_ignore_ascii_case("forward") => {
            Err(SettingsErrorKind::FluentdFormat {
                value: shown(format),
            }
            .at(path))
        }
        _ => Ok(()),
    }
}

/// `endpoint` (default `tcp://localhost:24224`) as host and port.
fn endpoint(value: Option<&Value>) -> Result<(String, u16), SettingsError> {
    let path = format!("{PATH}.endpoint");
    let endpoint = string(value, &path, EXPECT_ENDPOINT)?.unwrap_or(DEFAULT_FLUENTD_ENDPOINT);
    fluentd_endpoint(endpoint.trim()).ok_or_else(|| {
        SettingsErrorKind::FluentdEndpoint {
            value: shown(endpoint),
        }
        .at(path)
    })
}

/// `servicename` (default `akvvm_service`): non-empty, without white space or control characters.
fn service_name(value: Option<&Value>) -> Result<String, SettingsError> {
    let path = format!("{PATH}.servicename");
    let name = string(value, &path, EXPECT_SERVICE_NAME)?.unwrap_or(DEFAULT_SERVICE_NAME);
    if name.is_empty()
        || name.len() > 256
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SettingsErrorKind::ServiceName { value: shown(name) }.at(path));
    }
    Ok(name.to_string())
}

/// `tcp://host[:port][/]` → (host, port); the port defaults to fluentd's 24224.
fn fluentd_endpoint(text: &str) -> Option<(String, u16)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
