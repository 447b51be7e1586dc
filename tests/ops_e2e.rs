//! What operators watch, end to end with the packaged extension in the VM-like namespace (see
//! tests/worker_e2e.rs for the setting): the `metricsFile` the worker writes, read back with a real Prometheus
//! text-format parser (`prometheus_client`, tests/ops/parse_metrics.py), and `kvvm status --json` with its exit
//! code, for a vault that serves one certificate and refuses another.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::{StatusReport, StatusValue};
use serde_json::{Value, json};

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";

fn url(secret: &str) -> String {
    format!("https://{HOST}/secrets/{secret}")
}

fn settings(extra: Value) -> Value {
    let mut secrets = json!({
        "pollingIntervalInS": "3",
        "observedCertificates": [url("web"), url("api")],
    });
    for (k, v) in extra.as_object().unwrap() {
        secrets[k] = v.clone();
    }
    json!({ "secretsManagementSettings": secrets })
}

fn substatus_is(r: &StatusReport, secret: &str, status: StatusValue) -> bool {
    r.substatus
        .iter()
        .any(|s| s.name == url(secret) && s.status == status)
}

/// A VM whose vault holds `web` and refuses `api`, enabled with `extra` settings, once the status shows web
/// installed and api in error; with web's version.
fn web_installed_api_refused(extra: Value) -> (Vm, String) {
    let mut vm = Vm::new();
    let version = vm.put_certificate("web");
    vm.put_certificate("api");
    vm.vault().deny(HOST, Some("api"));
    vm.enable(settings(extra));
    vm.wait(
        0,
        Duration::from_secs(60),
        "web installed, api refused",
        |r| {
            substatus_is(r, "web", StatusValue::Success)
                && substatus_is(r, "api", StatusValue::Error)
        },
    );
    (vm, version)
}

/// The metrics file parsed by prometheus_client: family name → (type, help, samples).
fn parse_metrics(path: &Path) -> Value {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make deps` (it installs tests/requirements.txt, prometheus-client included)",
        python.display()
    );
    let out = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ops/parse_metrics.py"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the metrics file does not parse: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(path).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The leaf's notAfter in Unix seconds, as openssl reads the installed file.
fn not_after_of(pem: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let iso = text
        .trim()
        .trim_start_matches("notAfter=")
        .replace(' ', "T");
    time::OffsetDateTime::parse(&iso, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{iso:?}: {e}"))
        .unix_timestamp()
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn sample(metrics: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics["families"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .map(|s| s["value"].as_f64().unwrap())
}

#[test]
fn the_metrics_file_parses_and_counts_installs_errors_and_requests() {
    run_isolated(
        "the_metrics_file_parses_and_counts_installs_errors_and_requests",
        || {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kvvm.prom");
            let (vm, version) =
                web_installed_api_refused(json!({"metricsFile": path.to_str().unwrap()}));
            // The status and the metrics are written together, within half a second of a check.
            let deadline = Instant::now() + Duration::from_secs(10);
            let metrics = loop {
                let m = path.exists().then(|| parse_metrics(&path));
                if let Some(m) = m
                    && sample(
                        &m,
                        "kvvm_certificate_errors_total",
                        &[("certificate", "api")],
                    )
                    .is_some()
                {
                    break m;
                }
                assert!(Instant::now() < deadline, "no metrics:\n{}", vm.log());
                std::thread::sleep(Duration::from_millis(100));
            };
            let types: Vec<(String, String)> = metrics["families"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap().to_string(),
                        f["type"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            for (family, kind) in [
                ("kvvm_info", "gauge"),
                ("kvvm_certificate_not_after_seconds", "gauge"),
                ("kvvm_certificate_last_check_timestamp_seconds", "gauge"),
                ("kvvm_certificate_last_success_timestamp_seconds", "gauge"),
                ("kvvm_certificate_needs_attention", "gauge"),
                // prometheus_client names a counter family without its _total suffix.
                ("kvvm_certificate_installs", "counter"),
                ("kvvm_certificate_errors", "counter"),
                ("kvvm_vault_requests", "counter"),
                ("kvvm_token_requests", "counter"),
                ("kvvm_worker_restarts", "counter"),
            ] {
                assert!(
                    types.contains(&(family.to_string(), kind.to_string())),
                    "{family} ({kind}) missing in {types:?}"
                );
            }
            let version_label = env!("CARGO_PKG_VERSION");
            assert_eq!(
                sample(&metrics, "kvvm_info", &[("version", version_label)]),
                Some(1.0)
            );
            let web = [
                ("vault", HOST),
                ("certificate", "web"),
                ("link", &format!("{STORE}/myvault.web")),
            ];
            let api = [("vault", HOST), ("certificate", "api")];
            // web: installed once, with its notAfter and a successful check; no error.
            assert_eq!(
                sample(&metrics, "kvvm_certificate_installs_total", &web),
                Some(1.0)
            );
            let link = Path::new(STORE).join("myvault.web");
            let shown = sample(&metrics, "kvvm_certificate_not_after_seconds", &web).unwrap();
            assert_eq!(shown as i64, not_after_of(&link), "notAfter of {version}");
            let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
            let success = sample(
                &metrics,
                "kvvm_certificate_last_success_timestamp_seconds",
                &web,
            )
            .unwrap();
            assert!(
                success <= now && success > now - 120.0,
                "{success} vs now {now}"
            );
            assert_eq!(
                sample(&metrics, "kvvm_certificate_needs_attention", &web),
                Some(0.0)
            );
            assert_eq!(
                sample(&metrics, "kvvm_certificate_errors_total", &web),
                None
            );
            // api: refused (403), counted by reason, never installed.
            let mut api_forbidden = api.to_vec();
            api_forbidden.push(("reason", "vault-forbidden"));
            assert!(
                sample(&metrics, "kvvm_certificate_errors_total", &api_forbidden).unwrap() >= 1.0
            );
            assert_eq!(
                sample(&metrics, "kvvm_certificate_installs_total", &api),
                Some(0.0)
            );
            assert_eq!(
                sample(&metrics, "kvvm_certificate_not_after_seconds", &api),
                None
            );
            assert_eq!(
                sample(
                    &metrics,
                    "kvvm_certificate_last_success_timestamp_seconds",
                    &api
                ),
                None
            );
            assert!(
                sample(
                    &metrics,
                    "kvvm_certificate_last_check_timestamp_seconds",
                    &api
                )
                .is_some()
            );
            assert_eq!(
                sample(&metrics, "kvvm_certificate_needs_attention", &api),
                Some(1.0)
            );
            // Requests by vault and status: the challenge (401), the secret (200) and the refusal (403).
            for code in ["401", "200", "403"] {
                assert!(
                    sample(
                        &metrics,
                        "kvvm_vault_requests_total",
                        &[("vault", HOST), ("code", code)]
                    )
                    .unwrap_or(0.0)
                        >= 1.0,
                    "no {code} counted: {metrics}"
                );
            }
            let tokens = sample(&metrics, "kvvm_token_requests_total", &[]).unwrap();
            assert!(tokens >= 1.0, "{metrics}");
            assert!(tokens as u64 >= vm.imds().stats().tokens_issued);
            assert_eq!(
                sample(&metrics, "kvvm_worker_restarts_total", &[]),
                Some(0.0)
            );
            // Written atomically: nothing but the file itself is left in the folder (node_exporter reads *.prom).
            let names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, vec!["kvvm.prom".to_string()]);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o644
            );
            // No token in the metrics.
            let text = fs::read_to_string(&path).unwrap();
            for t in vm.imds().tokens().tokens() {
                assert!(!text.contains(&t), "token in the metrics");
            }
        },
    );
}

#[test]
fn status_json_describes_every_certificate_and_exits_1_when_one_needs_attention() {
    run_isolated(
        "status_json_describes_every_certificate_and_exits_1_when_one_needs_attention",
        || {
            let (vm, version) = web_installed_api_refused(json!({}));
            let out = vm.kvvm(&["status", "--json"]);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let doc: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
            assert_eq!(doc["schemaVersion"], 1);
            assert_eq!(doc["needsAttention"], true);
            let worker = &doc["worker"];
            assert_eq!(worker["supervision"], "running", "{doc:#}");
            assert!(worker["supervisorPid"].as_u64().is_some(), "{doc:#}");
            assert!(worker["pollerPid"].as_u64().is_some(), "{doc:#}");
            assert_eq!(worker["settingsSequence"], 0);
            assert_eq!(worker["restarts"], 0);
            let certs = doc["certificates"].as_array().unwrap();
            assert_eq!(certs.len(), 2);
            let web = &certs[0];
            assert_eq!(web["url"], url("web"));
            assert_eq!(web["state"], "installed");
            assert_eq!(web["needsAttention"], false);
            assert_eq!(web["version"], version.as_str());
            assert_eq!(web["link"], format!("{STORE}/myvault.web"));
            assert_eq!(web["file"], format!("{STORE}/myvault.web.{version}"));
            for field in ["notAfter", "lastCheck", "lastChange", "lastSuccess"] {
                let t = web[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("{field}: {web:#}"));
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{field} {t:?}: {e}"));
            }
            assert_eq!(web["lastError"], Value::Null);
            let api = &certs[1];
            assert_eq!(api["url"], url("api"));
            assert_eq!(api["state"], "failed");
            assert_eq!(api["needsAttention"], true);
            assert_eq!(api["version"], Value::Null);
            assert_eq!(api["lastError"]["reason"], "vault-forbidden", "{api:#}");
            assert!(
                api["lastError"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("403"),
                "{api:#}"
            );

            // Once the vault lets the identity read it, all is well: exit 0.
            vm.vault().allow(HOST, Some("api"));
            vm.wait(0, Duration::from_secs(60), "both installed", |r| {
                r.status == StatusValue::Success
            });
            let out = vm.kvvm(&["status", "--json"]);
            assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", vm.log());
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["needsAttention"], false);
            assert_eq!(doc["certificates"][1]["state"], "installed");

            // The human form is still there, and a stray option is a usage error.
            let out = vm.kvvm(&["status"]);
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).contains(&version));
            assert_eq!(vm.kvvm(&["status", "--yaml"]).status.code(), Some(2));

            // A disabled extension has no worker: that needs attention too.
            let ext = vm.ext.clone().unwrap();
            let run = vm.agent.disable(&ext, 0).unwrap().expect("disable ran");
            assert_eq!(run.exit_code, Some(0), "{run:?}");
            let out = vm.kvvm(&["status", "--json"]);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["worker"]["supervision"], "stopped");
            assert_eq!(doc["worker"]["supervisorPid"], Value::Null);
        },
    );
}

/// Label values the text format must escape (a link name may hold `"` and `\`) come back intact through the
/// real parser; a certificate never checked has its counters at zero and no times.
#[test]
fn odd_link_names_are_escaped_and_unchecked_certificates_have_no_times() {
    let settings = kvvm::settings::parse_public_settings(&json!({
        "secretsManagementSettings": {"observedCertificates": [
            {"url": url("web"), "customSymbolicLinkName": "we\"ird\\name\u{e9}.pem", "certificateStoreLocation": "/etc/ssl/kvvm"}
        ]}
    }))
    .unwrap();
    let states: Vec<kvvm::CertificateState> = kvvm::certificate_states(&settings, None);
    let counters = kvvm::metrics::Counters::default();
    let text = kvvm::metrics::render(&kvvm::metrics::Snapshot {
        observed: &settings.observed_certificates,
        states: &states,
        counters: &counters,
        client: None,
        restarts: 3,
        pace: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvvm.prom");
    kvvm::metrics::write(&path, &text).unwrap();
    let metrics = parse_metrics(&path);
    let labels = [
        ("vault", HOST),
        ("certificate", "web"),
        ("link", "/etc/ssl/kvvm/we\"ird\\name\u{e9}.pem"),
    ];
    assert_eq!(
        sample(&metrics, "kvvm_certificate_installs_total", &labels),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&metrics, "kvvm_certificate_needs_attention", &labels),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "kvvm_certificate_last_check_timestamp_seconds",
            &labels
        ),
        None
    );
    assert_eq!(
        sample(&metrics, "kvvm_token_requests_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "kvvm_worker_restarts_total", &[]),
        Some(3.0)
    );
}

/// After the supervisor restarts a SIGKILLed poller, the metrics count the restart and `status --json` says
/// why it happened; the new poller's counters start from zero while the recorded times carry over.
#[test]
fn a_restart_shows_in_the_metrics_and_in_status_json() {
    run_isolated("a_restart_shows_in_the_metrics_and_in_status_json", || {
        let mut vm = Vm::new();
        vm.put_certificate("web");
        vm.put_certificate("api");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvvm.prom");
        vm.enable(settings(json!({"metricsFile": path.to_str().unwrap()})));
        vm.wait(0, Duration::from_secs(60), "both installed", |r| {
            r.status == StatusValue::Success
        });
        let web = [("certificate", "web")];
        let wait_metrics = |what: &str, done: &dyn Fn(&Value) -> bool| -> Value {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if path.exists() {
                    let m = parse_metrics(&path);
                    if done(&m) {
                        return m;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not reached\n{}",
                    vm.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let before = wait_metrics("web installed once", &|m| {
            sample(m, "kvvm_certificate_installs_total", &web) == Some(1.0)
        });
        let not_after = sample(&before, "kvvm_certificate_not_after_seconds", &web).unwrap();

        let pid = vm.worker_state().unwrap()["pid"].as_i64().unwrap() as i32;
        // SAFETY: signalling a process of this test's namespace.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let after = wait_metrics("the restart counted", &|m| {
            sample(m, "kvvm_worker_restarts_total", &[]) == Some(1.0)
        });
        // The new poller installed nothing (the version is in place) and kept what it knew.
        assert_eq!(
            sample(&after, "kvvm_certificate_installs_total", &web),
            Some(0.0)
        );
        assert_eq!(
            sample(&after, "kvvm_certificate_not_after_seconds", &web),
            Some(not_after)
        );
        assert!(
            sample(
                &after,
                "kvvm_certificate_last_success_timestamp_seconds",
                &web
            )
            .is_some()
        );

        let out = vm.kvvm(&["status", "--json"]);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["worker"]["restarts"], 1, "{doc:#}");
        assert_ne!(doc["worker"]["pollerPid"], pid, "{doc:#}");
        assert!(
            doc["worker"]["lastExit"]
                .as_str()
                .unwrap()
                .contains("killed by signal 9"),
            "{doc:#}"
        );
        assert_eq!(doc["worker"]["supervision"], "running");
    });
}
