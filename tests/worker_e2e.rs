//! The packaged extension end to end, as on a VM: inside the test network namespace (`kvvm_sim::netns`) the
//! fake IMDS listens on 169.254.169.254:80 and the fake Key Vault on `https://myvault.vault.azure.net`
//! (127.0.0.1:443, its CA in the OS trust store), and `/var/lib/waagent` and `/var/log/azure` are fresh tmpfs.
//! The waagent simulator installs and enables the real package there, with no `msiEndpoint` and no store
//! location, so every default the product ships with is the one exercised.
//!
//! Intervals are short (a few seconds) so rotation and retries land quickly; the product applies the same
//! logic to its 3600 s default.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvvm_sim::httpserver::Reply;
use kvvm_sim::netns::{run_isolated, run_isolated_with_hosts};
use kvvm_sim::pki::{self, Chain, KeyType, PemLayout, PfxVariant};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::{Settings, StatusReport, StatusValue};
use serde_json::{Value, json};

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";

/// A VM whose worker watches `web` (every 3 s), once its first version (returned, with its chain) is installed.
fn with_first_version() -> (Vm, Chain, String) {
    let mut vm = Vm::new();
    let first = vm.chain("web", KeyType::Ec("P-256"), 90);
    let v1 = vm.put_pem("web", &first);
    vm.enable(settings(json!([url("web")]), json!({})));
    vm.wait(0, Duration::from_secs(30), "first version", |r| {
        installed(r, "web", &v1)
    });
    (vm, first, v1)
}

fn settings(certs: Value, extra: Value) -> Value {
    let mut s = json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "3",
            "observedCertificates": certs,
        }
    });
    if let (Some(m), Some(e)) = (
        s["secretsManagementSettings"].as_object_mut(),
        extra.as_object(),
    ) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    s
}

fn url(secret: &str) -> String {
    format!("https://{HOST}/secrets/{secret}")
}

fn sub<'a>(r: &'a StatusReport, secret: &str) -> &'a kvvm_sim::waagent::Substatus {
    r.substatus
        .iter()
        .find(|s| s.name == url(secret))
        .unwrap_or_else(|| panic!("no substatus for {secret}: {r:#?}"))
}

fn installed(r: &StatusReport, secret: &str, version: &str) -> bool {
    r.substatus.iter().any(|s| {
        s.name == url(secret)
            && s.message.contains(&format!("version {version}"))
            && s.status != StatusValue::Transitioning
    })
}

#[test]
fn initial_sync_installs_pem_and_pfx_certificates_with_every_default() {
    run_isolated(
        "initial_sync_installs_pem_and_pfx_certificates_with_every_default",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            let api = vm.chain("api", KeyType::Rsa(2048), 90);
            let v_web = vm.put_pem("web", &web);
            let v_api = vm.put_pfx("api", &api);
            vm.enable(settings(
                json!([url("web"), url("api")]),
                json!({"requireInitialSync": true}),
            ));
            let r = vm.wait(0, Duration::from_secs(30), "both installed", |r| {
                r.status == StatusValue::Success
            });
            assert!(r.message.contains("2 of 2"), "{}", r.message);
            for (secret, version, chain) in [("web", &v_web, &web), ("api", &v_api, &api)] {
                let s = sub(&r, secret);
                assert_eq!(s.status, StatusValue::Success, "{s:?}");
                assert!(
                    s.message.contains(&format!("version {version}")),
                    "{}",
                    s.message
                );
                assert!(s.message.contains("notAfter "), "{}", s.message);
                let link = Path::new(STORE).join(format!("myvault.{secret}"));
                assert_eq!(
                    fs::read_link(&link).unwrap(),
                    PathBuf::from(format!("myvault.{secret}.{version}"))
                );
                pki::verify_installed(&link, &chain.root).unwrap();
                assert_eq!(pki::serial_of(&link).unwrap(), chain.leaf_serial().unwrap());
            }
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(STORE).unwrap().mode() & 0o777, 0o700);
            // One token for the vault, reused; the challenge answered once.
            assert_eq!(vm.imds().stats().tokens_issued, 1);
            // Neither token nor key material in the logs.
            let log = vm.log();
            for t in vm.imds().tokens().tokens() {
                assert!(!log.contains(&t), "token in the log");
            }
            assert!(!log.contains("PRIVATE KEY"), "key in the log");
            assert!(
                log.contains(&format!("myvault/web version {v_web}")) || log.contains(&v_web),
                "{log}"
            );

            // kvvm status reads what the worker recorded.
            let out = vm.kvvm(&["status"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains(&v_web) && text.contains(&v_api), "{text}");
        },
    );
}

#[test]
fn a_new_version_in_the_vault_is_installed_within_the_interval() {
    run_isolated(
        "a_new_version_in_the_vault_is_installed_within_the_interval",
        || {
            let (vm, first, v1) = with_first_version();
            let renewed = first.renew("r1", KeyType::Ec("P-384"), 90).unwrap();
            let v2 = vm.put_pfx("web", &renewed);
            let rotated = Instant::now();
            vm.wait(0, Duration::from_secs(30), "second version", |r| {
                installed(r, "web", &v2)
            });
            let link = Path::new(STORE).join("myvault.web");
            assert_eq!(
                pki::serial_of(&link).unwrap(),
                renewed.leaf_serial().unwrap()
            );
            // The very next poll installed it: the vault was asked for web once or twice (a poll already under
            // way when the version was put) since then, not more.
            let polls_since = vm
                .vault()
                .requests()
                .iter()
                .filter(|r| r.at >= rotated && r.path_and_query.starts_with("/secrets/web/"))
                .count();
            assert!(
                polls_since <= 2,
                "{polls_since} polls before the new version was installed"
            );
            // The previous version is kept (retainedVersions 2).
            assert!(Path::new(STORE).join(format!("myvault.web.{v1}")).is_file());
        },
    );
}

#[test]
fn one_bad_certificate_does_not_block_the_others() {
    run_isolated("one_bad_certificate_does_not_block_the_others", || {
        let mut vm = Vm::new();
        let good = vm.chain("good", KeyType::Ec("P-256"), 90);
        let v_good = vm.put_pem("good", &good);
        // No key: a non-exportable certificate.
        vm.vault().put_secret(
            HOST,
            "nokey",
            SecretValue::pkcs12(&good.pfx(PfxVariant::NoKey).unwrap()),
        );
        vm.vault()
            .put_secret(HOST, "plain", SecretValue::plain("a password"));
        vm.vault().put_secret(
            HOST,
            "denied",
            SecretValue::pem(good.pem(PemLayout::default()).unwrap()),
        );
        vm.vault().deny(HOST, Some("denied"));
        let certs = json!([
            url("good"),
            url("nokey"),
            url("plain"),
            url("denied"),
            url("missing")
        ]);
        vm.enable(settings(certs, json!({})));
        let r = vm.wait(0, Duration::from_secs(30), "all checked", |r| {
            r.substatus.len() == 5
                && r.substatus
                    .iter()
                    .all(|s| s.status != StatusValue::Transitioning)
        });
        assert_eq!(sub(&r, "good").status, StatusValue::Success);
        assert!(installed(&r, "good", &v_good));
        let msg = |s: &str| sub(&r, s).message.clone();
        assert!(msg("nokey").contains("exportable"), "{}", msg("nokey"));
        assert!(
            msg("plain").contains("not a certificate"),
            "{}",
            msg("plain")
        );
        assert!(
            msg("denied").contains("Key Vault Secrets User"),
            "{}",
            msg("denied")
        );
        assert!(msg("missing").contains("missing"), "{}", msg("missing"));
        assert_eq!(r.status, StatusValue::Warning, "{}", r.message);
        // The plain secret is ignored with a warning (as the Windows extension does), not counted as failing.
        assert_eq!(sub(&r, "plain").status, StatusValue::Warning);
        assert!(r.message.contains("2 of 5"), "{}", r.message);
        assert!(Path::new(STORE).join("myvault.good").is_file());
        assert!(!Path::new(STORE).join("myvault.nokey").exists());

        // kvvm sync --once: one foreground cycle, non-zero exit because some fail.
        let out = vm.kvvm(&["sync", "--once"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(&format!("OK      {}", url("good"))), "{text}");
        assert!(
            text.contains(&format!("FAILED  {}", url("nokey"))),
            "{text}"
        );
    });
}

#[test]
fn require_initial_sync_stays_transitioning_until_imds_works() {
    run_isolated(
        "require_initial_sync_stays_transitioning_until_imds_works",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            let v = vm.put_pem("web", &web);
            // IMDS answers 500 for a while (the identity is not ready yet on a fresh VM).
            vm.imds().script(std::iter::repeat_n(Reply::Status(500), 4));
            vm.enable(settings(
                json!([url("web")]),
                json!({"requireInitialSync": true}),
            ));
            std::thread::sleep(Duration::from_secs(2));
            let during = vm.agent.read_status(vm.ext.as_ref().unwrap(), 0).unwrap();
            assert_eq!(during.status, StatusValue::Transitioning, "{during:?}");
            let r = vm.wait(
                0,
                Duration::from_secs(60),
                "installed after IMDS recovers",
                |r| r.status != StatusValue::Transitioning,
            );
            assert_eq!(r.status, StatusValue::Success, "{r:#?}");
            assert!(installed(&r, "web", &v));
            assert!(
                vm.imds().stats().token_requests >= 5,
                "{:?}",
                vm.imds().stats()
            );
        },
    );
}

#[test]
fn throttling_is_obeyed_and_the_certificate_still_arrives() {
    run_isolated(
        "throttling_is_obeyed_and_the_certificate_still_arrives",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            let v = vm.put_pem("web", &web);
            vm.vault().script_secret(
                HOST,
                "web",
                [Reply::Throttle {
                    retry_after: Duration::from_secs(2),
                }],
            );
            vm.enable(settings(json!([url("web")]), json!({})));
            vm.wait(0, Duration::from_secs(30), "installed after 429", |r| {
                installed(r, "web", &v)
            });
            let log = vm.vault().requests();
            let throttled = log
                .iter()
                .position(|r| r.status == 429)
                .expect("a 429 was served");
            let next = &log[throttled + 1];
            let gap = next.at.duration_since(log[throttled].at);
            assert!(
                gap >= Duration::from_secs(2),
                "retried after {gap:?}, before Retry-After"
            );
        },
    );
}

#[test]
fn an_expiring_certificate_without_a_newer_version_is_a_warning() {
    run_isolated(
        "an_expiring_certificate_without_a_newer_version_is_a_warning",
        || {
            let mut vm = Vm::new();
            let soon = vm.chain("soon", KeyType::Ec("P-256"), 5);
            let v = vm.put_pem("soon", &soon);
            vm.enable(settings(
                json!([url("soon")]),
                json!({"expiryWarningDays": 14}),
            ));
            let r = vm.wait(0, Duration::from_secs(30), "expiry warning", |r| {
                r.status == StatusValue::Warning
            });
            let s = sub(&r, "soon");
            assert_eq!(s.status, StatusValue::Warning);
            assert!(installed(&r, "soon", &v));
            assert!(s.message.contains("expires"), "{}", s.message);
            assert!(vm.log().contains("expires"), "{}", vm.log());
        },
    );
}

#[test]
fn new_settings_take_effect_at_once_and_disable_stops_the_worker() {
    run_isolated(
        "new_settings_take_effect_at_once_and_disable_stops_the_worker",
        || {
            let mut vm = Vm::new();
            let a = vm.chain("a", KeyType::Ec("P-256"), 90);
            let b = vm.chain("b", KeyType::Ec("P-256"), 90);
            let va = vm.put_pem("a", &a);
            let vb = vm.put_pem("b", &b);
            let mut s = settings(json!([url("a")]), json!({}));
            let ext = vm.enable(s.clone());
            vm.wait(0, Duration::from_secs(60), "a installed", |r| {
                installed(r, "a", &va)
            });
            s["secretsManagementSettings"]["observedCertificates"] = json!([url("b")]);
            s["secretsManagementSettings"]["pollingIntervalInS"] = json!("3600");
            let run = vm
                .agent
                .apply_settings(&ext, 1, &Settings::public(s.clone()))
                .unwrap();
            assert!(run.success(), "{}", run.output);
            // The interval is an hour: only an immediate poll can install b this soon.
            vm.wait(1, Duration::from_secs(30), "b installed", |r| {
                installed(r, "b", &vb)
            });
            // a is no longer watched, and its files stay.
            let r = vm.agent.read_status(&ext, 1).unwrap();
            assert!(r.substatus.iter().all(|s| s.name != url("a")), "{r:#?}");
            assert!(Path::new(STORE).join("myvault.a").is_file());

            // Disable while a poll hangs in the vault (new settings poll at once; every reply takes 20 s): the
            // worker answers SIGTERM before disable has to escalate to SIGKILL (5 s).
            vm.vault().add_latency(Duration::from_secs(20));
            s["secretsManagementSettings"]["observedCertificates"] = json!([url("b"), url("a")]);
            let before = vm.vault().requests().len();
            vm.agent
                .write_settings_as(&ext, 2, &Settings::public(s))
                .unwrap();
            let run = vm.agent.enable(&ext, 2).unwrap();
            assert!(run.success(), "{}", run.output);
            std::thread::sleep(Duration::from_secs(2));
            let started = Instant::now();
            let out = vm.agent.disable(&ext, 2).unwrap().unwrap();
            assert!(out.success(), "{}", out.output);
            // The worker answered SIGTERM itself: disable did not have to escalate to SIGKILL.
            assert!(
                out.stdout.contains("stopped") && !out.stdout.contains("was killed"),
                "{} (after {:?})",
                out.stdout,
                started.elapsed()
            );
            assert!(
                vm.log().contains("worker stopping on request"),
                "{}",
                vm.log()
            );
            // No reply was waited for: the requests in flight were abandoned.
            assert!(vm.vault().requests().len() <= before + 2);
            assert!(Path::new(STORE).join("myvault.b").is_file());
            vm.ext = None;
        },
    );
}

/// A vault that never lets the identity in: with requireInitialSync the status ends in `error` after the 25
/// attempts, naming the certificate and why. The interval is 1 s so the attempts (each waiting at most one
/// interval) take about half a minute instead of hours.
#[test]
fn require_initial_sync_ends_in_error_when_the_vault_never_works() {
    run_isolated(
        "require_initial_sync_ends_in_error_when_the_vault_never_works",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            vm.put_pem("web", &web);
            vm.vault().deny(HOST, None);
            let mut s = settings(json!([url("web")]), json!({"requireInitialSync": true}));
            s["secretsManagementSettings"]["pollingIntervalInS"] = json!("1");
            vm.enable(s);
            let r = vm.wait(0, Duration::from_secs(90), "initial sync gives up", |r| {
                r.status == StatusValue::Error
            });
            assert!(
                r.message.contains("Initial sync failed after 25 attempts"),
                "{}",
                r.message
            );
            assert!(r.message.contains(&url("web")), "{}", r.message);
            assert!(
                r.message.contains("Key Vault Secrets User"),
                "{}",
                r.message
            );
            // Polling goes on: once access is granted the certificate arrives and the status recovers.
            vm.vault().allow(HOST, None);
            vm.wait(0, Duration::from_secs(30), "recovered", |r| {
                r.status == StatusValue::Success
            });
        },
    );
}

/// The post-install command with a real nginx serving the symlinked PEM: after a rotation in the vault the
/// command reloads nginx, and a TLS client sees the new certificate's serial.
#[test]
fn the_post_install_command_reloads_nginx_which_then_serves_the_new_certificate() {
    run_isolated(
        "the_post_install_command_reloads_nginx_which_then_serves_the_new_certificate",
        || {
            let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("nginx (make deps installs nginx-light)");
            let mut vm = Vm::new();
            let first = vm.chain("web", KeyType::Ec("P-256"), 90);
            let v1 = vm.put_pem("web", &first);
            let conf_dir = tempfile::tempdir().unwrap();
            let conf = conf_dir.path().join("nginx.conf");
            let link = Path::new(STORE).join("myvault.web");
            fs::write(
            &conf,
            format!(
                "daemon on; pid {dir}/nginx.pid; error_log {dir}/error.log; worker_processes 1;\n\
                 events {{ worker_connections 16; }}\n\
                 http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
                 uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
                 server {{ listen 127.0.0.1:8443 ssl; ssl_certificate {link}; ssl_certificate_key {link};\n\
                 location / {{ return 200 ok; }} }} }}\n",
                dir = conf_dir.path().display(),
                link = link.display()
            ),
        )
        .unwrap();
            let conf_s = conf.to_str().unwrap().to_string();
            vm.enable(settings(
            json!([url("web")]),
            json!({"postInstallCommand": {"command": [nginx, "-c", conf_s, "-s", "reload"], "timeoutInS": 20}}),
        ));
            vm.wait(0, Duration::from_secs(30), "first version", |r| {
                installed(r, "web", &v1)
            });
            // nginx starts on the installed certificate (the first reload found no nginx running: that is reported).
            let start = Command::new(nginx).args(["-c", &conf_s]).output().unwrap();
            assert!(
                start.status.success(),
                "{}",
                String::from_utf8_lossy(&start.stderr)
            );
            let served = || {
                let out = Command::new("sh")
                .args([
                    "-c",
                    "openssl s_client -connect 127.0.0.1:8443 -servername web.example.com </dev/null 2>/dev/null \
                     | openssl x509 -noout -serial",
                ])
                .output()
                .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .trim_start_matches("serial=")
                    .to_string()
            };
            assert_eq!(served(), first.leaf_serial().unwrap());

            let renewed = first.renew("r1", KeyType::Rsa(2048), 90).unwrap();
            let v2 = vm.put_pfx("web", &renewed);
            // The command runs once the install is recorded; its summary follows in the status.
            let r = vm.wait(0, Duration::from_secs(20), "second version", |r| {
                installed(r, "web", &v2) && sub(r, "web").message.contains("post-install command")
            });
            let s = sub(&r, "web");
            assert!(
                s.message.contains("post-install command") && s.message.contains("exited with 0"),
                "{}",
                s.message
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while served() != renewed.leaf_serial().unwrap() {
                assert!(
                    Instant::now() < deadline,
                    "nginx still serves {} after the reload\n{}",
                    served(),
                    vm.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = Command::new(nginx)
                .args(["-c", &conf_s, "-s", "stop"])
                .output();
        },
    );
}

/// A new version whose key is not its certificate's is never installed: the previous version stays current and
/// the substatus says why; a good version after it is installed as usual.
#[test]
fn a_broken_new_version_leaves_the_previous_one_current() {
    run_isolated(
        "a_broken_new_version_leaves_the_previous_one_current",
        || {
            let (vm, first, v1) = with_first_version();
            let other = vm.chain("other", KeyType::Ec("P-256"), 90);
            let renewed = first.renew("r1", KeyType::Ec("P-256"), 90).unwrap();
            let broken = format!(
                "{}{}{}",
                other.key_pem(kvvm_sim::pki::PemKey::Pkcs8).unwrap(),
                fs::read_to_string(&renewed.leaf).unwrap(),
                fs::read_to_string(&renewed.intermediate).unwrap()
            );
            let v2 = vm.vault().put_secret(HOST, "web", SecretValue::pem(broken));
            let r = vm.wait(
                0,
                Duration::from_secs(20),
                "the broken version reported",
                |r| sub(r, "web").status == StatusValue::Error,
            );
            let s = sub(&r, "web");
            assert!(
                s.message.contains(&v2) && s.message.contains("does not match"),
                "{}",
                s.message
            );
            let link = Path::new(STORE).join("myvault.web");
            assert_eq!(
                fs::read_link(&link).unwrap(),
                PathBuf::from(format!("myvault.web.{v1}"))
            );
            assert!(!Path::new(STORE).join(format!("myvault.web.{v2}")).exists());
            pki::verify_installed(&link, &first.root).unwrap();
            let v3 = vm.put_pem("web", &renewed);
            vm.wait(
                0,
                Duration::from_secs(20),
                "the good version after it",
                |r| installed(r, "web", &v3),
            );
        },
    );
}

// ---- Survival (issue 11): a worker that cannot stop silently -------------------------------------------------

const STATE_DIR: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.KeyVaultForLinux";

fn poller_pid(vm: &Vm) -> Option<i32> {
    vm.worker_state()?["pid"].as_i64().map(|p| p as i32)
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits until `state.json` satisfies `done`.
fn wait_state(vm: &Vm, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = vm.worker_state()
            && done(&s)
        {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what}: not reached within {within:?}; state {:#?}",
        vm.worker_state()
    );
}

/// SIGKILL (as the OOM killer sends) and then SIGSEGV (a crash in a dependency) of the poller: the supervisor
/// restarts it each time with no handler command run, and a rotation made afterwards is installed.
#[test]
fn a_killed_or_crashed_poller_is_restarted_and_keeps_rotating() {
    run_isolated(
        "a_killed_or_crashed_poller_is_restarted_and_keeps_rotating",
        || {
            let (vm, first, _) = with_first_version();
            let handler_log = vm
                .agent
                .log_dir(vm.ext.as_ref().unwrap())
                .join("handler.log");
            let verbs_before = fs::read_to_string(&handler_log).unwrap();
            let supervisor: i32 = fs::read_to_string(Path::new(STATE_DIR).join("worker.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            for (n, signal, words) in [
                (1, libc::SIGKILL, "killed by signal 9"),
                (2, libc::SIGSEGV, "killed by signal 11"),
            ] {
                let pid = poller_pid(&vm).unwrap();
                assert_ne!(pid, supervisor, "the poller is a child of the supervisor");
                // SAFETY: signalling a process of this test's namespace.
                assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
                let state = wait_state(&vm, Duration::from_secs(60), "a new poller", |s| {
                    s["restarts"] == n && s["pid"].as_i64() != Some(i64::from(pid))
                });
                assert!(
                    state["lastExit"].as_str().unwrap().contains(words),
                    "{state:#}"
                );
            }
            assert!(alive(supervisor), "the supervisor itself stays");
            let renewed = first.renew("r1", KeyType::Ec("P-384"), 90).unwrap();
            let v2 = vm.put_pfx("web", &renewed);
            let r = vm.wait(
                0,
                Duration::from_secs(60),
                "rotation after the crashes",
                |r| installed(r, "web", &v2),
            );
            assert!(
                r.message.contains("restarted 2 time(s)") && r.message.contains("signal 11"),
                "{}",
                r.message
            );
            assert_eq!(
                fs::read_to_string(&handler_log).unwrap(),
                verbs_before,
                "no handler command ran"
            );
            let beat = vm.agent.read_heartbeat(vm.ext.as_ref().unwrap()).unwrap();
            assert_eq!(beat.status, "Ready", "{beat:?}");
        },
    );
}

/// A poller that dies at start-up (its state folder became read-only) is restarted with growing waits, the
/// status says `error` with why and the heartbeat says the worker is restarting; once the folder is writable
/// again the next restart succeeds and the status recovers.
#[test]
fn a_crash_loop_backs_off_and_reports_error_until_fixed() {
    run_isolated(
        "a_crash_loop_backs_off_and_reports_error_until_fixed",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            let v = vm.put_pem("web", &web);
            vm.enable(settings(json!([url("web")]), json!({})));
            vm.wait(0, Duration::from_secs(30), "installed", |r| {
                installed(r, "web", &v)
            });
            let sh = |cmd: &str| {
                let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
                assert!(st.success(), "{cmd}");
            };
            sh(&format!(
                "mount --bind {STATE_DIR} {STATE_DIR} && mount -o remount,bind,ro {STATE_DIR}"
            ));
            let pid = poller_pid(&vm).unwrap();
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let r = vm.wait(
                0,
                Duration::from_secs(60),
                "error while crash-looping",
                |r| r.status == StatusValue::Error && r.message.contains("exited with code 1"),
            );
            assert!(
                r.message.starts_with("[worker-restarting] "),
                "{}",
                r.message
            );
            assert!(r.message.contains("Read-only file system"), "{}", r.message);
            let beat = vm.agent.read_heartbeat(vm.ext.as_ref().unwrap()).unwrap();
            assert_eq!(beat.status, "NotReady", "{beat:?}");
            assert!(
                beat.message.starts_with("kvvm worker restarting: "),
                "{beat:?}"
            );
            // The waits double: 1 s after the kill, then 2, 4, 8 s after each failed start.
            let log_dir = vm.agent.log_dir(vm.ext.as_ref().unwrap());
            let deadline = Instant::now() + Duration::from_secs(40);
            let waits = loop {
                let log = fs::read_to_string(log_dir.join("supervisor.log")).unwrap_or_default();
                let waits: Vec<u64> = log
                    .lines()
                    .filter_map(|l| l.split("restarting it in ").nth(1))
                    .filter_map(|rest| rest.split(' ').next()?.parse().ok())
                    .collect();
                if waits.len() >= 4 || Instant::now() > deadline {
                    break waits;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            assert_eq!(&waits[..4], &[1, 2, 4, 8], "{}", vm.log());
            sh(&format!("umount {STATE_DIR}"));
            vm.wait(0, Duration::from_secs(60), "recovered", |r| {
                r.status == StatusValue::Success && installed(r, "web", &v)
            });
            let beat = vm.agent.read_heartbeat(vm.ext.as_ref().unwrap()).unwrap();
            assert_eq!(beat.status, "Ready", "{beat:?}");
        },
    );
}

/// One secret whose requests hang: the other certificates of its vault and of another vault are installed and
/// rotated on their own schedule, the status shows each as soon as its check ends, and the hung one is
/// reported with a timeout reason.
#[test]
fn a_hung_secret_holds_up_only_itself() {
    const OTHER: &str = "othervault.vault.azure.net";
    run_isolated_with_hosts("a_hung_secret_holds_up_only_itself", &[OTHER], || {
        let mut vm = Vm::builder().vaults(&[HOST, OTHER]).build();
        let chain = vm.chain("c", KeyType::Ec("P-256"), 90);
        let pem = || SecretValue::pem(chain.pem(PemLayout::default()).unwrap());
        // The hung secret is the first of its vault: the others must not wait for it.
        vm.vault().put_secret(HOST, "hung", pem());
        let a1 = vm.vault().put_secret(HOST, "a1", pem());
        let a2 = vm.vault().put_secret(HOST, "a2", pem());
        let b1 = vm.vault().put_secret(OTHER, "b1", pem());
        vm.vault().script_secret(
            HOST,
            "hung",
            std::iter::repeat_n(
                Reply::Delay {
                    delay: Duration::from_secs(600),
                },
                20,
            ),
        );
        let other = |s: &str| format!("https://{OTHER}/secrets/{s}");
        vm.enable(settings(
            json!([url("hung"), url("a1"), url("a2"), other("b1")]),
            json!({}),
        ));
        let r = vm.wait(0, Duration::from_secs(30), "the others installed", |r| {
            installed(r, "a1", &a1)
                && installed(r, "a2", &a2)
                && r.substatus
                    .iter()
                    .any(|s| s.name == other("b1") && s.message.contains(&b1))
        });
        let hung = sub(&r, "hung");
        assert_eq!(
            hung.status,
            StatusValue::Transitioning,
            "still in flight: {hung:?}"
        );
        // Rotations in both vaults land on schedule while the hung request is still in flight.
        let a1_new = vm.vault().put_secret(HOST, "a1", pem());
        let b1_new = vm.vault().put_secret(OTHER, "b1", pem());
        vm.wait(
            0,
            Duration::from_secs(30),
            "rotations while one hangs",
            |r| {
                installed(r, "a1", &a1_new)
                    && r.substatus
                        .iter()
                        .any(|s| s.name == other("b1") && s.message.contains(&b1_new))
                    && sub(r, "hung").status == StatusValue::Transitioning
            },
        );
        let r = vm.wait(0, Duration::from_secs(200), "the hung one times out", |r| {
            sub(r, "hung").status == StatusValue::Error
        });
        let hung = sub(&r, "hung");
        assert!(hung.message.starts_with("[vault-timeout] "), "{hung:?}");
        assert!(installed(&r, "a1", &a1_new), "{r:#?}");
    });
}

/// waagent passes the sequence number of the goal state in ConfigSequenceNumber and reads that status file;
/// a `disabled` goal state may carry a new number without a settings file. Either way the status the agent
/// reads says disabled, and the heartbeat (which waagent reports as the handler status) says stopped.
#[test]
fn disable_reports_in_the_status_the_agent_reads_and_the_heartbeat_says_stopped() {
    run_isolated(
        "disable_reports_in_the_status_the_agent_reads_and_the_heartbeat_says_stopped",
        || {
            let mut vm = Vm::new();
            let web = vm.chain("web", KeyType::Ec("P-256"), 90);
            let v = vm.put_pem("web", &web);
            let ext = vm.enable(settings(json!([url("web")]), json!({})));
            vm.wait(0, Duration::from_secs(30), "installed", |r| {
                installed(r, "web", &v)
            });
            for (seq, with_settings) in [(0u64, true), (1, false)] {
                if seq > 0 {
                    // Enabled again, then a disabled goal state with a new number and no settings file.
                    let run = vm.agent.enable(&ext, 0).unwrap();
                    assert!(run.success(), "{run:?}");
                    assert!(!ext.settings_file(seq).exists());
                }
                let run = vm.agent.disable(&ext, seq).unwrap().expect("enabled");
                assert!(run.success(), "{run:?}");
                let status = vm.agent.read_status(&ext, seq).unwrap();
                assert_eq!(
                    status.operation, "Disable",
                    "seq {seq} (settings file: {with_settings})"
                );
                assert_eq!(status.status, StatusValue::Success);
                assert!(
                    status.message.starts_with("disabled; worker "),
                    "{}",
                    status.message
                );
                let beat = vm.agent.read_heartbeat(&ext).unwrap();
                assert_eq!(beat.status, "NotReady", "{beat:?}");
                assert!(beat.message.starts_with("disabled"), "{beat:?}");
                assert!(poller_pid(&vm).is_none_or(|p| !alive(p)), "no poller left");
            }
            vm.ext = None;
        },
    );
}

/// 1,000 certificates over four vaults, some failing: the status stays within waagent's limit and names every
/// failing certificate by its full URL; `kvvm status` lists every one.
#[test]
fn a_thousand_certificates_keep_the_status_within_the_agent_limit() {
    const VAULTS: [&str; 4] = [
        HOST,
        "second-vault.vault.azure.net",
        "third-vault.vault.azure.net",
        "fourth-vault.vault.azure.net",
    ];
    run_isolated_with_hosts(
        "a_thousand_certificates_keep_the_status_within_the_agent_limit",
        &VAULTS[1..],
        || {
            let mut vm = Vm::builder().vaults(&VAULTS).build();
            let chain = vm.chain("c", KeyType::Ec("P-256"), 90);
            let pem = chain.pem(PemLayout::default()).unwrap();
            let mut urls = Vec::new();
            let mut failing = Vec::new();
            for i in 0..1000 {
                let host = VAULTS[i % 4];
                let name = format!("certificate-number-{i:04}");
                vm.vault()
                    .put_secret(host, &name, SecretValue::pem(pem.clone()));
                let u = format!("https://{host}/secrets/{name}");
                if i % 7 == 0 {
                    vm.vault().deny(host, Some(&name));
                    failing.push(u.clone());
                }
                urls.push(u);
            }
            vm.enable(settings(json!(urls), json!({})));
            let ext = vm.ext.clone().unwrap();
            let r = vm.wait(
                0,
                Duration::from_secs(180),
                "every certificate checked",
                |r| {
                    r.message.contains("failing:")
                        && !r
                            .substatus
                            .iter()
                            .any(|s| s.status == StatusValue::Transitioning)
                },
            );
            let size = fs::metadata(ext.status_file(0)).unwrap().len();
            assert!(size <= 128 * 1024, "status file of {size} bytes");
            let text: String = r
                .substatus
                .iter()
                .flat_map(|s| [s.name.as_str(), " ", s.message.as_str(), " "])
                .collect();
            let words: Vec<&str> = text
                .split_whitespace()
                .map(|w| w.trim_end_matches([':', ';', ',', ')']))
                .collect();
            for u in &failing {
                assert!(
                    words.contains(&u.as_str()),
                    "{u} is not named in the status"
                );
            }
            assert!(r.message.contains("857 of 1000"), "{}", r.message);
            let out = vm.kvvm(&["status"]);
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(urls.iter().all(|u| listing.contains(u.as_str())));
        },
    );
}
