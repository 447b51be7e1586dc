//! A simulator of the Linux guest agent (waagent) side of the extension handler protocol.
//!
//! kvvm is only correct if it works the way waagent actually drives it, so this module reproduces the agent's
//! observable behaviour (WALinuxAgent `azurelinuxagent/ga/exthandlers.py` and `extensionprocessutil.py`, see
//! REFERENCE.md §1) rather than a convenient idealisation: the zip is extracted without its file modes and then
//! every file gets `u+x`; commands run through `/bin/sh -c <ext dir>/<command>` in a new session with
//! stdout/stderr sent to unlinked files of which only the first 3200 bytes are read; a command that outlives its
//! time limit has its whole process group SIGKILLed; the update sequence runs the old and new handlers' commands
//! in waagent's order and copies `mrseq` and `status/` between their directories; status files are validated
//! by waagent's rules (plus the fields the portal shows, which Microsoft's handlers always write).
//!
//! Where waagent is lenient the simulator says so in the error text rather than silently accepting: a status
//! value such as `"Success"` is not rejected by waagent but reported as `error`, which is just as fatal. The
//! simulator is deliberately **stricter** than waagent about status and heartbeat files (waagent needs only
//! `status` and `status.status`, resp. `heartbeat.status`; the simulator also wants every field the portal
//! shows), to catch kvvm's own mistakes; such errors say "stricter than waagent".
//!
//! Aligned with what the real agent was seen doing (tests/real_agent.rs runs WALinuxAgent 2.7.3 itself; the
//! rest was read in 2.15): the heartbeat's status and message replace the handler status the agent reports
//! ([`Agent::handler_status`]); the package zip is deleted after extraction; a missing status file is reported
//! with the agent's `[ExtensionStatusError]` message after re-reads ([`Agent::with_waagent_timing`] makes them
//! waagent's 5 × 2 s); a `disabled` goal state writes no settings and passes its own sequence number; every goal
//! state processed, a restart included, rewrites the settings before enable ([`Agent::restart`]); the agent's
//! own environment is merged last and wins; HandlerEnvironment.json has exactly six keys; uninstall's time
//! limit is 300 s; with [`Agent::with_waagent_timing`] each command takes ~2 s (1 s polls plus 1 s grace).
//! Not simulated: the systemd scope / CPU quota, the goal-state download and signature checks (the real agent
//! covers those against `kvvm_sim::wireserver`), and multi-config handlers.

use std::cmp::Ordering;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};

/// The handler name of the extension kvvm implements (`<Publisher>.<Type>`).
pub const HANDLER_NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
/// What waagent puts in `AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS` on Azure.
pub const WIRE_PROTOCOL_ADDRESS: &str = "168.63.129.16";
/// waagent's value for an exit-code variable whose command did not run.
pub const NOT_RUN: &str = "NOT_RUN";
/// `AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES` as current waagent sets it (Python `json.dumps` spacing).
pub const SUPPORTED_FEATURES: &str = r#"[{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]"#;
/// waagent reads at most this many bytes of a command's stdout and of its stderr.
pub const OUTPUT_LIMIT: usize = 3200;
/// Status files larger than this are truncated by waagent.
pub const MAX_STATUS_SIZE: usize = 128 * 1024;
/// A heartbeat file older than this makes waagent report the handler `Unresponsive`.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(600);
/// The PATH a systemd-started waagent (and so every command it runs) has.
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The variable waagent's daemon sets for the extension handler process (so every command sees it).
pub const DAEMON_VERSION_VAR: &str = "_AZURE_GUEST_AGENT_DAEMON_VERSION_";
/// The daemon version the simulator claims to be.
pub const DAEMON_VERSION: &str = "2.15.0.1";
/// How often waagent reads a missing or unparsable status file before giving up, and the pause between reads.
pub const WAAGENT_STATUS_RETRIES: (u32, Duration) = (5, Duration::from_secs(2));
/// waagent polls a running command once a second, and after it exits waits one more second (for a forked
/// child to start) before going on.
pub const WAAGENT_POLL: Duration = Duration::from_secs(1);
/// The keys of HandlerEnvironment.json's `handlerEnvironment` object, exactly as waagent writes them.
pub const HANDLER_ENVIRONMENT_KEYS: [&str; 6] = [
    "logFolder",
    "configFolder",
    "statusFolder",
    "heartbeatFile",
    "eventsFolder",
    "eventsFolder_preview",
];
/// waagent error code for a command that ran past its time limit.
pub const CODE_TIMEOUT: u32 = 1011;
/// waagent error code for a status file it cannot use.
pub const CODE_STATUS_INVALID: u32 = 1012;
/// waagent error code for a missing HandlerManifest.json.
pub const CODE_MANIFEST_NOT_FOUND: u32 = 1002;
/// waagent error code for a HandlerManifest.json it cannot parse.
pub const CODE_MANIFEST_MALFORMED: u32 = 1003;

const MAX_STATUS_MESSAGE: usize = 1024;
const MAX_SUBSTATUS_FIELD: usize = 10 * 1024;
const TRUNCATED_SUFFIX: &str = " ... [TRUNCATED]";
const STATUS_VALUES: [&str; 4] = ["transitioning", "success", "warning", "error"];
const HEARTBEAT_VALUES: [&str; 3] = ["Ready", "NotReady", "Installing"];

/// Everything that can go wrong while simulating the agent. Command failures are not errors: they are
/// reported in [`CommandResult`] / [`Sequence`] the way waagent reports them.
#[derive(Debug, thiserror::Error)]
pub enum WaagentError {
    /// A file-system operation of the simulator itself failed.
    #[error("waagent-sim: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The package is not a zip waagent could extract.
    #[error("{zip}: not an extension package waagent can extract: {detail}")]
    BadZip { zip: PathBuf, detail: String },
    /// The package file name does not carry the version (waagent gets it from the goal state).
    #[error(
        "{zip}: the file name is not <Publisher>.<Type>-<version>.zip, so the version is unknown; \
         name it that way or call Agent::unpack_as with the version"
    )]
    PackageName { zip: PathBuf },
    /// HandlerManifest.json is missing or unusable.
    #[error("{path}: {detail} (waagent error {code})")]
    Manifest {
        path: PathBuf,
        detail: String,
        code: u32,
    },
    /// The status file breaks one of waagent's rules.
    #[error("{path}: {rule}: {detail} (waagent reports error {code})", code = CODE_STATUS_INVALID)]
    Status {
        path: PathBuf,
        rule: StatusRule,
        detail: String,
    },
    /// The heartbeat file is missing, stale-irrelevant or malformed.
    #[error("{path}: {detail}")]
    Heartbeat { path: PathBuf, detail: String },
    /// A command could not be started at all.
    #[error("waagent-sim: cannot start {verb} command {command}: {source}")]
    Spawn {
        verb: Verb,
        command: String,
        #[source]
        source: io::Error,
    },
}

impl WaagentError {
    /// A short fixed string per variant, for summaries.
    pub fn reason(&self) -> &'static str {
        match self {
            WaagentError::Io { .. } => "simulator I/O failed",
            WaagentError::BadZip { .. } => "package is not a valid zip",
            WaagentError::PackageName { .. } => "package name carries no version",
            WaagentError::Manifest { .. } => "HandlerManifest.json unusable",
            WaagentError::Status { .. } => "status file rejected",
            WaagentError::Heartbeat { .. } => "heartbeat file rejected",
            WaagentError::Spawn { .. } => "command could not start",
        }
    }

    /// The status rule that failed, if this is a status validation error.
    pub fn status_rule(&self) -> Option<StatusRule> {
        match self {
            WaagentError::Status { rule, .. } => Some(*rule),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, WaagentError>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WaagentError + 'a {
    move |source| WaagentError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Which rule of the status format was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRule {
    /// Not JSON (waagent: InvalidJsonFile → 1012).
    NotJson,
    /// Top level is not a JSON list.
    NotList,
    /// The list is empty: waagent reports nothing for this sequence number.
    EmptyList,
    /// A required key is absent.
    MissingKey,
    /// A key is present only with different capitalisation (`FormattedMessage`, `Lang`, …).
    WrongCaseKey,
    /// A value has the wrong JSON type.
    WrongType,
    /// A status value is not one of transitioning/success/warning/error exactly.
    BadStatusValue,
    /// `timestampUTC` is not an RFC 3339 UTC time.
    BadTimestamp,
}

impl std::fmt::Display for StatusRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StatusRule::NotJson => "not JSON",
            StatusRule::NotList => "not a JSON list",
            StatusRule::EmptyList => "empty list",
            StatusRule::MissingKey => "missing key",
            StatusRule::WrongCaseKey => "wrongly capitalised key",
            StatusRule::WrongType => "wrong type",
            StatusRule::BadStatusValue => "bad status value",
            StatusRule::BadTimestamp => "bad timestampUTC",
        })
    }
}

/// A handler command named in HandlerManifest.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Install,
    Enable,
    Disable,
    Update,
    Uninstall,
}

impl Verb {
    /// All five, in manifest order.
    pub const ALL: [Verb; 5] = [
        Verb::Install,
        Verb::Uninstall,
        Verb::Update,
        Verb::Enable,
        Verb::Disable,
    ];

    /// Lower-case name (`install`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Install => "install",
            Verb::Enable => "enable",
            Verb::Disable => "disable",
            Verb::Update => "update",
            Verb::Uninstall => "uninstall",
        }
    }

    /// The HandlerManifest.json key naming this command.
    pub fn manifest_key(self) -> &'static str {
        match self {
            Verb::Install => "installCommand",
            Verb::Enable => "enableCommand",
            Verb::Disable => "disableCommand",
            Verb::Update => "updateCommand",
            Verb::Uninstall => "uninstallCommand",
        }
    }

    /// The error code waagent reports when this command exits non-zero.
    pub fn error_code(self) -> u32 {
        match self {
            Verb::Install => 1007,
            Verb::Update => 1008,
            Verb::Enable => 1009,
            Verb::Disable => 1010,
            Verb::Uninstall => 1000,
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time limits per command. The default is waagent's: install, disable and update 900 s; enable and
/// uninstall 300 s (uninstall runs with `launch_command`'s default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub install: Duration,
    pub enable: Duration,
    pub disable: Duration,
    pub update: Duration,
    pub uninstall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            install: Duration::from_secs(900),
            enable: Duration::from_secs(300),
            disable: Duration::from_secs(900),
            update: Duration::from_secs(900),
            uninstall: Duration::from_secs(300),
        }
    }
}

impl Timeouts {
    /// The same limit for every command.
    pub fn all(limit: Duration) -> Timeouts {
        Timeouts {
            install: limit,
            enable: limit,
            disable: limit,
            update: limit,
            uninstall: limit,
        }
    }

    /// The limit for one command.
    pub fn for_verb(&self, verb: Verb) -> Duration {
        match verb {
            Verb::Install => self.install,
            Verb::Enable => self.enable,
            Verb::Disable => self.disable,
            Verb::Update => self.update,
            Verb::Uninstall => self.uninstall,
        }
    }
}

/// `updateMode` of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Absent or "UpdateWithInstall" (any case): install runs after update.
    UpdateWithInstall,
    /// Any other value: install is skipped during an update.
    UpdateWithoutInstall,
}

/// The parts of HandlerManifest.json waagent uses.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerManifest {
    pub install_command: String,
    pub uninstall_command: String,
    pub update_command: String,
    pub enable_command: String,
    pub disable_command: String,
    pub reboot_after_install: bool,
    pub report_heartbeat: bool,
    pub continue_on_update_failure: bool,
    pub update_mode: UpdateMode,
    /// `resourceLimits.cpuQuotaPercentage`, if given (not enforced by the simulator).
    pub cpu_quota_percentage: Option<f64>,
    /// What waagent would log about the manifest (non-boolean booleans).
    pub warnings: Vec<String>,
}

impl HandlerManifest {
    /// Parses HandlerManifest.json text the way waagent does, and requires all five commands.
    pub fn parse(text: &str, path: &Path) -> Result<HandlerManifest> {
        let malformed = |detail: String| WaagentError::Manifest {
            path: path.to_path_buf(),
            detail,
            code: CODE_MANIFEST_MALFORMED,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let data: Value =
            serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let first = data
            .as_array()
            .and_then(|list| list.first())
            .ok_or_else(|| {
                malformed("must be a JSON list whose element 0 holds \"handlerManifest\"".into())
            })?;
        let hm = first
            .get("handlerManifest")
            .and_then(Value::as_object)
            .ok_or_else(|| malformed("element 0 has no \"handlerManifest\" object".into()))?;
        let command = |key: &str| -> Result<String> {
            match hm.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(other) => Err(malformed(format!(
                    "\"{key}\" must be a non-empty string, found {other}"
                ))),
                None => Err(malformed(format!("\"{key}\" is missing"))),
            }
        };
        let mut warnings = Vec::new();
        let mut boolean = |key: &str| -> bool {
            match hm.get(key) {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    warnings.push(format!(
                        "'{key}' has a non-boolean value [{other}]; waagent accepts only the string \"true\" (any case)"
                    ));
                    matches!(other, Value::String(s) if s.eq_ignore_ascii_case("true"))
                }
            }
        };
        let reboot_after_install = boolean("rebootAfterInstall");
        let report_heartbeat = boolean("reportHeartbeat");
        let continue_on_update_failure = boolean("continueOnUpdateFailure");
        let update_mode = match hm.get("updateMode") {
            None | Some(Value::Null) => UpdateMode::UpdateWithInstall,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("UpdateWithInstall") => {
                UpdateMode::UpdateWithInstall
            }
            Some(Value::String(_)) => UpdateMode::UpdateWithoutInstall,
            Some(other) => {
                return Err(malformed(format!(
                    "\"updateMode\" must be a string, found {other}"
                )));
            }
        };
        let cpu_quota_percentage = first
            .get("resourceLimits")
            .and_then(|r| r.get("cpuQuotaPercentage"))
            .and_then(Value::as_f64);
        Ok(HandlerManifest {
            install_command: command("installCommand")?,
            uninstall_command: command("uninstallCommand")?,
            update_command: command("updateCommand")?,
            enable_command: command("enableCommand")?,
            disable_command: command("disableCommand")?,
            reboot_after_install,
            report_heartbeat,
            continue_on_update_failure,
            update_mode,
            cpu_quota_percentage,
            warnings,
        })
    }

    /// The command line for a verb, relative to the extension directory.
    pub fn command(&self, verb: Verb) -> &str {
        match verb {
            Verb::Install => &self.install_command,
            Verb::Enable => &self.enable_command,
            Verb::Disable => &self.disable_command,
            Verb::Update => &self.update_command,
            Verb::Uninstall => &self.uninstall_command,
        }
    }
}

/// One unpacked handler version: `<root>/<name>-<version>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Extension {
    /// `<Publisher>.<Type>`.
    pub name: String,
    /// The handler version (from the goal state / package name).
    pub version: String,
    /// The extension directory.
    pub dir: PathBuf,
    /// The parsed HandlerManifest.json.
    pub manifest: HandlerManifest,
}

impl Extension {
    /// `<name>-<version>`.
    pub fn full_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
    /// `<dir>/config`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// `<dir>/status`.
    pub fn status_dir(&self) -> PathBuf {
        self.dir.join("status")
    }
    /// `<dir>/heartbeat.log`.
    pub fn heartbeat_file(&self) -> PathBuf {
        self.dir.join("heartbeat.log")
    }
    /// `<dir>/HandlerEnvironment.json`.
    pub fn handler_environment_file(&self) -> PathBuf {
        self.dir.join("HandlerEnvironment.json")
    }
    /// `<dir>/config/<seq>.settings`.
    pub fn settings_file(&self, seq: u64) -> PathBuf {
        self.config_dir().join(format!("{seq}.settings"))
    }
    /// `<dir>/status/<seq>.status`.
    pub fn status_file(&self, seq: u64) -> PathBuf {
        self.status_dir().join(format!("{seq}.status"))
    }
    /// `<dir>/mrseq` (the extension's own file; waagent copies it on update).
    pub fn mrseq_file(&self) -> PathBuf {
        self.dir.join("mrseq")
    }
}

/// waagent's record of a handler's state (`config/HandlerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerState {
    NotInstalled,
    Installed,
    Enabled,
    FailedUpgrade,
}

impl HandlerState {
    fn as_str(self) -> &'static str {
        match self {
            HandlerState::NotInstalled => "NotInstalled",
            HandlerState::Installed => "Installed",
            HandlerState::Enabled => "Enabled",
            HandlerState::FailedUpgrade => "FailedUpgrade",
        }
    }
}

/// The settings waagent writes for a goal state.
#[derive(Debug, Clone, PartialEq)]
pub enum Settings {
    /// No extension settings in the goal state: waagent writes an empty file.
    Empty,
    /// The normal case.
    Handler {
        public: Option<Value>,
        /// Base64 CMS blob, as CRP sends it.
        protected: Option<String>,
        thumbprint: Option<String>,
    },
    /// Arbitrary text, for malformed-file cases.
    Raw(String),
}

impl Settings {
    /// Public settings only.
    pub fn public(value: Value) -> Settings {
        Settings::Handler {
            public: Some(value),
            protected: None,
            thumbprint: None,
        }
    }

    fn text(&self) -> String {
        match self {
            Settings::Empty => String::new(),
            Settings::Raw(text) => text.clone(),
            Settings::Handler {
                public,
                protected,
                thumbprint,
            } => json!({"runtimeSettings": [{"handlerSettings": {
                "publicSettings": public,
                "protectedSettings": protected,
                "protectedSettingsCertThumbprint": thumbprint,
            }}]})
            .to_string(),
        }
    }
}

impl From<Value> for Settings {
    /// [`Settings::public`].
    fn from(value: Value) -> Settings {
        Settings::public(value)
    }
}

/// What running one command produced, as waagent sees it.
#[derive(Debug, Clone)]
pub struct CommandResult {
    pub verb: Verb,
    /// Version of the handler whose command ran.
    pub version: String,
    /// `ConfigSequenceNumber` it ran with.
    pub seq: u64,
    /// The full command line given to `/bin/sh -c`.
    pub command: String,
    /// `None` if it timed out; a negative signal number if a signal ended it (as Python reports).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration: Duration,
    /// The first [`OUTPUT_LIMIT`] bytes of stdout / stderr (lossy UTF-8).
    pub stdout: String,
    pub stderr: String,
    /// waagent's combined `[stdout]…[stderr]…` message, at most [`OUTPUT_LIMIT`] characters.
    pub output: String,
    /// The waagent-specific environment variables the command got (not PATH or `Agent::with_env` extras).
    pub env: Vec<(String, String)>,
}

impl CommandResult {
    /// Exit 0 within the time limit.
    pub fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// waagent's error code: `None` on success, 1011 on timeout, else the verb's code (1007, 1008, …).
    pub fn error_code(&self) -> Option<u32> {
        if self.timed_out {
            Some(CODE_TIMEOUT)
        } else if self.exit_code == Some(0) {
            None
        } else {
            Some(self.verb.error_code())
        }
    }

    /// The value waagent passes on in `…_CMD_EXIT_CODE` variables.
    fn exit_code_text(&self) -> String {
        match self.exit_code {
            Some(code) if !self.timed_out => code.to_string(),
            _ => CODE_TIMEOUT.to_string(),
        }
    }
}

/// A status value, exactly as waagent accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusValue {
    Transitioning,
    Success,
    Warning,
    Error,
}

impl StatusValue {
    fn parse(s: &str) -> Option<StatusValue> {
        match s {
            "transitioning" => Some(StatusValue::Transitioning),
            "success" => Some(StatusValue::Success),
            "warning" => Some(StatusValue::Warning),
            "error" => Some(StatusValue::Error),
            _ => None,
        }
    }

    /// The lower-case wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusValue::Transitioning => "transitioning",
            StatusValue::Success => "success",
            StatusValue::Warning => "warning",
            StatusValue::Error => "error",
        }
    }
}

/// One validated substatus entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Substatus {
    pub name: String,
    pub status: StatusValue,
    pub code: i64,
    pub lang: String,
    pub message: String,
}

/// A validated `status/<seq>.status`, or waagent's placeholder when the file is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// No status file: waagent reports transitioning / code 0 with its own message.
    pub missing: bool,
    pub version: f64,
    pub timestamp_utc: String,
    pub name: String,
    pub operation: String,
    pub status: StatusValue,
    pub code: i64,
    pub lang: String,
    pub message: String,
    pub substatus: Vec<Substatus>,
    /// Over [`MAX_STATUS_SIZE`]: message and substatus were truncated the way waagent does.
    pub truncated: bool,
    /// Size of the file in bytes.
    pub size: usize,
    /// The parsed file (Null when missing).
    pub raw: Value,
}

/// A validated heartbeat file.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub version: f64,
    pub status: String,
    pub code: i64,
    pub lang: String,
    pub message: String,
    /// Now minus the file's mtime.
    pub age: Duration,
}

impl Heartbeat {
    /// Updated within the last 600 s.
    pub fn responsive(&self) -> bool {
        self.age <= HEARTBEAT_MAX_AGE
    }

    /// What waagent reports: `Unresponsive` when stale, else the file's status.
    pub fn reported_status(&self) -> &str {
        if self.responsive() {
            &self.status
        } else {
            "Unresponsive"
        }
    }
}

/// The handler status waagent reports upstream (`handlerAggregateStatus[]`: status, code, message).
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerReport {
    /// `Ready`, `NotReady`, `Unresponsive`, or the heartbeat's status.
    pub status: String,
    pub code: i64,
    pub message: String,
    /// Whether the heartbeat supplied status and message.
    pub from_heartbeat: bool,
}

/// One step of a waagent sequence.
#[derive(Debug, Clone)]
pub enum Step {
    /// Zip extracted, modes reset, u+x added, manifest read.
    Unpack { version: String, dir: PathBuf },
    /// HandlerEnvironment.json written.
    HandlerEnvironment { version: String },
    /// `config/<seq>.settings` written.
    Settings { version: String, seq: u64 },
    /// A manifest command ran.
    Command(CommandResult),
    /// `mrseq` and `status/*` copied from the old to the new directory.
    CopyState {
        from: String,
        to: String,
        files: Vec<String>,
    },
    /// An extension directory was deleted.
    RemoveDir { version: String, dir: PathBuf },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Unpack { version, dir } => write!(f, "{version}: unzip into {}", dir.display()),
            Step::HandlerEnvironment { version } => {
                write!(f, "{version}: write HandlerEnvironment.json")
            }
            Step::Settings { version, seq } => write!(f, "{version}: write config/{seq}.settings"),
            Step::Command(r) => {
                let outcome = match (r.timed_out, r.exit_code) {
                    (true, _) => "timed out, process group killed".to_string(),
                    (false, Some(code)) => format!("exit {code}"),
                    (false, None) => "no exit code".to_string(),
                };
                write!(
                    f,
                    "{}: {} (seq {}) → {outcome} in {} ms",
                    r.version,
                    r.verb,
                    r.seq,
                    r.duration.as_millis()
                )?;
                if let Some(code) = r.error_code() {
                    write!(f, " [waagent error {code}]")?;
                }
                Ok(())
            }
            Step::CopyState { from, to, files } => {
                write!(f, "copy {} from {from} to {to}", files.join(", "))
            }
            Step::RemoveDir { version, dir } => write!(f, "{version}: remove {}", dir.display()),
        }
    }
}

/// Where a sequence stopped, as waagent would report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// e.g. `"new update"`, `"old disable"`, `"install"`.
    pub step: String,
    pub code: u32,
    pub message: String,
}

/// The steps of one waagent operation, in order.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub steps: Vec<Step>,
    /// The first failure that stopped the sequence (waagent raised), if any.
    pub failure: Option<Failure>,
    /// Failures waagent logged and went on after (continueOnUpdateFailure, uninstall errors).
    pub ignored: Vec<Failure>,
    /// The extension the sequence leaves installed (the new one for install/update).
    pub extension: Option<Extension>,
}

impl Sequence {
    fn new() -> Sequence {
        Sequence {
            steps: Vec::new(),
            failure: None,
            ignored: Vec::new(),
            extension: None,
        }
    }

    /// No failure stopped it.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// `"<version> <verb>"` for every command that ran, in order.
    pub fn commands(&self) -> Vec<String> {
        self.command_results()
            .map(|r| format!("{} {}", r.version, r.verb))
            .collect()
    }

    /// Every command result, in order.
    pub fn command_results(&self) -> impl Iterator<Item = &CommandResult> {
        self.steps.iter().filter_map(|s| match s {
            Step::Command(r) => Some(r),
            _ => None,
        })
    }

    /// The result of `verb` run by handler `version`, if it ran.
    pub fn result(&self, version: &str, verb: Verb) -> Option<&CommandResult> {
        self.command_results()
            .find(|r| r.version == version && r.verb == verb)
    }

    /// The steps as text, one a line, for `make demo`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(&format!("  {step}\n"));
        }
        if let Some(f) = &self.failure {
            out.push_str(&format!(
                "  FAILED at {} (waagent error {}): {}\n",
                f.step, f.code, f.message
            ));
        }
        for f in &self.ignored {
            out.push_str(&format!(
                "  ignored failure at {} ({}): {}\n",
                f.step, f.code, f.message
            ));
        }
        out
    }
}

/// The simulated agent. `root` stands in for `/var/lib/waagent`, `log_root` for `/var/log/azure`.
#[derive(Debug, Clone)]
pub struct Agent {
    root: PathBuf,
    log_root: PathBuf,
    timeouts: Timeouts,
    extra_env: Vec<(String, String)>,
    status_retries: u32,
    status_retry_delay: Duration,
    poll: Option<Duration>,
    echo: bool,
}

impl Agent {
    /// An agent with waagent's time limits, echo off, and — faster than waagent, to keep tests quick — a short
    /// status-read retry (3 × 100 ms; waagent's is 5 × 2 s) and a 10 ms command poll (waagent's is 1 s plus
    /// 1 s after exit); [`Agent::with_waagent_timing`] gives waagent's.
    pub fn new(root: &Path, log_root: &Path) -> Agent {
        Agent {
            root: root.to_path_buf(),
            log_root: log_root.to_path_buf(),
            timeouts: Timeouts::default(),
            extra_env: Vec::new(),
            status_retries: 3,
            status_retry_delay: Duration::from_millis(100),
            poll: None,
            echo: false,
        }
    }

    /// waagent's own timing: status files re-read 5 times 2 s apart, and commands polled once a second with
    /// a one-second pause after they exit (so every command takes about 2 s, and a forked child gets a second
    /// to start before the agent goes on). Time limits count those one-second polls, as waagent's do.
    pub fn with_waagent_timing(mut self) -> Agent {
        (self.status_retries, self.status_retry_delay) = WAAGENT_STATUS_RETRIES;
        self.poll = Some(WAAGENT_POLL);
        self
    }

    /// Replace the time limits.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Agent {
        self.timeouts = timeouts;
        self
    }

    /// An extra variable of the agent's own environment, passed to every command. waagent merges its
    /// `os.environ` into each command's environment *last* (`env.update(os.environ)`), so these win even over
    /// the variables the agent sets itself (`ConfigSequenceNumber`, …): `SSL_CERT_FILE`, `HTTPS_PROXY`, …
    pub fn with_env(mut self, key: &str, value: &str) -> Agent {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
        self
    }

    /// How often and how far apart a missing or unparsable status file is re-read before giving up.
    pub fn with_status_retries(mut self, attempts: u32, delay: Duration) -> Agent {
        self.status_retries = attempts.max(1);
        self.status_retry_delay = delay;
        self
    }

    /// Print each step to stderr as it happens (for `make demo`).
    pub fn with_echo(mut self, echo: bool) -> Agent {
        self.echo = echo;
        self
    }

    /// The stand-in for `/var/lib/waagent`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The stand-in for `/var/log/azure`.
    pub fn log_root(&self) -> &Path {
        &self.log_root
    }

    /// The handler's log folder, `<log_root>/<name>`.
    pub fn log_dir(&self, ext: &Extension) -> PathBuf {
        self.log_root.join(&ext.name)
    }

    /// The handler's events folder, `<log_root>/<name>/events`.
    pub fn events_dir(&self, ext: &Extension) -> PathBuf {
        self.log_dir(ext).join("events")
    }

    fn say(&self, line: impl std::fmt::Display) {
        if self.echo {
            eprintln!("waagent-sim: {line}");
        }
    }

    /// Extracts a package named `<name>-<version>.zip` (version taken from the file name, as waagent takes it
    /// from the goal state) into `<root>/<name>-<version>/` the waagent way; see [`Agent::unpack_as`].
    pub fn unpack(&self, zip: &Path) -> Result<Extension> {
        let (name, version) = package_name(zip).ok_or_else(|| WaagentError::PackageName {
            zip: zip.to_path_buf(),
        })?;
        self.unpack_named(zip, &name, &version)
    }

    /// Extracts `zip` as handler [`HANDLER_NAME`] version `version`, whatever the file is called (from a copy
    /// at `<root>/<name>__<version>.zip`, deleted afterwards, as waagent deletes its download). File modes
    /// stored in the zip are not kept (files get 0666 & ~umask, as Python's `extractall` creates them); then
    /// u+x is added to every file. HandlerManifest.json is looked for anywhere in the tree (copied to the root
    /// if found deeper), parsed and validated; config/ and status/ are created 0700.
    pub fn unpack_as(&self, zip: &Path, version: &str) -> Result<Extension> {
        self.unpack_named(zip, HANDLER_NAME, version)
    }

    fn unpack_named(&self, zip: &Path, name: &str, version: &str) -> Result<Extension> {
        let dir = self.root.join(format!("{name}-{version}"));
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // waagent downloads the package to <root>/<name>__<version>.zip, extracts it and deletes it: the
        // handler never finds its zip.
        let download = self.root.join(format!("{name}__{version}.zip"));
        fs::copy(zip, &download).map_err(io_err("copy", zip))?;
        let extracted = extract_without_modes(&download, &dir);
        fs::remove_file(&download).map_err(io_err("remove", &download))?;
        extracted?;
        for file in walk_files(&dir)? {
            let meta = fs::metadata(&file).map_err(io_err("stat", &file))?;
            let mode = meta.permissions().mode() | 0o100;
            fs::set_permissions(&file, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &file))?;
        }
        let manifest_path = dir.join("HandlerManifest.json");
        if !manifest_path.is_file() {
            let found = walk_files(&dir)?
                .into_iter()
                .find(|p| p.file_name().is_some_and(|n| n == "HandlerManifest.json"))
                .ok_or_else(|| WaagentError::Manifest {
                    path: manifest_path.clone(),
                    detail: "HandlerManifest.json not found in the package".into(),
                    code: CODE_MANIFEST_NOT_FOUND,
                })?;
            fs::copy(&found, &manifest_path).map_err(io_err("copy", &found))?;
        }
        let text = fs::read_to_string(&manifest_path).map_err(|e| WaagentError::Manifest {
            path: manifest_path.clone(),
            detail: format!("cannot read: {e}"),
            code: CODE_MANIFEST_NOT_FOUND,
        })?;
        let manifest = HandlerManifest::parse(&text, &manifest_path)?;
        let ext = Extension {
            name: name.to_string(),
            version: version.to_string(),
            dir,
            manifest,
        };
        for d in [ext.config_dir(), ext.status_dir()] {
            mkdir_0700(&d)?;
        }
        self.say(format!(
            "unzipped {} into {}",
            zip.display(),
            ext.dir.display()
        ));
        for w in &ext.manifest.warnings {
            self.say(format!("HandlerManifest.json: {w}"));
        }
        Ok(ext)
    }

    /// Writes HandlerEnvironment.json as waagent does (a one-element list, schema version 1.0) with exactly
    /// [`HANDLER_ENVIRONMENT_KEYS`]; creates config/, status/, the log folder and its events folder.
    pub fn write_handler_environment(&self, ext: &Extension) -> Result<()> {
        let log_dir = self.log_dir(ext);
        fs::create_dir_all(&log_dir).map_err(io_err("create", &log_dir))?;
        for d in [ext.config_dir(), ext.status_dir(), self.events_dir(ext)] {
            mkdir_0700(&d)?;
        }
        let env = json!([{
            "name": ext.name,
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": log_dir,
                "configFolder": ext.config_dir(),
                "statusFolder": ext.status_dir(),
                "heartbeatFile": ext.heartbeat_file(),
                "eventsFolder": self.events_dir(ext),
                "eventsFolder_preview": self.events_dir(ext),
            }
        }]);
        let path = ext.handler_environment_file();
        // waagent writes it in place (not atomically); the handler must cope with a half-written file.
        fs::write(&path, env.to_string()).map_err(io_err("write", &path))?;
        self.say(format!("wrote {}", path.display()));
        Ok(())
    }

    /// Writes `config/<seq>.settings` with these public settings and protected blob (a made-up thumbprint
    /// accompanies a protected blob, as CRP always sends one).
    pub fn write_settings(
        &self,
        ext: &Extension,
        seq: u64,
        public: Option<&Value>,
        protected: Option<&str>,
    ) -> Result<()> {
        self.write_settings_as(
            ext,
            seq,
            &Settings::Handler {
                public: public.cloned(),
                protected: protected.map(str::to_string),
                thumbprint: protected
                    .map(|_| "B2C8C1BEEF0C0A30C5E4E3E8C7A1F00DBA5E0F12".to_string()),
            },
        )
    }

    /// Writes `config/<seq>.settings` with exactly this text.
    pub fn write_raw_settings(&self, ext: &Extension, seq: u64, text: &str) -> Result<()> {
        self.write_settings_as(ext, seq, &Settings::Raw(text.to_string()))
    }

    /// Writes `config/<seq>.settings` for a goal state.
    pub fn write_settings_as(&self, ext: &Extension, seq: u64, settings: &Settings) -> Result<()> {
        mkdir_0700(&ext.config_dir())?;
        let path = ext.settings_file(seq);
        fs::write(&path, settings.text()).map_err(io_err("write", &path))?;
        self.say(format!("wrote {}", path.display()));
        Ok(())
    }

    /// waagent's record of the handler's state (config/HandlerState), NotInstalled if absent.
    pub fn handler_state(&self, ext: &Extension) -> HandlerState {
        match fs::read_to_string(ext.config_dir().join("HandlerState")).as_deref() {
            Ok("Installed") => HandlerState::Installed,
            Ok("Enabled") => HandlerState::Enabled,
            Ok("FailedUpgrade") => HandlerState::FailedUpgrade,
            _ => HandlerState::NotInstalled,
        }
    }

    /// Records the handler status waagent keeps in `config/HandlerStatus` (what it reports before the
    /// heartbeat is applied).
    fn set_handler_status(
        &self,
        ext: &Extension,
        status: &str,
        code: i64,
        message: &str,
    ) -> Result<()> {
        mkdir_0700(&ext.config_dir())?;
        let path = ext.config_dir().join("HandlerStatus");
        let doc = json!({"status": status, "code": code, "message": message});
        fs::write(&path, doc.to_string()).map_err(io_err("write", &path))
    }

    /// Records what waagent records after a command: success gives `status`/`message`, failure NotReady with
    /// the failure's code and message.
    fn handler_status_after(
        &self,
        ext: &Extension,
        r: &CommandResult,
        status: &str,
        message: &str,
    ) -> Result<()> {
        if r.success() {
            self.set_handler_status(ext, status, 0, message)
        } else {
            let f = failure_of(r.verb.as_str(), r);
            self.set_handler_status(ext, "NotReady", f.code.into(), &f.message)
        }
    }

    /// The handler status waagent would report now: its own record (Ready / "Plugin enabled" after enable,
    /// NotReady / "Plugin disabled" after disable, NotReady with the failure after a failed command), then —
    /// when the manifest sets `reportHeartbeat` and the handler is installed — the heartbeat's status **and
    /// message replace it** (2.15; 2.7.3 replaces only the status), the code stays; a heartbeat older than
    /// 600 s gives `Unresponsive` (-1), a missing one NotReady "Failed to get heart beat file" (-1). `None` if
    /// waagent has no record (nothing is reported). A heartbeat the simulator rejects is an error.
    pub fn handler_status(&self, ext: &Extension) -> Result<Option<HandlerReport>> {
        let path = ext.config_dir().join("HandlerStatus");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(None);
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| WaagentError::Io {
            action: "parse",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut report = HandlerReport {
            status: doc["status"].as_str().unwrap_or_default().to_string(),
            code: doc["code"].as_i64().unwrap_or_default(),
            message: doc["message"].as_str().unwrap_or_default().to_string(),
            from_heartbeat: false,
        };
        if self.handler_state(ext) == HandlerState::NotInstalled || !ext.manifest.report_heartbeat {
            return Ok(Some(report));
        }
        if !ext.heartbeat_file().is_file() {
            report.status = "NotReady".into();
            report.code = -1;
            report.message = "Failed to get heart beat file".into();
            return Ok(Some(report));
        }
        let hb = self.read_heartbeat(ext)?;
        if hb.responsive() {
            report.status = hb.status;
            report.message = hb.message;
        } else {
            report.status = "Unresponsive".into();
            report.code = -1;
            report.message = "Extension heartbeat is not responsive".into();
        }
        report.from_heartbeat = true;
        Ok(Some(report))
    }

    fn set_handler_state(&self, ext: &Extension, state: HandlerState) -> Result<()> {
        mkdir_0700(&ext.config_dir())?;
        let path = ext.config_dir().join("HandlerState");
        fs::write(&path, state.as_str()).map_err(io_err("write", &path))
    }

    /// The agent process's own environment, which waagent merges into every command's last: PATH (as
    /// systemd gives it), the daemon's `_AZURE_GUEST_AGENT_DAEMON_VERSION_`, and every [`Agent::with_env`].
    pub fn agent_environment(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_string(), AGENT_PATH.to_string()),
            (DAEMON_VERSION_VAR.to_string(), DAEMON_VERSION.to_string()),
        ];
        for (k, v) in &self.extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Runs a manifest command the waagent way: `/bin/sh -c <ext dir>/<command>`, cwd the extension directory,
    /// a new session (so its own process group), stdin /dev/null, stdout/stderr to unlinked files in the
    /// extension directory, and the variables the agent sets: `ConfigSequenceNumber`,
    /// `AZURE_GUEST_AGENT_EXTENSION_PATH`/`_VERSION`/`_SUPPORTED_FEATURES`, `…_WIRE_PROTOCOL_ADDRESS`; for
    /// install and enable `AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE=NOT_RUN`; for update `VERSION`,
    /// `AZURE_GUEST_AGENT_UPDATING_FROM_VERSION` (this version) and `AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE=NOT_RUN`.
    /// `extra_env` adds to or overrides these, and then [`Agent::agent_environment`] overrides everything (waagent's
    /// `env.update(os.environ)`). Past the verb's time limit the whole process group is SIGKILLed.
    pub fn run(
        &self,
        ext: &Extension,
        verb: Verb,
        seq: u64,
        extra_env: &[(&str, &str)],
    ) -> Result<CommandResult> {
        let mut env: Vec<(String, String)> = vec![
            (
                "AZURE_GUEST_AGENT_EXTENSION_PATH".into(),
                ext.dir.display().to_string(),
            ),
            (
                "AZURE_GUEST_AGENT_EXTENSION_VERSION".into(),
                ext.version.clone(),
            ),
            (
                "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS".into(),
                WIRE_PROTOCOL_ADDRESS.into(),
            ),
            ("ConfigSequenceNumber".into(), seq.to_string()),
            (
                "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES".into(),
                SUPPORTED_FEATURES.into(),
            ),
        ];
        match verb {
            Verb::Install | Verb::Enable => {
                env.push((
                    "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE".into(),
                    NOT_RUN.into(),
                ));
            }
            Verb::Update => {
                env.push(("VERSION".into(), ext.version.clone()));
                env.push((
                    "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION".into(),
                    ext.version.clone(),
                ));
                env.push((
                    "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE".into(),
                    NOT_RUN.into(),
                ));
            }
            Verb::Disable | Verb::Uninstall => {}
        }
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let command = ext
            .dir
            .join(ext.manifest.command(verb).trim_start_matches('/'))
            .display()
            .to_string();
        let (mut out, mut err) = (
            anonymous_file(&ext.dir, "stdout")?,
            anonymous_file(&ext.dir, "stderr")?,
        );
        // The agent's own environment (PATH, the daemon's version variable, with_env) goes in last and wins.
        for (k, v) in self.agent_environment() {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&command)
            .current_dir(&ext.dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                out.try_clone().map_err(io_err("dup", &ext.dir))?,
            ))
            .stderr(Stdio::from(
                err.try_clone().map_err(io_err("dup", &ext.dir))?,
            ));
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.say(format!("{} {verb} (seq {seq}): {command}", ext.version));
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| WaagentError::Spawn {
            verb,
            command: command.clone(),
            source,
        })?;
        let limit = self.timeouts.for_verb(verb);
        let poll = self.poll.unwrap_or(Duration::from_millis(10));
        let (exit_code, timed_out) = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if self.poll.is_some() {
                        // waagent: "process completed or forked; sleep 1 sec to give the child a chance".
                        std::thread::sleep(WAAGENT_POLL);
                    }
                    break (
                        Some(
                            status
                                .code()
                                .unwrap_or_else(|| -status.signal().unwrap_or(0)),
                        ),
                        false,
                    );
                }
                Ok(None) => {}
                Err(e) => return Err(io_err("wait for", &ext.dir)(e)),
            }
            if started.elapsed() >= limit {
                // As waagent: SIGKILL the command's process group (its session leader's pid).
                // SAFETY: plain syscall on a pid we spawned and have not reaped.
                unsafe {
                    libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
                }
                let _ = child.wait();
                break (None, true);
            }
            std::thread::sleep(poll);
        };
        let duration = started.elapsed();
        let stdout = read_head(&mut out);
        let stderr = read_head(&mut err);
        let output = format_output(&stdout, &stderr);
        let result = CommandResult {
            verb,
            version: ext.version.clone(),
            seq,
            command,
            exit_code,
            timed_out,
            duration,
            stdout,
            stderr,
            output,
            env,
        };
        self.say(Step::Command(result.clone()));
        Ok(result)
    }

    /// Reads `status/<seq>.status` and validates it (see the module docs). A missing file gives waagent's
    /// placeholder (transitioning, code 0, `missing: true`); a missing or unparsable file is re-read a few
    /// times first, as waagent does.
    pub fn read_status(&self, ext: &Extension, seq: u64) -> Result<StatusReport> {
        let path = ext.status_file(seq);
        let mut attempt = 0;
        let (text, data) = loop {
            attempt += 1;
            let last = attempt >= self.status_retries;
            match fs::read(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if last {
                        return Ok(StatusReport {
                            missing: true,
                            version: 1.0,
                            timestamp_utc: String::new(),
                            name: ext.name.clone(),
                            operation: String::new(),
                            status: StatusValue::Transitioning,
                            code: 0,
                            lang: "en-US".into(),
                            message: format!(
                                "This status is being reported by the Guest Agent since no status file was \
                                 reported by extension {}: [ExtensionStatusError] Status file {} does not exist",
                                ext.name,
                                path.display()
                            ),
                            substatus: Vec::new(),
                            truncated: false,
                            size: 0,
                            raw: Value::Null,
                        });
                    }
                }
                Err(e) => {
                    if last {
                        return Err(io_err("read", &path)(e));
                    }
                }
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    match serde_json::from_str::<Value>(&text) {
                        Ok(data) => break (text, data),
                        Err(e) if last => {
                            return Err(WaagentError::Status {
                                path,
                                rule: StatusRule::NotJson,
                                detail: format!(
                                    "{e}; first 200 bytes: {}",
                                    text.chars().take(200).collect::<String>()
                                ),
                            });
                        }
                        Err(_) => {}
                    }
                }
            }
            std::thread::sleep(self.status_retry_delay);
        };
        let mut report = validate_status(&data, &path)?;
        report.size = text.len();
        if text.len() > MAX_STATUS_SIZE {
            report.truncated = true;
            report.message = truncate(&report.message, MAX_STATUS_MESSAGE);
            let mut size = report.message.len();
            let mut kept = Vec::new();
            for mut s in std::mem::take(&mut report.substatus) {
                s.name = truncate(&s.name, MAX_SUBSTATUS_FIELD);
                s.message = truncate(&s.message, MAX_SUBSTATUS_FIELD);
                size += s.name.len() + s.message.len();
                if size > MAX_STATUS_SIZE {
                    break;
                }
                kept.push(s);
            }
            report.substatus = kept;
        }
        Ok(report)
    }

    /// Polls [`Agent::read_status`] until `done` accepts the report or `limit` passes; returns the last
    /// report either way (the caller asserts on it). Validation errors are returned at once.
    pub fn wait_status(
        &self,
        ext: &Extension,
        seq: u64,
        limit: Duration,
        done: impl Fn(&StatusReport) -> bool,
    ) -> Result<StatusReport> {
        let quick = Agent {
            status_retries: 1,
            ..self.clone()
        };
        let started = Instant::now();
        loop {
            let report = quick.read_status(ext, seq)?;
            if done(&report) || started.elapsed() >= limit {
                return Ok(report);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads and validates the heartbeat file. An error if the manifest does not ask for heartbeats (waagent
    /// would never read it), if the file is missing, or if it is malformed. Stale files are returned with
    /// their age; [`Heartbeat::reported_status`] then says `Unresponsive`.
    pub fn read_heartbeat(&self, ext: &Extension) -> Result<Heartbeat> {
        let path = ext.heartbeat_file();
        let bad = |detail: String| WaagentError::Heartbeat {
            path: path.clone(),
            detail,
        };
        if !ext.manifest.report_heartbeat {
            return Err(bad(
                "reportHeartbeat is not true in HandlerManifest.json: waagent never reads it"
                    .into(),
            ));
        }
        let meta =
            fs::metadata(&path).map_err(|e| bad(format!("Failed to get heart beat file: {e}")))?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let text = fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let data: Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("Malformed heartbeat file: {e}")))?;
        let checker = Checker { path: &path };
        let first = checker.first_of_list(&data)?;
        let obj = checker.object(first, "[0]")?;
        let version = checker.number(checker.field(obj, "version", "")?, "version")?;
        let hb = checker.object(checker.field(obj, "heartbeat", "")?, "heartbeat")?;
        let status = checker.string(
            checker.field(hb, "status", "heartbeat")?,
            "heartbeat/status",
        )?;
        if !HEARTBEAT_VALUES.contains(&status.as_str()) {
            return Err(bad(format!(
                "heartbeat/status \"{status}\" is not one of {HEARTBEAT_VALUES:?} (exact case)"
            )));
        }
        let code = checker.integer(checker.field(hb, "code", "heartbeat")?, "heartbeat/code")?;
        let (lang, message) = checker.formatted_message(hb, "heartbeat")?;
        Ok(Heartbeat {
            version,
            status,
            code,
            lang,
            message,
            age,
        })
    }

    fn command_step(
        &self,
        seq_out: &mut Sequence,
        ext: &Extension,
        verb: Verb,
        seq: u64,
        env: &[(&str, &str)],
    ) -> Result<CommandResult> {
        let result = self.run(ext, verb, seq, env)?;
        seq_out.steps.push(Step::Command(result.clone()));
        Ok(result)
    }

    fn fail(seq_out: &mut Sequence, step: &str, result: &CommandResult) {
        seq_out.failure = Some(failure_of(step, result));
    }

    /// A fresh install: unzip → HandlerEnvironment.json → settings → install → enable. Stops at the first
    /// failing command, as waagent does.
    pub fn install_and_enable(
        &self,
        zip: &Path,
        seq: u64,
        settings: &Settings,
    ) -> Result<Sequence> {
        let ext = self.unpack(zip)?;
        self.install_and_enable_unpacked(ext, seq, settings)
    }

    /// [`Agent::install_and_enable`] for an extension already unpacked (e.g. with [`Agent::unpack_as`]).
    pub fn install_and_enable_unpacked(
        &self,
        ext: Extension,
        seq: u64,
        settings: &Settings,
    ) -> Result<Sequence> {
        let mut out = Sequence::new();
        out.steps.push(Step::Unpack {
            version: ext.version.clone(),
            dir: ext.dir.clone(),
        });
        self.set_handler_state(&ext, HandlerState::NotInstalled)?;
        self.write_handler_environment(&ext)?;
        out.steps.push(Step::HandlerEnvironment {
            version: ext.version.clone(),
        });
        self.write_settings_as(&ext, seq, settings)?;
        out.steps.push(Step::Settings {
            version: ext.version.clone(),
            seq,
        });
        let install = self.command_step(&mut out, &ext, Verb::Install, seq, &[])?;
        self.handler_status_after(
            &ext,
            &install,
            "NotReady",
            "Plugin installed but not enabled",
        )?;
        if !install.success() {
            Self::fail(&mut out, "install", &install);
            out.extension = Some(ext);
            return Ok(out);
        }
        self.set_handler_state(&ext, HandlerState::Installed)?;
        let enable = self.command_step(&mut out, &ext, Verb::Enable, seq, &[])?;
        self.handler_status_after(&ext, &enable, "Ready", "Plugin enabled")?;
        if enable.success() {
            self.set_handler_state(&ext, HandlerState::Enabled)?;
        } else {
            Self::fail(&mut out, "enable", &enable);
        }
        out.extension = Some(ext);
        Ok(out)
    }

    /// Runs enable again (waagent always rewrites the settings first: see [`Agent::apply_settings`] and
    /// [`Agent::restart`]).
    pub fn enable(&self, ext: &Extension, seq: u64) -> Result<CommandResult> {
        let result = self.run(ext, Verb::Enable, seq, &[])?;
        self.handler_status_after(ext, &result, "Ready", "Plugin enabled")?;
        if result.success() {
            self.set_handler_state(ext, HandlerState::Enabled)?;
        }
        Ok(result)
    }

    /// A new goal state with new settings: write `config/<seq>.settings`, then enable.
    pub fn apply_settings(
        &self,
        ext: &Extension,
        seq: u64,
        settings: &Settings,
    ) -> Result<CommandResult> {
        self.write_settings_as(ext, seq, settings)?;
        self.enable(ext, seq)
    }

    /// An agent restart or a reboot with the same goal state: a new agent process treats its first goal state
    /// as new, so it rewrites `config/<seq>.settings` and runs enable again (no install).
    pub fn restart(&self, ext: &Extension, seq: u64, settings: &Settings) -> Result<CommandResult> {
        self.apply_settings(ext, seq, settings)
    }

    /// A `disabled` goal state: disable, only if the handler is enabled (`None` otherwise). No settings file is
    /// written; `seq` is the goal state's own sequence number — it may be new — passed as
    /// `ConfigSequenceNumber`, so the handler's status for it is `status/<seq>.status`.
    pub fn disable(&self, ext: &Extension, seq: u64) -> Result<Option<CommandResult>> {
        if self.handler_state(ext) != HandlerState::Enabled {
            return Ok(None);
        }
        let result = self.run(ext, Verb::Disable, seq, &[])?;
        if result.success() {
            self.set_handler_state(ext, HandlerState::Installed)?;
            self.set_handler_status(ext, "NotReady", 0, "Plugin disabled")?;
        }
        Ok(Some(result))
    }

    /// Updates `old` to the package `new_zip`, in waagent's order:
    /// new unzip → new HandlerEnvironment.json → new settings → old disable (if enabled) → copy `mrseq` and
    /// `status/*` from old to new → update (the new handler's if it is the higher version, else the old one's,
    /// with `VERSION`, `…_UPDATING_FROM_VERSION`, `…_DISABLE_CMD_EXIT_CODE`) → old uninstall → delete the old
    /// directory → new install (unless updateMode says otherwise, with `…_UNINSTALL_CMD_EXIT_CODE`) → new
    /// enable. A failing old disable/uninstall stops the update unless the new manifest sets
    /// continueOnUpdateFailure; a failing update marks the new handler FailedUpgrade and stops.
    pub fn update(
        &self,
        old: &Extension,
        new_zip: &Path,
        seq: u64,
        settings: &Settings,
    ) -> Result<Sequence> {
        let new = self.unpack(new_zip)?;
        self.update_unpacked(old, new, seq, settings)
    }

    /// [`Agent::update`] for a new version already unpacked (e.g. with [`Agent::unpack_as`]).
    pub fn update_unpacked(
        &self,
        old: &Extension,
        new: Extension,
        seq: u64,
        settings: &Settings,
    ) -> Result<Sequence> {
        let mut out = Sequence::new();
        out.steps.push(Step::Unpack {
            version: new.version.clone(),
            dir: new.dir.clone(),
        });
        self.set_handler_state(&new, HandlerState::NotInstalled)?;
        self.write_handler_environment(&new)?;
        out.steps.push(Step::HandlerEnvironment {
            version: new.version.clone(),
        });
        self.write_settings_as(&new, seq, settings)?;
        out.steps.push(Step::Settings {
            version: new.version.clone(),
            seq,
        });
        let continue_on_failure = new.manifest.continue_on_update_failure;

        let mut disable_code = NOT_RUN.to_string();
        if self.handler_state(old) == HandlerState::Enabled {
            let r = self.command_step(&mut out, old, Verb::Disable, seq, &[])?;
            if r.success() {
                self.set_handler_state(old, HandlerState::Installed)?;
                disable_code = "0".into();
            } else if continue_on_failure {
                out.ignored.push(failure_of("old disable", &r));
                disable_code = r.exit_code_text();
            } else {
                out.failure = Some(Failure {
                    code: Verb::Update.error_code(),
                    ..failure_of("old disable", &r)
                });
                out.extension = Some(new);
                return Ok(out);
            }
        }

        let mut copied = Vec::new();
        if old.mrseq_file().is_file() {
            fs::copy(old.mrseq_file(), new.mrseq_file())
                .map_err(io_err("copy", &old.mrseq_file()))?;
            copy_mtime(&old.mrseq_file(), &new.mrseq_file());
            copied.push("mrseq".to_string());
        }
        if let Ok(entries) = fs::read_dir(old.status_dir()) {
            for entry in entries.flatten() {
                let from = entry.path();
                if from.is_file() {
                    let to = new.status_dir().join(entry.file_name());
                    fs::copy(&from, &to).map_err(io_err("copy", &from))?;
                    copy_mtime(&from, &to);
                    copied.push(format!("status/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
        copied.sort();
        out.steps.push(Step::CopyState {
            from: old.version.clone(),
            to: new.version.clone(),
            files: copied,
        });

        let update_env = [
            ("VERSION", new.version.as_str()),
            (
                "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION",
                old.version.as_str(),
            ),
            (
                "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE",
                disable_code.as_str(),
            ),
        ];
        let updater = if compare_versions(&new.version, &old.version) == Ordering::Greater {
            &new
        } else {
            // Downgrade: waagent runs the *old* handler's update, VERSION and UPDATING_FROM both the new version.
            old
        };
        let downgrade_env = [
            ("VERSION", new.version.as_str()),
            (
                "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION",
                new.version.as_str(),
            ),
            (
                "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE",
                disable_code.as_str(),
            ),
        ];
        let env: &[(&str, &str)] = if std::ptr::eq(updater, &new) {
            &update_env
        } else {
            &downgrade_env
        };
        let r = self.command_step(&mut out, updater, Verb::Update, seq, env)?;
        if !r.success() {
            self.set_handler_state(updater, HandlerState::FailedUpgrade)?;
            Self::fail(&mut out, "update", &r);
            out.extension = Some(new);
            return Ok(out);
        }

        let r = self.command_step(&mut out, old, Verb::Uninstall, seq, &[])?;
        let uninstall_code = if r.success() {
            "0".to_string()
        } else if continue_on_failure {
            out.ignored.push(failure_of("old uninstall", &r));
            r.exit_code_text()
        } else {
            out.failure = Some(Failure {
                code: Verb::Update.error_code(),
                ..failure_of("old uninstall", &r)
            });
            out.extension = Some(new);
            return Ok(out);
        };
        self.remove_dir(&mut out, old)?;

        let env = [(
            "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE",
            uninstall_code.as_str(),
        )];
        if new.manifest.update_mode == UpdateMode::UpdateWithInstall {
            let r = self.command_step(&mut out, &new, Verb::Install, seq, &env)?;
            if !r.success() {
                Self::fail(&mut out, "install", &r);
                out.extension = Some(new);
                return Ok(out);
            }
        }
        self.set_handler_state(&new, HandlerState::Installed)?;
        let r = self.command_step(&mut out, &new, Verb::Enable, seq, &env)?;
        self.handler_status_after(&new, &r, "Ready", "Plugin enabled")?;
        if r.success() {
            self.set_handler_state(&new, HandlerState::Enabled)?;
        } else {
            Self::fail(&mut out, "enable", &r);
        }
        out.extension = Some(new);
        Ok(out)
    }

    /// Removes the extension: disable (if enabled; a failure stops here, as in waagent) → uninstall (a failure
    /// is logged and ignored) → delete the directory.
    pub fn uninstall(&self, ext: &Extension, seq: u64) -> Result<Sequence> {
        let mut out = Sequence::new();
        if self.handler_state(ext) == HandlerState::Enabled {
            let r = self.command_step(&mut out, ext, Verb::Disable, seq, &[])?;
            if !r.success() {
                Self::fail(&mut out, "disable", &r);
                return Ok(out);
            }
            self.set_handler_state(ext, HandlerState::Installed)?;
        }
        let r = self.command_step(&mut out, ext, Verb::Uninstall, seq, &[])?;
        if !r.success() {
            out.ignored.push(failure_of("uninstall", &r));
        }
        self.remove_dir(&mut out, ext)?;
        Ok(out)
    }

    fn remove_dir(&self, out: &mut Sequence, ext: &Extension) -> Result<()> {
        match fs::remove_dir_all(&ext.dir) {
            Ok(()) => {}
            // "some extensions uninstall asynchronously": waagent ignores files vanishing under it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &ext.dir)(e)),
        }
        out.steps.push(Step::RemoveDir {
            version: ext.version.clone(),
            dir: ext.dir.clone(),
        });
        self.say(format!("removed {}", ext.dir.display()));
        Ok(())
    }
}

fn failure_of(step: &str, r: &CommandResult) -> Failure {
    let what = if r.timed_out {
        format!("Timeout({}): {}", r.duration.as_secs(), r.command)
    } else {
        format!(
            "Non-zero exit code: {}, {}",
            r.exit_code.unwrap_or(-1),
            r.command
        )
    };
    Failure {
        step: step.to_string(),
        code: r.error_code().unwrap_or(0),
        message: format!("{what}\n{}", r.output),
    }
}

/// One file to put in a zip built by [`write_zip`].
#[derive(Debug, Clone)]
pub struct ZipEntry {
    pub name: String,
    pub contents: Vec<u8>,
    /// Unix mode stored in the zip (waagent ignores it).
    pub mode: u32,
}

impl ZipEntry {
    pub fn new(name: &str, contents: impl Into<Vec<u8>>, mode: u32) -> ZipEntry {
        ZipEntry {
            name: name.to_string(),
            contents: contents.into(),
            mode,
        }
    }
}

/// Writes a deflated zip with these entries (for fake packages in tests).
pub fn write_zip(path: &Path, entries: &[ZipEntry]) -> Result<()> {
    let bad = |detail: String| WaagentError::BadZip {
        zip: path.to_path_buf(),
        detail,
    };
    let file = fs::File::create(path).map_err(io_err("create", path))?;
    let mut zip = zip::ZipWriter::new(file);
    for entry in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(entry.mode);
        zip.start_file(entry.name.as_str(), options)
            .map_err(|e| bad(e.to_string()))?;
        zip.write_all(&entry.contents)
            .map_err(io_err("write", path))?;
    }
    zip.finish().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// Copies the package `zip` to `<out_dir>/<name>-<version>.zip` with the same content, so one build can be
/// installed as two handler versions (waagent takes the version from the goal state, not from the files).
pub fn repackage(zip: &Path, out_dir: &Path, version: &str) -> Result<PathBuf> {
    let name = package_name(zip).map_or_else(|| HANDLER_NAME.to_string(), |(name, _)| name);
    let target = out_dir.join(format!("{name}-{version}.zip"));
    fs::create_dir_all(out_dir).map_err(io_err("create", out_dir))?;
    fs::copy(zip, &target).map_err(io_err("copy", zip))?;
    Ok(target)
}

/// `<name>-<version>.zip` → (name, version), by waagent's pattern `^([^-]+)-(\d+(\.\d+)*)\.zip$`.
fn package_name(zip: &Path) -> Option<(String, String)> {
    let file = zip.file_name()?.to_str()?;
    let stem = file
        .len()
        .checked_sub(4)
        .filter(|&n| file[n..].eq_ignore_ascii_case(".zip"))
        .map(|n| &file[..n])?;
    let (name, version) = stem.split_once('-')?;
    let valid = !name.is_empty()
        && !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| (name.to_string(), version.to_string()))
}

/// Numeric dotted-version comparison (missing parts count as 0).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parse(a), parse(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// Extracts like Python's `ZipFile.extractall`: regular files created with the default mode (0666 & ~umask),
/// directories 0777 & ~umask, no stored modes or symlinks kept (a symlink entry becomes a file holding its
/// target), and no path may escape `dir`.
fn extract_without_modes(zip: &Path, dir: &Path) -> Result<()> {
    let bad = |detail: String| WaagentError::BadZip {
        zip: zip.to_path_buf(),
        detail,
    };
    let file = fs::File::open(zip).map_err(io_err("open", zip))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let rel = entry.enclosed_name().ok_or_else(|| {
            bad(format!(
                "entry {:?} escapes the extension directory",
                entry.name()
            ))
        })?;
        let target = dir.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&target).map_err(io_err("create", &target))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        let mut out = fs::File::create(&target).map_err(io_err("create", &target))?;
        io::copy(&mut entry, &mut out).map_err(io_err("write", &target))?;
    }
    Ok(())
}

fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("list", &d))? {
            let entry = entry.map_err(io_err("list", &d))?;
            let kind = entry.file_type().map_err(io_err("stat", &entry.path()))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn mkdir_0700(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dir))?;
    }
    Ok(())
}

fn copy_mtime(from: &Path, to: &Path) {
    // shutil.copy2 keeps the mtime; the handler's "newest file" logic may depend on it.
    if let Ok(modified) = fs::metadata(from).and_then(|m| m.modified())
        && let Ok(f) = fs::OpenOptions::new().write(true).open(to)
    {
        let _ = f.set_modified(modified);
    }
}

static ANON_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Like Python's `tempfile.TemporaryFile(dir=…)`: a file in `dir` that is unlinked at once.
fn anonymous_file(dir: &Path, what: &str) -> Result<fs::File> {
    let n = ANON_COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let path = dir.join(format!(".waagent-sim-{}-{n}.{what}", std::process::id()));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    fs::remove_file(&path).map_err(io_err("remove", &path))?;
    Ok(file)
}

fn read_head(file: &mut fs::File) -> String {
    let mut buf = Vec::with_capacity(OUTPUT_LIMIT);
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = Read::by_ref(file)
            .take(OUTPUT_LIMIT as u64)
            .read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// waagent's `[stdout]\n…\n\n[stderr]\n…` message, cut to 3200 characters by keeping the tail of the longer
/// stream(s) and giving unused room of a short one to the other.
fn format_output(stdout: &str, stderr: &str) -> String {
    const FRAME: usize = "[stdout]\n\n\n[stderr]\n".len();
    let each = (OUTPUT_LIMIT - FRAME) / 2;
    let tail = |s: &str, n: usize| -> String {
        let chars: Vec<char> = s.chars().collect();
        chars[chars.len().saturating_sub(n)..].iter().collect()
    };
    let (o, e) = (stdout.chars().count(), stderr.chars().count());
    let (o_keep, e_keep) = if o + e < OUTPUT_LIMIT {
        (o, e)
    } else if o < each {
        (o, e.min(2 * each - o))
    } else if e < each {
        (o.min(2 * each - e), e)
    } else {
        (each, each)
    };
    format!(
        "[stdout]\n{}\n\n[stderr]\n{}",
        tail(stdout, o_keep),
        tail(stderr, e_keep)
    )
}

fn truncate(s: &str, limit: usize) -> String {
    if s.len() < limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED_SUFFIX}", &s[..end])
}

/// Validation helpers that name the failed rule and the JSON path.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn err(&self, rule: StatusRule, detail: String) -> WaagentError {
        WaagentError::Status {
            path: self.path.to_path_buf(),
            rule,
            detail,
        }
    }

    fn first_of_list<'v>(&self, data: &'v Value) -> Result<&'v Value> {
        let list = data.as_array().ok_or_else(|| {
            self.err(
                StatusRule::NotList,
                "the file must hold a JSON list (waagent: \"The extension status must be an array\")".into(),
            )
        })?;
        list.first().ok_or_else(|| {
            self.err(
                StatusRule::EmptyList,
                "the list is empty: waagent reports no status for this sequence number".into(),
            )
        })
    }

    fn object<'v>(&self, v: &'v Value, node: &str) -> Result<&'v Map<String, Value>> {
        v.as_object().ok_or_else(|| {
            self.err(
                StatusRule::WrongType,
                format!("{node} must be an object, found {v}"),
            )
        })
    }

    fn field<'v>(&self, obj: &'v Map<String, Value>, key: &str, parent: &str) -> Result<&'v Value> {
        let node = if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}/{key}")
        };
        if let Some(v) = obj.get(key) {
            return Ok(v);
        }
        if let Some(found) = obj.keys().find(|k| k.eq_ignore_ascii_case(key)) {
            return Err(self.err(
                StatusRule::WrongCaseKey,
                format!("\"{found}\" must be spelled \"{key}\" (keys are case-sensitive; waagent: Missing {node} key)"),
            ));
        }
        let waagent_needs = ["status", "status/status", "heartbeat", "heartbeat/status"];
        if waagent_needs.contains(&node.as_str()) {
            Err(self.err(StatusRule::MissingKey, format!("Missing {node} key")))
        } else {
            Err(self.err(
                StatusRule::MissingKey,
                format!(
                    "Missing {node} key (stricter than waagent, which needs only status and status/status; \
                     the portal shows {node})"
                ),
            ))
        }
    }

    fn string(&self, v: &Value, node: &str) -> Result<String> {
        v.as_str().map(str::to_string).ok_or_else(|| {
            self.err(
                StatusRule::WrongType,
                format!("{node} must be a string, found {v}"),
            )
        })
    }

    fn number(&self, v: &Value, node: &str) -> Result<f64> {
        v.as_f64().ok_or_else(|| {
            self.err(
                StatusRule::WrongType,
                format!("{node} must be a number, found {v}"),
            )
        })
    }

    fn integer(&self, v: &Value, node: &str) -> Result<i64> {
        v.as_i64().ok_or_else(|| {
            self.err(
                StatusRule::WrongType,
                format!("{node} must be an integer, found {v}"),
            )
        })
    }

    fn status_value(&self, v: &Value, node: &str, top: bool) -> Result<StatusValue> {
        let s = self.string(v, node)?;
        StatusValue::parse(&s).ok_or_else(|| {
            let consequence = if top {
                "waagent reports any other value as \"error\""
            } else {
                "waagent rejects the whole file"
            };
            self.err(
                StatusRule::BadStatusValue,
                format!("{node} is \"{s}\", not one of {STATUS_VALUES:?} exactly ({consequence})"),
            )
        })
    }

    fn formatted_message(
        &self,
        obj: &Map<String, Value>,
        parent: &str,
    ) -> Result<(String, String)> {
        let node = format!("{parent}/formattedMessage");
        let fm = self.object(self.field(obj, "formattedMessage", parent)?, &node)?;
        let lang = self.string(self.field(fm, "lang", &node)?, &format!("{node}/lang"))?;
        let message = self.string(
            self.field(fm, "message", &node)?,
            &format!("{node}/message"),
        )?;
        Ok((lang, message))
    }
}

/// waagent's status rules, plus the fields the portal shows (version, timestampUTC, name, operation, code).
fn validate_status(data: &Value, path: &Path) -> Result<StatusReport> {
    let c = Checker { path };
    let first = c.first_of_list(data)?;
    let top = c.object(first, "[0]")?;
    let version = c.number(c.field(top, "version", "")?, "version")?;
    let timestamp_utc = c.string(c.field(top, "timestampUTC", "")?, "timestampUTC")?;
    let parsed = time::OffsetDateTime::parse(
        &timestamp_utc,
        &time::format_description::well_known::Rfc3339,
    );
    if parsed.is_err() || !timestamp_utc.ends_with('Z') {
        return Err(c.err(
            StatusRule::BadTimestamp,
            format!("timestampUTC \"{timestamp_utc}\" is not an RFC 3339 UTC time like 2026-11-22T10:00:00Z"),
        ));
    }
    let st = c.object(c.field(top, "status", "")?, "status")?;
    let name = c.string(c.field(st, "name", "status")?, "status/name")?;
    let operation = c.string(c.field(st, "operation", "status")?, "status/operation")?;
    let status = c.status_value(c.field(st, "status", "status")?, "status/status", true)?;
    let code = c.integer(c.field(st, "code", "status")?, "status/code")?;
    let (lang, message) = c.formatted_message(st, "status")?;
    let mut substatus = Vec::new();
    match st.get("substatus") {
        None | Some(Value::Null) => {
            if let Some(found) = st
                .keys()
                .find(|k| k.eq_ignore_ascii_case("substatus") && *k != "substatus")
            {
                return Err(c.err(
                    StatusRule::WrongCaseKey,
                    format!("\"{found}\" must be spelled \"substatus\" (keys are case-sensitive)"),
                ));
            }
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    continue; // waagent skips null entries
                }
                let node = format!("status/substatus[{i}]");
                let s = c.object(item, &node)?;
                let sub_name = c.string(c.field(s, "name", &node)?, &format!("{node}/name"))?;
                let sub_status = c.status_value(
                    c.field(s, "status", &node)?,
                    &format!("{node}/status"),
                    false,
                )?;
                let sub_code = c.integer(c.field(s, "code", &node)?, &format!("{node}/code"))?;
                let (sub_lang, sub_message) = c.formatted_message(s, &node)?;
                substatus.push(Substatus {
                    name: sub_name,
                    status: sub_status,
                    code: sub_code,
                    lang: sub_lang,
                    message: sub_message,
                });
            }
        }
        Some(other) => {
            return Err(c.err(
                StatusRule::WrongType,
                format!("status/substatus must be a list, found {other}"),
            ));
        }
    }
    Ok(StatusReport {
        missing: false,
        version,
        timestamp_utc,
        name,
        operation,
        status,
        code,
        lang,
        message,
        substatus,
        truncated: false,
        size: 0,
        raw: data.clone(),
    })
}
