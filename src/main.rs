//! The `kvvm` binary: waagent runs it (through `handler`) with one verb; `enable` starts the worker, which is
//! this same binary run as `kvvm worker`. This file only parses the command line, runs the command (all of it
//! library code, `kvvm::commands`) and reports a failure the way its caller reads it, in one place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kvvm::WorkerError;
use kvvm::commands::{self, CommandError, Output, Verb};

const USAGE: &str = "\
kvvm — Azure Key Vault VM extension for Linux (Microsoft.Azure.KeyVault.KeyVaultForLinux), and the same as a
standalone service

Usage: kvvm <install|enable|disable|update|uninstall>   (run by waagent through `handler`)
       kvvm service [--settings FILE] [--state-dir DIR] [--log-dir DIR]
                                                        (the standalone service: systemd runs it, kvvm.service)
       kvvm check-settings [FILE]                       (validate settings without running anything)
       kvvm status [--json]                             (what the worker last recorded, per certificate)
       kvvm wait [--timeout SECONDS]                    (until the worker is ready: for install scripts)
       kvvm sync --once                                 (one full poll cycle in the foreground, for debugging)
       kvvm vmapp <install CONFIG|update CONFIG|remove> [--timeout SECONDS]
                                                        (Windows: the VM Application's manage actions)
       kvvm worker | kvvm poller                        (started by enable / by the worker; not for direct use)
       kvvm --help | --version
       kvvm <command> --help                            (that command's own help)

As an extension (AZURE_GUEST_AGENT_EXTENSION_PATH is set, or this binary is <dir>/bin/kvvm of an unpacked
package): logs in the logFolder of <dir>/HandlerEnvironment.json, status in <statusFolder>/<seq>.status.
Otherwise (/usr/bin/kvvm): the service's files, /etc/kvvm/settings.json, /var/lib/kvvm and /var/log/kvvm
(KVVM_SETTINGS, KVVM_STATE_DIR and KVVM_LOG_DIR move them).
Exit codes: 0 success, 1 failure (the message is on stdout for waagent's verbs, stderr otherwise), 2 usage
error, 78 (kvvm service) settings missing or invalid.";

const HELP_VERB: &str = "\
kvvm install | enable | disable | update | uninstall — the verbs of HandlerManifest.json

waagent runs them through <extension dir>/handler with ConfigSequenceNumber set:
  install    checks the environment
  enable     validates config/<seq>.settings, then starts the worker or hands it the new settings (SIGHUP)
  disable    stops the worker (SIGTERM, then SIGKILL after 10 s)
  update     nothing to migrate: the worker's state lives beside the versioned directories
  uninstall  stops the worker; removes kvvm's state folder when no other version is installed
Installed certificates always stay. Each verb writes <statusFolder>/<seq>.status and prints one line, which
waagent reports. Exit 0 on success, 1 on failure.";

const HELP_SERVICE: &str = "\
kvvm service [--settings FILE] [--state-dir DIR] [--log-dir DIR] — the standalone service

Runs the worker's supervisor in the foreground, as systemd's kvvm.service does: it keeps one poller running
(restarting it after a crash, with back-off) until SIGTERM; SIGHUP (`systemctl reload kvvm`) applies the
settings file again without a restart.
  --settings FILE    the extension's public settings JSON (v1 or v3, as given to KeyVaultForLinux), or a whole
                     waagent settings file; default $KVVM_SETTINGS or /etc/kvvm/settings.json. `{}` or an empty
                     file: nothing to watch yet (the service waits for a reload)
  --state-dir DIR    locks, state.json, status.json, heartbeat.json; default $KVVM_STATE_DIR or /var/lib/kvvm
  --log-dir DIR      supervisor.log and kvvm.log (also in the journal under systemd); default $KVVM_LOG_DIR or
                     /var/log/kvvm
Exits 78 at once when the settings file is missing or invalid (the message says which setting and how to fix
it); kvvm.service does not restart it then (RestartPreventExitStatus=78).";

const HELP_CHECK: &str = "\
kvvm check-settings [FILE] — validate settings without running anything

FILE is the extension's public settings JSON (what `az vm extension set --settings` takes, v1 or v3), or a
whole waagent settings file (config/<n>.settings); default $KVVM_SETTINGS or /etc/kvvm/settings.json.
Prints the number of observed certificates and every warning (exit 0), or the same error enable and the
service give, naming the setting, the bad value and the fix (exit 1). kvvm.service runs it before a reload,
so `systemctl reload kvvm` fails and the running worker keeps its settings when the new ones are invalid.";

const HELP_STATUS: &str = "\
kvvm status [--json] — what the worker last recorded, per certificate

Reads state.json in kvvm's state folder (the extension's, or /var/lib/kvvm for the service) and says whether a
worker runs. --json prints one JSON document for scripts (schemaVersion 1; see the README) and exits 1 when
anything needs attention: a failed or warned certificate, polling that cannot keep up, or no worker running.";

const HELP_WAIT: &str = "\
kvvm wait [--timeout SECONDS] — wait until the worker is ready

For install scripts: returns once a worker runs and, when its settings set requireInitialSync, every
certificate is installed (exit 0, with one line on where it stands). Exits 1 when the initial sync failed
after its attempts, when the settings observe nothing, or when SECONDS (default 600) pass first, saying where
the worker stood.";

const HELP_SYNC: &str = "\
kvvm sync --once — one full poll cycle in the foreground

Checks every certificate of the current settings once, installs what is new and runs post-install commands,
printing one OK / WARNING / FAILED line per certificate; logs go to stderr and kvvm-sync.log. Exit 1 if any
certificate failed. For debugging access, DNS or proxy problems on a machine.";

const HELP_WORKER: &str = "\
kvvm worker — the supervisor that enable starts (not for direct use)

Holds the worker lock and keeps one `kvvm poller` running, restarting it when it ends. Started detached by
enable, in its own session; `kvvm service` runs the same supervisor in the foreground.";

const HELP_POLLER: &str = "\
kvvm poller — the process that talks to the identity endpoint and Key Vault (not for direct use)

Started by the supervisor; installs certificates and writes the status, state.json, the heartbeat and the
metrics. Ends on SIGTERM; SIGHUP re-reads the settings.";

const HELP_VMAPP: &str = "\
kvvm vmapp install CONFIG | update CONFIG | remove [--timeout SECONDS] — the Windows VM Application's actions

The package of the Windows VM Application (Azure Compute Gallery) is kvvm.exe itself; its manage actions are
`kvvm.exe vmapp install kvvm-settings.json`, `… update kvvm-settings.json` and `… remove`, run by the VM
Application manager in the version's download folder.
  install, update  check CONFIG (the extension's public settings JSON; nothing changes when it is invalid), copy
                   kvvm.exe to %ProgramFiles%\\kvvm\\<version>\\, make CONFIG the service's settings file
                   ($KVVM_SETTINGS or C:\\ProgramData\\kvvm\\settings.json), register the Windows service kvvm
                   (`kvvm.exe service`, started at boot, restarted after a crash) and start it, or have it reload;
                   then wait, as `kvvm wait` does, at most SECONDS (default 900)
  remove           stop and delete the service; remove the program, its settings, state and logs
Installed certificates always stay. The KeyVaultForWindows extension's worker is the same service: install
refuses to take over the extension's. On Linux the VM Application is kvvm/vmapp.sh instead.";

/// Default `kvvm vmapp --timeout`.
const VMAPP_TIMEOUT_S: u64 = 900;

/// Default `kvvm wait --timeout`.
const WAIT_TIMEOUT_S: u64 = 600;

/// The exit code of `kvvm service` when its settings are missing or invalid (sysexits' EX_CONFIG).
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)).and_then(run) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// `--help`, or `<command> --help`: that help on stdout.
    Help(&'static str),
    /// `--version`: the version and the architecture of this build.
    Version,
    /// A waagent verb.
    Verb(Verb),
    /// `worker`: the supervisor.
    Worker,
    /// `poller`: the poller the supervisor runs.
    Poller,
    /// `service [options]`: the standalone service.
    Service(kvvm::Service),
    /// `check-settings [FILE]`.
    CheckSettings(Option<PathBuf>),
    /// `status [--json]`.
    Status { json: bool },
    /// `wait [--timeout SECONDS]`.
    Wait(Duration),
    /// `sync --once`.
    SyncOnce,
    /// `vmapp <action> [--timeout SECONDS]`.
    VmApp(commands::VmAppAction, Duration),
}

fn usage(problem: impl Into<String>) -> Failure {
    Failure::Usage {
        problem: Some(problem.into()),
    }
}

/// Parses the command line. `lexopt`, not `clap`: it has no dependencies and adds a few KiB, where clap would
/// add hundreds to a package that holds two builds and must stay within 3 MiB. The first word is the command;
/// after a waagent verb, `worker` or `poller`, further words are ignored (as they always were: waagent passes
/// none) — but `--help` right after any command asks for its help.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Failure> {
    use lexopt::Arg::{Long, Short, Value};
    let args: Vec<OsString> = args.into_iter().collect();
    // lexopt reads `--` as the end of options and drops it; kvvm has no use for it, so it stays a word: an
    // unknown command first, a wrong option after the commands that take options.
    let dashes_after_first = args.iter().skip(1).any(|a| a == "--");
    let asks_help = matches!(args.get(1).and_then(|a| a.to_str()), Some("--help" | "-h"));
    let mut parser = lexopt::Parser::from_args(args);
    // The first word as given: lexopt splits an option such as `-xy` or `--x=y`, and the message names it whole.
    let first = parser
        .raw_args()
        .ok()
        .and_then(|raw| raw.peek().map(|w| w.to_string_lossy().into_owned()));
    let word = match parser.next() {
        _ if first.as_deref() == Some("--") => "--".to_owned(),
        Ok(None) => return Err(Failure::Usage { problem: None }),
        Ok(Some(Value(word))) => word.to_string_lossy().into_owned(),
        Ok(Some(_)) | Err(_) => first.unwrap_or_default(),
    };
    let help = match word.as_str() {
        "worker" => Some(HELP_WORKER),
        "poller" => Some(HELP_POLLER),
        "service" => Some(HELP_SERVICE),
        "check-settings" => Some(HELP_CHECK),
        "status" => Some(HELP_STATUS),
        "wait" => Some(HELP_WAIT),
        "sync" => Some(HELP_SYNC),
        "vmapp" => Some(HELP_VMAPP),
        other if Verb::parse(other).is_some() => Some(HELP_VERB),
        _ => None,
    };
    if let Some(help) = help.filter(|_| asks_help) {
        return Ok(Command::Help(help));
    }
    let command = match word.as_str() {
        "--help" | "-h" | "help" => Command::Help(USAGE),
        "--version" | "-V" => Command::Version,
        "worker" => Command::Worker,
        "poller" => Command::Poller,
        "status" => {
            let json = match parser.next() {
                Ok(None) => Some(false),
                Ok(Some(Long("json"))) => Some(true),
                _ => None,
            };
            match json
                .filter(|&json| !json || matches!(parser.next(), Ok(None)))
                .filter(|_| !dashes_after_first)
            {
                Some(json) => Command::Status { json },
                None => return Err(usage("kvvm status: the only option is --json")),
            }
        }
        "sync" => {
            let once = matches!(parser.next(), Ok(Some(Long("once"))));
            if !(once && matches!(parser.next(), Ok(None))) || dashes_after_first {
                return Err(usage(
                    "kvvm sync: give --once (one poll cycle in the foreground)",
                ));
            }
            Command::SyncOnce
        }
        "service" => {
            let wrong = || {
                usage(
                    "kvvm service: the options are --settings FILE, --state-dir DIR and --log-dir DIR \
                     (see kvvm service --help)",
                )
            };
            if dashes_after_first {
                return Err(wrong());
            }
            let mut files = kvvm::Service::from_env();
            loop {
                let slot = match parser.next() {
                    Ok(None) => break,
                    Ok(Some(Long("settings"))) => &mut files.settings_file,
                    Ok(Some(Long("state-dir"))) => &mut files.state_dir,
                    Ok(Some(Long("log-dir"))) => &mut files.log_dir,
                    _ => return Err(wrong()),
                };
                match parser.value() {
                    Ok(value) if !value.is_empty() => *slot = PathBuf::from(value),
                    _ => return Err(wrong()),
                }
            }
            Command::Service(files)
        }
        "check-settings" => {
            let file = match parser.next() {
                Ok(None) => None,
                Ok(Some(Value(file))) if !dashes_after_first => Some(PathBuf::from(file)),
                _ => {
                    return Err(usage(
                        "kvvm check-settings: give at most one settings file (see kvvm check-settings --help)",
                    ));
                }
            };
            if !matches!(parser.next(), Ok(None)) {
                return Err(usage(
                    "kvvm check-settings: give at most one settings file (see kvvm check-settings --help)",
                ));
            }
            Command::CheckSettings(file)
        }
        "wait" => {
            let wrong =
                || usage("kvvm wait: the only option is --timeout SECONDS (a whole number)");
            let mut timeout = Duration::from_secs(WAIT_TIMEOUT_S);
            loop {
                match parser.next() {
                    Ok(None) => break,
                    Ok(Some(Long("timeout"))) => {
                        timeout = seconds(&mut parser).ok_or_else(wrong)?;
                    }
                    Ok(Some(Short(_) | Long(_) | Value(_))) | Err(_) => return Err(wrong()),
                }
            }
            if dashes_after_first {
                return Err(wrong());
            }
            Command::Wait(timeout)
        }
        "vmapp" => {
            let wrong = || {
                usage(
                    "kvvm vmapp: give install CONFIG, update CONFIG or remove, then at most --timeout SECONDS \
                     (see kvvm vmapp --help)",
                )
            };
            if dashes_after_first {
                return Err(wrong());
            }
            let mut words = Vec::new();
            let mut timeout = Duration::from_secs(VMAPP_TIMEOUT_S);
            loop {
                match parser.next() {
                    Ok(None) => break,
                    Ok(Some(Value(word))) => words.push(word),
                    Ok(Some(Long("timeout"))) => {
                        timeout = seconds(&mut parser).ok_or_else(wrong)?;
                    }
                    Ok(Some(_)) | Err(_) => return Err(wrong()),
                }
            }
            let action = match words.as_slice() {
                [action, config] if action == "install" && !config.is_empty() => {
                    commands::VmAppAction::Install(PathBuf::from(config))
                }
                [action, config] if action == "update" && !config.is_empty() => {
                    commands::VmAppAction::Update(PathBuf::from(config))
                }
                [action] if action == "remove" => commands::VmAppAction::Remove,
                _ => return Err(wrong()),
            };
            Command::VmApp(action, timeout)
        }
        other => match Verb::parse(other) {
            Some(verb) => Command::Verb(verb),
            None => return Err(usage(format!("kvvm: unknown command {other:?}"))),
        },
    };
    Ok(command)
}

/// The value of a `--timeout SECONDS` option: a whole number of seconds.
fn seconds(parser: &mut lexopt::Parser) -> Option<Duration> {
    let value = parser.value().ok()?.into_string().ok()?;
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// Runs the command; its exit code when it ran to the end.
fn run(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Help(text) => println!("{text}"),
        // The architecture tells which of the package's builds ran (bin/kvvm picks it by `uname -m`).
        Command::Version => println!(
            "kvvm {} ({})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        ),
        Command::Verb(verb) => {
            let message = commands::verb(verb).map_err(|error| Failure::Verb { verb, error })?;
            println!("{message}");
        }
        Command::Worker => commands::supervise().map_err(|error| Failure::Worker { error })?,
        Command::Poller => commands::poller().map_err(|error| Failure::Poller { error })?,
        Command::Service(files) => {
            commands::service(files).map_err(|error| Failure::Service { error })?
        }
        Command::CheckSettings(file) => {
            let output = commands::check_settings(file).map_err(|error| Failure::Operator {
                command: "check-settings",
                error,
            })?;
            return Ok(print(output));
        }
        Command::Status { json } => {
            let output = commands::status(json).map_err(|error| Failure::Operator {
                command: "status",
                error,
            })?;
            return Ok(print(output));
        }
        Command::Wait(timeout) => {
            let output = commands::wait(timeout).map_err(|error| Failure::Operator {
                command: "wait",
                error,
            })?;
            return Ok(print(output));
        }
        Command::VmApp(action, timeout) => {
            let output = commands::vmapp(action, timeout, |line| println!("kvvm vmapp: {line}"))
                .map_err(|error| Failure::Operator {
                    command: "vmapp",
                    error,
                })?;
            return Ok(print(output));
        }
        Command::SyncOnce => {
            let output = commands::sync_once().map_err(|error| Failure::Operator {
                command: "sync",
                error,
            })?;
            return Ok(print(output));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an operator command's output; exit 1 when something needs attention.
fn print(output: Output) -> ExitCode {
    print!("{}", output.text);
    if output.attention {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Why `kvvm` exits non-zero: each is reported where its caller reads it.
#[derive(Debug)]
enum Failure {
    /// The command line is wrong: the problem and the usage on stderr, exit 2.
    Usage { problem: Option<String> },
    /// A waagent verb failed: exit 1, the message on stdout (waagent shows it) and in `handler.log`.
    Verb { verb: Verb, error: CommandError },
    /// The supervisor ended on an error: exit 1, in `supervisor.log` and on its stderr (`worker.stderr.log`).
    Worker { error: CommandError },
    /// The poller ended on an error: exit 1, in `kvvm.log` and on stderr, the line its supervisor quotes in the
    /// status.
    Poller { error: WorkerError },
    /// The service ended on an error: on stderr (the journal) and in `supervisor.log`; exit 78 when its settings
    /// are missing or invalid (systemd does not restart it for that), else 1.
    Service { error: CommandError },
    /// `status` or `sync` failed: exit 1, the message on stderr.
    Operator {
        /// The command's name, which starts the message.
        command: &'static str,
        /// What went wrong.
        error: CommandError,
    },
}

impl Failure {
    /// The one error exit. (Before a command has started its log, logging is a no-op.)
    fn report(self) -> ExitCode {
        match self {
            Failure::Usage { problem: None } => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
            Failure::Usage {
                problem: Some(problem),
            } => {
                eprintln!("{problem}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            Failure::Verb { verb, error } => {
                log::error!("{verb:?} failed [{}]: {error}", error.reason());
                println!("kvvm {verb:?} failed: {error}");
            }
            Failure::Worker { error } => {
                log::error!("worker failed [{}]: {error}", error.reason());
                eprintln!("kvvm worker: {error}");
            }
            Failure::Poller { error } => {
                log::error!("poller failed [{}]: {error}", error.reason());
                log::logger().flush();
                eprintln!(
                    "{} (pid {}): [{}] {error}",
                    kvvm::FAILURE_MARK,
                    std::process::id(),
                    error.reason()
                );
            }
            Failure::Service { error } => {
                eprintln!("kvvm service: [{}] {error}", error.reason());
                if matches!(error, CommandError::ServiceSettings(_)) {
                    return ExitCode::from(EX_CONFIG);
                }
            }
            Failure::Operator { command, error } => eprintln!("kvvm {command}: {error}"),
        }
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, Option<String>> {
        parse(args.iter().map(OsString::from)).map_err(|failure| match failure {
            Failure::Usage { problem } => problem,
            other => panic!("not a usage error: {other:?}"),
        })
    }

    #[test]
    fn the_first_word_is_the_command() {
        use Command::*;
        for (args, command) in [
            (&["--help"][..], Help(USAGE)),
            (&["-h"], Help(USAGE)),
            (&["help"], Help(USAGE)),
            (&["--version"], Version),
            (&["-V"], Version),
            (&["enable"], Verb(commands::Verb::Enable)),
            (&["uninstall", "ignored"], Verb(commands::Verb::Uninstall)),
            (&["worker"], Worker),
            (&["poller"], Poller),
            (&["status"], Status { json: false }),
            (&["status", "--json"], Status { json: true }),
            (&["sync", "--once"], SyncOnce),
            (&["check-settings"], CheckSettings(None)),
            (
                &["check-settings", "/tmp/s.json"],
                CheckSettings(Some(PathBuf::from("/tmp/s.json"))),
            ),
            (&["wait"], Wait(Duration::from_secs(WAIT_TIMEOUT_S))),
            (&["wait", "--timeout", "30"], Wait(Duration::from_secs(30))),
            (&["wait", "--timeout=5"], Wait(Duration::from_secs(5))),
            (
                &["vmapp", "install", "kvvm-settings.json"],
                VmApp(
                    commands::VmAppAction::Install(PathBuf::from("kvvm-settings.json")),
                    Duration::from_secs(VMAPP_TIMEOUT_S),
                ),
            ),
            (
                &["vmapp", "update", "c.json", "--timeout", "60"],
                VmApp(
                    commands::VmAppAction::Update(PathBuf::from("c.json")),
                    Duration::from_secs(60),
                ),
            ),
            (
                &["vmapp", "remove"],
                VmApp(
                    commands::VmAppAction::Remove,
                    Duration::from_secs(VMAPP_TIMEOUT_S),
                ),
            ),
        ] {
            assert_eq!(parsed(args), Ok(command), "{args:?}");
        }
    }

    #[test]
    fn every_command_answers_help_with_its_own() {
        for (command, help) in [
            ("install", HELP_VERB),
            ("enable", HELP_VERB),
            ("disable", HELP_VERB),
            ("update", HELP_VERB),
            ("uninstall", HELP_VERB),
            ("service", HELP_SERVICE),
            ("check-settings", HELP_CHECK),
            ("status", HELP_STATUS),
            ("wait", HELP_WAIT),
            ("sync", HELP_SYNC),
            ("worker", HELP_WORKER),
            ("poller", HELP_POLLER),
            ("vmapp", HELP_VMAPP),
        ] {
            for flag in ["--help", "-h"] {
                assert_eq!(
                    parsed(&[command, flag]),
                    Ok(Command::Help(help)),
                    "{command} {flag}"
                );
            }
            let first = help.lines().next().unwrap();
            assert!(first.starts_with("kvvm "), "{first}");
            assert!(
                first.contains(command) || command_is_a_verb(command),
                "{command}: {first}"
            );
        }
    }

    fn command_is_a_verb(command: &str) -> bool {
        commands::Verb::parse(command).is_some()
    }

    #[test]
    fn service_takes_its_files_from_options_over_the_environment() {
        let Ok(Command::Service(files)) = parsed(&[
            "service",
            "--settings",
            "/srv/kvvm.json",
            "--state-dir=/srv/state",
            "--log-dir",
            "/srv/log",
        ]) else {
            panic!("not a service command");
        };
        assert_eq!(files.settings_file, PathBuf::from("/srv/kvvm.json"));
        assert_eq!(files.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(files.log_dir, PathBuf::from("/srv/log"));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let status = Some("kvvm status: the only option is --json".to_string());
        let sync = Some("kvvm sync: give --once (one poll cycle in the foreground)".to_string());
        let service = Some(
            "kvvm service: the options are --settings FILE, --state-dir DIR and --log-dir DIR (see kvvm \
             service --help)"
                .to_string(),
        );
        let check = Some(
            "kvvm check-settings: give at most one settings file (see kvvm check-settings --help)"
                .to_string(),
        );
        let wait =
            Some("kvvm wait: the only option is --timeout SECONDS (a whole number)".to_string());
        let vmapp = Some(
            "kvvm vmapp: give install CONFIG, update CONFIG or remove, then at most --timeout SECONDS (see \
             kvvm vmapp --help)"
                .to_string(),
        );
        for (args, problem) in [
            (&[][..], None),
            (
                &["frobnicate"],
                Some(r#"kvvm: unknown command "frobnicate""#.into()),
            ),
            (
                &["--frob=nicate"],
                Some(r#"kvvm: unknown command "--frob=nicate""#.into()),
            ),
            (&["-hx"], Some(r#"kvvm: unknown command "-hx""#.into())),
            (&["--"], Some(r#"kvvm: unknown command "--""#.into())),
            (
                &["--", "enable"],
                Some(r#"kvvm: unknown command "--""#.into()),
            ),
            (&["status", "--"], status.clone()),
            (&["status", "--", "--json"], status.clone()),
            (&["sync", "--once", "--"], sync.clone()),
            (&["status", "--yaml"], status.clone()),
            (&["status", "--json", "--json"], status.clone()),
            (&["status", "--json=yes"], status.clone()),
            (&["status", "json"], status),
            (&["sync"], sync.clone()),
            (&["sync", "--once", "x"], sync.clone()),
            (&["sync", "--twice"], sync),
            (&["service", "--settings"], service.clone()),
            (&["service", "--settings="], service.clone()),
            (&["service", "--stat-dir", "/x"], service.clone()),
            (&["service", "extra"], service),
            (&["check-settings", "a", "b"], check.clone()),
            (&["check-settings", "--json"], check),
            (&["wait", "--timeout"], wait.clone()),
            (&["wait", "--timeout", "soon"], wait.clone()),
            (&["wait", "30"], wait),
            (&["vmapp"], vmapp.clone()),
            (&["vmapp", "install"], vmapp.clone()),
            (&["vmapp", "remove", "c.json"], vmapp.clone()),
            (&["vmapp", "reinstall", "c.json"], vmapp.clone()),
            (
                &["vmapp", "install", "c.json", "--timeout", "soon"],
                vmapp.clone(),
            ),
            (&["vmapp", "install", "c.json", "--json"], vmapp),
        ] {
            assert_eq!(parsed(args), Err(problem), "{args:?}");
        }
    }
}
