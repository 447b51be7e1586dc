//! TEMPORARY stub with the agreed API; replaced by the real schema module on merge.
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";

#[derive(Debug, Clone)]
pub struct Settings {
    pub observed_certificates: Vec<ObservedCertificate>,
    pub polling_interval: Duration,
    pub require_initial_sync: bool,
    pub acl_enabled: bool,
    pub retained_versions: u32,
    pub msi_endpoint: Option<url::Url>,
    pub msi_client_id: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ObservedCertificate {
    pub url: url::Url,
    pub store_location: PathBuf,
    pub link_name: String,
}

#[derive(Debug, Clone)]
pub enum Configured {
    Nothing { reason: String },
    Settings(Settings),
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SettingsError {
    message: String,
}

impl SettingsError {
    pub fn reason(&self) -> &'static str {
        "settings-invalid"
    }
}

pub fn parse_settings_file(text: &str) -> Result<Configured, SettingsError> {
    if text.trim().is_empty() {
        return Ok(Configured::Nothing {
            reason: "the settings file is empty".into(),
        });
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| SettingsError {
        message: format!("settings are not JSON: {e}"),
    })?;
    let public = &v["runtimeSettings"][0]["handlerSettings"]["publicSettings"];
    if public.is_null() {
        return Ok(Configured::Nothing {
            reason: "publicSettings is null".into(),
        });
    }
    let list = public["secretsManagementSettings"]["observedCertificates"]
        .as_array()
        .ok_or_else(|| SettingsError {
            message: "observedCertificates missing".into(),
        })?;
    let observed_certificates = list
        .iter()
        .map(|u| {
            let url =
                url::Url::parse(u.as_str().unwrap_or_default()).map_err(|e| SettingsError {
                    message: format!("bad url: {e}"),
                })?;
            Ok(ObservedCertificate {
                url,
                store_location: PathBuf::from(DEFAULT_STORE),
                link_name: String::new(),
            })
        })
        .collect::<Result<Vec<_>, SettingsError>>()?;
    Ok(Configured::Settings(Settings {
        observed_certificates,
        polling_interval: Duration::from_secs(3600),
        require_initial_sync: false,
        acl_enabled: false,
        retained_versions: 2,
        msi_endpoint: None,
        msi_client_id: None,
        warnings: Vec::new(),
    }))
}
