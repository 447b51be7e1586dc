//! The `kvvm` binary: waagent runs it (through `handler`) with one verb; `enable` starts the worker, which is
//! this same binary run as `kvvm worker`. Everything else lives in the library.

use std::process::ExitCode;

use kvvm::Extension;
use kvvm::commands::{self, Verb};
use kvvm::{LogTarget, init_logging};

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
            // The architecture tells which of the package's builds ran (bin/kvvm picks it by `uname -m`).
            println!(
                "kvvm {} ({})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            );
            ExitCode::SUCCESS
        }
        "worker" => run_supervisor(),
        "poller" => run_poller(),
        "status" if args.len() == 1 => show_status(false),
        "status" if args.len() == 2 && args[1] == "--json" => show_status(true),
        "status" => {
            eprintln!("kvvm status: the only option is --json\n\n{USAGE}");
            ExitCode::from(2)
        }
        "sync" if args.get(1).map(String::as_str) == Some("--once") && args.len() == 2 => {
            sync_once()
        }
        "sync" => {
            eprintln!("kvvm sync: give --once (one poll cycle in the foreground)\n\n{USAGE}");
            ExitCode::from(2)
        }
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
    init_logging(&target, log::LevelFilter::Info, None);
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

/// `kvvm worker`: the supervisor `enable` starts. It holds the worker lock and keeps one poller running.
fn run_supervisor() -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!("kvvm worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = LogTarget {
        folder: ext.env.log_folder.clone(),
        file_name: "supervisor.log",
        stderr: false,
    };
    init_logging(&target, log::LevelFilter::Info, None);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            log::error!("worker failed: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sup = kvvm::Supervisor::new(ext.data_dir());
    let report = kvvm::RestartReport { ext: &ext };
    match kvvm::supervise(&sup, &exe, &ext.dir, &ext.env.heartbeat_file, &report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("worker failed [{}]: {e}", e.reason());
            ExitCode::FAILURE
        }
    }
}

/// `kvvm poller`: polls the vaults and installs certificates, until SIGTERM.
fn run_poller() -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!(
                "{} (pid {}): [{}] {e}",
                kvvm::FAILURE_MARK,
                std::process::id(),
                e.reason()
            );
            return ExitCode::FAILURE;
        }
    };
    let target = LogTarget {
        folder: ext.env.log_folder.clone(),
        file_name: "kvvm.log",
        stderr: false,
    };
    // loggingSettings apply from the poller's start (a change restarts the worker).
    let fluentd = kvvm::logging_settings(&ext).map(|l| {
        let config = kvvm::FluentdConfig {
            host: l.endpoint_host,
            port: l.endpoint_port,
            tag: l.service_name,
        };
        Box::new(kvvm::FluentdLogger::start(config, log::LevelFilter::Info))
            as Box<dyn simplelog::SharedLogger>
    });
    init_logging(&target, log::LevelFilter::Info, fluentd);
    match kvvm::run_poller(&ext) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("poller failed [{}]: {e}", e.reason());
            log::logger().flush();
            // The supervisor quotes this line in the status.
            eprintln!(
                "{} (pid {}): [{}] {e}",
                kvvm::FAILURE_MARK,
                std::process::id(),
                e.reason()
            );
            ExitCode::FAILURE
        }
    }
}

/// `kvvm status`: what the worker recorded about each certificate, for an operator on the VM; with `--json`
/// the documented JSON document for scripts, exiting 1 when anything needs attention.
fn show_status(json: bool) -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!("kvvm status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = ext.data_dir();
    let path = kvvm::WorkerState::path(&dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<kvvm::WorkerState>(&bytes) {
            Ok(state) if json => {
                let supervision = match kvvm::Supervisor::new(&dir).state() {
                    Ok(kvvm::WorkerProcess::Running { pid }) => kvvm::Supervision::Running { pid },
                    Ok(kvvm::WorkerProcess::Stopped) => kvvm::Supervision::Stopped,
                    Err(e) => kvvm::Supervision::Unknown {
                        detail: e.to_string(),
                    },
                };
                let (document, needs_attention) = state.status_json(&supervision);
                println!("{document}");
                if needs_attention {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Ok(state) => {
                let running = kvvm::Supervisor::new(&dir).state();
                let worker = match running {
                    Ok(kvvm::WorkerProcess::Running { pid }) => pid,
                    _ => None,
                };
                print!("{}", state.render(worker));
                if let Ok(kvvm::WorkerProcess::Stopped) = running {
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

/// `kvvm sync --once`: one full poll cycle in the foreground with the extension's current settings, printing
/// one line per certificate. Exits 1 if any certificate failed. The worker's status and state files are left to
/// the worker.
fn sync_once() -> ExitCode {
    let ext = match Extension::locate() {
        Ok(ext) => ext,
        Err(e) => {
            eprintln!("kvvm sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = LogTarget {
        folder: ext.env.log_folder.clone(),
        file_name: "kvvm-sync.log",
        stderr: true,
    };
    init_logging(&target, log::LevelFilter::Info, None);
    let (seq, settings) = match kvvm::current_settings(&ext) {
        Ok(current) => current,
        Err(e) => {
            eprintln!("kvvm sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let saved = kvvm::WorkerState::load(&ext.data_dir());
    let mut certs = kvvm::certificate_states(&settings, saved.as_ref());
    let client = kvvm::vault_client(&settings);
    let stop = kvvm::Stop::default();
    let locks = kvvm::lock_folder(&ext.data_dir());
    kvvm::poll_once(&client, &settings, &mut certs, &locks, &stop);
    println!("settings {seq}: {} observed certificate(s)", certs.len());
    let mut failed = 0;
    for c in &certs {
        let line = match c.status {
            kvvm::CertStatus::Failed => {
                failed += 1;
                format!(
                    "FAILED  {}: {}",
                    c.url,
                    c.last_error.as_deref().unwrap_or("unknown error")
                )
            }
            status => format!(
                "{:<7} {} version {} -> {}{}",
                if status == kvvm::CertStatus::Warning {
                    "WARNING"
                } else {
                    "OK"
                },
                c.url,
                c.version.as_deref().unwrap_or("-"),
                c.link.display(),
                c.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        };
        println!("{line}");
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
