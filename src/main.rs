//! The `kvvm` binary: waagent runs it (through `handler`) with one verb; `enable` starts the worker, which is
//! this same binary run as `kvvm worker`. This file only parses the command line, runs the command (all of it
//! library code, `kvvm::commands`) and reports a failure the way its caller reads it, in one place.

use std::ffi::OsString;
use std::process::ExitCode;

use kvvm::WorkerError;
use kvvm::commands::{self, CommandError, Output, Verb};

const USAGE: &str = "\
kvvm — Azure Key Vault VM extension for Linux (Microsoft.Azure.KeyVault.KeyVaultForLinux)

Usage: kvvm <install|enable|disable|update|uninstall>   (run by waagent through `handler`)
       kvvm status [--json]                             (what the worker last recorded, per certificate;
                                                         --json: for scripts, exit 1 if anything needs attention)
       kvvm sync --once                                 (one full poll cycle in the foreground, for debugging)
       kvvm worker                                      (started by `enable`: the supervisor; not for direct use)
       kvvm poller                                      (started by the worker; not for direct use)
       kvvm --help | --version

The extension directory is $AZURE_GUEST_AGENT_EXTENSION_PATH, else the package that holds this binary
(<dir>/bin/kvvm). Logs: the logFolder of <dir>/HandlerEnvironment.json. Status: <statusFolder>/<seq>.status.
Exit codes: 0 success, 1 failure (the message is on stdout and in the status file), 2 usage error.";

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)).and_then(run) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// `--help`: the usage on stdout.
    Help,
    /// `--version`: the version and the architecture of this build.
    Version,
    /// A waagent verb.
    Verb(Verb),
    /// `worker`: the supervisor.
    Worker,
    /// `poller`: the poller the supervisor runs.
    Poller,
    /// `status [--json]`.
    Status { json: bool },
    /// `sync --once`.
    SyncOnce,
}

/// Parses the command line. `lexopt`, not `clap`: it has no dependencies and adds a few KiB, where clap would
/// add hundreds to a package that holds two builds and must stay within 3 MiB. The first word is the command;
/// after a waagent verb, `worker`, `poller`, `--help` or `--version`, further words are ignored (as they always
/// were: waagent passes none).
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Failure> {
    use lexopt::Arg::{Long, Value};
    let args: Vec<OsString> = args.into_iter().collect();
    // lexopt reads `--` as the end of options and drops it; kvvm has no use for it, so it stays a word: an
    // unknown command first, a wrong option after `status` or `sync`.
    let dashes_after_first = args.iter().skip(1).any(|a| a == "--");
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
    let command = match word.as_str() {
        "--help" | "-h" | "help" => Command::Help,
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
                None => {
                    return Err(Failure::Usage {
                        problem: Some("kvvm status: the only option is --json".into()),
                    });
                }
            }
        }
        "sync" => {
            let once = matches!(parser.next(), Ok(Some(Long("once"))));
            if !(once && matches!(parser.next(), Ok(None))) || dashes_after_first {
                return Err(Failure::Usage {
                    problem: Some(
                        "kvvm sync: give --once (one poll cycle in the foreground)".into(),
                    ),
                });
            }
            Command::SyncOnce
        }
        other => match Verb::parse(other) {
            Some(verb) => Command::Verb(verb),
            None => {
                return Err(Failure::Usage {
                    problem: Some(format!("kvvm: unknown command {other:?}")),
                });
            }
        },
    };
    Ok(command)
}

/// Runs the command; its exit code when it ran to the end.
fn run(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Help => println!("{USAGE}"),
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
        Command::Status { json } => {
            let output = commands::status(json).map_err(|error| Failure::Operator {
                command: "status",
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
            (&["--help"][..], Help),
            (&["-h"], Help),
            (&["help"], Help),
            (&["--version"], Version),
            (&["-V"], Version),
            (&["enable"], Verb(commands::Verb::Enable)),
            (&["uninstall", "ignored"], Verb(commands::Verb::Uninstall)),
            (&["worker"], Worker),
            (&["poller"], Poller),
            (&["status"], Status { json: false }),
            (&["status", "--json"], Status { json: true }),
            (&["sync", "--once"], SyncOnce),
        ] {
            assert_eq!(parsed(args), Ok(command), "{args:?}");
        }
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let status = Some("kvvm status: the only option is --json".to_string());
        let sync = Some("kvvm sync: give --once (one poll cycle in the foreground)".to_string());
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
        ] {
            assert_eq!(parsed(args), Err(problem), "{args:?}");
        }
    }
}
