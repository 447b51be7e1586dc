//! The real Linux guest agent drives the package: WALinuxAgent's extension handler (`waagent -run-exthandlers`,
//! Debian's package, 2.7.3) runs inside the VM-like namespace against the fake wire server
//! (`kvvm_sim::wireserver`, 168.63.129.16:80 and the HostGAPlugin at :32526), which serves the goal state, the
//! extensions config with kvvm's settings, the handler manifest and the package zip, and keeps every status
//! blob the agent uploads. Each scenario asserts on what the agent reports upstream (handler status and
//! message, extension status, substatus) and on the machine.
//!
//! Our own simulator (`kvvm_sim::waagent`) shares our beliefs about the agent; these tests do not. Where 2.7.3
//! behaves differently from newer agents (2.15: the heartbeat's message also replaces the handler's, the zip is
//! deleted after extraction) the test pins what 2.7.3 does and says so.
//!
//! Skipped with a printed reason when not root or when `waagent` is not installed (`make deps` installs it).

use std::fs;

use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{KeyType, PemLayout};
use kvvm_sim::realagent::{self, AgentConfig, LIB_DIR};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Vm;
use kvvm_sim::wireserver::{Plugin, PluginState, VmStatus, WireServer};
use serde_json::{Value, json};

const NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
/// Runs `body` in the namespace with the real agent available, or prints why it is skipped.
fn with_real_agent(test: &str, body: impl FnOnce()) {
    if !kvvm_sim::netns::in_netns()
        && let Err(why) = realagent::installed_version()
    {
        println!("SKIP {test}: {why}");
        return;
    }
    run_isolated(test, body);
}

fn settings(certs: &[&str]) -> Value {
    json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "3",
            "requireInitialSync": true,
            "observedCertificates": certs.iter().map(|c| json!({
                "url": format!("https://{HOST}/secrets/{c}"),
                "certificateStoreLocation": STORE,
            })).collect::<Vec<_>>(),
        }
    })
}

fn url(secret: &str) -> String {
    format!("https://{HOST}/secrets/{secret}")
}

/// The handler entry for kvvm in an upload.
fn kvvm(s: &VmStatus) -> Option<&kvvm_sim::wireserver::ReportedHandler> {
    s.handler(NAME)
}

/// kvvm reported `status` for sequence number `seq`.
fn ext_is(s: &VmStatus, seq: i64, status: &str) -> bool {
    kvvm(s)
        .and_then(|h| h.extension.as_ref())
        .is_some_and(|e| e.sequence_number == Some(seq) && e.status == status)
}

fn installed(s: &VmStatus, secret: &str, version: &str) -> bool {
    kvvm(s).and_then(|h| h.extension.as_ref()).is_some_and(|e| {
        e.substatus
            .iter()
            .any(|ss| ss.name == url(secret) && ss.message.contains(version))
    })
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The environment of a running process.
fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Install + enable under the real agent: the worker installs the certificate, the agent reports the handler
/// Ready and kvvm's extension status success with the certificate's substatus. On the machine: the agent's
/// HandlerEnvironment.json has exactly its six keys, the zip stays beside the directory (2.7.3; 2.15 deletes
/// it), the settings file is the goal state's, and the agent's own environment reaches kvvm.
#[test]
fn install_and_enable_with_v3_settings_installs_the_certificate() {
    with_real_agent(
        "install_and_enable_with_v3_settings_installs_the_certificate",
        || {
            let mut vm = Vm::builder().with_real_agent().build();
            let v = vm.put_certificate("web");
            let inc = vm.wire().publish(vec![vm.plugin(0, settings(&["web"]))]);
            vm.start_agent_with(AgentConfig {
                env: vec![
                    ("KVVM_TEST_AGENT_ENV".into(), "from-the-agent".into()),
                    // One of the variables the agent sets itself: its own environment wins.
                    (
                        "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS".into(),
                        "10.11.12.13".into(),
                    ),
                ],
                ..AgentConfig::default()
            });
            let s = vm.wait_upload(inc, "handler Ready and the certificate installed", |s| {
                ext_is(s, 0, "success") && installed(s, "web", &v)
            });
            let h = kvvm(&s).unwrap();
            assert_eq!(h.version, vm.version());
            assert_eq!(h.status, "Ready", "{h:#?}");
            assert_eq!(h.code, 0);
            let e = h.extension.as_ref().unwrap();
            assert_eq!(e.name, NAME);
            assert_eq!(e.code, 0);
            assert_eq!(s.agent_status, "Ready");
            assert!(
                vm.wire().upload_errors().is_empty(),
                "{:?}",
                vm.wire().upload_errors()
            );

            // The machine.
            let link = Path::new(STORE).join("myvault.web");
            let target = fs::read_link(&link).unwrap();
            assert!(target.to_string_lossy().ends_with(&v), "{target:?}");
            let env: Value = serde_json::from_str(
                &fs::read_to_string(vm.ext_dir().join("HandlerEnvironment.json")).unwrap(),
            )
            .unwrap();
            let mut keys: Vec<&str> = env[0]["handlerEnvironment"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "configFolder",
                    "eventsFolder",
                    "eventsFolder_preview",
                    "heartbeatFile",
                    "logFolder",
                    "statusFolder"
                ]
            );
            let zip = Path::new(LIB_DIR).join(format!("{NAME}__{}.zip", vm.version()));
            assert!(zip.is_file(), "2.7.3 keeps {}", zip.display());
            let written: Value = serde_json::from_str(
                &fs::read_to_string(vm.ext_dir().join("config/0.settings")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                written["runtimeSettings"][0]["handlerSettings"]["publicSettings"],
                settings(&["web"])
            );
            assert_eq!(
                vm.agent_verbs(),
                [
                    (vm.version().to_string(), "install".to_string()),
                    (vm.version().to_string(), "enable".to_string())
                ]
            );

            // The worker inherited enable's environment: the agent's own variables, merged last.
            let workers = vm.processes_of(vm.version());
            assert!(!workers.is_empty(), "no kvvm process\n{}", vm.log());
            let env = environ(workers[0]);
            let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("KVVM_TEST_AGENT_ENV"), Some("from-the-agent"));
            assert!(
                get("_AZURE_GUEST_AGENT_DAEMON_VERSION_").is_some(),
                "{env:?}"
            );
            assert_eq!(get("ConfigSequenceNumber"), Some("0"));
            assert_eq!(
                get("AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS"),
                Some("10.11.12.13"),
                "env.update(os.environ): the agent's environment wins over what it sets"
            );
            assert_eq!(
                get("AZURE_GUEST_AGENT_EXTENSION_PATH").map(PathBuf::from),
                Some(vm.ext_dir())
            );
        },
    );
}

/// A VM whose agent has applied a goal state observing `web` at sequence number 0; returns the VM, the
/// incarnation and the version of `web` installed.
fn enabled_vm() -> (Vm, u64, String) {
    let mut vm = Vm::builder().with_real_agent().build();
    let v = vm.put_certificate("web");
    let inc = vm.wire().publish(vec![vm.plugin(0, settings(&["web"]))]);
    vm.start_agent();
    vm.wait_upload(inc, "the first goal state succeeds", |s| {
        ext_is(s, 0, "success") && installed(s, "web", &v)
    });
    (vm, inc, v)
}

/// The `ConfigSequenceNumber` the agent set for each run of `verb`, in order.
fn seqs_of(vm: &Vm, verb: &str) -> Vec<String> {
    vm.agent_commands()
        .iter()
        .filter(|(c, _)| c.ends_with(&format!(" {verb}")))
        .map(|(_, env)| {
            env["ConfigSequenceNumber"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

/// New settings arrive as a new goal state with a new sequence number: the agent writes `1.settings`, runs
/// enable with `ConfigSequenceNumber=1`, and reports kvvm's status for 1 with the new certificate.
#[test]
fn new_settings_with_a_new_sequence_number_are_applied() {
    with_real_agent(
        "new_settings_with_a_new_sequence_number_are_applied",
        || {
            let (vm, _, _) = enabled_vm();
            let v_api = vm.put_certificate("api");
            let inc = vm
                .wire()
                .publish(vec![vm.plugin(1, settings(&["web", "api"]))]);
            let s = vm.wait_upload(inc, "settings 1 applied", |s| {
                ext_is(s, 1, "success") && installed(s, "api", &v_api)
            });
            let h = kvvm(&s).unwrap();
            assert_eq!(h.status, "Ready");
            assert_eq!(h.extension.as_ref().unwrap().substatus.len(), 2, "{h:#?}");
            assert!(vm.ext_dir().join("config/1.settings").is_file());
            assert!(vm.ext_dir().join("status/1.status").is_file());
            assert_eq!(seqs_of(&vm, "enable"), ["0", "1"]);
            assert_eq!(vm.workers_of(vm.version()).len(), 1, "{}", vm.log());
        },
    );
}

/// Invalid settings in a new goal state: enable fails, the agent reports the handler's failure (code 1009,
/// "Non-zero exit code") and kvvm's status for that sequence number is `error` with kvvm's message naming
/// the setting, the value and the fix. The worker keeps the previous settings and the certificate stays.
#[test]
fn invalid_settings_are_reported_as_error_with_kvvms_message() {
    with_real_agent(
        "invalid_settings_are_reported_as_error_with_kvvms_message",
        || {
            let (vm, _, v) = enabled_vm();
            let mut bad = settings(&["web"]);
            bad["secretsManagementSettings"]["pollingIntervalInS"] = json!("abc");
            let inc = vm.wire().publish(vec![vm.plugin(1, bad)]);
            let s = vm.wait_upload(inc, "settings 1 reported as error", |s| {
                ext_is(s, 1, "error")
            });
            let h = kvvm(&s).unwrap();
            let e = h.extension.as_ref().unwrap();
            assert!(
            e.message.contains(
                r#"secretsManagementSettings.pollingIntervalInS: "abc" is not a whole number of seconds"#
            ),
            "{e:#?}"
        );
            assert_eq!(h.code, 1009, "{h:#?}");
            assert!(
                h.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("Non-zero exit code: 1"),
                "{h:#?}"
            );
            let link = Path::new(STORE).join("myvault.web");
            assert!(
                fs::read_link(&link)
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&v)
            );
            assert_eq!(vm.workers_of(vm.version()).len(), 1, "{}", vm.log());
        },
    );
}

/// What a reboot does: the agent restarts with the same goal state (same incarnation) after the worker died.
/// A new agent process treats its first goal state as new: it rewrites the settings file and runs enable
/// again (no install), which starts exactly one fresh worker; the agent reports Ready / success again.
#[test]
fn agent_restart_with_the_same_goal_state_reenables_after_the_worker_was_killed() {
    with_real_agent(
        "agent_restart_with_the_same_goal_state_reenables_after_the_worker_was_killed",
        || {
            let (mut vm, inc, v) = enabled_vm();
            vm.stop_agent();
            let killed = realagent::kill_all(&vm.kvvm_exe(vm.version()), Duration::from_secs(5));
            assert!(!killed.is_empty(), "no kvvm process to kill\n{}", vm.log());
            assert!(vm.processes_of(vm.version()).is_empty());
            let settings_file = vm.ext_dir().join("config/0.settings");
            let before = mtime(&settings_file);
            let restarted = Instant::now();
            vm.start_agent();
            let s = vm.wait_upload(inc, "success after the restart", |s| {
                s.at > restarted && ext_is(s, 0, "success") && installed(s, "web", &v)
            });
            assert_eq!(kvvm(&s).unwrap().status, "Ready");
            assert_eq!(s.incarnation, inc, "the goal state did not change");
            assert!(
                mtime(&settings_file) > before,
                "the agent rewrote 0.settings"
            );
            let verbs: Vec<String> = vm.agent_verbs().into_iter().map(|(_, verb)| verb).collect();
            assert_eq!(verbs, ["install", "enable", "enable"]);
            vm.wait_until("one worker after the restart", || {
                vm.workers_of(vm.version()).len() == 1
            });
        },
    );
}

/// An update to a higher version, in the agent's order: old disable, new update, old uninstall, new install,
/// new enable, with the agent's variables (VERSION, AZURE_GUEST_AGENT_UPDATING_FROM_VERSION, the disable and
/// uninstall exit codes). Afterwards only the new version's directory and worker exist and the agent reports
/// the new version Ready with kvvm's success.
#[test]
fn update_to_a_higher_version_runs_in_the_agents_order() {
    with_real_agent(
        "update_to_a_higher_version_runs_in_the_agents_order",
        || {
            let (vm, _, v) = enabled_vm();
            let old = vm.version().to_string();
            let new = bump(&old);
            vm.wire()
                .add_package(NAME, &new, fs::read(kvvm_sim::built_package()).unwrap());
            let inc = vm
                .wire()
                .publish(vec![Plugin::enabled(NAME, &new, 0, settings(&["web"]))]);
            let s = vm.wait_upload(inc, "the new version reports success", |s| {
                kvvm(s).is_some_and(|h| h.version == new)
                    && ext_is(s, 0, "success")
                    && installed(s, "web", &v)
            });
            assert_eq!(kvvm(&s).unwrap().status, "Ready");
            let verbs = vm.agent_verbs();
            let pair = |ver: &str, verb: &str| (ver.to_string(), verb.to_string());
            assert_eq!(
                verbs,
                [
                    pair(&old, "install"),
                    pair(&old, "enable"),
                    pair(&old, "disable"),
                    pair(&new, "update"),
                    pair(&old, "uninstall"),
                    pair(&new, "install"),
                    pair(&new, "enable"),
                ]
            );
            let cmds = vm.agent_commands();
            let env_of = |ver: &str, verb: &str| {
                cmds.iter()
                    .find(|(c, _)| {
                        c.contains(&format!("{NAME}-{ver}/")) && c.ends_with(&format!(" {verb}"))
                    })
                    .map(|(_, e)| e.clone())
                    .unwrap()
            };
            let update = env_of(&new, "update");
            assert_eq!(update["VERSION"], json!(new));
            assert_eq!(
                update["AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"],
                json!(old)
            );
            assert_eq!(
                update["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"],
                json!("0")
            );
            assert_eq!(update["AZURE_GUEST_AGENT_EXTENSION_VERSION"], json!(new));
            assert_eq!(
                env_of(&new, "install")["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"],
                json!("0")
            );
            assert_eq!(
                env_of(&new, "enable")["AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"],
                json!("0")
            );
            assert_eq!(env_of(&old, "disable")["ConfigSequenceNumber"], json!("0"));
            assert!(
                !vm.ext_dir_of(&old).exists(),
                "the old directory is removed"
            );
            assert!(
                !Path::new(LIB_DIR)
                    .join(format!("{NAME}__{old}.zip"))
                    .exists()
            );
            assert!(
                vm.processes_of(&old).is_empty(),
                "the old worker is gone\n{}",
                vm.log()
            );
            vm.wait_until("one worker of the new version", || {
                vm.workers_of(&new).len() == 1
            });
        },
    );
}

/// The next patch version: `0.1.0` → `0.1.1`.
fn bump(version: &str) -> String {
    let mut parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    *parts.last_mut().unwrap() += 1;
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A `disabled` goal state with the same sequence number: the agent runs disable (with
/// `ConfigSequenceNumber=0`), writes no settings file, and — the heartbeat's status replacing the handler's —
/// reports the handler NotReady ("Plugin disabled" in 2.7.3; 2.15 shows the heartbeat's "disabled…"), never a
/// stale Ready. The worker is stopped; the certificate stays.
#[test]
fn disabled_goal_state_with_the_same_sequence_number() {
    with_real_agent("disabled_goal_state_with_the_same_sequence_number", || {
        disabled_case(0);
    });
}

/// A `disabled` goal state carrying a new sequence number: disable runs with `ConfigSequenceNumber=1`, no
/// `1.settings` is written, and kvvm's status for 1 (`status/1.status`) is what the agent reports.
#[test]
fn disabled_goal_state_with_a_new_sequence_number() {
    with_real_agent("disabled_goal_state_with_a_new_sequence_number", || {
        disabled_case(1);
    });
}

fn disabled_case(seq: u64) {
    let (vm, _, v) = enabled_vm();
    let inc = vm.wire().publish(vec![
        vm.plugin(seq, settings(&["web"]))
            .with_state(PluginState::Disabled),
    ]);
    let s = vm.wait_upload(inc, "the handler reported disabled", |s| {
        kvvm(s).is_some_and(|h| h.message.as_deref() == Some("Plugin disabled"))
            && vm.agent_verbs().iter().any(|(_, verb)| verb == "disable")
    });
    let h = kvvm(&s).unwrap();
    assert_eq!(
        h.status, "NotReady",
        "a stale heartbeat must not say Ready: {h:#?}"
    );
    let disable_seqs = seqs_of(&vm, "disable");
    assert_eq!(disable_seqs, [seq.to_string()]);
    let mut settings_files: Vec<String> = fs::read_dir(vm.ext_dir().join("config"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".settings"))
        .collect();
    settings_files.sort();
    assert_eq!(
        settings_files,
        ["0.settings"],
        "a disabled goal state writes no settings"
    );
    let heartbeat: Value =
        serde_json::from_str(&fs::read_to_string(vm.ext_dir().join("heartbeat.log")).unwrap())
            .unwrap();
    assert_eq!(
        heartbeat[0]["heartbeat"]["status"],
        json!("NotReady"),
        "{heartbeat}"
    );
    assert!(
        heartbeat[0]["heartbeat"]["formattedMessage"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("disabled"),
        "{heartbeat}"
    );
    let status_file = vm.ext_dir().join(format!("status/{seq}.status"));
    let status: Value = serde_json::from_str(&fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(
        status[0]["status"]["operation"],
        json!("Disable"),
        "{status}"
    );
    let s = vm.wait_upload(inc, "kvvm's disable status reported", |s| {
        kvvm(s)
            .and_then(|h| h.extension.as_ref())
            .is_some_and(|e| e.sequence_number == Some(seq as i64) && e.operation == "Disable")
    });
    assert_eq!(kvvm(&s).unwrap().status, "NotReady");
    vm.wait_until("the worker stopped", || {
        vm.processes_of(vm.version()).is_empty()
    });
    let link = Path::new(STORE).join("myvault.web");
    assert!(
        fs::read_link(&link)
            .unwrap()
            .to_string_lossy()
            .ends_with(&v)
    );
}

/// Removal from the goal state: CRP first sends the plugin with state `uninstall`; the agent runs disable and
/// uninstall, removes the directory and the zip, and stops reporting the handler. The worker is gone and the
/// installed certificate stays. A later goal state without the plugin changes nothing.
#[test]
fn removal_from_the_goal_state_uninstalls() {
    with_real_agent("removal_from_the_goal_state_uninstalls", || {
        let (vm, _, v) = enabled_vm();
        let inc = vm.wire().publish(vec![
            vm.plugin(0, settings(&["web"]))
                .with_state(PluginState::Uninstall),
        ]);
        vm.wait_upload(inc, "the handler is no longer reported", |s| {
            kvvm(s).is_none()
        });
        let verbs: Vec<String> = vm.agent_verbs().into_iter().map(|(_, verb)| verb).collect();
        assert_eq!(verbs, ["install", "enable", "disable", "uninstall"]);
        assert!(!vm.ext_dir().exists(), "the directory is removed");
        assert!(
            !Path::new(LIB_DIR)
                .join(format!("{NAME}__{}.zip", vm.version()))
                .exists()
        );
        vm.wait_until("the worker stopped", || {
            vm.processes_of(vm.version()).is_empty()
        });
        let link = Path::new(STORE).join("myvault.web");
        assert!(
            fs::read_link(&link)
                .unwrap()
                .to_string_lossy()
                .ends_with(&v),
            "certificates stay"
        );
        let inc = vm.wire().publish(vec![]);
        let s = vm.wait_upload(inc, "an empty goal state is reported", |s| {
            s.incarnation == inc
        });
        assert!(kvvm(&s).is_none());
        assert_eq!(
            vm.agent_verbs().len(),
            4,
            "no command ran for the empty goal state"
        );
    });
}

/// 300 certificates in one goal state: all installed, and the agent reports kvvm's success with a
/// substatus for every one of them (the status file must stay within the agent's 128 KiB, or the agent drops
/// substatus entries past its budget).
#[test]
fn three_hundred_certificates() {
    with_real_agent("three_hundred_certificates", || {
        let mut vm = Vm::builder().with_real_agent().build();
        let chain = vm.chain("bulk", KeyType::Ec("P-256"), 90);
        let pem = chain.pem(PemLayout::default()).unwrap();
        let names: Vec<String> = (0..300).map(|i| format!("cert{i:03}")).collect();
        for n in &names {
            vm.vault()
                .put_secret(HOST, n, SecretValue::pem(pem.clone()));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut st = settings(&refs);
        st["secretsManagementSettings"]["pollingIntervalInS"] = json!("3600");
        let inc = vm.wire().publish(vec![vm.plugin(0, st)]);
        vm.start_agent();
        let s = vm.wait_upload(inc, "300 certificates installed", |s| {
            ext_is(s, 0, "success")
        });
        for n in &names {
            assert!(
                Path::new(STORE).join(format!("myvault.{n}")).exists(),
                "{n} not installed"
            );
        }
        let e = kvvm(&s).unwrap().extension.clone().unwrap();
        let size = fs::metadata(vm.ext_dir().join("status/0.status"))
            .unwrap()
            .len();
        assert_eq!(
            e.substatus.len(),
            300,
            "the agent passed on {} substatus entries; kvvm's status file is {size} bytes (the agent's limit is 131072)",
            e.substatus.len()
        );
        assert!(e.substatus.iter().all(|ss| ss.status == "success"));
    });
}

/// How 2.7.3 reads what the handler writes, pinned with kvvm's worker stopped so that the test owns the files:
/// the heartbeat's status replaces the handler status (its message does not: 2.15 replaces that too); a status
/// file with only `status.status` is accepted; one above 128 KiB is passed on truncated (message cut to 1 KiB,
/// substatus dropped past the budget), not rejected; a missing one is re-read (5 × 2 s) and then reported as
/// transitioning, code 0, with the agent's own `[ExtensionStatusError]` message.
#[test]
fn the_agent_reads_heartbeat_and_status_files_as_2_7_3_does() {
    with_real_agent(
        "the_agent_reads_heartbeat_and_status_files_as_2_7_3_does",
        || {
            let (vm, _, _) = enabled_vm();
            realagent::kill_all(&vm.kvvm_exe(vm.version()), Duration::from_secs(5));
            let status_file = vm.ext_dir().join("status/0.status");
            let write = |path: &Path, v: &Value| fs::write(path, v.to_string()).unwrap();

            let hb = json!([{"version": 1.0, "heartbeat": {"status": "NotReady", "code": 7,
            "formattedMessage": {"lang": "en-US", "message": "heartbeat says not ready"}}}]);
            let t = Instant::now();
            write(&vm.ext_dir().join("heartbeat.log"), &hb);
            let s = vm.wait_upload_since(t, "the heartbeat's status reported", |s| {
                kvvm(s).is_some_and(|h| h.status == "NotReady")
            });
            let h = kvvm(&s).unwrap();
            assert_eq!(
                h.message.as_deref(),
                Some("Plugin enabled"),
                "2.7.3 keeps its own message: {h:#?}"
            );
            assert_eq!(h.code, 0, "the code stays the handler's: {h:#?}");

            let t = Instant::now();
            write(&status_file, &json!([{"status": {"status": "warning"}}]));
            vm.wait_upload_since(t, "a minimal status file accepted", |s| {
                ext_is(s, 0, "warning")
            });

            let long = "x".repeat(5000);
            let subs: Vec<Value> = (0..40)
                .map(|i| {
                    json!({"name": format!("sub{i:02}"), "status": "success", "code": 0,
                "formattedMessage": {"lang": "en-US", "message": "y".repeat(4000)}})
                })
                .collect();
            let big = json!([{"version": 1.0, "timestampUTC": "2026-12-02T00:00:00Z", "status": {
            "name": NAME, "operation": "Enable", "status": "success", "code": 0,
            "formattedMessage": {"lang": "en-US", "message": long}, "substatus": subs}}]);
            assert!(big.to_string().len() > 128 * 1024);
            let t = Instant::now();
            write(&status_file, &big);
            let s = vm.wait_upload_since(t, "an oversized status file passed on truncated", |s| {
                ext_is(s, 0, "success")
            });
            let e = kvvm(&s).unwrap().extension.clone().unwrap();
            assert_eq!(e.message, format!("{} ... [TRUNCATED]", &long[..1024]));
            // The budget: 1,040 (message cut to 1,024 + " ... [TRUNCATED]") + 4,005 per entry ("subNN" + 4,000)
            // stays within 131,072 for 32 entries.
            assert_eq!(e.substatus.len(), 32);
            assert_eq!(e.substatus[0].name, "sub00");

            let t = Instant::now();
            fs::remove_file(&status_file).unwrap();
            let s =
                vm.wait_upload_since(t, "a missing status file reported as transitioning", |s| {
                    ext_is(s, 0, "transitioning")
                });
            let e = kvvm(&s).unwrap().extension.clone().unwrap();
            assert_eq!(e.code, 0);
            assert_eq!(
                e.message,
                format!(
                    "This status is being reported by the Guest Agent since no status file was reported by \
                 extension {NAME}: [ExtensionStatusError] Status file {} does not exist",
                    status_file.display()
                )
            );
        },
    );
}

/// A plugin that simply vanishes from the goal state (no `uninstall` state first) is only deleted by 2.7.3's
/// clean-up: no disable, no uninstall runs. (CRP sends `uninstall` first; this is what happens if it does not.)
#[test]
fn a_plugin_dropped_from_the_goal_state_is_deleted_without_running_a_command() {
    with_real_agent(
        "a_plugin_dropped_from_the_goal_state_is_deleted_without_running_a_command",
        || {
            let (vm, _, _) = enabled_vm();
            let inc = vm.wire().publish(vec![]);
            vm.wait_upload(inc, "the handler is no longer reported", |s| {
                kvvm(s).is_none()
            });
            vm.wait_until("the directory is removed", || !vm.ext_dir().exists());
            let verbs: Vec<String> = vm.agent_verbs().into_iter().map(|(_, verb)| verb).collect();
            assert_eq!(
                verbs,
                ["install", "enable"],
                "no command ran for the removal"
            );
            // Nobody told the worker, but it notices its directory is gone and exits (certificates stay).
            vm.wait_until("the worker exits by itself", || {
                vm.processes_of(vm.version()).is_empty()
            });
        },
    );
}

/// A plain HTTP/1.1 exchange (the fake wire server's own test needs no namespace).
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The fake wire server answers as the agent's client code expects, including its refusals: a stale
/// incarnation is 410 Gone, certificates need the transport-certificate headers, FastTrack is "not supported",
/// and a status blob PUT through the HostGAPlugin is decoded and kept.
#[test]
fn the_fake_wire_server_follows_the_protocol() {
    let wire = WireServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let addr: std::net::SocketAddr = wire
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let v = [
        ("x-ms-version", "2012-11-30"),
        ("x-ms-agent-name", "WALinuxAgent"),
    ];
    let (code, body) = http(addr, "GET", "/?comp=versions", &[], b"");
    assert_eq!(code, 200);
    assert!(
        body.contains("<Preferred>") && body.contains("2012-11-30"),
        "{body}"
    );
    let (code, _) = http(addr, "GET", "/machine/?comp=goalstate", &[], b"");
    assert_eq!(code, 400, "x-ms-version is required");
    let inc = wire.publish(vec![Plugin::enabled(NAME, "1.0.0", 3, json!({"a": "<&>"}))]);
    let (code, gs) = http(addr, "GET", "/machine/?comp=goalstate", &v, b"");
    assert_eq!(code, 200);
    assert!(
        gs.contains(&format!("<Incarnation>{inc}</Incarnation>")),
        "{gs}"
    );
    let url = |kind: &str, inc: u64| {
        let start = gs.find(&format!("type={kind}")).unwrap();
        let open = gs[..start].rfind('>').unwrap() + 1;
        let close = start + gs[start..].find('<').unwrap();
        let full = gs[open..close].replace("&amp;", "&");
        let path = full.trim_start_matches(wire.base_url()).to_string();
        path.replace(
            &format!("incarnation={}", wire.incarnation()),
            &format!("incarnation={inc}"),
        )
    };
    let (code, ext) = http(addr, "GET", &url("extensionsConfig", inc), &v, b"");
    assert_eq!(code, 200);
    assert!(
        ext.contains(r#"state="enabled""#) && ext.contains(r#"seqNo="3""#),
        "{ext}"
    );
    assert!(
        ext.contains("&lt;&amp;&gt;"),
        "settings are XML-escaped: {ext}"
    );
    let (code, _) = http(addr, "GET", &url("extensionsConfig", inc - 1), &v, b"");
    assert_eq!(code, 410, "a stale incarnation is gone");
    let (code, _) = http(addr, "GET", &url("certificates", inc), &v, b"");
    assert_eq!(code, 400, "certificates need the transport certificate");
    let cert = [
        v[0],
        v[1],
        ("x-ms-cipher-name", "DES_EDE3_CBC"),
        ("x-ms-guest-agent-public-x509-cert", "MIIB"),
    ];
    let (code, certs) = http(addr, "GET", &url("certificates", inc), &cert, b"");
    assert_eq!(code, 200);
    assert!(
        !certs.contains("<Data>"),
        "an empty certificate set: {certs}"
    );

    let hgap = wire.host_plugin_addr().unwrap();
    let (code, versions) = http(hgap, "GET", "/versions", &[], b"");
    assert_eq!(code, 200);
    assert!(versions.contains("2015-09-01"), "{versions}");
    let (code, _) = http(hgap, "GET", "/vmSettings", &[], b"");
    assert_eq!(code, 404, "FastTrack is not supported");
    let status = json!({"version": "1.1", "aggregateStatus": {"guestAgentStatus": {"version": "2.7.3.0", "status": "Ready"},
        "handlerAggregateStatus": [{"handlerName": NAME, "handlerVersion": "1.0.0", "status": "Ready", "code": 0,
            "runtimeSettingsStatus": {"sequenceNumber": 3, "settingsStatus": {"status": {"name": NAME,
                "operation": "Enable", "status": "success", "code": 0,
                "formattedMessage": {"lang": "en-US", "message": "ok"}}}}}]}});
    let (code, _) = http(
        addr,
        "PUT",
        "/statusblob/x/status?sv=1",
        &[("x-ms-blob-type", "BlockBlob")],
        status.to_string().as_bytes(),
    );
    assert_eq!(code, 201);
    assert_eq!(wire.latest().unwrap().channel, "direct");
    let wrapped = json!({
        "requestUri": format!("{}/statusblob/x/status?sv=1", wire.base_url()),
        "headers": [{"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"}],
        "content": base64::engine::general_purpose::STANDARD.encode(status.to_string()),
    });
    let (code, _) = http(hgap, "PUT", "/status", &[], wrapped.to_string().as_bytes());
    assert_eq!(code, 410, "the HostGAPlugin checks the container id");
    let container = gs
        .split("<ContainerId>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_string();
    let (code, _) = http(
        hgap,
        "PUT",
        "/status",
        &[("x-ms-containerid", &container)],
        wrapped.to_string().as_bytes(),
    );
    assert_eq!(code, 200);
    let up = wire.latest().unwrap();
    assert_eq!(up.channel, "HostGAPlugin");
    let h = up.handler(NAME).unwrap();
    let e = h.extension.as_ref().unwrap();
    assert_eq!(
        (h.status.as_str(), e.sequence_number, e.status.as_str()),
        ("Ready", Some(3), "success")
    );
}
