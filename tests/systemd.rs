//! The standalone service under a real systemd (kvvm_sim::machine: systemd 252 as PID 1 of private namespaces
//! on an overlay of `/`, with the fake vault and IMDS served into its network from this process). Each test
//! installs what a user installs — the .deb, the VM Application package the way the VM Application manager
//! runs it, the cloud-init sample — and checks what a user relies on: certificates installed, crashes of either
//! process answered by the right layer, `systemctl reload`, a reboot, removal keeping the certificates.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use kvvm_sim::dist;
use kvvm_sim::machine::{self, Disk, Machine, Setup};
use kvvm_sim::pki::{Chain, KeyType, PemLayout};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Fakes;
use serde_json::{Value, json};

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const VMAPP_DIR: &str = "/var/lib/waagent/Microsoft.CPlat.Core.VMApplicationManagerLinux/kvvm";
/// The VM Application manager's own extension directory (waagent's `<Publisher>.<Type>-<version>`).
const VMAPP_MANAGER: &str =
    "/var/lib/waagent/Microsoft.CPlat.Core.VMApplicationManagerLinux-1.0.16";

fn unavailable(test: &str) -> bool {
    match machine::unavailable() {
        Some(why) => {
            println!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deb_name() -> String {
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    format!("kvvm_{VERSION}-1_{arch}.deb")
}

fn boot(disk: &Disk) -> Machine {
    let m = Machine::boot(disk, &Setup::new()).expect("boot a machine");
    m.wait_booted(Duration::from_secs(60))
        .expect("the machine boots");
    m
}

/// Runs `script` in the machine; its stdout, or a panic with everything it said.
fn sh(m: &Machine, script: &str) -> String {
    let out = m.sh(script).unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}{}\njournal:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.journal("kvvm")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_output(m: &Machine, script: &str) -> Output {
    m.sh(script).unwrap()
}

fn copy_in(m: &Machine, from: &Path, inside: &str) {
    let to = m.path(Path::new(inside));
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, &to).unwrap();
}

fn write_in(m: &Machine, inside: &str, contents: &str) {
    let to = m.path(Path::new(inside));
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::write(to, contents).unwrap();
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fake vault and IMDS, serving the machine; the versions put, so a reboot can serve them again.
struct Vault {
    fakes: Fakes,
    secrets: BTreeMap<String, Vec<(String, SecretValue)>>,
    pki: tempfile::TempDir,
}

impl Vault {
    fn serve(m: &Machine) -> Vault {
        Vault {
            fakes: m.in_network(|| Fakes::start(&[HOST])).unwrap(),
            secrets: BTreeMap::new(),
            pki: tempfile::tempdir().unwrap(),
        }
    }

    /// A new version of `name` (a fresh P-256 chain); returns the version.
    fn put(&mut self, name: &str) -> String {
        let chain = Chain::generate(
            &self
                .pki
                .path()
                .join(format!("{name}-{}", self.secrets.len())),
            &format!("{name}.example.com"),
            KeyType::Ec("P-256"),
            90,
        )
        .unwrap();
        let value = SecretValue::pem(chain.pem(PemLayout::default()).unwrap());
        let version = self.fakes.vault.put_secret(HOST, name, value.clone());
        self.secrets
            .entry(name.to_string())
            .or_default()
            .push((version.clone(), value));
        version
    }

    /// The same vault, served into `m` (after a reboot: a new network), every version as it was.
    fn serve_again(self, m: &Machine) -> Vault {
        let fakes = m.in_network(|| Fakes::start(&[HOST])).unwrap();
        for (name, versions) in &self.secrets {
            for (version, value) in versions {
                fakes
                    .vault
                    .put_secret_version(HOST, name, version, value.clone());
            }
        }
        Vault { fakes, ..self }
    }

    /// Secrets fetched (200, with a token), in order.
    fn fetched(&self) -> Vec<String> {
        self.fakes
            .vault
            .requests()
            .iter()
            .filter(|r| r.status == 200 && r.bearer_token.is_some())
            .filter_map(|r| {
                Some(
                    r.path_and_query
                        .split('?')
                        .next()?
                        .strip_prefix("/secrets/")?
                        .trim_end_matches('/')
                        .split('/')
                        .next()?
                        .to_string(),
                )
            })
            .collect()
    }
}

fn settings(certs: &[&str], extra: Value) -> String {
    let mut s = json!({"secretsManagementSettings": {
        "pollingIntervalInS": "3600",
        "requireInitialSync": true,
        "observedCertificates": certs.iter().map(|c| format!("https://{HOST}/secrets/{c}")).collect::<Vec<_>>(),
    }});
    for (k, v) in extra.as_object().unwrap() {
        s["secretsManagementSettings"][k] = v.clone();
    }
    serde_json::to_string_pretty(&s).unwrap()
}

fn link(m: &Machine, name: &str) -> Option<PathBuf> {
    fs::read_link(m.path(&Path::new(STORE).join(format!("myvault.{name}")))).ok()
}

fn prop(m: &Machine, name: &str) -> String {
    sh(m, &format!("systemctl show -p {name} --value kvvm.service"))
        .trim()
        .to_string()
}

fn poller_pid(m: &Machine) -> Option<String> {
    let state: Value = serde_json::from_str(
        &fs::read_to_string(m.path(Path::new("/var/lib/kvvm/state.json"))).ok()?,
    )
    .ok()?;
    Some(state["pid"].as_u64()?.to_string())
}

/// The kvvm processes in the machine (the supervisor and its poller, when all is well).
fn kvvm_processes(m: &Machine) -> usize {
    sh(m, "pgrep -x kvvm | wc -l").trim().parse().unwrap()
}

fn mtime(m: &Machine, inside: &Path) -> SystemTime {
    fs::metadata(m.path(inside)).unwrap().modified().unwrap()
}

#[test]
fn the_deb_runs_kvvm_under_systemd_through_crashes_reloads_a_reboot_and_a_purge() {
    let name = "the_deb_runs_kvvm_under_systemd_through_crashes_reloads_a_reboot_and_a_purge";
    if unavailable(name) {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk);
    let mut vault = Vault::serve(&m);
    let v_web = vault.put("web");
    let v_api = vault.put("api");

    // Installed, the unit is enabled and runs, waiting for settings.
    copy_in(&m, &dist(&deb_name()), "/root/kvvm.deb");
    sh(&m, "dpkg -i /root/kvvm.deb");
    assert_eq!(sh(&m, "systemctl is-enabled kvvm").trim(), "enabled");
    wait_until("kvvm active", Duration::from_secs(30), || {
        m.sh("systemctl is-active --quiet kvvm")
            .unwrap()
            .status
            .success()
    });
    let out = sh_output(&m, "kvvm wait --timeout 10");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to watch"),
        "{out:?}"
    );

    // Invalid settings: the reload fails, and the worker goes on as it was.
    write_in(
        &m,
        "/etc/kvvm/settings.json",
        "{\"secretsManagementSettings\": {\"observedCertificates\": 1}}",
    );
    let reload = sh_output(&m, "systemctl reload kvvm");
    assert!(
        !reload.status.success(),
        "a reload with invalid settings succeeded"
    );
    assert_eq!(sh(&m, "systemctl is-active kvvm").trim(), "active");
    let journal = m.journal("kvvm");
    assert!(journal.contains("observedCertificates"), "{journal}");

    // Valid settings: reloaded, the certificates come, the status line says so.
    write_in(
        &m,
        "/etc/kvvm/settings.json",
        &settings(&["web", "api"], json!({})),
    );
    sh(&m, "systemctl reload kvvm");
    let ready = sh(&m, "kvvm wait --timeout 60");
    assert!(
        ready.starts_with("ready: initial sync done, 2 of 2"),
        "{ready}"
    );
    assert_eq!(
        link(&m, "web"),
        Some(PathBuf::from(format!("myvault.web.{v_web}")))
    );
    assert_eq!(
        link(&m, "api"),
        Some(PathBuf::from(format!("myvault.api.{v_api}")))
    );
    wait_until("the status line", Duration::from_secs(10), || {
        prop(&m, "StatusText").contains("2 of 2 certificates installed")
    });
    assert!(sh(&m, "journalctl -u kvvm -p info -o cat").contains("installed version"));

    // SIGKILL of the poller: its supervisor restarts it; systemd sees nothing.
    let supervisor = prop(&m, "MainPID");
    let poller = poller_pid(&m).unwrap();
    sh(&m, &format!("kill -9 {poller}"));
    wait_until("a new poller", Duration::from_secs(30), || {
        poller_pid(&m).is_some_and(|p| p != poller) && kvvm_processes(&m) == 2
    });
    assert_eq!(prop(&m, "MainPID"), supervisor);
    assert_eq!(prop(&m, "NRestarts"), "0");

    // SIGKILL of the supervisor: systemd restarts the service (after RestartSec=5); one worker again.
    sh(&m, &format!("kill -9 {supervisor}"));
    wait_until("systemd restarts kvvm", Duration::from_secs(30), || {
        prop(&m, "NRestarts") == "1"
            && prop(&m, "ActiveState") == "active"
            && prop(&m, "MainPID") != supervisor
    });
    sh(&m, "kvvm wait --timeout 60");
    wait_until(
        "one supervisor and one poller",
        Duration::from_secs(10),
        || kvvm_processes(&m) == 2,
    );

    // A rotation reaches the machine on a reload (which checks every certificate at once).
    let v_web2 = vault.put("web");
    sh(&m, "systemctl reload kvvm");
    wait_until("the new version", Duration::from_secs(30), || {
        link(&m, "web") == Some(PathBuf::from(format!("myvault.web.{v_web2}")))
    });

    // A reboot: the service starts at boot, one worker, nothing installed again.
    let files: Vec<(PathBuf, SystemTime)> = [
        format!("myvault.web.{v_web2}"),
        format!("myvault.api.{v_api}"),
    ]
    .iter()
    .map(|f| {
        let p = Path::new(STORE).join(f);
        let t = mtime(&m, &p);
        (p, t)
    })
    .collect();
    // The journal's times are seconds apart from the reboot's (below).
    std::thread::sleep(Duration::from_millis(1100));
    m.kill().unwrap();
    let m = boot(&disk);
    // The machines share the host's kernel, and so its boot id: `journalctl -b` would show the last boot too.
    let booted = sh(&m, "date +%s").trim().to_string();
    let vault = vault.serve_again(&m);
    wait_until(
        "kvvm active after the reboot",
        Duration::from_secs(30),
        || {
            m.sh("systemctl is-active --quiet kvvm")
                .unwrap()
                .status
                .success()
        },
    );
    let ready = sh(&m, "kvvm wait --timeout 90");
    assert!(ready.contains("2 of 2"), "{ready}");
    assert_eq!(kvvm_processes(&m), 2);
    for (path, before) in &files {
        assert_eq!(
            &mtime(&m, path),
            before,
            "{} was written again",
            path.display()
        );
    }
    let mut fetched = vault.fetched();
    fetched.sort();
    assert_eq!(
        fetched,
        ["api", "web"],
        "one check of each after the reboot"
    );
    let journal = sh(&m, &format!("journalctl -u kvvm --since @{booted} -o cat"));
    assert!(journal.contains("service starting"), "{journal}");
    assert!(!journal.contains(": installed version"), "{journal}");

    // Purge: the service and kvvm's files go; the certificates stay.
    sh(&m, "dpkg --purge kvvm");
    assert!(
        !sh_output(&m, "systemctl is-active --quiet kvvm")
            .status
            .success()
    );
    for gone in [
        "/usr/bin/kvvm",
        "/etc/kvvm",
        "/var/lib/kvvm",
        "/var/log/kvvm",
    ] {
        assert!(
            !m.path(Path::new(gone)).exists(),
            "{gone} is still there: {}",
            sh(&m, &format!("ls -laR {gone}"))
        );
    }
    assert_eq!(
        link(&m, "web"),
        Some(PathBuf::from(format!("myvault.web.{v_web2}")))
    );
    assert!(
        m.path(&Path::new(STORE).join(format!("myvault.api.{v_api}")))
            .is_file()
    );
    m.kill().unwrap();
}

/// The VM Application manager's way: the package and the configuration renamed into
/// `<VMApplicationManagerLinux>/<app>/<version>/`, the manage action run by `/bin/bash -c` from that folder,
/// stdout and stderr to files there, the exit code judged.
fn manage(
    m: &Machine,
    version: &str,
    tarball: &Path,
    config: &str,
    action: &str,
    env: &str,
) -> Output {
    let dir = format!("{VMAPP_DIR}/{version}");
    copy_in(m, tarball, &format!("{dir}/kvvm.tar.gz"));
    write_in(m, &format!("{dir}/kvvm-settings.json"), config);
    let actions: Value = serde_json::from_str(
        &fs::read_to_string(root().join("docs/deploy/vmapp/manage-actions.json")).unwrap(),
    )
    .unwrap();
    let command = actions[action].as_str().unwrap();
    let script = format!(
        // The manager is an extension: its commands' children inherit its AZURE_GUEST_AGENT_EXTENSION_PATH.
        "cd '{dir}' && {env} AZURE_GUEST_AGENT_EXTENSION_PATH={VMAPP_MANAGER} /bin/bash -c '{}' >stdout 2>stderr; \
         code=$?; cat stdout; cat stderr >&2; exit $code",
        command.replace('\'', "'\\''")
    );
    m.sh(&script).unwrap()
}

/// A later version of the VM Application: the same tarball with the .deb's package version raised (the
/// binary is the same build: what is tested is how the package manager and vmapp.sh move between versions).
fn later_tarball(scratch: &Path) -> PathBuf {
    let work = scratch.join("later");
    let deb_dir = work.join("deb");
    fs::create_dir_all(&deb_dir).unwrap();
    let run = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    run(&format!(
        "tar -xzf '{}' && dpkg-deb -R kvvm/{} deb",
        dist(&format!("kvvm-vmapp-{VERSION}.tar.gz")).display(),
        deb_name()
    ));
    let control = deb_dir.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap().replace(
        &format!("Version: {VERSION}-1"),
        &format!("Version: {VERSION}-2"),
    );
    fs::write(&control, text).unwrap();
    let new_deb = deb_name().replace("-1_", "-2_");
    run(&format!(
        "rm kvvm/{} && dpkg-deb --root-owner-group -b deb kvvm/{new_deb} >/dev/null && tar -czf later.tar.gz kvvm",
        deb_name()
    ));
    work.join("later.tar.gz")
}

#[test]
fn the_vm_application_installs_updates_and_removes_kvvm_as_the_manager_runs_it() {
    let name = "the_vm_application_installs_updates_and_removes_kvvm_as_the_manager_runs_it";
    if unavailable(name) {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk);
    let mut vault = Vault::serve(&m);
    let v_web = vault.put("web");
    let tarball = dist(&format!("kvvm-vmapp-{VERSION}.tar.gz"));
    let scratch = tempfile::tempdir().unwrap();

    // install: the package, the configuration as the service's settings, the initial sync waited for.
    let out = manage(
        &m,
        "1.0.0",
        &tarball,
        &settings(&["web"], json!({})),
        "install",
        "",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install failed: {said}");
    assert!(said.contains("ready: initial sync done, 1 of 1"), "{said}");
    assert!(
        m.path(Path::new(&format!("{VMAPP_DIR}/1.0.0/stdout")))
            .is_file()
    );
    assert_eq!(
        link(&m, "web"),
        Some(PathBuf::from(format!("myvault.web.{v_web}")))
    );
    assert_eq!(sh(&m, "systemctl is-enabled kvvm").trim(), "enabled");
    let file = Path::new(STORE).join(format!("myvault.web.{v_web}"));
    let written = mtime(&m, &file);

    // update, from the next version's folder: the package moves on, settings and certificates stay.
    let later = later_tarball(scratch.path());
    let config = settings(&["web"], json!({"pollingIntervalInS": "1800"}));
    let out = manage(&m, "1.0.1", &later, &config, "update", "");
    assert!(out.status.success(), "update failed: {out:?}");
    assert_eq!(
        sh(&m, "dpkg-query -W -f '${Version}' kvvm"),
        format!("{VERSION}-2")
    );
    assert_eq!(
        fs::read_to_string(m.path(Path::new("/etc/kvvm/settings.json"))).unwrap(),
        config
    );
    let out = sh(&m, "kvvm status --json");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["worker"]["polling"]["intervalSeconds"], 1800, "{doc:#}");
    assert_eq!(
        mtime(&m, &file),
        written,
        "the certificate was written again"
    );

    // remove: the service goes, the certificates stay.
    let out = manage(&m, "1.0.1", &later, &config, "remove", "");
    assert!(out.status.success(), "remove failed: {out:?}");
    assert!(!sh_output(&m, "dpkg-query -W kvvm").status.success());
    assert!(!m.path(Path::new("/usr/bin/kvvm")).exists());
    assert_eq!(
        link(&m, "web"),
        Some(PathBuf::from(format!("myvault.web.{v_web}")))
    );

    // An install whose initial sync cannot succeed fails, naming the certificate and why, so that
    // treatFailureAsDeploymentFailure stops the rollout.
    vault.put("denied");
    vault.fakes.vault.deny(HOST, Some("denied"));
    let out = manage(
        &m,
        "1.0.0",
        &tarball,
        &settings(&["web", "denied"], json!({})),
        "install",
        "KVVM_WAIT_TIMEOUT=20",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains(&format!("https://{HOST}/secrets/denied"))
            && stderr.contains("[vault-forbidden]"),
        "{stderr}\njournal:\n{}",
        m.journal("kvvm")
    );
    // A configuration kvvm refuses is refused before anything changes.
    let before = fs::read_to_string(m.path(Path::new("/etc/kvvm/settings.json"))).unwrap();
    let out = manage(
        &m,
        "1.0.0",
        &tarball,
        "{\"secretsManagementSettings\": []}",
        "install",
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid kvvm settings"),
        "{out:?}"
    );
    assert_eq!(
        fs::read_to_string(m.path(Path::new("/etc/kvvm/settings.json"))).unwrap(),
        before
    );
    m.kill().unwrap();
}

/// A file cloud-init writes: path, content, mode.
type WriteFile = (String, String, u32);

/// The cloud-init sample's files and commands, as cloud-init applies them (write_files, then runcmd through
/// `sh -c`), read with PyYAML from the sample itself.
fn cloud_init() -> (Vec<WriteFile>, Vec<Vec<String>>) {
    let out = std::process::Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print(json.dumps(d))",
        ])
        .arg(root().join("docs/deploy/cloud-init/cloud-init.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["content"].as_str().unwrap().to_string(),
                u32::from_str_radix(f["permissions"].as_str().unwrap_or("0644"), 8).unwrap(),
            )
        })
        .collect();
    let commands = doc["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    (files, commands)
}

#[test]
fn the_cloud_init_sample_installs_kvvm_which_survives_a_reboot() {
    let name = "the_cloud_init_sample_installs_kvvm_which_survives_a_reboot";
    if unavailable(name) {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk);
    let mut vault = Vault::serve(&m);
    // The sample's own settings, unchanged: its vault, certificate, store folder and identity.
    let (files, commands) = cloud_init();
    let settings = &files
        .iter()
        .find(|f| f.0 == "/etc/kvvm/settings.json")
        .unwrap()
        .1;
    let doc: Value = serde_json::from_str(settings).unwrap();
    let client_id = doc["authenticationSettings"]["msiClientId"]
        .as_str()
        .unwrap();
    vault.fakes.imds.add_user_identity(client_id);
    let v1 = vault.put("mycert");
    for (path, content, mode) in &files {
        write_in(&m, path, content);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(m.path(Path::new(path)), fs::Permissions::from_mode(*mode)).unwrap();
    }
    // The packages where KVVM_PACKAGE_BASE says; the sample's URL and version replaced by them.
    copy_in(
        &m,
        &dist(&deb_name()),
        &format!("/root/kvvm-dist/{}", deb_name()),
    );
    for command in &commands {
        let argv: Vec<String> = command
            .iter()
            .map(|a| {
                a.replace("https://example.com/kvvm", "file:///root/kvvm-dist")
                    .replace("KVVM_VERSION=0.1.0", &format!("KVVM_VERSION={VERSION}"))
            })
            .collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = m.run(&argv).unwrap();
        assert!(
            out.status.success(),
            "runcmd {argv:?}: {out:?}\n{}",
            m.journal("kvvm")
        );
    }
    let store = Path::new("/etc/ssl/kvvm");
    let linked = |m: &Machine| fs::read_link(m.path(&store.join("mycert.pem"))).ok();
    assert_eq!(
        linked(&m),
        Some(PathBuf::from(format!("myvault.mycert.{v1}")))
    );
    // The settings cloud-init wrote are the ones in force (dpkg kept them).
    assert_eq!(
        fs::read_to_string(m.path(Path::new("/etc/kvvm/settings.json"))).unwrap(),
        *settings
    );

    // A new version while the machine is down; after the reboot the worker is back and installs it.
    let v2 = vault.put("mycert");
    m.kill().unwrap();
    let m = boot(&disk);
    let vault = vault.serve_again(&m);
    vault.fakes.imds.add_user_identity(client_id);
    wait_until(
        "the new version after the reboot",
        Duration::from_secs(60),
        || linked(&m) == Some(PathBuf::from(format!("myvault.mycert.{v2}"))),
    );
    assert_eq!(kvvm_processes(&m), 2);
    assert_eq!(sh(&m, "systemctl is-enabled kvvm").trim(), "enabled");
    m.kill().unwrap();
}

#[test]
fn the_service_on_an_azure_arc_machine_uses_the_arc_identity() {
    let name = "the_service_on_an_azure_arc_machine_uses_the_arc_identity";
    if unavailable(name) {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk);
    // himds at localhost:40342, writing its challenge files where the Arc agent keeps them.
    let key_dir = m.path(Path::new("/var/opt/azcmagent/tokens"));
    fs::create_dir_all(&key_dir).unwrap();
    let fakes = m
        .in_network(move || {
            Fakes::start_arc_in(&[HOST], &key_dir, Path::new("/var/opt/azcmagent/tokens"))
        })
        .unwrap();
    let chain = Chain::generate(
        &tempfile::tempdir().unwrap().keep(),
        "arc.example.com",
        KeyType::Ec("P-256"),
        90,
    )
    .unwrap();
    let version = fakes.vault.put_secret(
        HOST,
        "web",
        SecretValue::pem(chain.pem(PemLayout::default()).unwrap()),
    );
    copy_in(&m, &dist(&deb_name()), "/root/kvvm.deb");
    sh(&m, "dpkg -i /root/kvvm.deb");
    write_in(
        &m,
        "/etc/kvvm/settings.json",
        &settings(&["web"], json!({}))
            .replacen(
                "{",
                "{\"authenticationSettings\": {\"msiEndpoint\": \"http://localhost:40342/metadata/identity\"},",
                1,
            ),
    );
    sh(&m, "kvvm check-settings");
    sh(&m, "systemctl reload kvvm");
    let ready = sh(&m, "kvvm wait --timeout 60");
    assert!(ready.contains("1 of 1"), "{ready}");
    assert_eq!(
        link(&m, "web"),
        Some(PathBuf::from(format!("myvault.web.{version}")))
    );
    // The token came from himds, through its Basic challenge (a first request refused, a second with the key).
    let stats = fakes.imds.stats();
    assert!(stats.tokens_issued >= 1, "{stats:?}");
    assert!(
        fakes.imds.requests().iter().any(|r| r.status == 401),
        "no Arc challenge was answered"
    );
    m.kill().unwrap();
}
