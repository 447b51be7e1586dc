//! The standalone service without systemd around it: `kvvm service` run the way `kvvm.service` runs it, with its
//! files in a temporary folder (`--settings`, `--state-dir`, `--log-dir`; the poller gets them through the
//! documented `KVVM_*` variables), in the VM-like namespace against the fake vault and IMDS. What only a real
//! systemd can show (the unit, `systemctl reload`, restarts, reboots, the packages) is in tests/systemd.rs.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::vm::Vm;
use serde_json::{Value, json};

const KVVM: &str = env!("CARGO_BIN_EXE_kvvm");
const HOST: &str = "myvault.vault.azure.net";

fn url(secret: &str) -> String {
    format!("https://{HOST}/secrets/{secret}")
}

/// A service's files in a temp folder.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn settings(&self) -> PathBuf {
        self.dir.path().join("settings.json")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn logs(&self) -> PathBuf {
        self.dir.path().join("log")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn write_settings(&self, value: &Value) {
        fs::write(self.settings(), serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }
    /// `kvvm <args>` with these files in the environment (what `kvvm status` or `kvvm wait` on a machine with
    /// the service sees).
    fn kvvm(&self, args: &[&str]) -> Output {
        Command::new(KVVM)
            .args(args)
            .env("KVVM_SETTINGS", self.settings())
            .env("KVVM_STATE_DIR", self.state())
            .env("KVVM_LOG_DIR", self.logs())
            .env_remove("AZURE_GUEST_AGENT_EXTENSION_PATH")
            .output()
            .unwrap()
    }
    /// `kvvm service` with these files given as options; stderr captured to a file.
    fn start(&self, extra_env: &[(&str, &Path)]) -> Service {
        let stderr = fs::File::create(self.dir.path().join("stderr")).unwrap();
        let mut command = Command::new(KVVM);
        command
            .arg("service")
            .arg("--settings")
            .arg(self.settings())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--log-dir")
            .arg(self.logs())
            .env_remove("AZURE_GUEST_AGENT_EXTENSION_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        Service {
            child: command.spawn().unwrap(),
        }
    }
    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
    fn log(&self) -> String {
        ["supervisor.log", "kvvm.log"]
            .iter()
            .map(|f| fs::read_to_string(self.logs().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
    fn state_json(&self) -> Option<Value> {
        serde_json::from_str(&fs::read_to_string(self.state().join("state.json")).ok()?).ok()
    }
    fn status_json(&self) -> Option<Value> {
        let v: Value =
            serde_json::from_str(&fs::read_to_string(self.state().join("status.json")).ok()?)
                .ok()?;
        Some(v[0]["status"].clone())
    }
    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&Files) -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {within:?}\nstatus: {:#?}\nstderr: {}\nlog:\n{}",
            self.status_json(),
            self.stderr(),
            self.log()
        );
    }
}

/// A running `kvvm service`, killed (with its process group's poller) if the test ends early.
struct Service {
    child: Child,
}

impl Service {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn signal(&self, sig: i32) {
        // SAFETY: signalling a process this test started.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kvvm service did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn settings(files: &Files, certs: &[&str], extra: Value) -> Value {
    let mut s = json!({"secretsManagementSettings": {
        "pollingIntervalInS": "3600",
        "certificateStoreLocation": files.store(),
        "observedCertificates": certs.iter().map(|c| url(c)).collect::<Vec<_>>(),
    }});
    for (k, v) in extra.as_object().unwrap() {
        s["secretsManagementSettings"][k] = v.clone();
    }
    s
}

fn linked(files: &Files, secret: &str) -> Option<PathBuf> {
    fs::read_link(files.store().join(format!("myvault.{secret}"))).ok()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_settings_validates_with_the_messages_enable_gives() {
    let files = Files::new();
    // Valid, with a forgiven mistake's warning.
    files.write_settings(&json!({
        "secretsManagementSettings": {"observedCertificates": [url("web")], "linkOnRenewal": true}
    }));
    let out = files.kvvm(&["check-settings"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "{}: valid: 1 observed certificate(s), polling every 3600 s\nwarning: ",
            files.settings().display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("linkOnRenewal"), "{stdout}");
    // The same file given by name, and a whole waagent settings file.
    let other = files.dir.path().join("0.settings");
    fs::write(
        &other,
        json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": {
            "secretsManagementSettings": {"observedCertificates": [url("a"), url("b")]}}}}]})
        .to_string(),
    )
    .unwrap();
    let out = files.kvvm(&["check-settings", other.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out).0.contains("valid: 2 observed certificate(s)"));
    // Invalid: exit 1, the setting, the bad value and the fix, as enable says it.
    files.write_settings(&json!({"secretsManagementSettings": {
        "observedCertificates": ["https://myvault.vault.azure.net/certificates/web"]}}));
    let out = files.kvvm(&["check-settings"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with(&format!(
            "kvvm check-settings: invalid settings in {}: secretsManagementSettings.observedCertificates[0]",
            files.settings().display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("/secrets/"), "the fix: {stderr}");
    // `{}` (what the package ships) is valid and watches nothing; a missing file says where to put one.
    fs::write(files.settings(), "{}").unwrap();
    let out = files.kvvm(&["check-settings"]);
    assert!(out.status.success());
    assert!(text(&out).0.contains("valid, but nothing to watch"));
    fs::remove_file(files.settings()).unwrap();
    let out = files.kvvm(&["check-settings"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("does not exist"), "{}", text(&out).1);
}

#[test]
fn a_service_with_bad_settings_exits_78_naming_the_setting() {
    let files = Files::new();
    files.write_settings(&json!({"secretsManagementSettings": {
        "pollingIntervalInS": "often", "observedCertificates": [url("web")]}}));
    let mut service = files.start(&[]);
    let status = service.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(78), "{}", files.stderr());
    let stderr = files.stderr();
    assert!(
        stderr.contains("secretsManagementSettings.pollingIntervalInS") && stderr.contains("often"),
        "{stderr}"
    );
    // Nothing was started: no poller lock held, no state recorded.
    assert!(files.state_json().is_none());
    fs::remove_file(files.settings()).unwrap();
    let mut service = files.start(&[]);
    assert_eq!(service.wait_exit(Duration::from_secs(10)).code(), Some(78));
    assert!(files.stderr().contains("systemctl reload kvvm"));
}

#[test]
fn every_command_answers_help_and_exits_0() {
    for command in [
        "install",
        "enable",
        "disable",
        "update",
        "uninstall",
        "service",
        "check-settings",
        "status",
        "wait",
        "sync",
        "worker",
        "poller",
    ] {
        let out = Command::new(KVVM)
            .args([command, "--help"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{command} --help: {stderr}");
        assert!(stdout.starts_with("kvvm "), "{command}: {stdout}");
        assert!(stderr.is_empty(), "{command}: {stderr}");
    }
}

#[test]
fn the_service_installs_reloads_idles_and_stops_like_the_extension_worker() {
    run_isolated(
        "the_service_installs_reloads_idles_and_stops_like_the_extension_worker",
        || {
            let vm = Vm::new();
            let v_web = vm.put_certificate("web");
            let v_api = vm.put_certificate("api");
            let files = Files::new();
            files.write_settings(&settings(
                &files,
                &["web"],
                json!({"requireInitialSync": true}),
            ));
            // systemd's notification socket, as Type=notify gives the service one.
            let notify_path = files.dir.path().join("notify");
            let notify = UnixDatagram::bind(&notify_path).unwrap();
            notify
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut service = files.start(&[("NOTIFY_SOCKET", &notify_path)]);

            // `kvvm wait` returns once the initial sync is done; then the certificate is there.
            let out = files.kvvm(&["wait", "--timeout", "60"]);
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{stdout}{stderr}\n{}", files.log());
            assert!(
                stdout.starts_with("ready: initial sync done, 1 of 1 certificate(s) installed"),
                "{stdout}"
            );
            assert_eq!(
                linked(&files, "web").unwrap(),
                PathBuf::from(format!("myvault.web.{v_web}"))
            );
            // The status names the service and its settings file.
            let status = files.status_json().unwrap();
            assert_eq!(status["status"], "success", "{status:#}");
            let message = status["formattedMessage"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("settings {}", files.settings().display()))
                    || message.contains("1 of 1"),
                "{message}"
            );
            // systemd heard READY=1 and the status line.
            let mut buf = [0u8; 1024];
            let n = notify.recv(&mut buf).unwrap();
            let note = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(note.starts_with("READY=1\nSTATUS="), "{note}");
            // `kvvm status --json` finds the service's state without being told where (the KVVM_* variables).
            let out = files.kvvm(&["status", "--json"]);
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["worker"]["supervision"], "running", "{doc:#}");
            assert_eq!(doc["worker"]["supervisorPid"], service.pid());
            assert_eq!(doc["worker"]["initialSync"], "done");
            assert_eq!(doc["certificates"][0]["version"], v_web.as_str());
            let poller = doc["worker"]["pollerPid"].as_i64().unwrap();

            // New settings on SIGHUP (what `systemctl reload kvvm` sends): the same processes apply them at once.
            files.write_settings(&settings(&files, &["web", "api"], json!({})));
            service.signal(libc::SIGHUP);
            files.wait_for(
                "api installed after the reload",
                Duration::from_secs(30),
                |f| linked(f, "api").is_some(),
            );
            assert_eq!(
                linked(&files, "api").unwrap(),
                PathBuf::from(format!("myvault.api.{v_api}"))
            );
            assert_eq!(files.state_json().unwrap()["pid"].as_i64(), Some(poller));

            // Invalid settings on SIGHUP: the running ones stay, and the log says why.
            fs::write(files.settings(), "{\"secretsManagementSettings\": 7}").unwrap();
            service.signal(libc::SIGHUP);
            files.wait_for(
                "the rejected reload in the log",
                Duration::from_secs(10),
                |f| f.log().contains("keeping settings"),
            );
            assert!(files.log().contains("secretsManagementSettings"));
            assert_eq!(
                files.state_json().unwrap()["certificates"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );

            // `{}`: nothing to watch; the worker waits, says what to add, and keeps the certificates.
            fs::write(files.settings(), "{}").unwrap();
            service.signal(libc::SIGHUP);
            files.wait_for(
                "the nothing-to-watch status",
                Duration::from_secs(10),
                |f| {
                    f.status_json().is_some_and(|s| {
                        s["formattedMessage"]["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("Nothing to watch"))
                    })
                },
            );
            let status = files.status_json().unwrap();
            assert_eq!(status["status"], "warning");
            let message = status["formattedMessage"]["message"].as_str().unwrap();
            assert!(message.contains("systemctl reload kvvm"), "{message}");
            assert!(linked(&files, "web").is_some() && linked(&files, "api").is_some());
            let out = files.kvvm(&["wait", "--timeout", "5"]);
            assert_eq!(out.status.code(), Some(1));
            assert!(
                text(&out).1.contains("nothing to watch"),
                "{}",
                text(&out).1
            );

            // Back to a certificate: the idle poller takes it up without a restart.
            files.write_settings(&settings(&files, &["web"], json!({})));
            service.signal(libc::SIGHUP);
            files.wait_for("polling again", Duration::from_secs(30), |f| {
                f.state_json().is_some_and(|s| {
                    s["certificates"].as_array().is_some_and(|c| c.len() == 1)
                        && s["certificates"][0]["lastCheck"].is_string()
                })
            });

            // SIGTERM (systemctl stop): both processes exit, cleanly; certificates stay.
            service.signal(libc::SIGTERM);
            let status = service.wait_exit(Duration::from_secs(20));
            assert!(status.success(), "{status}: {}", files.stderr());
            // SAFETY: kill with signal 0 only checks that the poller is gone.
            assert_ne!(
                unsafe { libc::kill(poller as i32, 0) },
                0,
                "the poller outlived the service"
            );
            assert!(linked(&files, "web").is_some());
            let out = files.kvvm(&["status", "--json"]);
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["worker"]["supervision"], "stopped");
        },
    );
}

#[test]
fn under_the_journal_every_line_carries_its_priority() {
    run_isolated("under_the_journal_every_line_carries_its_priority", || {
        let vm = Vm::new();
        vm.put_certificate("web");
        vm.vault().deny(HOST, Some("web"));
        let files = Files::new();
        files.write_settings(&settings(&files, &["web"], json!({})));
        // systemd sets JOURNAL_STREAM when stderr is the journal.
        let journal = files.dir.path().join("journal");
        let mut service = files.start(&[("JOURNAL_STREAM", &journal)]);
        files.wait_for(
            "the refused check in the log",
            Duration::from_secs(30),
            |f| f.log().contains("vault-forbidden") || f.stderr().contains("Forbidden"),
        );
        std::thread::sleep(Duration::from_millis(500));
        service.signal(libc::SIGTERM);
        service.wait_exit(Duration::from_secs(20));
        let stderr = files.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert!(!lines.is_empty());
        for line in &lines {
            assert!(
                line.starts_with("<3>") || line.starts_with("<4>") || line.starts_with("<6>"),
                "a line without a priority: {line:?}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("<3>") && l.contains(&url("web"))),
            "{stderr}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("<6>") && l.contains("service starting"))
        );
        // The file log has the same lines.
        assert!(files.log().contains("service starting"));
    });
}
