//! The `kvvm` binary: waagent runs it (through `handler`) with one verb; `enable` starts the worker, which is
//! this same binary run as `kvvm worker`. Everything else lives in the library.

use std::process::ExitCode;

use kvvm::commands::{self, Verb};
use kvvm::handler::Extension;
use kvvm::logging::{self, LogTarget};

const USAGE: &str = "\
kvvm — Azure Key Vault VM extension for Linux (Microsoft.Azure.KeyVault.KeyVaultForLinux)

Usage: kvvm <install|enable|disable|update|uninstall>   (run by waagent through `handler`)
       kvvm status                                      (what the worker last recorded, per certificate)
       kvvm worker                                      (started by `enable`; not for direct use)
       kvvm --help | --version

The extension directory is $AZURE_GUEST_AGENT_EXTENSION_PATH, else the package that holds this binary
(<dir>/bin/kvvm). Logs: the logFolder of <dir>/HandlerEnvironment.json. Status: <statusFolder>/<seq>.status.
Exit codes: 0 success, 1 failure (the message is on stdout and in the status file), 2 usage error.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(word) = args.first().map(String::as_str) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match word {
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "--version" | "-V" => {
            println!("kvvm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "worker" => run_worker(),
        "status" => show_status(),
        other => match Verb::parse(other) {
            Some(verb) => run_verb(verb),
            None => {
                eprintln!("kvvm: unknown command {other:?}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
    }
}

fn run_verb(verb: Verb) -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            println!("kvvm {verb:?} failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = LogTarget {
        folder: ext.env.log_folder.clone(),
        file_name: "handler.log",
        stderr: false,
    };
    logging::init(&target, log::LevelFilter::Info, None);
    match commands::run(verb, &ext) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{verb:?} failed [{}]: {e}", e.reason());
            println!("kvvm {verb:?} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_worker() -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!("kvvm worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = LogTarget {
        folder: ext.env.log_folder.clone(),
        file_name: "kvvm.log",
        stderr: false,
    };
    // loggingSettings apply from the worker's start (a change is picked up when the worker next starts).
    let fluentd = kvvm::worker::logging_settings(&ext).map(|l| {
        let config = kvvm::fluentd::FluentdConfig {
            host: l.endpoint_host,
            port: l.endpoint_port,
            tag: l.service_name,
        };
        Box::new(kvvm::fluentd::FluentdLogger::start(
            config,
            log::LevelFilter::Info,
        )) as Box<dyn simplelog::SharedLogger>
    });
    logging::init(&target, log::LevelFilter::Info, fluentd);
    match kvvm::worker::run(&ext) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("worker failed [{}]: {e}", e.reason());
            ExitCode::FAILURE
        }
    }
}

/// `kvvm status`: what the worker recorded about each certificate, for an operator on the VM.
fn show_status() -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!("kvvm status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = ext.data_dir();
    let path = kvvm::state::WorkerState::path(&dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<kvvm::state::WorkerState>(&bytes) {
            Ok(state) => {
                let running = kvvm::supervisor::Supervisor::new(&dir).state();
                print!("{}", state.render());
                if let Ok(kvvm::supervisor::WorkerState::Stopped) = running {
                    println!(
                        "\n(the worker is not running: this is what it recorded last; run enable to start it)"
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "kvvm status: {} is not a worker state file ({e})",
                    path.display()
                );
                ExitCode::FAILURE
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "kvvm status: {} is readable by root only (waagent's folders are private): run `sudo {} status`",
                path.display(),
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "kvvm".into())
            );
            ExitCode::FAILURE
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "kvvm status: no worker has recorded anything yet ({} is missing): is the extension enabled?",
                path.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kvvm status: cannot read {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
