//! Tests of the waagent simulator itself, against a hand-made fake handler package (a shell script that
//! records every call), so that the lifecycle tests of the real package can trust what the simulator does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kvvm_sim::waagent::{
    AGENT_PATH, Agent, DAEMON_VERSION, DAEMON_VERSION_VAR, HANDLER_ENVIRONMENT_KEYS, HANDLER_NAME,
    HandlerState, NOT_RUN, SUPPORTED_FEATURES, Settings, StatusRule, StatusValue, Timeouts,
    UpdateMode, Verb, WIRE_PROTOCOL_ADDRESS, WaagentError, ZipEntry, write_zip,
};
use serde_json::json;

/// The fake handler: logs "<version> <verb> <seq>" to $SIM_DIR/calls, dumps its environment and cwd, and
/// behaves per verb as $SIM_DIR/<verb>.mode says (ok, fail, hang, chatty).
const FAKE_HANDLER: &str = r#"#!/bin/sh
verb=$1
d=${SIM_DIR:?}
v=$AZURE_GUEST_AGENT_EXTENSION_VERSION
echo "$v $verb $ConfigSequenceNumber" >> "$d/calls"
env | sort > "$d/$v-$verb.env"
pwd > "$d/$v-$verb.cwd"
[ -f mrseq ] && echo "$v $verb sees mrseq=$(cat mrseq)" >> "$d/calls"
[ -f "status/$ConfigSequenceNumber.status" ] && echo "$v $verb sees status" >> "$d/calls"
mode=ok
[ -f "$d/$verb.mode" ] && mode=$(cat "$d/$verb.mode")
case "$mode" in
fail) echo "failing $verb" >&2; exit 3 ;;
hang)
    echo "hanging"
    sleep 600 & echo $! > "$d/group-child.pid"
    setsid sleep 600 & echo $! > "$d/detached-child.pid"
    wait
    ;;
chatty) i=0; while [ $i -lt 100 ]; do echo "0123456789012345678901234567890123456789012345678901234567890123456789"; i=$((i+1)); done ;;
esac
if [ "$verb" = enable ]; then
    echo "$ConfigSequenceNumber" > mrseq
    printf '[{"version":1.0,"timestampUTC":"2026-11-22T10:00:00Z","status":{"name":"fake","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"enabled"}}}]' > "status/$ConfigSequenceNumber.status"
    printf '[{"version":1.0,"heartbeat":{"status":"Ready","code":0,"formattedMessage":{"lang":"en-US","message":"alive"}}}]' > heartbeat.log
fi
exit 0
"#;

fn manifest(extra: &str) -> String {
    format!(
        r#"[{{"version": 1.0, "handlerManifest": {{
            "installCommand": "handler install", "uninstallCommand": "handler uninstall",
            "updateCommand": "handler update", "enableCommand": "handler enable",
            "disableCommand": "handler disable", "rebootAfterInstall": false,
            "reportHeartbeat": "true"{extra}}}}}]"#
    )
}

struct Fixture {
    _tmp: tempfile::TempDir,
    sim: PathBuf,
    packages: PathBuf,
    agent: Agent,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let sim = tmp.path().join("sim");
        let packages = tmp.path().join("packages");
        for d in [&sim, &packages] {
            fs::create_dir_all(d).unwrap();
        }
        let agent = Agent::new(&tmp.path().join("lib"), &tmp.path().join("log"))
            .with_env("SIM_DIR", sim.to_str().unwrap());
        Fixture {
            _tmp: tmp,
            sim,
            packages,
            agent,
        }
    }

    fn package(&self, version: &str, manifest_text: &str) -> PathBuf {
        let zip = self.packages.join(format!("{HANDLER_NAME}-{version}.zip"));
        write_zip(
            &zip,
            &[
                ZipEntry::new("HandlerManifest.json", manifest_text, 0o600),
                // Stored 0755: the mode must not survive; u+x is what makes it runnable.
                ZipEntry::new("handler", FAKE_HANDLER, 0o755),
                ZipEntry::new("bin/tool", "#!/bin/sh\n", 0o4777),
            ],
        )
        .unwrap();
        zip
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.sim.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn env_of(&self, version: &str, verb: &str) -> Vec<(String, String)> {
        fs::read_to_string(self.sim.join(format!("{version}-{verb}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mode(&self, verb: &str, mode: &str) {
        fs::write(self.sim.join(format!("{verb}.mode")), mode).unwrap();
    }
}

fn var<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn umask() -> u32 {
    // SAFETY: umask only swaps the process mask; nextest runs each test in its own process.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

#[test]
fn unpack_drops_stored_modes_and_adds_user_exec() {
    let f = Fixture::new();
    let ext = f.agent.unpack(&f.package("1.0.0", &manifest(""))).unwrap();
    assert_eq!(
        ext.dir,
        f.agent.root().join(format!("{HANDLER_NAME}-1.0.0"))
    );
    assert_eq!(ext.version, "1.0.0");
    let expected = (0o666 & !umask()) | 0o100;
    for file in ["HandlerManifest.json", "handler", "bin/tool"] {
        let mode = fs::metadata(ext.dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, expected, "{file}: mode {mode:o}, want {expected:o}");
    }
    for dir in ["config", "status"] {
        let mode = fs::metadata(ext.dir.join(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{dir}");
    }
}

#[test]
fn manifest_booleans_and_update_mode_follow_waagent() {
    let f = Fixture::new();
    let zip = f.package("1.0.0", &manifest(r#", "continueOnUpdateFailure": "yes""#));
    let m = f.agent.unpack(&zip).unwrap().manifest;
    assert!(m.report_heartbeat, "the string \"true\" counts as true");
    assert!(
        !m.continue_on_update_failure,
        "any other string counts as false"
    );
    assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    assert_eq!(
        m.update_mode,
        UpdateMode::UpdateWithInstall,
        "absent updateMode means UpdateWithInstall"
    );
    assert_eq!(m.command(Verb::Disable), "handler disable");

    let zip = f.package(
        "1.0.1",
        &manifest(r#", "updateMode": "UpdateWithoutInstall""#),
    );
    assert_eq!(
        f.agent.unpack(&zip).unwrap().manifest.update_mode,
        UpdateMode::UpdateWithoutInstall
    );
}

#[test]
fn manifest_without_a_command_or_package_without_version_is_rejected() {
    let f = Fixture::new();
    let text = manifest("").replace(r#""disableCommand": "handler disable","#, "");
    let err = f.agent.unpack(&f.package("1.0.0", &text)).unwrap_err();
    assert!(
        matches!(&err, WaagentError::Manifest { code: 1003, detail, .. } if detail == "\"disableCommand\" is missing"),
        "{err}"
    );

    let unnamed = f.packages.join("kvvm.zip");
    fs::copy(f.package("1.0.0", &manifest("")), &unnamed).unwrap();
    assert!(matches!(
        f.agent.unpack(&unnamed),
        Err(WaagentError::PackageName { .. })
    ));
    assert_eq!(
        f.agent.unpack_as(&unnamed, "2.0.0").unwrap().version,
        "2.0.0"
    );
}

#[test]
fn install_and_enable_runs_commands_with_waagent_environment() {
    let f = Fixture::new();
    let public = json!({"secretsManagementSettings": {"observedCertificates": []}});
    let seq = f
        .agent
        .install_and_enable(
            &f.package("1.0.0", &manifest("")),
            3,
            &Settings::public(public.clone()),
        )
        .unwrap();
    assert!(seq.ok(), "{}", seq.describe());
    assert_eq!(seq.commands(), ["1.0.0 install", "1.0.0 enable"]);
    assert_eq!(f.calls(), ["1.0.0 install 3", "1.0.0 enable 3"]);
    let ext = seq.extension.clone().unwrap();
    assert_eq!(f.agent.handler_state(&ext), HandlerState::Enabled);

    for verb in ["install", "enable"] {
        let env = f.env_of("1.0.0", verb);
        let dir = ext.dir.to_str().unwrap();
        assert_eq!(var(&env, "PATH"), Some(AGENT_PATH));
        assert_eq!(var(&env, "ConfigSequenceNumber"), Some("3"));
        assert_eq!(var(&env, "AZURE_GUEST_AGENT_EXTENSION_PATH"), Some(dir));
        assert_eq!(
            var(&env, "AZURE_GUEST_AGENT_EXTENSION_VERSION"),
            Some("1.0.0")
        );
        assert_eq!(
            var(&env, "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS"),
            Some(WIRE_PROTOCOL_ADDRESS)
        );
        assert_eq!(
            var(&env, "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES"),
            Some(SUPPORTED_FEATURES)
        );
        assert_eq!(
            var(&env, "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"),
            Some(NOT_RUN)
        );
        assert_eq!(var(&env, "VERSION"), None);
        assert_eq!(
            var(&env, "HOME"),
            None,
            "only the agent's environment reaches the handler"
        );
        let cwd = fs::read_to_string(f.sim.join(format!("1.0.0-{verb}.cwd"))).unwrap();
        assert_eq!(cwd.trim(), dir);
    }

    let he: serde_json::Value =
        serde_json::from_slice(&fs::read(ext.handler_environment_file()).unwrap()).unwrap();
    let he0 = &he[0];
    assert_eq!(he0["name"], HANDLER_NAME);
    assert_eq!(he0["version"], 1.0);
    let h = &he0["handlerEnvironment"];
    let log_dir = f.agent.log_root().join(HANDLER_NAME);
    assert_eq!(h["logFolder"], log_dir.to_str().unwrap());
    assert_eq!(h["configFolder"], ext.config_dir().to_str().unwrap());
    assert_eq!(h["statusFolder"], ext.status_dir().to_str().unwrap());
    assert_eq!(h["heartbeatFile"], ext.heartbeat_file().to_str().unwrap());
    assert_eq!(h["eventsFolder"], log_dir.join("events").to_str().unwrap());
    let mut keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = HANDLER_ENVIRONMENT_KEYS;
    want.sort_unstable();
    assert_eq!(keys, want, "exactly the keys waagent writes");
    assert!(log_dir.join("events").is_dir());

    let settings: serde_json::Value =
        serde_json::from_slice(&fs::read(ext.settings_file(3)).unwrap()).unwrap();
    assert_eq!(
        settings,
        json!({"runtimeSettings": [{"handlerSettings": {
            "publicSettings": public, "protectedSettings": null, "protectedSettingsCertThumbprint": null}}]})
    );

    let status = f.agent.read_status(&ext, 3).unwrap();
    assert!(!status.missing);
    assert_eq!(status.status, StatusValue::Success);
    assert_eq!(status.message, "enabled");
    let hb = f.agent.read_heartbeat(&ext).unwrap();
    assert_eq!(
        (hb.status.as_str(), hb.code, hb.reported_status()),
        ("Ready", 0, "Ready")
    );
}

#[test]
fn failing_install_stops_the_sequence_with_waagents_code() {
    let f = Fixture::new();
    f.mode("install", "fail");
    let seq = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap();
    assert_eq!(seq.commands(), ["1.0.0 install"]);
    let failure = seq.failure.clone().unwrap();
    assert_eq!((failure.step.as_str(), failure.code), ("install", 1007));
    let install = seq.result("1.0.0", Verb::Install).unwrap();
    assert_eq!(install.exit_code, Some(3));
    assert_eq!(install.stderr, "failing install\n");
    assert_eq!(install.output, "[stdout]\n\n\n[stderr]\nfailing install\n");
    let ext = seq.extension.unwrap();
    assert_eq!(
        fs::read_to_string(ext.settings_file(0)).unwrap(),
        "",
        "no settings → empty 0.settings"
    );
    assert_eq!(f.agent.handler_state(&ext), HandlerState::NotInstalled);
}

#[test]
fn error_codes_per_verb() {
    let codes: Vec<u32> = Verb::ALL.iter().map(|v| v.error_code()).collect();
    assert_eq!(codes, [1007, 1000, 1008, 1009, 1010]);
}

#[test]
fn update_runs_old_and_new_commands_in_waagent_order() {
    let f = Fixture::new();
    let first = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 1, &Settings::Empty)
        .unwrap();
    let old = first.extension.unwrap();
    fs::remove_file(f.sim.join("calls")).unwrap();

    let seq = f
        .agent
        .update(
            &old,
            &f.package("1.1.0", &manifest("")),
            1,
            &Settings::Empty,
        )
        .unwrap();
    assert!(seq.ok(), "{}", seq.describe());
    assert_eq!(
        seq.commands(),
        [
            "1.0.0 disable",
            "1.1.0 update",
            "1.0.0 uninstall",
            "1.1.0 install",
            "1.1.0 enable"
        ]
    );
    // mrseq and the status files were copied before the new handler's update ran.
    assert!(
        f.calls().contains(&"1.1.0 update sees mrseq=1".to_string()),
        "{:?}",
        f.calls()
    );
    assert!(
        f.calls().contains(&"1.1.0 update sees status".to_string()),
        "{:?}",
        f.calls()
    );
    assert!(
        !old.dir.exists(),
        "the old directory is deleted before the new install"
    );

    let update = f.env_of("1.1.0", "update");
    assert_eq!(var(&update, "VERSION"), Some("1.1.0"));
    assert_eq!(
        var(&update, "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"),
        Some("1.0.0")
    );
    assert_eq!(
        var(&update, "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"),
        Some("0")
    );
    for verb in ["install", "enable"] {
        let env = f.env_of("1.1.0", verb);
        assert_eq!(
            var(&env, "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"),
            Some("0"),
            "{verb}"
        );
    }
    let new = seq.extension.unwrap();
    assert_eq!(f.agent.handler_state(&new), HandlerState::Enabled);
}

#[test]
fn update_without_install_skips_install_and_a_failing_update_stops() {
    let f = Fixture::new();
    let old = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap()
        .extension
        .unwrap();
    let without = manifest(r#", "updateMode": "UpdateWithoutInstall""#);
    let seq = f
        .agent
        .update(&old, &f.package("1.1.0", &without), 0, &Settings::Empty)
        .unwrap();
    assert_eq!(
        seq.commands(),
        [
            "1.0.0 disable",
            "1.1.0 update",
            "1.0.0 uninstall",
            "1.1.0 enable"
        ]
    );

    let old = seq.extension.unwrap();
    f.mode("update", "fail");
    let seq = f
        .agent
        .update(
            &old,
            &f.package("1.2.0", &manifest("")),
            0,
            &Settings::Empty,
        )
        .unwrap();
    assert_eq!(seq.commands(), ["1.1.0 disable", "1.2.0 update"]);
    assert_eq!(seq.failure.unwrap().code, 1008);
    assert!(
        old.dir.exists(),
        "a failed update leaves the old handler in place"
    );
    assert_eq!(
        f.agent.handler_state(&seq.extension.unwrap()),
        HandlerState::FailedUpgrade
    );
}

#[test]
fn uninstall_disables_then_uninstalls_then_removes_the_directory() {
    let f = Fixture::new();
    let ext = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap()
        .extension
        .unwrap();
    let seq = f.agent.uninstall(&ext, 0).unwrap();
    assert!(seq.ok(), "{}", seq.describe());
    assert_eq!(seq.commands(), ["1.0.0 disable", "1.0.0 uninstall"]);
    assert!(!ext.dir.exists());
}

#[test]
fn timeout_kills_the_whole_process_group_but_not_a_new_session() {
    let f = Fixture::new();
    let agent = f.agent.clone().with_timeouts(Timeouts {
        enable: Duration::from_secs(1),
        ..Timeouts::default()
    });
    f.mode("enable", "hang");
    let seq = agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap();
    let enable = seq.result("1.0.0", Verb::Enable).unwrap();
    assert!(enable.timed_out);
    assert_eq!((enable.exit_code, enable.error_code()), (None, Some(1011)));
    assert_eq!(enable.stdout, "hanging\n");
    assert_eq!(seq.failure.as_ref().unwrap().code, 1011);

    let pid = |name: &str| -> i32 {
        fs::read_to_string(f.sim.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (group_child, detached) = (pid("group-child.pid"), pid("detached-child.pid"));
    assert!(
        wait_gone(group_child),
        "a child in the command's process group must be SIGKILLed"
    );
    assert!(
        alive(detached),
        "a child that called setsid is out of waagent's reach"
    );
    // SAFETY: plain kill of the sleep this test started.
    unsafe {
        libc::kill(detached, libc::SIGKILL);
    }
}

fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) -> bool {
    for _ in 0..200 {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn only_the_first_3200_bytes_of_output_are_read() {
    let f = Fixture::new();
    f.mode("install", "chatty");
    let seq = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap();
    let install = seq.result("1.0.0", Verb::Install).unwrap();
    assert_eq!(install.stdout.len(), 3200);
    assert!(install.output.chars().count() <= 3200);
}

fn status_ext(f: &Fixture) -> kvvm_sim::waagent::Extension {
    f.agent.unpack(&f.package("1.0.0", &manifest(""))).unwrap()
}

const GOOD_STATUS: &str = r#"[{"version": 1.0, "timestampUTC": "2026-11-22T10:00:00Z",
  "status": {"name": "n", "operation": "Enable", "status": "warning", "code": 0,
    "formattedMessage": {"lang": "en-US", "message": "m"},
    "substatus": [{"name": "s", "status": "success", "code": 0,
                   "formattedMessage": {"lang": "en-US", "message": "sm"}}]}}]"#;

#[test]
fn status_validation_names_the_rule_that_failed() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let agent = f.agent.clone().with_status_retries(1, Duration::ZERO);
    let cases: &[(&str, &str, StatusRule)] = &[
        ("not json", "[{", StatusRule::NotJson),
        ("object, not list", r#"{"status": {}}"#, StatusRule::NotList),
        ("empty list", "[]", StatusRule::EmptyList),
        (
            "capitalised FormattedMessage",
            r#""formattedMessage": {"#,
            StatusRule::WrongCaseKey,
        ),
        (
            "capitalised Lang",
            r#""lang": "en-US", "message": "m""#,
            StatusRule::WrongCaseKey,
        ),
        (
            "status Success",
            r#""status": "warning""#,
            StatusRule::BadStatusValue,
        ),
        (
            "substatus Success",
            r#""status": "success""#,
            StatusRule::BadStatusValue,
        ),
        ("code as string", r#""code": 0,"#, StatusRule::WrongType),
        (
            "no operation",
            r#""operation": "Enable", "#,
            StatusRule::MissingKey,
        ),
        (
            "local timestamp",
            "2026-11-22T10:00:00Z",
            StatusRule::BadTimestamp,
        ),
        (
            "substatus not a list",
            r#""substatus": ["#,
            StatusRule::WrongType,
        ),
    ];
    for (what, pattern, rule) in cases {
        let text = match *what {
            "not json" | "object, not list" | "empty list" => pattern.to_string(),
            "capitalised FormattedMessage" => {
                GOOD_STATUS.replacen(pattern, r#""FormattedMessage": {"#, 1)
            }
            "capitalised Lang" => {
                GOOD_STATUS.replacen(pattern, r#""Lang": "en-US", "Message": "m""#, 1)
            }
            "status Success" => GOOD_STATUS.replacen(pattern, r#""status": "Success""#, 1),
            "substatus Success" => GOOD_STATUS.replacen(pattern, r#""status": "Success""#, 1),
            "code as string" => GOOD_STATUS.replacen(pattern, r#""code": "0","#, 1),
            "no operation" => GOOD_STATUS.replacen(pattern, "", 1),
            "local timestamp" => GOOD_STATUS.replacen(pattern, "2026-11-22T10:00:00+01:00", 1),
            "substatus not a list" => GOOD_STATUS
                .replacen(pattern, r#""substatus": {"x": "#, 1)
                .replacen("}}]}}]", "}}}}}]", 1),
            _ => unreachable!(),
        };
        assert_ne!(text, GOOD_STATUS, "{what}: the test edit did not apply");
        fs::write(ext.status_file(7), &text).unwrap();
        let err = agent.read_status(&ext, 7).unwrap_err();
        assert_eq!(err.status_rule(), Some(*rule), "{what}: {err}");
    }

    fs::write(ext.status_file(7), GOOD_STATUS).unwrap();
    let ok = agent.read_status(&ext, 7).unwrap();
    assert_eq!(
        (ok.status, ok.code, ok.operation.as_str()),
        (StatusValue::Warning, 0, "Enable")
    );
    assert_eq!(ok.substatus.len(), 1);
    assert!(!ok.truncated);
}

#[test]
fn status_error_messages_say_what_to_fix() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let agent = f.agent.clone().with_status_retries(1, Duration::ZERO);
    fs::write(
        ext.status_file(0),
        GOOD_STATUS.replacen(r#""status": "warning""#, r#""status": "Success""#, 1),
    )
    .unwrap();
    let err = agent.read_status(&ext, 0).unwrap_err().to_string();
    assert!(err.ends_with(
        "bad status value: status/status is \"Success\", not one of [\"transitioning\", \"success\", \"warning\", \
         \"error\"] exactly (waagent reports any other value as \"error\") (waagent reports error 1012)"
    ), "{err}");
    fs::write(
        ext.status_file(0),
        GOOD_STATUS.replacen(r#""formattedMessage": {"#, r#""FormattedMessage": {"#, 1),
    )
    .unwrap();
    let err = agent.read_status(&ext, 0).unwrap_err().to_string();
    assert!(
        err.contains("\"FormattedMessage\" must be spelled \"formattedMessage\""),
        "{err}"
    );
}

#[test]
fn missing_status_is_transitioning_and_oversized_status_is_truncated() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let agent = f
        .agent
        .clone()
        .with_status_retries(2, Duration::from_millis(1));
    let missing = agent.read_status(&ext, 9).unwrap();
    assert!(missing.missing);
    assert_eq!(
        (missing.status, missing.code),
        (StatusValue::Transitioning, 0)
    );

    let long = "x".repeat(200 * 1024);
    fs::write(
        ext.status_file(9),
        GOOD_STATUS.replacen(r#""message": "m""#, &format!(r#""message": "{long}""#), 1),
    )
    .unwrap();
    let big = agent.read_status(&ext, 9).unwrap();
    assert!(big.truncated);
    assert!(big.message.ends_with(" ... [TRUNCATED]"));
    assert!(big.message.len() < 1100);
}

#[test]
fn heartbeat_is_validated_and_goes_unresponsive_after_600_seconds() {
    let f = Fixture::new();
    let ext = f
        .agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), 0, &Settings::Empty)
        .unwrap()
        .extension
        .unwrap();
    let hb_file = ext.heartbeat_file();
    let stale = SystemTime::now() - Duration::from_secs(601);
    fs::File::options()
        .write(true)
        .open(&hb_file)
        .unwrap()
        .set_modified(stale)
        .unwrap();
    let hb = f.agent.read_heartbeat(&ext).unwrap();
    assert!(!hb.responsive());
    assert_eq!(hb.reported_status(), "Unresponsive");

    fs::write(&hb_file, r#"[{"version":1.0,"heartbeat":{"status":"ready","code":0,"formattedMessage":{"lang":"en-US","message":"m"}}}]"#).unwrap();
    assert!(matches!(
        f.agent.read_heartbeat(&ext),
        Err(WaagentError::Heartbeat { .. })
    ));

    let no_heartbeat = manifest("").replace(
        r#""reportHeartbeat": "true""#,
        r#""reportHeartbeat": false"#,
    );
    let ext = f.agent.unpack(&f.package("2.0.0", &no_heartbeat)).unwrap();
    let err = f.agent.read_heartbeat(&ext).unwrap_err().to_string();
    assert!(err.contains("waagent never reads it"), "{err}");
}

// ---- Where the real agent proved our simulator wrong (issue 12): one test per difference. -----------------

fn installed(f: &Fixture, agent: &Agent, seq: u64) -> kvvm_sim::waagent::Extension {
    let run = agent
        .install_and_enable(&f.package("1.0.0", &manifest("")), seq, &Settings::Empty)
        .unwrap();
    assert!(run.ok(), "{}", run.describe());
    run.extension.unwrap()
}

#[test]
fn the_heartbeat_replaces_the_handler_status_the_agent_reports() {
    let f = Fixture::new();
    let ext = installed(&f, &f.agent, 0);
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.message.as_str()), ("Ready", "alive"));
    assert!(r.from_heartbeat);

    // The fake handler's disable leaves its Ready heartbeat behind: that stale Ready is what the agent
    // reports, not its own "Plugin disabled".
    f.agent.disable(&ext, 0).unwrap().unwrap();
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.message.as_str()), ("Ready", "alive"));

    fs::write(
        ext.heartbeat_file(),
        r#"[{"version":1.0,"heartbeat":{"status":"NotReady","code":3,"formattedMessage":{"lang":"en-US","message":"disabled; worker stopped"}}}]"#,
    )
    .unwrap();
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.code, r.message.as_str()),
        ("NotReady", 0, "disabled; worker stopped"),
        "status and message from the heartbeat, code from the agent"
    );

    fs::remove_file(ext.heartbeat_file()).unwrap();
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.code, r.message.as_str()),
        ("NotReady", -1, "Failed to get heart beat file")
    );

    // Without reportHeartbeat the agent's own record is reported.
    let f = Fixture::new();
    let zip = f.package(
        "1.0.0",
        &manifest("").replace(
            r#""reportHeartbeat": "true""#,
            r#""reportHeartbeat": false"#,
        ),
    );
    let ext = f
        .agent
        .install_and_enable(&zip, 0, &Settings::Empty)
        .unwrap()
        .extension
        .unwrap();
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.message.as_str(), r.from_heartbeat),
        ("Ready", "Plugin enabled", false)
    );
    f.agent.disable(&ext, 0).unwrap().unwrap();
    let r = f.agent.handler_status(&ext).unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.message.as_str()),
        ("NotReady", "Plugin disabled")
    );
}

#[test]
fn the_package_zip_is_deleted_after_extraction() {
    let f = Fixture::new();
    let zip = f.package("1.0.0", &manifest(""));
    let ext = f
        .agent
        .install_and_enable(&zip, 0, &Settings::Empty)
        .unwrap()
        .extension
        .unwrap();
    let zips: Vec<String> = fs::read_dir(f.agent.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".zip"))
        .collect();
    assert!(zips.is_empty(), "{zips:?}");
    assert!(zip.is_file(), "the caller's package is untouched");
    assert!(ext.dir.join("handler").is_file());
}

#[test]
fn a_missing_status_file_gets_the_agents_message_after_waagents_rereads() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let quick = f.agent.clone().with_status_retries(1, Duration::ZERO);
    let missing = quick.read_status(&ext, 4).unwrap();
    assert!(missing.missing);
    assert_eq!(
        missing.message,
        format!(
            "This status is being reported by the Guest Agent since no status file was reported by extension \
             {HANDLER_NAME}: [ExtensionStatusError] Status file {} does not exist",
            ext.status_file(4).display()
        )
    );
    // waagent's 5 reads 2 s apart still find a file written a few seconds late.
    let agent = f.agent.clone().with_waagent_timing();
    let path = ext.status_file(4);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        fs::write(path, GOOD_STATUS).unwrap();
    });
    let late = agent.read_status(&ext, 4).unwrap();
    writer.join().unwrap();
    assert!(!late.missing, "{late:?}");
}

#[test]
fn a_disabled_goal_state_writes_no_settings_and_passes_its_own_sequence_number() {
    let f = Fixture::new();
    let ext = installed(&f, &f.agent, 0);
    f.agent.disable(&ext, 5).unwrap().unwrap();
    assert!(
        f.calls().iter().any(|c| c == "1.0.0 disable 5"),
        "{:?}",
        f.calls()
    );
    assert!(!ext.settings_file(5).exists());
    assert_eq!(f.agent.handler_state(&ext), HandlerState::Installed);
}

#[test]
fn a_restart_rewrites_the_settings_before_enable() {
    let f = Fixture::new();
    let public = json!({"secretsManagementSettings": {"observedCertificates": []}});
    let run = f
        .agent
        .install_and_enable(
            &f.package("1.0.0", &manifest("")),
            2,
            &Settings::public(public.clone()),
        )
        .unwrap();
    let ext = run.extension.unwrap();
    fs::remove_file(ext.settings_file(2)).unwrap();
    let r = f.agent.restart(&ext, 2, &Settings::public(public)).unwrap();
    assert!(r.success());
    assert!(ext.settings_file(2).is_file(), "rewritten before enable");
    assert_eq!(
        f.calls().iter().filter(|c| *c == "1.0.0 enable 2").count(),
        2
    );
    assert_eq!(
        f.calls().iter().filter(|c| *c == "1.0.0 install 2").count(),
        1,
        "no install on restart"
    );
}

#[test]
fn the_agents_own_environment_wins_over_the_variables_it_sets() {
    let f = Fixture::new();
    let agent = f
        .agent
        .clone()
        .with_env("ConfigSequenceNumber", "99")
        .with_env("LANG", "C.UTF-8");
    let ext = installed(&f, &agent, 0);
    let env = f.env_of("1.0.0", "enable");
    assert_eq!(var(&env, "ConfigSequenceNumber"), Some("99"));
    assert_eq!(var(&env, "LANG"), Some("C.UTF-8"));
    assert_eq!(var(&env, DAEMON_VERSION_VAR), Some(DAEMON_VERSION));
    assert!(ext.dir.is_dir());
}

#[test]
fn uninstall_may_take_300_seconds_and_waagent_timing_takes_about_two_seconds_a_command() {
    let t = Timeouts::default();
    assert_eq!(
        (t.install, t.enable, t.disable, t.update, t.uninstall),
        (
            Duration::from_secs(900),
            Duration::from_secs(300),
            Duration::from_secs(900),
            Duration::from_secs(900),
            Duration::from_secs(300)
        )
    );
    let f = Fixture::new();
    let agent = f.agent.clone().with_waagent_timing();
    let ext = installed(&f, &agent, 0);
    // The modelled polling: the agent sees an instant command as done after a 1 s poll and a 1 s pause.
    let r = agent.enable(&ext, 0).unwrap();
    assert!(r.duration >= Duration::from_secs(2), "{:?}", r.duration);
}

#[test]
fn a_status_file_waagent_would_accept_is_rejected_as_stricter_than_waagent() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let agent = f.agent.clone().with_status_retries(1, Duration::ZERO);
    fs::write(ext.status_file(6), r#"[{"status": {"status": "success"}}]"#).unwrap();
    let err = agent.read_status(&ext, 6).unwrap_err();
    assert_eq!(err.status_rule(), Some(StatusRule::MissingKey));
    assert!(err.to_string().contains("stricter than waagent"), "{err}");
    fs::write(
        ext.status_file(6),
        r#"[{"version": 1.0, "timestampUTC": "2026-11-22T10:00:00Z"}]"#,
    )
    .unwrap();
    let err = agent.read_status(&ext, 6).unwrap_err();
    assert!(
        !err.to_string().contains("stricter"),
        "waagent needs status too: {err}"
    );
}

#[test]
fn an_oversized_status_file_is_truncated_not_rejected() {
    let f = Fixture::new();
    let ext = status_ext(&f);
    let agent = f.agent.clone().with_status_retries(1, Duration::ZERO);
    let subs: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            json!({"name": format!("sub{i:02}"), "status": "success", "code": 0,
                   "formattedMessage": {"lang": "en-US", "message": "y".repeat(4000)}})
        })
        .collect();
    let long = "x".repeat(5000);
    let doc = json!([{"version": 1.0, "timestampUTC": "2026-11-22T10:00:00Z", "status": {
        "name": "n", "operation": "Enable", "status": "success", "code": 0,
        "formattedMessage": {"lang": "en-US", "message": long}, "substatus": subs}}]);
    assert!(doc.to_string().len() > 128 * 1024);
    fs::write(ext.status_file(8), doc.to_string()).unwrap();
    let r = agent.read_status(&ext, 8).unwrap();
    assert!(r.truncated);
    assert_eq!(
        r.status,
        StatusValue::Success,
        "passed on, not turned into an error"
    );
    assert_eq!(r.message, format!("{} ... [TRUNCATED]", &long[..1024]));
    // As the real agent does (tests/real_agent.rs): entries past the 128 KiB budget are dropped, in order.
    // The budget: 1,040 (message cut to 1,024 + " ... [TRUNCATED]") + 4,005 per entry ("subNN" + 4,000)
    // stays within 131,072 for 32 entries.
    assert_eq!(r.substatus.len(), 32);
    assert_eq!(r.substatus[0].name, "sub00");
}
