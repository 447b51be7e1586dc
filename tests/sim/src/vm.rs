//! One simulated Azure VM for the end-to-end suites: the fake identity endpoint and Key Vault at the addresses a
//! VM uses, waagent's folders, a guest agent (the simulator in [`crate::waagent`], or the real WALinuxAgent
//! against [`crate::wireserver`]) and the packaged extension it installs. Every suite builds the same `Vm`,
//! with a [`VmBuilder`] for what differs, so each machine detail (where the folders are, how the worker is
//! found and stopped at the end) is written once.
//!
//! Only usable inside [`crate::netns::run_isolated`]: the services bind 169.254.169.254:80 and 127.0.0.1:443,
//! and `/var/lib/waagent` is the namespace's own tmpfs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::imds::{FakeImds, TokenAuthority};
use crate::netns::test_ca;
use crate::pki::{Chain, KeyType, PemLayout, PfxVariant};
use crate::realagent::{self, AgentConfig, RealAgent};
use crate::vault::{FakeVault, SecretValue};
use crate::waagent::{Agent, Extension, HANDLER_NAME, Settings, StatusReport, StatusValue};
use crate::wireserver::{Plugin, VmStatus, WireServer};

/// The vault every suite stores its certificates in (mapped to 127.0.0.1 in every namespace).
pub const VAULT_HOST: &str = "myvault.vault.azure.net";
/// The store kvvm uses when the settings name none, under the namespace's `/var/lib/waagent`.
pub const DEFAULT_STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
/// The binary `bin/kvvm` (a dispatch script) runs on this machine: what `/proc/<pid>/exe` of a kvvm process
/// names.
#[cfg(target_arch = "x86_64")]
pub const KVVM_BIN: &str = "bin/kvvm-x86_64";
/// The binary `bin/kvvm` (a dispatch script) runs on this machine: what `/proc/<pid>/exe` of a kvvm process
/// names.
#[cfg(target_arch = "aarch64")]
pub const KVVM_BIN: &str = "bin/kvvm-aarch64";
/// Bound on every wait for the real agent (it polls each second; a command takes ~2 s; a missing status file
/// costs 10 s of re-reads).
pub const AGENT_PATIENCE: Duration = Duration::from_secs(90);

/// The fake IMDS at 169.254.169.254:80 and the fake Key Vault at 127.0.0.1:443 serving `vault_hosts` (its
/// certificate from the test CA, which the namespace's trust store holds), sharing one token authority.
pub struct Fakes {
    /// The managed-identity endpoint.
    pub imds: FakeImds,
    /// Key Vault.
    pub vault: FakeVault,
}

impl Fakes {
    /// Starts both (inside the namespace: outside it the addresses are not free).
    pub fn start(vault_hosts: &[&str]) -> Fakes {
        let tokens = TokenAuthority::new();
        let imds = FakeImds::start("169.254.169.254:80".parse().unwrap(), tokens.clone()).expect(
            "bind the fake IMDS at 169.254.169.254:80 (inside kvvm_sim::netns::run_isolated)",
        );
        let vault = vault_at_443(vault_hosts, tokens);
        Fakes { imds, vault }
    }

    /// The fake Azure Arc identity endpoint (himds) at 127.0.0.1:40342, writing its challenge key files to
    /// `key_dir`, and the fake Key Vault at 127.0.0.1:443 serving `vault_hosts`.
    pub fn start_arc(vault_hosts: &[&str], key_dir: &Path) -> Fakes {
        Fakes::start_arc_in(vault_hosts, key_dir, key_dir)
    }

    /// [`Fakes::start_arc`] for a machine that sees the key folder as `announced_dir` while this process
    /// writes it at `key_dir` (see [`FakeImds::start_arc_in`]).
    pub fn start_arc_in(vault_hosts: &[&str], key_dir: &Path, announced_dir: &Path) -> Fakes {
        let tokens = TokenAuthority::new();
        let imds = FakeImds::start_arc_in(
            "127.0.0.1:40342".parse().unwrap(),
            tokens.clone(),
            key_dir,
            announced_dir,
        )
        .expect("bind the fake himds at 127.0.0.1:40342 (inside the machine's network)");
        let vault = vault_at_443(vault_hosts, tokens);
        Fakes { imds, vault }
    }
}

fn vault_at_443(vault_hosts: &[&str], tokens: TokenAuthority) -> FakeVault {
    FakeVault::start(
        "127.0.0.1:443".parse().unwrap(),
        test_ca().server_config(vault_hosts),
        tokens,
    )
    .expect("bind the fake vault at 127.0.0.1:443 (inside kvvm_sim::netns::run_isolated)")
}

/// What differs between the suites' VMs; [`Vm::builder`] starts from the common case: waagent's real folders
/// (the namespace's tmpfs), the fakes serving [`VAULT_HOST`], the waagent simulator.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    vault_hosts: Vec<String>,
    services: bool,
    temp_dir: bool,
    real_agent: bool,
}

impl VmBuilder {
    /// The fake vault serves these hosts (all but [`VAULT_HOST`] must be passed to
    /// [`crate::netns::run_isolated_with_hosts`]).
    pub fn vaults(mut self, hosts: &[&str]) -> VmBuilder {
        self.vault_hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Nothing listens at IMDS or the vault: the worker polls and finds no one, as on a VM without network.
    pub fn without_services(mut self) -> VmBuilder {
        self.services = false;
        self
    }

    /// waagent's folders (`lib/`, `log/`) and the certificate store (`store/`) in a fresh temporary folder
    /// instead of `/var/lib/waagent`, `/var/log/azure` and the default store.
    pub fn in_temp_dir(mut self) -> VmBuilder {
        self.temp_dir = true;
        self
    }

    /// The real guest agent drives the package: the machine is prepared for it
    /// ([`realagent::prepare_machine`]) and the fake wire server serves the package; start the agent with
    /// [`Vm::start_agent`]. Needs waagent's real folders.
    pub fn with_real_agent(mut self) -> VmBuilder {
        self.real_agent = true;
        self
    }

    /// Starts what was asked for.
    pub fn build(self) -> Vm {
        assert!(
            !(self.real_agent && self.temp_dir),
            "the real agent uses /var/lib/waagent: a Vm with it cannot live in a temporary folder"
        );
        if self.real_agent {
            realagent::prepare_machine().expect("prepare the namespace for the agent");
        }
        let fakes = self.services.then(|| {
            let hosts: Vec<&str> = self.vault_hosts.iter().map(String::as_str).collect();
            Fakes::start(&hosts)
        });
        let version = env!("CARGO_PKG_VERSION").to_string();
        let wire = self.real_agent.then(|| {
            let (wire_addr, hgap_addr) = realagent::wire_addrs();
            let wire =
                WireServer::start(wire_addr, Some(hgap_addr)).expect("start the wire server");
            let zip = fs::read(crate::built_package()).expect("read the package");
            wire.add_package(HANDLER_NAME, &version, zip);
            wire
        });
        let dir = self
            .temp_dir
            .then(|| tempfile::tempdir().expect("a temporary folder for the VM"));
        let agent = match &dir {
            Some(d) => Agent::new(&d.path().join("lib"), &d.path().join("log")),
            None => Agent::new(
                Path::new(realagent::LIB_DIR),
                Path::new(realagent::EXT_LOG_DIR),
            ),
        };
        Vm {
            agent,
            ext: None,
            fakes,
            wire,
            real_agent: None,
            pki: tempfile::tempdir().expect("a temporary folder for the certificates"),
            dir,
            version,
        }
    }
}

/// A simulated VM (only built inside the namespace). Dropping it stops the real agent if it runs, disables
/// [`Vm::ext`] if set, and kills every kvvm process still running from its folders.
pub struct Vm {
    /// The waagent simulator over this VM's folders (also where the real agent keeps them).
    pub agent: Agent,
    /// The extension [`Vm::enable`] installed, disabled when the `Vm` is dropped (set it to `None` after
    /// disabling it yourself).
    pub ext: Option<Extension>,
    fakes: Option<Fakes>,
    wire: Option<WireServer>,
    real_agent: Option<RealAgent>,
    pki: tempfile::TempDir,
    dir: Option<tempfile::TempDir>,
    version: String,
}

/// A running kvvm process: its pid and arguments (`worker`, `poller`, a verb...).
struct Process {
    pid: u32,
    exe: PathBuf,
    args: Vec<String>,
}

impl Vm {
    /// The common VM: waagent's folders, the fakes serving [`VAULT_HOST`], the simulator.
    pub fn new() -> Vm {
        Vm::builder().build()
    }

    /// The VM of the lifecycle suites: waagent's folders in a temporary folder, nothing at IMDS or the vault.
    pub fn offline() -> Vm {
        Vm::builder().in_temp_dir().without_services().build()
    }

    /// A VM that differs from [`Vm::new`].
    pub fn builder() -> VmBuilder {
        VmBuilder {
            vault_hosts: vec![VAULT_HOST.to_string()],
            services: true,
            temp_dir: false,
            real_agent: false,
        }
    }

    // --- the machine ---

    /// waagent's folder (`/var/lib/waagent`, or `lib/` in the temporary folder).
    pub fn root(&self) -> PathBuf {
        self.agent.root().to_path_buf()
    }

    /// kvvm's state folder beside the versioned directories (`<root>/Microsoft.Azure.KeyVault.KeyVaultForLinux`).
    pub fn data_dir(&self) -> PathBuf {
        self.root().join(HANDLER_NAME)
    }

    /// The certificate store: [`DEFAULT_STORE`], or `store/` in the temporary folder.
    pub fn store(&self) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().join("store"),
            None => PathBuf::from(DEFAULT_STORE),
        }
    }

    /// The package's version (the workspace's).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory the package of `version` is unpacked to.
    pub fn ext_dir_of(&self, version: &str) -> PathBuf {
        self.root().join(format!("{HANDLER_NAME}-{version}"))
    }

    /// The directory of this package's version.
    pub fn ext_dir(&self) -> PathBuf {
        self.ext_dir_of(&self.version)
    }

    /// The binary kvvm processes of `version` run.
    pub fn kvvm_exe(&self, version: &str) -> PathBuf {
        self.ext_dir_of(version).join(KVVM_BIN)
    }

    /// What the poller recorded in `state.json` in the state folder.
    pub fn worker_state(&self) -> Option<Value> {
        serde_json::from_slice(&fs::read(self.data_dir().join("state.json")).ok()?).ok()
    }

    /// Live kvvm processes of this network namespace whose binary lies under [`Vm::root`] (also after the
    /// file was deleted, as when the agent removed the extension's directory). Other tests' namespaces run
    /// the same paths in parallel, so the namespace is compared too.
    fn processes(&self) -> Vec<Process> {
        let root = self.root();
        realagent::namespace_processes()
            .into_iter()
            .filter(|(_, exe)| exe.starts_with(&root))
            .map(|(pid, exe)| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args = cmdline
                    .split(|b| *b == 0)
                    .skip(1)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                Process { pid, exe, args }
            })
            .collect()
    }

    /// Live `kvvm worker` processes (supervisors) of any version under [`Vm::root`].
    pub fn workers(&self) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|p| p.args.first().is_some_and(|a| a == "worker"))
            .map(|p| p.pid)
            .collect()
    }

    /// Waits (at most 5 s) until exactly `count` workers run; returns them.
    pub fn wait_workers(&self, count: usize) -> Vec<u32> {
        for _ in 0..500 {
            let workers = self.workers();
            if workers.len() == count {
                return workers;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("expected {count} worker(s), found {:?}", self.workers());
    }

    /// Every live kvvm process running the binary of `version` (supervisor, poller, a command in flight).
    pub fn processes_of(&self, version: &str) -> Vec<u32> {
        let exe = self.kvvm_exe(version);
        self.processes()
            .into_iter()
            .filter(|p| p.exe == exe)
            .map(|p| p.pid)
            .collect()
    }

    /// The `kvvm worker` processes (holding the worker lock) of `version`.
    pub fn workers_of(&self, version: &str) -> Vec<u32> {
        let exe = self.kvvm_exe(version);
        self.processes()
            .into_iter()
            .filter(|p| p.exe == exe && p.args.first().is_some_and(|a| a == "worker"))
            .map(|p| p.pid)
            .collect()
    }

    /// Every log that says what happened: the real agent's (its tail), kvvm's in the extension's log folder,
    /// the wire server's.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Some(a) = &self.real_agent {
            text.push_str(&tail(&a.log(), 400));
        } else if self.wire.is_some()
            && let Ok(t) = fs::read_to_string(realagent::AGENT_LOG)
        {
            text.push_str(&format!("--- {}\n{}", realagent::AGENT_LOG, tail(&t, 400)));
        }
        let dir = self.agent.log_root().join(HANDLER_NAME);
        for name in [
            "kvvm.log",
            "handler.log",
            "supervisor.log",
            "worker.stderr.log",
        ] {
            if let Ok(t) = fs::read_to_string(dir.join(name)) {
                text.push_str(&format!("--- {name}\n{t}"));
            }
        }
        if let Some(w) = &self.wire {
            text.push_str(&format!("--- wire server\n{}\n", w.log()));
        }
        text
    }

    // --- the services ---

    fn fakes(&self) -> &Fakes {
        self.fakes
            .as_ref()
            .expect("this Vm was built without services (VmBuilder::without_services)")
    }

    /// The fake managed-identity endpoint.
    pub fn imds(&self) -> &FakeImds {
        &self.fakes().imds
    }

    /// The fake Key Vault.
    pub fn vault(&self) -> &FakeVault {
        &self.fakes().vault
    }

    /// A fresh chain (leaf, intermediate, root) for `name.example.com`, valid for `days`.
    pub fn chain(&self, name: &str, key: KeyType, days: i32) -> Chain {
        Chain::generate(
            &self.pki.path().join(name),
            &format!("{name}.example.com"),
            key,
            days,
        )
        .unwrap()
    }

    /// A temporary folder of this VM for the test's own files (removed with the `Vm`).
    pub fn scratch(&self) -> &Path {
        self.pki.path()
    }

    /// Stores `chain` as a new PEM version of `secret` in [`VAULT_HOST`]; returns the version.
    pub fn put_pem(&self, secret: &str, chain: &Chain) -> String {
        self.vault().put_secret(
            VAULT_HOST,
            secret,
            SecretValue::pem(chain.pem(PemLayout::default()).unwrap()),
        )
    }

    /// Stores `chain` as a new PKCS#12 version (as Key Vault makes it) of `secret`; returns the version.
    pub fn put_pfx(&self, secret: &str, chain: &Chain) -> String {
        self.vault().put_secret(
            VAULT_HOST,
            secret,
            SecretValue::pkcs12(&chain.pfx(PfxVariant::KeyVault).unwrap()),
        )
    }

    /// Stores a fresh P-256 certificate (90 days) as a new PEM version of `secret`; returns the version.
    pub fn put_certificate(&self, secret: &str) -> String {
        let chain = self.chain(secret, KeyType::Ec("P-256"), 90);
        self.put_pem(secret, &chain)
    }

    // --- the waagent simulator ---

    /// Installs and enables the package with `settings` at sequence number 0 (asserting that both succeed),
    /// and remembers the extension in [`Vm::ext`].
    pub fn enable(&mut self, settings: impl Into<Settings>) -> Extension {
        let ext = self.install_with(0, &settings.into());
        self.ext = Some(ext.clone());
        ext
    }

    /// Installs and enables the package at `seq` with [`Vm::idle_settings`] for the one certificate
    /// `https://myvault.vault.azure.net/secrets/c1`; the extension is not remembered.
    pub fn install(&self, seq: u64) -> Extension {
        self.install_with(
            seq,
            &self.idle_settings(&["https://myvault.vault.azure.net/secrets/c1"]),
        )
    }

    fn install_with(&self, seq: u64, settings: &Settings) -> Extension {
        let run = self
            .agent
            .install_and_enable(&crate::built_package(), seq, settings)
            .unwrap();
        assert!(run.ok(), "{}", run.describe());
        run.extension.unwrap()
    }

    /// v1 settings watching `certs` hourly, in [`Vm::store`].
    pub fn idle_settings(&self, certs: &[&str]) -> Settings {
        Settings::public(serde_json::json!({
            "secretsManagementSettings": {
                "pollingIntervalInS": "3600",
                "certificateStoreLocation": self.store(),
                "observedCertificates": certs,
            }
        }))
    }

    /// Waits (at most `within`) until the status of `seq` for [`Vm::ext`] satisfies `done`; on timeout panics
    /// with the last status and the logs.
    pub fn wait(
        &self,
        seq: u64,
        within: Duration,
        what: &str,
        done: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let ext = self.ext.as_ref().expect("Vm::wait needs Vm::enable first");
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(r) = self.agent.read_status(ext, seq) {
                if done(&r) {
                    return r;
                }
                last = Some(r);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not reached within {within:?}; last status {last:#?}\nlog:\n{}",
            self.log()
        );
    }

    /// The status of `seq` once it is no longer `transitioning` (at most 10 s).
    pub fn settled(&self, ext: &Extension, seq: u64) -> StatusReport {
        self.agent
            .wait_status(ext, seq, Duration::from_secs(10), |r| {
                r.status != StatusValue::Transitioning
            })
            .unwrap()
    }

    /// Runs the installed extension's `bin/kvvm` with `args`.
    pub fn kvvm(&self, args: &[&str]) -> Output {
        let dir = self
            .ext
            .as_ref()
            .map_or_else(|| self.ext_dir(), |e| e.dir.clone());
        Command::new(dir.join("bin/kvvm"))
            .args(args)
            .output()
            .unwrap()
    }

    // --- the real agent ---

    /// The fake wire server (a Vm built [`VmBuilder::with_real_agent`]).
    pub fn wire(&self) -> &WireServer {
        self.wire
            .as_ref()
            .expect("this Vm has no wire server (VmBuilder::with_real_agent)")
    }

    /// The goal state's entry for this package at `seq` with public `settings`.
    pub fn plugin(&self, seq: u64, settings: Value) -> Plugin {
        Plugin::enabled(HANDLER_NAME, &self.version, seq, settings)
    }

    /// Starts `waagent -run-exthandlers` with the default configuration.
    pub fn start_agent(&mut self) {
        self.start_agent_with(AgentConfig::default());
    }

    /// Starts `waagent -run-exthandlers` with `cfg`.
    pub fn start_agent_with(&mut self, cfg: AgentConfig) {
        assert!(self.wire.is_some(), "VmBuilder::with_real_agent first");
        assert!(self.real_agent.is_none(), "the agent is already running");
        self.real_agent = Some(RealAgent::start(&cfg).expect("start waagent -run-exthandlers"));
    }

    /// Stops the agent (the extension's worker runs on, as on a VM).
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.real_agent.take() {
            a.stop(Duration::from_secs(10));
        }
    }

    /// Waits for an upload at incarnation ≥ `inc` satisfying `done`; on timeout panics with the last upload
    /// and every log.
    pub fn wait_upload(&self, inc: u64, what: &str, done: impl Fn(&VmStatus) -> bool) -> VmStatus {
        match self.wire().wait_status(inc, AGENT_PATIENCE, done) {
            Ok(s) => s,
            Err(last) => panic!(
                "{what}: not reported within {AGENT_PATIENCE:?}\nlast upload: {}\n{}",
                last.map_or("none".into(), |s| serde_json::to_string_pretty(&s.raw)
                    .unwrap()),
                self.log()
            ),
        }
    }

    /// [`Vm::wait_upload`] for an upload that arrived after `since` (the same goal state keeps being
    /// reported).
    pub fn wait_upload_since(
        &self,
        since: Instant,
        what: &str,
        done: impl Fn(&VmStatus) -> bool,
    ) -> VmStatus {
        self.wait_upload(0, what, |s| s.at > since && done(s))
    }

    /// Polls `cond` for at most [`AGENT_PATIENCE`]; panics with every log if it never holds.
    pub fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + AGENT_PATIENCE;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within {AGENT_PATIENCE:?}\n{}", self.log());
    }

    /// The commands the real agent ran, in order: (command path, the variables it set for it), from its log
    /// (`Executing command: <path> with environment variables: <json>`).
    pub fn agent_commands(&self) -> Vec<(String, Value)> {
        let log = fs::read_to_string(realagent::AGENT_LOG).unwrap_or_default();
        let marker = "Executing command: ";
        let mut out = Vec::new();
        for line in log.lines() {
            let Some(rest) = line.split_once(marker).map(|(_, r)| r) else {
                continue;
            };
            let Some((cmd, env)) = rest.split_once(" with environment variables: ") else {
                continue;
            };
            out.push((
                cmd.to_string(),
                serde_json::from_str(env).unwrap_or(Value::Null),
            ));
        }
        out
    }

    /// `(version, verb)` of each command the real agent ran, e.g. `("0.1.0", "enable")`.
    pub fn agent_verbs(&self) -> Vec<(String, String)> {
        self.agent_commands()
            .iter()
            .filter_map(|(cmd, _)| {
                let p = Path::new(cmd);
                let dir = p.parent()?.file_name()?.to_str()?;
                let version = dir.strip_prefix(&format!("{HANDLER_NAME}-"))?;
                let verb = p.file_name()?.to_str()?.split_whitespace().last()?;
                Some((version.to_string(), verb.to_string()))
            })
            .collect()
    }
}

impl Default for Vm {
    fn default() -> Vm {
        Vm::new()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_agent();
        if let Some(ext) = &self.ext {
            let _ = self.agent.disable(ext, 0);
        }
        // The worker runs in its own session and outlives the agent (as on a VM): end it with the test.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for p in left {
                // SAFETY: plain syscall; the pid was just read from /proc in this namespace.
                unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}
