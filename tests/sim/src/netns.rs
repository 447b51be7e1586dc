//! Runs a test body inside a fresh network + mount namespace that looks like an Azure VM to the product:
//! IMDS at 169.254.169.254, vault names resolving to 127.0.0.1, the test CA in the system bundle, and empty
//! tmpfs over the waagent/log/azcmagent directories.
//!
//! Namespaces belong to a process, not a thread, so the test binary re-executes itself for one test
//! (`<test> --exact --nocapture`) under `unshare ... scripts/netns-setup.sh`; the inner run sees
//! `KVVM_SIM_IN_NETNS=1` and just runs the body. This works the same under `cargo test` and `cargo nextest`.
//!
//! ```no_run
//! #[test]
//! fn token_cached() {
//!     kvvm_sim::netns::run_isolated("vault_tests::token_cached", || {
//!         // 169.254.169.254:80 and 127.0.0.1:443 are free here; /etc/hosts maps the vault names.
//!     });
//! }
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::tls::TestCa;

/// Set to `1` in the re-executed process running inside the namespace.
pub const ENV_IN_NETNS: &str = "KVVM_SIM_IN_NETNS";
/// Directory holding the test CA (and the bundle), passed to the inner process.
pub const ENV_CA_DIR: &str = "KVVM_SIM_CA_DIR";
/// File the inner process creates when the body returned, so a test name matching nothing cannot pass.
pub const ENV_DONE_MARKER: &str = "KVVM_SIM_DONE_MARKER";

/// The hosts mapped to 127.0.0.1 in every namespace.
pub const DEFAULT_HOSTS: &[&str] = &[
    "myvault.vault.azure.net",
    "othervault.vault.azure.net",
    "myvault.vault.azure.cn",
    "vault.evil.example",
];

/// The setup script, embedded so any test binary (of any crate) can use it.
const SETUP_SCRIPT: &str = include_str!("../../../scripts/netns-setup.sh");

/// Whether this process is the one running inside the namespace.
pub fn in_netns() -> bool {
    std::env::var_os(ENV_IN_NETNS).is_some_and(|v| v == "1")
}

struct CaHome {
    ca: TestCa,
    dir: PathBuf,
}

fn ca_home() -> &'static CaHome {
    static HOME: OnceLock<CaHome> = OnceLock::new();
    HOME.get_or_init(|| {
        if let Some(dir) = std::env::var_os(ENV_CA_DIR) {
            let dir = PathBuf::from(dir);
            let ca = TestCa::load(&dir)
                .unwrap_or_else(|e| panic!("cannot load the test CA from {}: {e}", dir.display()));
            return CaHome { ca, dir };
        }
        remove_stale_ca_dirs();
        let dir = std::env::temp_dir().join(format!(
            "kvvm-sim-ca-{}-{}",
            std::process::id(),
            crate::httpserver::random_hex(8)
        ));
        let ca = TestCa::generate();
        ca.write(&dir)
            .unwrap_or_else(|e| panic!("cannot write the test CA to {}: {e}", dir.display()));
        CaHome { ca, dir }
    })
}

/// Removes CA directories left by earlier test processes that have exited (a static is never dropped, so
/// each process cleans up after its dead predecessors instead).
fn remove_stale_ca_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kvvm-sim-ca-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The test CA: generated once per outer test process (and written to a temporary directory), loaded from that
/// directory by the process inside the namespace, so both trust the same CA.
pub fn test_ca() -> &'static TestCa {
    &ca_home().ca
}

/// Directory holding `ca.pem` and `bundle.pem` (the system bundle + the test CA) for this process.
pub fn ca_dir() -> &'static Path {
    &ca_home().dir
}

/// Path of the CA bundle that is mounted over `/etc/ssl/certs/ca-certificates.crt` in the namespace (point
/// `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` at it for tools that keep their own bundle).
pub fn ca_bundle() -> PathBuf {
    ca_dir().join(crate::tls::BUNDLE_FILE)
}

/// Why namespaces cannot be used here, if they cannot (checked once).
fn unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not running as root".into());
        }
        match Command::new("unshare")
            .args(["--net", "--mount", "--fork", "true"])
            .stdin(Stdio::null())
            .output()
        {
            Err(e) => Some(format!("cannot run unshare: {e}")),
            Ok(o) if !o.status.success() => Some(format!(
                "unshare --net --mount failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(_) => None,
        }
    })
    .as_deref()
}

/// Why [`reexec_isolated`] / [`run_isolated`] cannot work here (not root, no `unshare`), if they cannot.
pub fn why_unavailable() -> Option<&'static str> {
    unavailable()
}

/// Runs the current executable again with `args` inside a fresh VM-like namespace, stdio inherited (for
/// programs such as `kvvm-demo`; tests use [`run_isolated`]). The inner process sees [`in_netns`] true.
pub fn reexec_isolated(
    args: &[std::ffi::OsString],
    extra_hosts: &[&str],
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(why) = unavailable() {
        return Err(std::io::Error::other(why.to_string()));
    }
    let run = Run::prepare(extra_hosts)?;
    let status = run.command(&std::env::current_exe()?).args(args).status();
    let _ = std::fs::remove_dir_all(&run.dir);
    status
}

/// One namespace run's files: the setup script and the hosts file, in a fresh folder.
struct Run {
    dir: PathBuf,
    script: PathBuf,
    hosts: PathBuf,
}

impl Run {
    fn prepare(extra_hosts: &[&str]) -> std::io::Result<Run> {
        let dir = ca_dir().join(format!("run-{}", crate::httpserver::random_hex(12)));
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("netns-setup.sh");
        std::fs::write(&script, SETUP_SCRIPT)?;
        let hosts = dir.join("hosts");
        let mut text =
            String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        for h in DEFAULT_HOSTS.iter().chain(extra_hosts) {
            text.push_str(&format!("127.0.0.1 {h}\n"));
        }
        std::fs::write(&hosts, text)?;
        Ok(Run { dir, script, hosts })
    }

    /// `unshare … netns-setup.sh … -- <exe>`, with the environment the inner process needs.
    fn command(&self, exe: &Path) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--mount", "--fork", "bash"])
            .arg(&self.script)
            .arg("--hosts")
            .arg(&self.hosts)
            .arg("--ca-bundle")
            .arg(ca_dir().join(crate::tls::BUNDLE_FILE))
            .arg("--")
            .arg(exe)
            .env(ENV_IN_NETNS, "1")
            .env(ENV_CA_DIR, ca_dir());
        cmd
    }
}

/// Runs `body` inside a fresh network + mount namespace set up as on a VM (see the module docs).
///
/// `test_name` must be the test's full name as the harness lists it (`module::test`, without the crate name),
/// e.g. `"vault_tests::token_cached"` or just `"token_cached"` for a top-level test. Outside the namespace this
/// re-executes the current test binary for that one test under `unshare --net --mount --fork`, streams its
/// output, and panics if it failed or if the name matched no test. Inside, it runs `body`. If not root or
/// `unshare` is unusable, prints `SKIP <test>: needs root and unshare (network namespace)` and returns.
pub fn run_isolated(test_name: &str, body: impl FnOnce()) {
    run_isolated_with_hosts(test_name, &[], body)
}

/// [`run_isolated`], also mapping `extra_hosts` to 127.0.0.1 in `/etc/hosts`.
pub fn run_isolated_with_hosts(test_name: &str, extra_hosts: &[&str], body: impl FnOnce()) {
    if in_netns() {
        body();
        if let Some(marker) = std::env::var_os(ENV_DONE_MARKER) {
            std::fs::write(marker, test_name).expect("write the done marker");
        }
        return;
    }
    if let Some(why) = unavailable() {
        println!("SKIP {test_name}: needs root and unshare (network namespace) — {why}");
        return;
    }
    let run = Run::prepare(extra_hosts).expect("write the namespace's setup files");
    let run_dir = run.dir.clone();
    let marker = run_dir.join("done");
    let exe = std::env::current_exe().expect("current test binary");

    let mut child = run
        .command(&exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_DONE_MARKER, &marker)
        .env_remove("NEXTEST_EXECUTION_MODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let stdout = child.stdout.take().unwrap();
    let err_thread = {
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || forward(stderr, true))
    };
    forward(stdout, false);
    let _ = err_thread.join();
    let status = child.wait().expect("wait for the namespaced test");
    let done = marker.exists();
    let _ = std::fs::remove_dir_all(&run_dir);
    assert!(
        status.success(),
        "{test_name} failed inside the network namespace ({status}); its output is above"
    );
    assert!(
        done,
        "{test_name}: the re-executed test binary ran no test of that name; pass the full test path \
         (module::test, without the crate name) to run_isolated"
    );
}

fn forward(r: impl Read, stderr: bool) {
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        if stderr {
            eprintln!("  [netns] {line}");
        } else {
            println!("  [netns] {line}");
        }
    }
}
