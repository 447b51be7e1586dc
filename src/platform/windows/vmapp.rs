//! kvvm as an Azure VM Application on Windows (Azure Compute Gallery). The package is `kvvm.exe` itself (one file:
//! Windows Server 2016 has no `tar`, and nothing needs unpacking), and its manage actions are its own commands,
//! which the VM Application manager runs with `cmd.exe` in the version's download folder:
//!
//! ```text
//! install: kvvm.exe vmapp install kvvm-settings.json
//! update:  kvvm.exe vmapp update kvvm-settings.json
//! remove:  kvvm.exe vmapp remove
//! ```
//!
//! install/update check the configuration (the extension's public settings JSON) and change nothing when it is
//! invalid; copy the executable to `%ProgramFiles%\kvvm\<version>\kvvm.exe` (the manager deletes its download
//! folder; a version of its own lets an update replace the binary a running service has open); make the
//! configuration the service's settings file; register the Windows service `kvvm` as `kvvm.exe service
//! --settings … --state-dir … --log-dir …` with the extension's recovery actions, and start it — or, when it
//! already runs this binary, tell it to reload; an update to another binary stops it first. The caller then
//! waits for the initial sync. remove stops and deletes the service and removes the program, settings, state and
//! logs; installed certificates stay.
//!
//! One kvvm per machine: the KeyVaultForWindows extension's worker is the same service, so install refuses to
//! take over a `kvvm` service that runs anything but this application's copy.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keeper::{DISPLAY_NAME, SERVICE};
use super::service::{ServiceError, WindowsService};
use crate::host::{HostError, Service};
use crate::platform::keep_alive::{StartOutcome, StopOutcome};

/// The environment variable naming the programs folder (`C:\Program Files`).
const PROGRAM_FILES: &str = "ProgramFiles";
/// The programs folder when [`PROGRAM_FILES`] is not set.
const DEFAULT_PROGRAM_FILES: &str = r"C:\Program Files";
/// How long a stop waits for the service before ending its process.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a VM Application action failed.
#[derive(Debug, thiserror::Error)]
pub enum VmAppError {
    /// The configuration is missing or invalid; nothing was changed.
    #[error(
        "the configuration is not valid kvvm settings, nothing changed: {source} (the application version's \
         configFileName, kvvm-settings.json: its default configuration, or the VM's configurationReference)"
    )]
    Configuration {
        /// What is wrong with it.
        source: Box<HostError>,
    },
    /// A file or folder of the application could not be written or removed.
    #[error("cannot {action} {path}: {source}")]
    Files {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What Windows said.
        source: io::Error,
    },
    /// The `kvvm` service on this machine is not this application's (the KeyVaultForWindows extension's).
    #[error(
        "the Windows service {SERVICE} runs {exe}, which is not this application's copy under {programs}: the \
         KeyVaultForWindows extension (or another kvvm) already keeps certificates on this machine. One kvvm per \
         machine: remove the extension from the VM, or do not deploy this application to it"
    )]
    Taken {
        /// What the service runs.
        exe: PathBuf,
        /// This application's programs folder.
        programs: PathBuf,
    },
    /// The service control manager refused a request.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl VmAppError {
    /// A short fixed identifier for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            VmAppError::Configuration { source } => source.reason(),
            VmAppError::Files { .. } => "vmapp-files",
            VmAppError::Taken { .. } => "service-taken",
            VmAppError::Service(e) => e.reason(),
        }
    }
}

/// This application's programs folder: `%ProgramFiles%\kvvm`.
pub(crate) fn programs_folder() -> PathBuf {
    std::env::var_os(PROGRAM_FILES)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PROGRAM_FILES), PathBuf::from)
        .join("kvvm")
}

/// Whether the `kvvm` service runs a copy this application installed.
pub(crate) fn is_ours(exe: &Path) -> bool {
    exe.starts_with(programs_folder())
}

fn files_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VmAppError + use<> {
    let path = path.to_path_buf();
    move |source| VmAppError::Files {
        action,
        path,
        source,
    }
}

/// install/update: puts this executable and `config` in place and has the service run them. Returns one line per
/// step done.
pub(crate) fn install(config: &Path, files: &Service) -> Result<Vec<String>, VmAppError> {
    let mut done = Vec::new();
    crate::host::read_service_settings(config).map_err(|source| VmAppError::Configuration {
        source: Box::new(source),
    })?;
    let service = WindowsService::new(SERVICE);
    let installed = service.executable()?;
    if let Some(exe) = &installed
        && !is_ours(exe)
    {
        return Err(VmAppError::Taken {
            exe: exe.clone(),
            programs: programs_folder(),
        });
    }
    let here = std::env::current_exe().map_err(files_err("find", Path::new("kvvm.exe")))?;
    let binary = std::fs::read(&here).map_err(files_err("read", &here))?;
    let folder = programs_folder().join(env!("CARGO_PKG_VERSION"));
    let exe = folder.join("kvvm.exe");
    let same = std::fs::read(&exe).is_ok_and(|old| old == binary);
    // A running service holds its executable open: Windows replaces neither it nor a binary it maps.
    let must_stop = installed.as_deref().is_some_and(|old| old != exe || !same);
    if must_stop && let StopOutcome::Stopped { pid, .. } = service.stop(STOP_GRACE)? {
        done.push(format!(
            "stopped the service {SERVICE} (pid {pid}) to change its program"
        ));
    }
    if !same {
        crate::files::create_folder(&folder, 0o755).map_err(files_err("create", &folder))?;
        crate::files::write_atomically(&exe, &binary, 0o755).map_err(files_err("write", &exe))?;
        done.push(format!("installed {}", exe.display()));
    }
    let settings = &files.settings_file;
    for dir in [
        settings.parent(),
        Some(&files.state_dir),
        Some(&files.log_dir),
    ]
    .into_iter()
    .flatten()
    {
        crate::files::create_folder(dir, 0o700).map_err(files_err("create", dir))?;
    }
    let text = std::fs::read(config).map_err(files_err("read", config))?;
    crate::files::write_atomically(settings, &text, 0o600).map_err(files_err("write", settings))?;
    done.push(format!(
        "{} is the service's settings file",
        settings.display()
    ));
    let arguments = [
        OsString::from("service"),
        OsString::from("--settings"),
        settings.clone().into_os_string(),
        OsString::from("--state-dir"),
        files.state_dir.clone().into_os_string(),
        OsString::from("--log-dir"),
        files.log_dir.clone().into_os_string(),
    ];
    match service.start(DISPLAY_NAME, &exe, &arguments)? {
        StartOutcome::Started { pid } => {
            done.push(format!("started the service {SERVICE} (pid {pid})"))
        }
        StartOutcome::AlreadyRunning { .. } => {
            service.notify_reload()?;
            done.push(format!(
                "the service {SERVICE} runs; told it to reload its settings"
            ));
        }
    }
    done.extend(remove_other_versions(&folder));
    Ok(done)
}

/// Removes the program folders of other versions (an update's leftovers); a line for each, or for each that
/// could not go.
fn remove_other_versions(current: &Path) -> Vec<String> {
    let Some(programs) = current.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(programs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != current && p.is_dir())
        .map(|old| match std::fs::remove_dir_all(&old) {
            Ok(()) => format!("removed the previous version's {}", old.display()),
            Err(e) => format!("warning: cannot remove {}: {e}", old.display()),
        })
        .collect()
}

/// remove: stops and deletes the service, and removes the program, its settings, state and logs. Installed
/// certificates stay. A `kvvm` service that is not this application's is left alone.
pub(crate) fn remove(files: &Service) -> Result<Vec<String>, VmAppError> {
    let mut done = Vec::new();
    let service = WindowsService::new(SERVICE);
    match service.executable()? {
        None => done.push(format!("the service {SERVICE} is not installed")),
        Some(exe) if !is_ours(&exe) => done.push(format!(
            "the service {SERVICE} runs {}, not this application's copy: left alone",
            exe.display()
        )),
        Some(_) => {
            service.remove(STOP_GRACE)?;
            done.push(format!("stopped and deleted the service {SERVICE}"));
        }
    }
    let settings = &files.settings_file;
    match std::fs::remove_file(settings) {
        Ok(()) => done.push(format!("removed {}", settings.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(files_err("remove", settings)(source)),
    }
    for dir in [&programs_folder(), &files.state_dir, &files.log_dir] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => done.push(format!("removed {}", dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(files_err("remove", dir)(source)),
        }
    }
    // The settings' folder (C:\ProgramData\kvvm) goes when nothing else is in it.
    if let Some(parent) = settings.parent()
        && std::fs::remove_dir(parent).is_ok()
    {
        done.push(format!("removed {}", parent.display()));
    }
    done.push("installed certificates are left in place".to_string());
    Ok(done)
}
