//! The packaged extension under the waagent simulator: install, enable (twice, and with new settings),
//! disable, update between two package versions, uninstall, a reboot's stale files, a SIGKILLed worker, and
//! every settings rejection as waagent would see it in the status file.
//!
//! Each test runs in the VM-like network namespace (`kvvm_sim::netns`): the worker now polls, and there it
//! finds nothing listening at IMDS or the vault instead of reaching the real ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvvm_sim::netns::run_isolated;
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::{Extension, Settings, StatusValue, Verb};
use serde_json::json;

const NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";

fn package() -> PathBuf {
    kvvm_sim::built_package()
}

/// Fields 5 (pgrp) and 6 (session) of /proc/<pid>/stat.
fn pgrp_and_session(pid: u32) -> (u32, u32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (rest[2].parse().unwrap(), rest[3].parse().unwrap())
}

#[test]
fn install_and_enable_start_one_detached_worker_with_status_and_heartbeat() {
    run_isolated(
        "install_and_enable_start_one_detached_worker_with_status_and_heartbeat",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let report = vm.settled(&ext, 0);
            assert_eq!(report.status, StatusValue::Success, "{report:?}");
            assert_eq!(report.operation, "Enable");
            assert!(
                report.message.contains("1 observed certificate(s)"),
                "{}",
                report.message
            );
            let beat = vm.agent.read_heartbeat(&ext).unwrap();
            assert_eq!(beat.reported_status(), "Ready");

            let pid = vm.wait_workers(1)[0];
            // Own session and process group: waagent's kill of the command's group cannot reach it.
            assert_eq!(pgrp_and_session(pid), (pid, pid));
            // stdio detached from waagent's pipes; cwd is /.
            assert_eq!(
                fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
                PathBuf::from("/dev/null")
            );
            for fd in [1, 2] {
                let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
                assert!(
                    target.ends_with("worker.stderr.log"),
                    "{}",
                    target.display()
                );
            }
            assert_eq!(
                fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
                PathBuf::from("/")
            );
            // Logs are in the HandlerEnvironment logFolder.
            let log = fs::read_to_string(vm.agent.log_dir(&ext).join("handler.log")).unwrap();
            assert!(log.contains("worker started"), "{log}");
        },
    );
}

#[test]
fn enable_again_keeps_the_single_worker_and_new_settings_reach_it() {
    run_isolated(
        "enable_again_keeps_the_single_worker_and_new_settings_reach_it",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let pid = vm.wait_workers(1)[0];
            vm.settled(&ext, 0);

            let again = vm.agent.enable(&ext, 0).unwrap();
            assert!(again.success(), "{}", again.output);
            assert!(again.stdout.contains("already applied"), "{}", again.stdout);
            assert_eq!(vm.wait_workers(1), vec![pid]);

            let two = vm.idle_settings(&[
                "https://myvault.vault.azure.net/secrets/c1",
                "https://myvault.vault.azure.net/secrets/c2",
            ]);
            let r = vm.agent.apply_settings(&ext, 1, &two).unwrap();
            assert!(r.success(), "{}", r.output);
            let report = vm
                .agent
                .wait_status(&ext, 1, Duration::from_secs(10), |r| {
                    // New settings poll at once; nothing answers in the namespace, so a warning is fine too.
                    r.message.contains("with settings 1: 2 observed")
                })
                .unwrap();
            assert!(
                report.message.contains("with settings 1: 2 observed"),
                "{}",
                report.message
            );
            assert_eq!(
                vm.wait_workers(1),
                vec![pid],
                "reloaded in place, not restarted"
            );
            assert_eq!(fs::read_to_string(ext.mrseq_file()).unwrap().trim(), "1");
        },
    );
}

#[test]
fn disable_stops_the_worker_and_reports_it() {
    run_isolated("disable_stops_the_worker_and_reports_it", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        let pid = vm.wait_workers(1)[0];
        let r = vm.agent.disable(&ext, 0).unwrap().unwrap();
        assert!(r.success(), "{}", r.output);
        assert!(
            r.stdout.contains(&format!("worker {pid} stopped")),
            "{}",
            r.stdout
        );
        assert!(vm.workers().is_empty());
        let report = vm.agent.read_status(&ext, 0).unwrap();
        assert_eq!(
            (report.operation.as_str(), report.status),
            ("Disable", StatusValue::Success)
        );
        // Enable after disable starts a new one.
        assert!(vm.agent.enable(&ext, 0).unwrap().success());
        assert_ne!(vm.wait_workers(1), vec![pid]);
    });
}

#[test]
fn update_between_versions_ends_with_one_worker_from_the_new_directory() {
    run_isolated(
        "update_between_versions_ends_with_one_worker_from_the_new_directory",
        || {
            let vm = Vm::offline();
            let old = vm.install(0);
            vm.wait_workers(1);
            fs::create_dir_all(vm.store()).unwrap();
            fs::write(vm.store().join("myvault.c1.0123"), "installed earlier").unwrap();

            let new = vm.agent.unpack_as(&package(), "99.0.0").unwrap();
            let run = vm
                .agent
                .update_unpacked(
                    &old,
                    new,
                    0,
                    &vm.idle_settings(&["https://myvault.vault.azure.net/secrets/c1"]),
                )
                .unwrap();
            assert!(run.ok(), "{}", run.describe());
            assert_eq!(
                run.commands(),
                [
                    format!("{} disable", env!("CARGO_PKG_VERSION")),
                    "99.0.0 update".to_string(),
                    format!("{} uninstall", env!("CARGO_PKG_VERSION")),
                    "99.0.0 install".to_string(),
                    "99.0.0 enable".to_string(),
                ]
            );
            assert!(!old.dir.exists(), "waagent removed the old directory");
            let workers = vm.wait_workers(1);
            let exe = fs::read_link(format!("/proc/{}/exe", workers[0])).unwrap();
            assert!(
                exe.starts_with(vm.root().join(format!("{NAME}-99.0.0"))),
                "{}",
                exe.display()
            );
            assert_eq!(
                fs::read_to_string(vm.store().join("myvault.c1.0123")).unwrap(),
                "installed earlier"
            );
            let new = run.extension.unwrap();
            assert_eq!(vm.settled(&new, 0).status, StatusValue::Success);
        },
    );
}

#[test]
fn uninstall_stops_the_worker_and_leaves_certificates() {
    run_isolated("uninstall_stops_the_worker_and_leaves_certificates", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        vm.wait_workers(1);
        fs::create_dir_all(vm.store()).unwrap();
        fs::write(vm.store().join("myvault.c1.0123"), "cert").unwrap();
        let run = vm.agent.uninstall(&ext, 0).unwrap();
        assert!(run.ok(), "{}", run.describe());
        assert!(vm.workers().is_empty());
        assert!(!ext.dir.exists());
        assert_eq!(
            fs::read_to_string(vm.store().join("myvault.c1.0123")).unwrap(),
            "cert"
        );
    });
}

#[test]
fn after_a_reboot_stale_lock_and_pid_files_do_not_stop_a_fresh_worker() {
    run_isolated(
        "after_a_reboot_stale_lock_and_pid_files_do_not_stop_a_fresh_worker",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let pid = vm.wait_workers(1)[0];
            // A reboot: every process gone, files left behind; the old pid now belongs to someone else.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            vm.wait_workers(0);
            let mut bystander = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            fs::write(vm.data_dir().join("worker.pid"), bystander.id().to_string()).unwrap();
            assert!(vm.data_dir().join("worker.lock").exists());

            let r = vm.agent.enable(&ext, 0).unwrap();
            assert!(r.success(), "{}", r.output);
            assert!(r.stdout.contains("worker started"), "{}", r.stdout);
            let fresh = vm.wait_workers(1)[0];
            assert_ne!(fresh, pid);
            assert_eq!(
                fs::read_to_string(vm.data_dir().join("worker.pid"))
                    .unwrap()
                    .trim(),
                fresh.to_string()
            );
            assert!(
                bystander.try_wait().unwrap().is_none(),
                "the unrelated process was not signalled"
            );
            bystander.kill().unwrap();
            // Disable after that also leaves the bystander alone and stops the real worker.
            assert!(vm.agent.disable(&ext, 0).unwrap().unwrap().success());
            assert!(vm.workers().is_empty());
        },
    );
}

#[test]
fn a_sigkilled_worker_is_replaced_by_the_next_enable_and_disable_copes() {
    run_isolated(
        "a_sigkilled_worker_is_replaced_by_the_next_enable_and_disable_copes",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let pid = vm.wait_workers(1)[0];
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            vm.wait_workers(0);
            let d = vm.agent.run(&ext, Verb::Disable, 0, &[]).unwrap();
            assert!(d.success(), "{}", d.output);
            assert!(d.stdout.contains("no worker was running"), "{}", d.stdout);
            assert!(vm.agent.enable(&ext, 0).unwrap().success());
            assert_eq!(vm.wait_workers(1).len(), 1);
        },
    );
}

#[test]
fn empty_or_null_settings_mean_nothing_to_watch() {
    run_isolated("empty_or_null_settings_mean_nothing_to_watch", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        vm.wait_workers(1);
        for (seq, settings) in [
            (1, Settings::Empty),
            (
                2,
                Settings::Handler {
                    public: None,
                    protected: None,
                    thumbprint: None,
                },
            ),
        ] {
            let r = vm.agent.apply_settings(&ext, seq, &settings).unwrap();
            assert!(r.success(), "{}", r.output);
            let report = vm.agent.read_status(&ext, seq).unwrap();
            assert_eq!(report.status, StatusValue::Warning, "{report:?}");
            assert!(
                report.message.starts_with("Nothing to watch: "),
                "{}",
                report.message
            );
            assert!(vm.workers().is_empty());
        }
    });
}

#[test]
fn protected_settings_are_ignored() {
    run_isolated("protected_settings_are_ignored", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        let settings = Settings::Handler {
            public: Some(
                json!({"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/secrets/c1"]}}),
            ),
            protected: Some("MIIBsAYJKoZIhvcNAQcDoIIBoTCCAZ0CAQAxggFpMIIBZQIBADBNMDkx".into()),
            thumbprint: Some("0123456789ABCDEF0123456789ABCDEF01234567".into()),
        };
        assert!(
            vm.agent
                .apply_settings(&ext, 1, &settings)
                .unwrap()
                .success()
        );
        // Accepted (no error about the protected part). New settings poll at once and nothing answers in the
        // namespace, so the status may already be a warning about the unreachable vault.
        let report = vm.settled(&ext, 1);
        assert!(
            matches!(report.status, StatusValue::Success | StatusValue::Warning),
            "{report:?}"
        );
        assert!(
            !report.message.to_lowercase().contains("protected"),
            "{}",
            report.message
        );
    });
}

/// Each rejection reaches waagent as exit 1 (error 1009) and an `error` status carrying the same message the
/// settings module produces; a running worker keeps the previous settings.
#[test]
fn every_settings_rejection_reaches_the_status_file() {
    run_isolated("every_settings_rejection_reaches_the_status_file", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        let pid = vm.wait_workers(1)[0];
        let cases: Vec<String> = vec![
            "not json".into(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":"{\"secretsManagementSettings\":{}}"}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{}}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":[]}}}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["http://myvault.vault.azure.net/secrets/c"]}}}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://myvault.vault.azure.net/certificates/c"]}}}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"pollingIntervalInS":"abc","observedCertificates":["https://myvault.vault.azure.net/secrets/c"]}}}}]}).to_string(),
            json!({"runtimeSettings":[{"handlerSettings":{"publicSettings":{"secretsManagementSettings":{"observedCertificates":["https://myvault.vault.azure.net/secrets/c"]},"authenticationSettings":{"msiClientId":"nope"}}}}]}).to_string(),
        ];
        for (i, text) in cases.iter().enumerate() {
            let seq = i as u64 + 1;
            let expected = kvvm::settings::parse_settings_file(text)
                .expect_err(text)
                .to_string();
            let r = vm
                .agent
                .apply_settings(&ext, seq, &Settings::Raw(text.clone()))
                .unwrap();
            assert_eq!(r.exit_code, Some(1), "{text}: {}", r.output);
            assert_eq!(r.error_code(), Some(1009));
            assert!(
                r.stdout.contains(&expected),
                "{text}\nstdout: {}\nexpected: {expected}",
                r.stdout
            );
            let report = vm.agent.read_status(&ext, seq).unwrap();
            assert_eq!(report.status, StatusValue::Error, "{text}");
            assert!(report.message.contains(&expected), "{}", report.message);
            assert!(
                report
                    .message
                    .ends_with("The worker keeps running with the previous settings (0.settings)."),
                "{}",
                report.message
            );
            assert_eq!(vm.workers(), vec![pid]);
        }
        assert_eq!(fs::read_to_string(ext.mrseq_file()).unwrap().trim(), "0");
    });
}

/// An operator on the VM runs `kvvm status` from the installed package: it shows what the worker recorded,
/// and the status file carries one substatus per certificate.
#[test]
fn kvvm_status_shows_each_observed_certificate() {
    run_isolated("kvvm_status_shows_each_observed_certificate", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        let report = vm.settled(&ext, 0);
        let sub = &report.substatus;
        assert_eq!(sub.len(), 1, "{report:?}");
        assert_eq!(sub[0].name, "https://myvault.vault.azure.net/secrets/c1");
        assert!(
            sub[0]
                .message
                .contains(&format!("link {}", vm.store().join("myvault.c1").display())),
            "{}",
            sub[0].message
        );

        let status = |ext: &Extension| {
            let out = std::process::Command::new(ext.dir.join("bin/kvvm"))
                .arg("status")
                .current_dir("/")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let (ok, text) = status(&ext);
        assert!(ok, "{text}");
        assert!(
            text.contains("https://myvault.vault.azure.net/secrets/c1\n  status:      Pending"),
            "{text}"
        );
        assert!(
            text.contains(&format!("worker pid {}", vm.wait_workers(1)[0])),
            "{text}"
        );
        assert!(vm.agent.disable(&ext, 0).unwrap().unwrap().success());
        let (ok, text) = status(&ext);
        assert!(ok && text.contains("the worker is not running"), "{text}");
    });
}

/// loggingSettings through the packaged worker: its records reach a Fluentd receiver (decoded by Python's
/// msgpack), and changing loggingSettings restarts the worker so the new sink applies.
#[test]
fn worker_logs_reach_fluentd_and_a_logging_change_restarts_it() {
    run_isolated(
        "worker_logs_reach_fluentd_and_a_logging_change_restarts_it",
        || {
            use std::io::{BufRead, BufReader};
            let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
            assert!(python.exists(), "run `make deps` (creates .venv)");
            let mut receiver = std::process::Command::new(python)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fluentd/receiver.py"))
                .args(["--count", "1"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
            let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();

            let vm = Vm::offline();
            let ext = vm.install(0);
            let first = vm.wait_workers(1)[0];
            let with_logging = Settings::public(json!({
                "secretsManagementSettings": {
                    "certificateStoreLocation": vm.store(),
                    "observedCertificates": ["https://myvault.vault.azure.net/secrets/c1"],
                },
                "loggingSettings": {"logger": "fluentd", "endpoint": format!("tcp://127.0.0.1:{port}"), "servicename": "kvvm_test"}
            }));
            let r = vm.agent.apply_settings(&ext, 1, &with_logging).unwrap();
            assert!(
                r.success() && r.stdout.contains("worker started"),
                "{}",
                r.output
            );
            let second = vm.wait_workers(1)[0];
            assert_ne!(
                first, second,
                "a loggingSettings change restarts the worker"
            );

            let record: serde_json::Value =
                serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert!(receiver.wait().unwrap().success());
            assert_eq!(record["tag"], "kvvm_test");
            // The worker's poller (its child) logs; the worker itself only supervises it.
            let poller = record["record"]["pid"].as_u64().unwrap();
            let stat = fs::read_to_string(format!("/proc/{poller}/stat")).unwrap();
            let ppid: u32 = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                ppid, second,
                "the record comes from the new worker's poller"
            );
            assert!(
                record["record"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("poller started"),
                "{record}"
            );

            // Other certificates, the same loggingSettings: the settings go to the running worker.
            let same_logging = Settings::public(json!({
                "secretsManagementSettings": {
                    "certificateStoreLocation": vm.store(),
                    "observedCertificates": ["https://myvault.vault.azure.net/secrets/c2"],
                },
                "loggingSettings": {"logger": "fluentd", "endpoint": format!("tcp://127.0.0.1:{port}"), "servicename": "kvvm_test"}
            }));
            let r = vm.agent.apply_settings(&ext, 2, &same_logging).unwrap();
            assert!(
                r.success() && r.stdout.contains("handed to the running worker"),
                "{}",
                r.output
            );
            assert_eq!(
                vm.wait_workers(1)[0],
                second,
                "settings that keep loggingSettings keep the worker"
            );
        },
    );
}

/// A worker that does not react to SIGTERM (here: stopped with SIGSTOP) is killed after the grace period, and
/// disable says so.
#[test]
fn disable_escalates_to_sigkill_when_the_worker_ignores_sigterm() {
    run_isolated(
        "disable_escalates_to_sigkill_when_the_worker_ignores_sigterm",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let pid = vm.wait_workers(1)[0];
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            let r = vm.agent.disable(&ext, 0).unwrap().unwrap();
            assert!(r.success(), "{}", r.output);
            assert!(
                r.stdout.contains(&format!(
                    "worker {pid} did not stop within 10s and was killed"
                )),
                "{}",
                r.stdout
            );
            assert!(vm.workers().is_empty());
        },
    );
}

#[test]
fn help_version_and_usage_errors() {
    run_isolated("help_version_and_usage_errors", || {
        let vm = Vm::offline();
        let ext = vm.install(0);
        let bin = ext.dir.join("bin/kvvm");
        let run = |arg: &str| std::process::Command::new(&bin).arg(arg).output().unwrap();
        let help = run("--help");
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        for verb in [
            "install",
            "enable",
            "disable",
            "update",
            "uninstall",
            "status",
        ] {
            assert!(text.contains(verb), "{verb} missing from --help");
        }
        let version = run("--version");
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            format!(
                "kvvm {} ({})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            )
        );
        let bad = run("frobnicate");
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown command \"frobnicate\""));
    });
}

/// A process that holds the worker lock but never wrote its pid cannot be signalled: disable says so and how to
/// find it, instead of blaming "pid 0".
#[test]
fn a_lock_holder_without_a_pid_is_named_with_the_way_to_find_it() {
    run_isolated(
        "a_lock_holder_without_a_pid_is_named_with_the_way_to_find_it",
        || {
            let vm = Vm::offline();
            let ext = vm.install(0);
            let r = vm.agent.disable(&ext, 0).unwrap().unwrap();
            assert!(r.success(), "{}", r.output);
            let lock = vm.data_dir().join("worker.lock");
            let holder = fs::File::open(&lock).unwrap();
            holder.lock().unwrap();
            let _ = fs::remove_file(vm.data_dir().join("worker.pid"));
            let r = vm.agent.run(&ext, Verb::Disable, 0, &[]).unwrap();
            assert!(!r.success(), "{}", r.output);
            assert!(
                r.stdout.contains(&format!(
                    "a process holds the worker lock {} but never recorded its pid; find it with `fuser {}`",
                    lock.display(),
                    lock.display()
                )),
                "{}",
                r.stdout
            );
            drop(holder);
        },
    );
}

/// The worker's stdout/stderr log cannot be opened: enable says that, not "cannot start the worker".
#[test]
fn an_unopenable_worker_log_is_reported_as_such() {
    run_isolated("an_unopenable_worker_log_is_reported_as_such", || {
        let vm = Vm::offline();
        let ext = vm.agent.unpack(&package()).unwrap();
        vm.agent.write_handler_environment(&ext).unwrap();
        let log = vm.agent.log_dir(&ext).join("worker.stderr.log");
        fs::create_dir_all(&log).unwrap();
        vm.agent
            .write_settings_as(
                &ext,
                0,
                &vm.idle_settings(&["https://myvault.vault.azure.net/secrets/c1"]),
            )
            .unwrap();
        let r = vm.agent.run(&ext, Verb::Enable, 0, &[]).unwrap();
        assert!(!r.success(), "{}", r.output);
        assert!(
            r.stdout.contains(&format!(
                "cannot open the worker's log file {}: Is a directory",
                log.display()
            )),
            "{}",
            r.stdout
        );
        assert!(vm.workers().is_empty());
    });
}
