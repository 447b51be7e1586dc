//! Runs the real Linux guest agent's extension handler (`waagent -run-exthandlers`, WALinuxAgent as the
//! distribution packages it) inside the VM-like test namespace, against [`crate::wireserver::WireServer`].
//!
//! The test process plays the agent's daemon: it writes the configuration, the pid file the extension handler
//! checks its parent against (so the agent exits by itself if the test dies), and the daemon's
//! `_AZURE_GUEST_AGENT_DAEMON_VERSION_` variable, then starts `waagent -run-exthandlers` as its child. Every
//! file the agent writes stays in the namespace: `/var/lib/waagent` and `/var/log/azure` are the namespace's
//! tmpfs, its log (`/var/log/waagent.log`, a fixed path in the agent) lands on a tmpfs mounted over `/var/log`,
//! and its configuration is passed with `-configuration-path:`.
//!
//! Only usable inside [`crate::netns`]'s namespace: [`prepare_machine`] refuses to run in the host's.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wireserver::{HOST_PLUGIN_PORT, WIRE_SERVER_IP};

/// The agent's command, as Debian installs it.
pub const WAAGENT: &str = "/usr/sbin/waagent";
/// Where the agent keeps its state (and unpacks extensions).
pub const LIB_DIR: &str = "/var/lib/waagent";
/// Where the agent logs (fixed in `conf.get_agent_log_file()`).
pub const AGENT_LOG: &str = "/var/log/waagent.log";
/// Extension log folders' parent.
pub const EXT_LOG_DIR: &str = "/var/log/azure";

/// The installed agent's version (`waagent -version`), or why it cannot be run here.
pub fn installed_version() -> Result<String, String> {
    if !Path::new(WAAGENT).is_file() {
        return Err(format!(
            "{WAAGENT} is missing: install Debian's waagent package (make deps does)"
        ));
    }
    let out = Command::new(WAAGENT)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {WAAGENT}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("WALinuxAgent-"))
        .map(str::to_string)
        .ok_or_else(|| format!("{WAAGENT} -version printed no version: {text}"))
}

/// Makes the namespace look like an Azure VM's network and file system to the agent: the wire server's
/// address on `lo` with a route in the main table (the agent looks for `10813FA8` in `/proc/net/route` to find
/// the wire server), and a tmpfs over `/var/log` (keeping an empty `/var/log/azure`). Call once, inside
/// the namespace, before starting the wire server.
pub fn prepare_machine() -> io::Result<()> {
    if !crate::netns::in_netns() {
        return Err(io::Error::other(
            "realagent::prepare_machine must run inside the test namespace (kvvm_sim::netns::run_isolated)",
        ));
    }
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{WIRE_SERVER_IP}/32"),
        "dev",
        "lo",
    ])?;
    run(&[
        "ip",
        "route",
        "add",
        &format!("{WIRE_SERVER_IP}/32"),
        "dev",
        "lo",
        "table",
        "main",
    ])?;
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "tmpfs",
        "/var/log",
    ])?;
    fs::create_dir_all(EXT_LOG_DIR)?;
    Ok(())
}

fn run(args: &[&str]) -> io::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The socket addresses the wire server and the HostGAPlugin listen on.
pub fn wire_addrs() -> (std::net::SocketAddr, std::net::SocketAddr) {
    (
        format!("{WIRE_SERVER_IP}:80").parse().unwrap(),
        format!("{WIRE_SERVER_IP}:{HOST_PLUGIN_PORT}")
            .parse()
            .unwrap(),
    )
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `Extensions.GoalStatePeriod` and `Extensions.InitialGoalStatePeriod`, seconds.
    pub goal_state_period: u32,
    /// Extra `waagent.conf` lines.
    pub extra_conf: Vec<String>,
    /// Extra variables of the agent's own environment (they reach every command it runs).
    pub env: Vec<(String, String)>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            goal_state_period: 1,
            extra_conf: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// The `waagent.conf` the tests run the agent with.
pub fn conf_text(cfg: &AgentConfig) -> String {
    let mut lines = vec![
        // Provisioning is done (cloud-init's job on real images); the extension handler never provisions.
        "Provisioning.Agent=disabled".to_string(),
        "Provisioning.Enabled=n".into(),
        "Provisioning.MonitorHostName=n".into(),
        "Extensions.Enabled=y".into(),
        format!("Extensions.GoalStatePeriod={}", cfg.goal_state_period),
        format!(
            "Extensions.InitialGoalStatePeriod={}",
            cfg.goal_state_period
        ),
        "AutoUpdate.Enabled=n".into(),
        "ResourceDisk.Format=n".into(),
        "ResourceDisk.EnableSwap=n".into(),
        "OS.EnableFirewall=n".into(),
        "OS.EnableRDMA=n".into(),
        "OS.RootDeviceScsiTimeout=None".into(),
        "Logs.Verbose=y".into(),
        "Logs.Console=n".into(),
        "Logs.Collect=n".into(),
        "CGroups.Enabled=n".into(),
        "EnableOverProvisioning=n".into(),
        format!("Lib.Dir={LIB_DIR}"),
        format!("Extension.LogDir={EXT_LOG_DIR}"),
        format!("Pid.File={LIB_DIR}/waagent.pid"),
    ];
    lines.extend(cfg.extra_conf.iter().cloned());
    lines.join("\n") + "\n"
}

/// A running `waagent -run-exthandlers`; stopped (and its extension processes left alone) on drop.
pub struct RealAgent {
    child: Option<Child>,
    dir: PathBuf,
}

impl RealAgent {
    /// Writes the configuration and the daemon's pid file, and starts the agent's extension handler.
    pub fn start(cfg: &AgentConfig) -> io::Result<RealAgent> {
        let dir = std::env::temp_dir().join(format!(
            "kvvm-realagent-{}-{}",
            std::process::id(),
            crate::httpserver::random_hex(6)
        ));
        fs::create_dir_all(&dir)?;
        let conf = dir.join("waagent.conf");
        fs::write(&conf, conf_text(cfg))?;
        fs::create_dir_all(LIB_DIR)?;
        // The extension handler exits when its parent is not the pid in this file (`_is_orphaned`).
        fs::write(
            Path::new(LIB_DIR).join("waagent.pid"),
            std::process::id().to_string(),
        )?;
        let out = fs::File::create(dir.join("stdout.log"))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(WAAGENT);
        cmd.arg("-run-exthandlers")
            .arg(format!("-configuration-path:{}", conf.display()))
            .current_dir("/")
            .env("_AZURE_GUEST_AGENT_DAEMON_VERSION_", daemon_version())
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn()?;
        Ok(RealAgent {
            child: Some(child),
            dir,
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the agent as systemd stops its service: SIGTERM, then SIGKILL after `grace`. Extension processes
    /// it started in their own sessions (kvvm's worker) are not touched, as on a VM.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain syscall on a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The agent's log file, then what it printed outside its logger (Python tracebacks): its stdout repeats
    /// the log's lines, which all start with a timestamp.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(t) = fs::read_to_string(AGENT_LOG) {
            text.push_str(&format!("--- {AGENT_LOG}\n{t}"));
        }
        if let Ok(t) = fs::read_to_string(self.dir.join("stdout.log")) {
            let other: Vec<&str> = t
                .lines()
                .filter(|l| !l.starts_with("20") && !l.trim().is_empty())
                .collect();
            if !other.is_empty() {
                text.push_str(&format!(
                    "--- waagent stdout/stderr (not logged)\n{}\n",
                    other.join("\n")
                ));
            }
        }
        text
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn daemon_version() -> String {
    installed_version().unwrap_or_else(|_| "2.7.3.0".into())
}

/// Processes in this network namespace whose executable is `exe` (also after the file was deleted, as when
/// the agent removed the extension's directory). Other tests' namespaces run the same paths in parallel, so
/// the namespace is compared too.
pub fn processes_running(exe: &Path) -> Vec<u32> {
    namespace_processes()
        .into_iter()
        .filter(|(_, e)| e == exe)
        .map(|(pid, _)| pid)
        .collect()
}

/// Every live process of this network namespace with its executable's path (without the ` (deleted)` the
/// kernel adds once the file is gone). Zombies have no executable and are left out.
pub(crate) fn namespace_processes() -> Vec<(u32, PathBuf)> {
    let Ok(own_ns) = fs::metadata("/proc/self/ns/net").map(|m| m.ino()) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = e.path();
        if fs::metadata(base.join("ns/net")).map(|m| m.ino()).ok() != Some(own_ns) {
            continue;
        }
        let Ok(target) = fs::read_link(base.join("exe")) else {
            continue;
        };
        let t = target.to_string_lossy();
        found.push((
            pid,
            PathBuf::from(t.strip_suffix(" (deleted)").unwrap_or(&t)),
        ));
    }
    found
}

/// SIGKILLs every process [`processes_running`] finds for `exe` and waits (bounded) until they are gone;
/// returns the pids killed.
pub fn kill_all(exe: &Path, within: Duration) -> Vec<u32> {
    let pids = processes_running(exe);
    for &pid in &pids {
        // SAFETY: plain syscall; the pid was just read from /proc in this namespace.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !processes_running(exe).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids
}
