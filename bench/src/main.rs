//! `make bench`: kvvm against the polling service people write by hand with the Azure SDK for Python
//! (`bench/peer/poller.py`), side by side on the same fakes, in the VM-like network namespace (root only).
//! Writes `bench/RESULTS.md`.
//!
//! ```text
//! kvvm-bench <package.zip> <repo root>        (KVVM_BENCH_FLEET=<workers>, default 300;
//!                                               KVVM_BENCH_ONLY=<sections> to run only some)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kvvm_sim::imds::{FakeImds, TokenAuthority};
use kvvm_sim::netns;
use kvvm_sim::pki::{Chain, KeyType, PemLayout, PfxVariant};
use kvvm_sim::vault::{FakeVault, SecretValue};
use kvvm_sim::waagent::{Agent, Extension, Settings, StatusValue, Verb};
use serde_json::json;

const NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForLinux";
const VAULTS: [&str; 4] = [
    "bench1.vault.azure.net",
    "bench2.vault.azure.net",
    "bench3.vault.azure.net",
    "bench4.vault.azure.net",
];
const FLEET_VAULT: &str = "fleet.vault.azure.net";
const PER_VAULT: usize = 50;
const LATENCY: Duration = Duration::from_millis(20);
const INTERVAL_S: u64 = 3;
/// The architectures the package holds a build for (`bin/kvvm-<arch>`).
const ARCHS: [&str; 2] = ["x86_64", "aarch64"];
const CYCLES: usize = 10;
/// kvvm's default `pollingIntervalInS`, the configuration most VMs run.
const DEFAULT_INTERVAL_S: u64 = 3600;
/// How long the memory of a poller at the default interval is sampled after its first cycle: past the first
/// heartbeat (every 60 s), which is all the idle worker does until its next cycle.
const IDLE_WATCH: Duration = Duration::from_secs(70);
/// Between two of those samples.
const IDLE_EVERY: Duration = Duration::from_secs(5);
const RUNS: usize = 3;
/// How often kvvm's poller refreshes its heartbeat, the one thing it does between hourly cycles.
const HEARTBEAT_S: u64 = 60;
/// How often kvvm's supervisor looks at its poller.
const SUPERVISOR_WATCH_S: u64 = 10;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(
        args.len() == 3,
        "usage: kvvm-bench <package.zip> <repo root>"
    );
    if !netns::in_netns() {
        if let Some(why) = netns::why_unavailable() {
            bail!(
                "the benchmark runs in a VM-like network namespace, which needs root and unshare: {why}"
            );
        }
        let mut hosts: Vec<&str> = VAULTS.to_vec();
        hosts.push(FLEET_VAULT);
        let status =
            netns::reexec_isolated(&[args[1].clone().into(), args[2].clone().into()], &hosts)?;
        ensure!(status.success(), "the benchmark failed ({status})");
        return Ok(());
    }
    let bench = Bench::new(Path::new(&args[1]), Path::new(&args[2]))?;
    bench.run()
}

/// Median, min and max of some numbers.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            },
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    fn show(&self, unit: &str, digits: usize) -> String {
        format!(
            "{:.d$} {unit} (min {:.d$}, max {:.d$}, n={})",
            self.median,
            self.min,
            self.max,
            self.n,
            d = digits
        )
    }
}

struct Bench {
    zip: PathBuf,
    repo: PathBuf,
    python: PathBuf,
    imds: FakeImds,
    vault: FakeVault,
    pki: PathBuf,
    urls: Vec<String>,
    report: String,
    /// (target, kvvm's figure, met) for the summary.
    targets: Vec<(String, String, bool)>,
}

/// What /proc says about a process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
    /// Minor page faults so far (`minflt`): pages mapped again from the page cache, no disk read.
    minflt: u64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the ")".
    let ticks = rest
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + rest
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    // Field 10 (minflt) is 7 after the ")".
    let minflt = rest.get(7).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: ticks,
        minflt,
    })
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits until `done` holds, checking every 20 ms.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("{what}: not done within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

fn count_files(dir: &Path, with_dot: bool) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    // kvvm: links `<vault>.<cert>` (one dot); the peer: files with the same names.
                    n.matches('.').count() == 1 && (with_dot || !n.ends_with(".tmp"))
                })
                .filter(|e| e.path().is_file())
                .count()
        })
        .unwrap_or(0)
}

impl Bench {
    fn new(zip: &Path, repo: &Path) -> Result<Bench> {
        let python = repo.join(".venv/bin/python");
        ensure!(
            python.exists(),
            "{} is missing: run `make deps`",
            python.display()
        );
        let tokens = TokenAuthority::new();
        let imds = FakeImds::start("169.254.169.254:80".parse()?, tokens.clone())?;
        let mut names: Vec<&str> = VAULTS.to_vec();
        names.push(FLEET_VAULT);
        let vault = FakeVault::start(
            "127.0.0.1:443".parse()?,
            netns::test_ca().server_config(&names),
            tokens,
        )?;
        let pki = std::env::temp_dir().join(format!("kvvm-bench-pki.{}", std::process::id()));
        let mut urls = Vec::new();
        for (i, host) in VAULTS.iter().enumerate() {
            let chain = Chain::generate(
                &pki.join(format!("v{i}")),
                &format!("www{i}.contoso.example"),
                KeyType::Rsa(2048),
                365,
            )?;
            let pfx = chain.pfx(PfxVariant::KeyVault)?;
            for c in 0..PER_VAULT {
                let name = format!("cert{c:02}");
                vault.put_secret(host, &name, SecretValue::pkcs12(&pfx));
                urls.push(format!("https://{host}/secrets/{name}"));
            }
        }
        Ok(Bench {
            zip: zip.to_path_buf(),
            repo: repo.to_path_buf(),
            python,
            imds,
            vault,
            pki,
            urls,
            report: String::new(),
            targets: Vec::new(),
        })
    }

    fn target(&mut self, target: &str, figure: String, met: bool) {
        self.targets.push((target.to_string(), figure, met));
    }

    fn line(&mut self, text: &str) {
        println!("{text}");
        self.report.push_str(text);
        self.report.push('\n');
    }

    fn run(mut self) -> Result<()> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let date = String::from_utf8_lossy(
            &Command::new("date")
                .args(["-u", "+%Y-%m-%d"])
                .output()?
                .stdout,
        )
        .trim()
        .to_string();
        self.line("# kvvm benchmark results");
        self.line("");
        self.line(&format!(
            "Written by `make bench` on {date}: {cores} cores, {} GiB RAM. Absolute times vary between runs and \
             machines — compare the ratios. Each timed figure is the median of several runs with min and max; \
             counts come from the fakes' counters. Both sides run in the same VM-like network namespace against \
             the same fake Key Vault and IMDS, one after the other. The peer is `bench/peer/poller.py`.",
            mem_gib()
        ));
        self.line("");
        let agent = Agent::new(Path::new("/var/lib/waagent"), Path::new("/var/log/azure"));
        let ext = self.install_kvvm(&agent)?;
        // KVVM_BENCH_ONLY=steady,fleet (any of initial, steady, enable, package, fleet) runs only those and
        // leaves RESULTS.md alone: for working on one figure.
        let only = std::env::var("KVVM_BENCH_ONLY").ok();
        let want = |name: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == name))
        };
        ensure!(
            with_peer() || only.is_some(),
            "KVVM_BENCH_NO_PEER measures kvvm alone: name the sections with KVVM_BENCH_ONLY=initial,outside"
        );
        if want("initial") {
            self.initial_sync(&ext)?;
        }
        if want("steady") {
            self.steady_state(&agent, &ext)?;
        }
        if want("outside") {
            self.outside(&agent, &ext)?;
        }
        if want("enable") {
            self.enable_latency()?;
        }
        if want("package") {
            self.package(&ext)?;
        }
        if want("fleet") {
            self.fleet()?;
        }
        if only.is_some() {
            println!("\nKVVM_BENCH_ONLY is set: bench/RESULTS.md left as it was");
            return Ok(());
        }
        self.commits();
        self.line("## Targets");
        self.line("");
        self.line("| target | kvvm | met |");
        self.line("|---|---|---|");
        for (target, figure, met) in self.targets.clone() {
            self.line(&format!(
                "| {target} | {figure} | {} |",
                if met { "yes" } else { "**no**" }
            ));
        }
        self.line("");
        let out = self.repo.join("bench/RESULTS.md");
        fs::write(&out, &self.report)?;
        println!("\nwrote {}", out.display());
        let _ = fs::remove_dir_all(&self.pki);
        Ok(())
    }

    /// §8: which change bought what, from `bench/COMMITS.md` (written by `scripts/bench-commits.sh`, which
    /// measures each commit of a series the way §1 and §4 do; it takes too long to run with every bench).
    fn commits(&mut self) {
        let Ok(table) = fs::read_to_string(self.repo.join("bench/COMMITS.md")) else {
            return;
        };
        self.line("## 8. Which change bought what");
        self.line("");
        self.line(table.trim_end());
        self.line("");
    }

    fn kvvm_settings(&self, store: &Path) -> Settings {
        Settings::public(json!({"secretsManagementSettings": {
            "pollingIntervalInS": INTERVAL_S.to_string(),
            "certificateStoreLocation": store,
            "observedCertificates": self.urls,
        }}))
    }

    /// Installs the package (enable + disable, so settings and state folder exist; no worker runs).
    fn install_kvvm(&self, agent: &Agent) -> Result<Extension> {
        let run = agent.install_and_enable(
            &self.zip,
            0,
            &self.kvvm_settings(Path::new("/var/lib/kvvm-bench/kvvm")),
        )?;
        ensure!(run.ok(), "install: {}", run.describe());
        let ext = run.extension.context("no extension")?;
        agent.disable(&ext, 0)?;
        Ok(ext)
    }

    fn peer(&self, out: &Path, once: bool, interval_s: u64) -> Result<Child> {
        let cfg = self.pki.join(format!(
            "peer-{}-{interval_s}.json",
            if once { "once" } else { "loop" }
        ));
        fs::write(
            &cfg,
            json!({"certificates": self.urls, "out": out, "interval": interval_s, "once": once})
                .to_string(),
        )?;
        Ok(Command::new(&self.python)
            .arg(self.repo.join("bench/peer/poller.py"))
            .arg(&cfg)
            .env("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?)
    }

    fn initial_sync(&mut self, ext: &Extension) -> Result<()> {
        println!(
            "\n[1] initial sync of {} certificates over {} vaults, {} ms added per vault request",
            self.urls.len(),
            VAULTS.len(),
            LATENCY.as_millis()
        );
        self.vault.set_latency(LATENCY);
        let store = Path::new("/var/lib/kvvm-bench/kvvm");
        let peer_out = Path::new("/var/lib/kvvm-bench/peer");
        let mut kvvm = Vec::new();
        let mut peer = Vec::new();
        for run in 0..RUNS {
            let _ = fs::remove_dir_all(store);
            let _ = fs::remove_file(Path::new("/var/lib/waagent").join(NAME).join("state.json"));
            let t = Instant::now();
            let out = Command::new(ext.dir.join("bin/kvvm"))
                .args(["sync", "--once"])
                .output()?;
            let took = t.elapsed().as_secs_f64();
            ensure!(
                out.status.success(),
                "kvvm sync --once failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            ensure!(
                count_files(store, false) == self.urls.len(),
                "kvvm installed {} files",
                count_files(store, false)
            );
            kvvm.push(took);

            if !with_peer() {
                println!("  run {run}: kvvm {took:.2} s (KVVM_BENCH_NO_PEER: the peer is not run)");
                continue;
            }
            let _ = fs::remove_dir_all(peer_out);
            let t = Instant::now();
            let status = self.peer(peer_out, true, INTERVAL_S)?.wait()?;
            let took_peer = t.elapsed().as_secs_f64();
            ensure!(status.success(), "the peer failed");
            ensure!(
                count_files(peer_out, false) == self.urls.len(),
                "the peer wrote {} files",
                count_files(peer_out, false)
            );
            peer.push(took_peer);
            println!("  run {run}: kvvm {took:.2} s, peer {took_peer:.2} s");
        }
        if !with_peer() {
            println!("  kvvm: {}", Spread::of(&kvvm).show("s", 2));
            self.vault.set_latency(Duration::ZERO);
            return Ok(());
        }
        let (k, p) = (Spread::of(&kvvm), Spread::of(&peer));
        let ratios: Vec<f64> = peer.iter().zip(&kvvm).map(|(p, k)| p / k).collect();
        self.line(
            "## 1. Initial sync: 200 certificates, 4 vaults, 20 ms added latency per vault request",
        );
        self.line("");
        self.line("Process start to exit with every certificate written: `kvvm sync --once` (the worker's first cycle, without its start-up jitter) and `poller.py` in run-once mode. Each run starts from an empty folder and gets a fresh token.");
        self.line("");
        self.line("| | wall time |");
        self.line("|---|---|");
        self.line(&format!("| kvvm | {} |", k.show("s", 2)));
        self.line(&format!("| peer | {} |", p.show("s", 2)));
        self.line(&format!(
            "| **peer / kvvm** | **{}** (target ≥ 8×) |",
            Spread::of(&ratios).show("×", 1)
        ));
        let ratio = Spread::of(&ratios).median;
        self.target(
            "initial sync ≥ 8× faster than the peer",
            format!("{ratio:.1}×"),
            ratio >= 8.0,
        );
        self.line("");
        self.vault.set_latency(Duration::ZERO);
        Ok(())
    }

    /// Waits for `cycles` more cycles of `per_cycle` GETs; after each, samples the process and the counters.
    fn cycles(
        &self,
        pid: u32,
        cycles: usize,
    ) -> Result<Vec<(ProcSample, kvvm_sim::vault::VaultStats, u64)>> {
        let per_cycle = self.urls.len() as u64;
        let start = self.vault.stats().requests_with_token;
        let mut samples = Vec::new();
        for k in 1..=cycles as u64 {
            wait_until("a steady-state cycle", Duration::from_secs(60), || {
                self.vault.stats().requests_with_token >= start + k * per_cycle
            })?;
            // Let the cycle's last writes finish.
            std::thread::sleep(Duration::from_millis(300));
            samples.push((
                proc_sample(pid)?,
                self.vault.stats(),
                self.imds.stats().token_requests,
            ));
        }
        Ok(samples)
    }

    /// Rotates `cert00` of the first vault right after a cycle and times until `changed` sees it.
    fn rotations(&self, mut changed: impl FnMut() -> Option<String>) -> Result<Vec<f64>> {
        let chain = Chain::generate(
            &self.pki.join("rot"),
            "rotated.contoso.example",
            KeyType::Rsa(2048),
            365,
        )?;
        let mut out = Vec::new();
        for i in 0..RUNS {
            let before = changed();
            // Put the new version just after a cycle's burst, the worst case for a poller.
            let last = self.vault.stats().requests_with_token;
            wait_until("a cycle", Duration::from_secs(30), || {
                self.vault.stats().requests_with_token >= last + self.urls.len() as u64
            })?;
            std::thread::sleep(Duration::from_millis(200));
            let renewed = chain.renew(&format!("r{i}"), KeyType::Rsa(2048), 365)?;
            self.vault.put_secret(
                VAULTS[0],
                "cert00",
                SecretValue::pkcs12(&renewed.pfx(PfxVariant::KeyVault)?),
            );
            let took = wait_until("rotation", Duration::from_secs(60), || changed() != before)?;
            out.push(took.as_secs_f64());
        }
        Ok(out)
    }

    fn steady_state(&mut self, agent: &Agent, ext: &Extension) -> Result<()> {
        println!(
            "\n[2-5] steady state ({CYCLES} cycles every {INTERVAL_S} s, nothing new), memory, CPU, rotation"
        );
        let store = PathBuf::from("/var/lib/kvvm-bench/kvvm");
        let peer_out = PathBuf::from("/var/lib/kvvm-bench/peer");
        let _ = fs::remove_dir_all(&store);
        let _ = fs::remove_dir_all(&peer_out);
        let _ = fs::remove_file(Path::new("/var/lib/waagent").join(NAME).join("state.json"));

        // kvvm: the worker, started by enable.
        let run = agent.enable(ext, 0)?;
        ensure!(run.success(), "enable: {}", run.output);
        wait_until("kvvm's first cycle", Duration::from_secs(60), || {
            count_files(&store, false) == self.urls.len()
        })?;
        let state: serde_json::Value = serde_json::from_str(&fs::read_to_string(
            Path::new("/var/lib/waagent").join(NAME).join("state.json"),
        )?)?;
        // The poller (state.json) and its supervisor (worker.pid): everything kvvm keeps running counts.
        let pid = state["pid"].as_u64().context("poller pid")? as u32;
        let supervisor: u32 =
            fs::read_to_string(Path::new("/var/lib/waagent").join(NAME).join("worker.pid"))?
                .trim()
                .parse()
                .context("worker.pid")?;
        let kvvm = self.steady(pid, Some(supervisor))?;
        let link = store.join("bench1.cert00");
        let kvvm_rot =
            self.rotations(|| fs::read_link(&link).ok().map(|p| p.display().to_string()))?;
        agent.disable(ext, 0)?;

        // The peer, in its loop.
        let mut child = self.peer(&peer_out, false, INTERVAL_S)?;
        let ppid = child.id();
        wait_until("the peer's first cycle", Duration::from_secs(120), || {
            count_files(&peer_out, false) == self.urls.len()
        })?;
        let peer = self.steady(ppid, None)?;
        let file = peer_out.join("bench1.cert00");
        let peer_rot =
            self.rotations(|| fs::read(&file).ok().map(|b| format!("{:x}", md5ish(&b))))?;
        let _ = child.kill();
        let _ = child.wait();
        let (kvvm_default, peer_default) = self.idle_at_default_interval(agent, ext)?;

        let interval = INTERVAL_S as f64;
        self.target(
            "≤ 1.0 vault request per certificate per cycle",
            format!("{:.2}", kvvm.req_per_cert.median),
            kvvm.req_per_cert.max <= 1.0,
        );
        self.target(
            "0 IMDS requests per cycle",
            format!("{:.1}", kvvm.imds.median),
            kvvm.imds.max == 0.0,
        );
        self.target(
            "≤ 1 TLS handshake per vault per cycle",
            format!("{:.2}", kvvm.handshakes.median),
            kvvm.handshakes.max <= 1.0,
        );
        let default_rss = kvvm_default.rss.max as u64;
        self.target(
            &format!(
                "worker RSS ≤ 5 MiB (idle, poller + supervisor), default interval {DEFAULT_INTERVAL_S} s (largest sample)"
            ),
            format!("{:.1} MiB", mib(default_rss)),
            default_rss <= 5 * 1024,
        );
        self.target(
            &format!("worker RSS ≤ 1/10 of the peer's, default interval {DEFAULT_INTERVAL_S} s"),
            format!(
                "1/{:.1}",
                peer_default.rss.median / default_rss.max(1) as f64
            ),
            default_rss as f64 * 10.0 <= peer_default.rss.median,
        );
        self.target(
            &format!(
                "worker RSS ≤ 5 MiB (idle, poller + supervisor), {INTERVAL_S} s interval (pooled connections kept)"
            ),
            format!("{:.1} MiB", mib(kvvm.idle_rss)),
            kvvm.idle_rss <= 5 * 1024,
        );
        self.target(
            &format!("worker RSS ≤ 1/10 of the peer's, {INTERVAL_S} s interval"),
            format!(
                "1/{:.1}",
                peer.idle_rss as f64 / kvvm.idle_rss.max(1) as f64
            ),
            kvvm.idle_rss * 10 <= peer.idle_rss,
        );
        self.line("## 2. Steady state: 10 cycles with nothing new");
        self.line("");
        self.line(&format!("Interval {INTERVAL_S} s, no added latency. Per cycle (median, min, max over the cycles):"));
        self.line("");
        self.line("| per cycle | kvvm | peer | target |");
        self.line("|---|---|---|---|");
        self.line(&format!(
            "| vault requests per certificate | {} | {} | ≤ 1.0 |",
            kvvm.req_per_cert.show("", 2),
            peer.req_per_cert.show("", 2)
        ));
        self.line(&format!(
            "| IMDS requests | {} | {} | 0 |",
            kvvm.imds.show("", 1),
            peer.imds.show("", 1)
        ));
        self.line(&format!(
            "| TLS handshakes per vault (all) | {} | {} | ≤ 1 |",
            kvvm.handshakes.show("", 2),
            peer.handshakes.show("", 2)
        ));
        self.line(&format!(
            "| of which full (not resumed) | {} | {} | |",
            kvvm.full_handshakes.show("", 2),
            peer.full_handshakes.show("", 2)
        ));
        self.line("");
        self.line(&format!(
            "At this {INTERVAL_S} s interval kvvm's pooled connections (at most 4 per vault, kept 5 minutes) carry \
             every cycle. At the default 3600 s interval the worker drops its pool before the wait (servers close \
             idle connections long before), so each hourly cycle opens up to 4 connections per vault: one full \
             handshake for the first request, and resumed sessions for the parallel ones while tickets last."
        ));
        self.line("");
        self.line("## 3. Memory of the long-running process");
        self.line("");
        let show_mib = |s: Spread| {
            format!(
                "{:.1} MiB (min {:.1}, max {:.1}, n={})",
                s.median / 1024.0,
                s.min / 1024.0,
                s.max / 1024.0,
                s.n
            )
        };
        self.line(&format!(
            "At the default interval ({DEFAULT_INTERVAL_S} s, the configuration most VMs run): each side starts \
             from an empty folder, installs the 200 certificates in its first cycle, and is sampled every {} s for \
             {} s of the hour it then waits (past the worker's first heartbeat).",
            IDLE_EVERY.as_secs(),
            IDLE_WATCH.as_secs()
        ));
        self.line("");
        self.line("| default interval, idle after the first cycle | kvvm worker | peer (python) | target |");
        self.line("|---|---|---|---|");
        self.line(&format!(
            "| VmRSS idle (kvvm: poller + supervisor) | {} | {} | ≤ 5 MiB and ≤ 1/10 of the peer |",
            show_mib(kvvm_default.rss),
            show_mib(peer_default.rss)
        ));
        memory_breakdown(&mut |l| self.line(l), &kvvm_default.set, &peer_default.set);
        self.line(&format!(
            "CPU time while idle: kvvm's poller {:.0} ms in {:.0} s, the peer {:.0} ms in {:.0} s. Wakes (voluntary \
             context switches of every thread, `/proc/<pid>/task/*/status`) in those {:.0} s: kvvm's poller {}, its \
             supervisor {} (it looks at the poller's heartbeat every {} s), the peer {}.",
            kvvm_default.idle_cpu_ms,
            kvvm_default.idle_s,
            peer_default.idle_cpu_ms,
            peer_default.idle_s,
            kvvm_default.idle_s,
            kvvm_default.wakes[0],
            kvvm_default.wakes.get(1).copied().unwrap_or_default(),
            SUPERVISOR_WATCH_S,
            peer_default.wakes[0],
        ));
        let heartbeats = (kvvm_default.idle_s / HEARTBEAT_S as f64).ceil() as u64;
        self.target(
            &format!(
                "idle poller at the default interval wakes at most once per heartbeat ({HEARTBEAT_S} s): ≤ {heartbeats} \
                 wakes in {:.0} s",
                kvvm_default.idle_s
            ),
            format!("{} wakes", kvvm_default.wakes[0]),
            kvvm_default.wakes[0] <= heartbeats,
        );
        self.line("");
        self.line(&format!(
            "At the {INTERVAL_S} s interval of §2 (kvvm keeps up to 4 pooled connections per vault), sampled 300 ms \
             after each cycle and 500 ms after the last:"
        ));
        self.line("");
        self.line("| | kvvm worker | peer (python) | target |");
        self.line("|---|---|---|---|");
        self.line(&format!(
            "| VmRSS idle (kvvm: poller + supervisor), sampled between cycles | {} | {} | ≤ 5 MiB and ≤ 1/10 of the peer |",
            show_mib(kvvm.idle_rss_spread),
            show_mib(peer.idle_rss_spread)
        ));
        self.line(&format!(
            "| VmHWM (peak, includes the initial sync of 200) | {:.1} MiB | {:.1} MiB | |",
            mib(kvvm.hwm),
            mib(peer.hwm)
        ));
        self.line(&format!(
            "| ratio peer / kvvm (idle RSS) | {:.1}× | | ≥ 10× |",
            peer.idle_rss as f64 / kvvm.idle_rss.max(1) as f64
        ));
        self.line(&format!(
            "| Pss idle (pages shared by the two kvvm processes counted once) | {:.1} MiB | {:.1} MiB | |",
            mib(kvvm.pss_kib),
            mib(peer.pss_kib)
        ));
        memory_breakdown(&mut |l| self.line(l), &kvvm.set, &peer.set);
        self.line("");
        self.line(&format!(
            "Where the poller's idle RSS goes (`/proc/<pid>/smaps_rollup`): at the {INTERVAL_S} s interval {:.1} MiB \
             anonymous (heap: settings and state of 200 certificates, the OS trust store for rustls, up to 4 idle TLS \
             connections per vault with their buffers; thread stacks), at the default interval {:.1} MiB (no pooled \
             connections); the rest of each process's RSS is pages of the binary and shared libraries (the binary \
             is on tmpfs here, so they show as shared memory; on a VM's disk they are file pages). The TLS provider \
             is ring (P-521 keys, which ring cannot load, are matched to their leaf by the pure-Rust `p521` crate). \
             The kernel's fault-around maps 64 KiB of a file around every page a process touches, so a cycle leaves \
             most of the binary resident: the poller drops its file pages each time it has saved with no check \
             running, the supervisor after it starts a poller (kvvm::residency); what stays is what their wait \
             loops run. The cost is the minor faults of §4.",
            mib(kvvm.anon_kib),
            mib(kvvm_default.set.processes[0].anon_kib)
        ));
        self.line("");
        self.line(&format!(
            "kvvm's figures count both of its processes: the poller and its supervisor (`kvvm worker`, which restarts \
             the poller if it dies). Supervision costs {:.1} MiB of the idle RSS: the supervisor touches only the \
             start-up, logging and process code of the shared binary, never TLS or certificates.",
            mib(kvvm.supervisor_rss)
        ));
        self.line("");
        self.line("## 4. CPU time (user + sys) per cycle of 200 certificates (nothing new)");
        self.line("");
        self.line("| | CPU time | minor page faults |");
        self.line("|---|---|---|");
        self.line(&format!(
            "| kvvm | {} | {} |",
            kvvm.cpu_ms.show("ms", 0),
            kvvm.minor_faults.show("", 0)
        ));
        self.line(&format!(
            "| peer | {} | {} |",
            peer.cpu_ms.show("ms", 0),
            peer.minor_faults.show("", 0)
        ));
        self.line("");
        self.line(
            "A minor fault maps a page that is already in memory (the page cache, or a fresh zeroed page): kvvm's \
             poller drops the file pages a cycle touched before it waits, and maps them again in the next cycle.",
        );
        self.line("");
        self.line(&format!(
            "(/proc tick resolution: {:.0} ms.)",
            1000.0 / ticks_per_sec()
        ));
        self.line("");
        self.line("## 5. Latencies");
        self.line("");
        let minus = |v: &[f64]| v.iter().map(|x| x - interval).collect::<Vec<_>>();
        self.line(&format!("Rotation: a new version put into the vault right after a cycle, until the link (kvvm) or file (peer) shows it; the interval is {INTERVAL_S} s, so a poller needs about one interval plus its own work."));
        self.line("");
        self.line("| | new version → installed | minus the interval |");
        self.line("|---|---|---|");
        self.line(&format!(
            "| kvvm | {} | {} |",
            Spread::of(&kvvm_rot).show("s", 2),
            Spread::of(&minus(&kvvm_rot)).show("s", 2)
        ));
        self.line(&format!(
            "| peer | {} | {} |",
            Spread::of(&peer_rot).show("s", 2),
            Spread::of(&minus(&peer_rot)).show("s", 2)
        ));
        self.line("");
        self.line("kvvm spreads each wait by ±10 % (jitter, so a scale set does not poll in step), which shows in its min and max.");
        self.line("");
        Ok(())
    }

    /// The memory of kvvm and of the peer at the default interval, the configuration most VMs run: each starts
    /// from an empty folder, installs every certificate in its first cycle, and is then sampled every
    /// [`IDLE_EVERY`] for [`IDLE_WATCH`] of the hour it waits (a 3 s interval never lets kvvm drop its pooled
    /// connections, and samples it 300 ms after a cycle).
    fn idle_at_default_interval(
        &mut self,
        agent: &Agent,
        ext: &Extension,
    ) -> Result<(DefaultIdle, DefaultIdle)> {
        println!(
            "\n[3] memory at the default interval ({DEFAULT_INTERVAL_S} s), sampled for {} s after the first cycle",
            IDLE_WATCH.as_secs()
        );
        let store = PathBuf::from("/var/lib/kvvm-bench/kvvm");
        let peer_out = PathBuf::from("/var/lib/kvvm-bench/peer");
        let _ = fs::remove_dir_all(&store);
        let _ = fs::remove_dir_all(&peer_out);
        let _ = fs::remove_file(Path::new("/var/lib/waagent").join(NAME).join("state.json"));
        let settings = Settings::public(json!({"secretsManagementSettings": {
            "certificateStoreLocation": store,
            "observedCertificates": self.urls,
        }}));
        let first_cycle = |what: &str, before: u64| {
            wait_until(what, Duration::from_secs(120), || {
                self.vault.stats().requests_with_token >= before + self.urls.len() as u64
            })
        };
        let before = self.vault.stats().requests_with_token;
        let run = agent.apply_settings(ext, 1, &settings)?;
        ensure!(run.success(), "enable: {}", run.output);
        first_cycle("kvvm's first cycle at the default interval", before)?;
        wait_until("kvvm's installs", Duration::from_secs(60), || {
            count_files(&store, false) == self.urls.len()
        })?;
        let state: serde_json::Value = serde_json::from_str(&fs::read_to_string(
            Path::new("/var/lib/waagent").join(NAME).join("state.json"),
        )?)?;
        let pid = state["pid"].as_u64().context("poller pid")? as u32;
        let supervisor: u32 =
            fs::read_to_string(Path::new("/var/lib/waagent").join(NAME).join("worker.pid"))?
                .trim()
                .parse()
                .context("worker.pid")?;
        let kvvm = Self::idle_samples(&[pid, supervisor])?;
        agent.disable(ext, 1)?;

        let before = self.vault.stats().requests_with_token;
        let mut child = self.peer(&peer_out, false, DEFAULT_INTERVAL_S)?;
        first_cycle("the peer's first cycle at the default interval", before)?;
        wait_until("the peer's files", Duration::from_secs(60), || {
            count_files(&peer_out, false) == self.urls.len()
        })?;
        let peer = Self::idle_samples(&[child.id()]);
        let _ = child.kill();
        let _ = child.wait();
        Ok((kvvm, peer?))
    }

    /// Samples `pids` (a poller first) every [`IDLE_EVERY`] for [`IDLE_WATCH`], from 2 s after its cycle.
    fn idle_samples(pids: &[u32]) -> Result<DefaultIdle> {
        // The cycle's last writes, and the poller's tidying after it.
        std::thread::sleep(Duration::from_secs(2));
        let start = proc_sample(pids[0])?;
        let woken: Vec<u64> = pids
            .iter()
            .map(|&p| proc_memory(p).map(|m| m.voluntary))
            .collect::<Result<_>>()?;
        let began = Instant::now();
        let mut rss = Vec::new();
        let last = loop {
            let set =
                kvvm_sim::meminfo::measure(pids).context("measure the idle processes' memory")?;
            rss.push(set.rss_kib() as f64);
            if began.elapsed() >= IDLE_WATCH {
                break set;
            }
            std::thread::sleep(IDLE_EVERY);
        };
        let end = proc_sample(pids[0])?;
        let wakes: Vec<u64> = pids
            .iter()
            .zip(&woken)
            .map(|(&p, before)| proc_memory(p).map(|m| m.voluntary - before))
            .collect::<Result<_>>()?;
        Ok(DefaultIdle {
            wakes,
            rss: Spread::of(&rss),
            set: last,
            idle_cpu_ms: (end.cpu_ticks - start.cpu_ticks) as f64 * 1000.0 / ticks_per_sec(),
            idle_s: began.elapsed().as_secs_f64(),
        })
    }

    /// Steady-state figures of the process `pid`; the resident memory adds `supervisor`'s, if given.
    fn steady(&self, pid: u32, supervisor: Option<u32>) -> Result<Steady> {
        let extra = || supervisor.map_or(Ok(0), |s| proc_sample(s).map(|p| p.rss_kib));
        let hwm = proc_sample(pid)?.hwm_kib;
        // One cycle to settle (connections, caches), then measure.
        self.cycles(pid, 1)?;
        let base = (
            proc_sample(pid)?,
            self.vault.stats(),
            self.imds.stats().token_requests,
        );
        let samples = self.cycles(pid, CYCLES)?;
        let mut prev = base;
        let (mut req, mut imds, mut hs, mut full, mut cpu, mut rss, mut faults) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for s in samples {
            let n = self.urls.len() as f64;
            req.push((s.1.requests - prev.1.requests) as f64 / n);
            imds.push((s.2 - prev.2) as f64);
            let h = (s.1.tls_handshakes - prev.1.tls_handshakes) as f64;
            let r = (s.1.tls_resumed_handshakes - prev.1.tls_resumed_handshakes) as f64;
            hs.push(h / VAULTS.len() as f64);
            full.push((h - r) / VAULTS.len() as f64);
            cpu.push((s.0.cpu_ticks - prev.0.cpu_ticks) as f64 * 1000.0 / ticks_per_sec());
            faults.push((s.0.minflt - prev.0.minflt) as f64);
            rss.push(s.0.rss_kib + extra()?);
            prev = s;
        }
        // Idle: between cycles, after the last one.
        std::thread::sleep(Duration::from_millis(500));
        rss.push(proc_sample(pid)?.rss_kib + extra()?);
        let supervisor_rss = extra()?;
        let rss_f: Vec<f64> = rss.iter().map(|&k| k as f64).collect();
        let idle_spread = Spread::of(&rss_f);
        let idle = idle_spread.median as u64;
        let rollup = |pid: u32, field: &str| {
            fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .ok()
                .and_then(|r| {
                    r.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let anon_kib = rollup(pid, "Anonymous:");
        // Proportional set size: pages shared between the two processes (the same binary) counted once.
        let pss_kib = rollup(pid, "Pss:") + supervisor.map_or(0, |s| rollup(s, "Pss:"));
        let pids: Vec<u32> = std::iter::once(pid).chain(supervisor).collect();
        let set =
            kvvm_sim::meminfo::measure(&pids).context("measure the idle processes' memory")?;
        Ok(Steady {
            req_per_cert: Spread::of(&req),
            imds: Spread::of(&imds),
            handshakes: Spread::of(&hs),
            full_handshakes: Spread::of(&full),
            cpu_ms: Spread::of(&cpu),
            minor_faults: Spread::of(&faults),
            idle_rss: idle,
            idle_rss_spread: idle_spread,
            anon_kib,
            pss_kib,
            supervisor_rss,
            hwm: hwm.max(proc_sample(pid)?.hwm_kib),
            set,
        })
    }

    fn enable_latency(&mut self) -> Result<()> {
        println!("\n[5] enable latency");
        let (mut cold, mut again, mut new_settings) = (vec![], vec![], vec![]);
        for i in 0..10 {
            let dir = PathBuf::from(format!("/var/lib/kvvm-bench/enable{i}"));
            let agent = Agent::new(&dir.join("lib"), &dir.join("log"));
            let settings = |n: usize| {
                Settings::public(json!({"secretsManagementSettings": {
                    "pollingIntervalInS": "3600",
                    "certificateStoreLocation": dir.join("store"),
                    "observedCertificates": self.urls[..n].to_vec(),
                }}))
            };
            let run = agent.install_and_enable(&self.zip, 0, &settings(1))?;
            ensure!(run.ok(), "{}", run.describe());
            let ext = run.extension.clone().context("no extension")?;
            cold.push(
                run.result(&ext.version, Verb::Enable)
                    .context("enable ran")?
                    .duration
                    .as_secs_f64()
                    * 1000.0,
            );
            again.push(agent.enable(&ext, 0)?.duration.as_secs_f64() * 1000.0);
            new_settings.push(
                agent
                    .apply_settings(&ext, 1, &settings(2))?
                    .duration
                    .as_secs_f64()
                    * 1000.0,
            );
            agent.disable(&ext, 1)?;
        }
        self.line("`enable` (command start to exit, as waagent sees it, through the `handler` shell script):");
        self.line("");
        self.line("| enable | time | target |");
        self.line("|---|---|---|");
        self.line(&format!(
            "| first (starts the worker) | {} | ≤ 100 ms |",
            Spread::of(&cold).show("ms", 1)
        ));
        self.line(&format!(
            "| again, same settings (no-op) | {} | ≤ 100 ms |",
            Spread::of(&again).show("ms", 1)
        ));
        self.line(&format!(
            "| new settings (handed to the running worker) | {} | ≤ 100 ms |",
            Spread::of(&new_settings).show("ms", 1)
        ));
        let worst = [&cold, &again, &new_settings]
            .iter()
            .map(|v| Spread::of(v).median)
            .fold(0.0, f64::max);
        self.target(
            "`enable` ≤ 100 ms",
            format!("{worst:.1} ms (slowest median)"),
            worst <= 100.0,
        );
        self.line("");
        Ok(())
    }

    fn package(&mut self, ext: &Extension) -> Result<()> {
        let zip = fs::metadata(&self.zip)?.len();
        // (architecture, size, highest GLIBC_x.y) of each binary; readelf reads either architecture's ELF.
        let mut binaries = Vec::new();
        for arch in ARCHS {
            let bin = ext.dir.join(format!("bin/kvvm-{arch}"));
            let size = fs::metadata(&bin)
                .with_context(|| format!("{}: the package lacks the {arch} build", bin.display()))?
                .len();
            let syms = String::from_utf8_lossy(
                &Command::new("readelf")
                    .args(["--wide", "--dyn-syms"])
                    .arg(&bin)
                    .output()?
                    .stdout,
            )
            .into_owned();
            let mut versions: Vec<(u32, u32, u32)> = syms
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '@')
                .filter_map(|w| w.strip_prefix("GLIBC_"))
                .filter_map(|v| {
                    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
                    Some((p.next()?, p.next().unwrap_or(0), p.next().unwrap_or(0)))
                })
                .collect();
            versions.sort();
            let highest = versions.last().copied();
            let max = highest
                .map(|(a, b, c)| {
                    if c > 0 {
                        format!("GLIBC_{a}.{b}.{c}")
                    } else {
                        format!("GLIBC_{a}.{b}")
                    }
                })
                .unwrap_or_default();
            binaries.push((arch, size, max, highest));
        }
        self.line("## 6. Size");
        self.line("");
        self.line("| | | target |");
        self.line("|---|---|---|");
        self.line(&format!(
            "| package zip (both architectures) | {:.2} MiB | ≤ 3 MiB |",
            zip as f64 / 1048576.0
        ));
        self.target(
            "package with x86_64 + aarch64 ≤ 3 MiB",
            format!("{:.2} MiB", zip as f64 / 1048576.0),
            zip <= 3 * 1048576,
        );
        for (arch, size, max, _) in &binaries {
            self.line(&format!(
                "| `bin/kvvm-{arch}` (stripped, static Rust, ring) | {:.2} MiB | |",
                *size as f64 / 1048576.0
            ));
            self.line(&format!(
                "| highest glibc symbol version `bin/kvvm-{arch}` needs | {max} | runs on glibc ≥ 2.17 |"
            ));
        }
        let baseline = binaries
            .iter()
            .all(|(_, _, _, highest)| highest.is_some_and(|v| v <= (2, 17, 0)));
        self.target(
            "both binaries need glibc ≤ 2.17",
            binaries
                .iter()
                .map(|(arch, _, max, _)| format!("{arch} {max}"))
                .collect::<Vec<_>>()
                .join(", "),
            baseline,
        );
        self.line("");
        self.line(
            "`bin/kvvm` is a sh script that runs the build for `uname -m`; the aarch64 build is checked for function \
             under qemu-aarch64-static (tests/arm64.rs), not for memory (under qemu its RSS would be qemu's).",
        );
        self.line("");
        Ok(())
    }

    fn fleet(&mut self) -> Result<()> {
        let n: usize = std::env::var("KVVM_BENCH_FLEET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let rate = 100.0;
        println!(
            "\n[7] fleet: {n} workers, one certificate each, one vault throttled at {rate} requests/s"
        );
        let chain = Chain::generate(
            &self.pki.join("fleet"),
            "fleet.contoso.example",
            KeyType::Ec("P-256"),
            365,
        )?;
        let v1 = self.vault.put_secret(
            FLEET_VAULT,
            "shared",
            SecretValue::pem(chain.pem(PemLayout::default())?),
        );
        self.vault.throttle(FLEET_VAULT, rate, rate as u32);
        let url = format!("https://{FLEET_VAULT}/secrets/shared");
        let mut vms = Vec::new();
        for i in 0..n {
            let dir = PathBuf::from(format!("/var/lib/kvvm-bench/fleet/{i}"));
            let agent = Agent::new(&dir.join("lib"), &dir.join("log"));
            let ext = agent.unpack(&self.zip)?;
            agent.write_handler_environment(&ext)?;
            agent.write_settings_as(
                &ext,
                0,
                &Settings::public(json!({"secretsManagementSettings": {
                    "pollingIntervalInS": "30",
                    "requireInitialSync": true,
                    "certificateStoreLocation": dir.join("store"),
                    "observedCertificates": [url],
                }})),
            )?;
            let r = agent.run(&ext, Verb::Install, 0, &[])?;
            ensure!(r.success(), "install {i}: {}", r.output);
            vms.push((agent, ext, dir));
        }
        let vms = Arc::new(vms);
        self.vault.reset_stats();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for chunk in vms.chunks(n.div_ceil(32).max(1)) {
                s.spawn(move || {
                    for (agent, ext, _) in chunk {
                        let _ = agent.enable(ext, 0);
                    }
                });
            }
        });
        let enabled = t0.elapsed().as_secs_f64();
        let installed = |version: &str| {
            vms.iter()
                .filter(|(_, _, dir)| {
                    fs::read_link(dir.join("store/fleet.shared"))
                        .is_ok_and(|t| t.to_string_lossy().ends_with(version))
                })
                .count()
        };
        let all_in = wait_until(
            "every fleet worker installed",
            Duration::from_secs(300),
            || installed(&v1) == n,
        );
        let t_all = t0.elapsed().as_secs_f64();
        let all_ok = all_in.is_ok();
        let stats = self.vault.stats();
        let log = self.vault.requests();
        let throttled = log.iter().filter(|r| r.status == 429).count();
        let peak = peak_rate(log.iter().map(|r| r.at));
        // Wait for every status to settle, then count errors.
        std::thread::sleep(Duration::from_secs(2));
        let mut errors = 0;
        let mut transitioning = 0;
        for (agent, ext, _) in vms.iter() {
            match agent.read_status(ext, 0).map(|r| r.status) {
                Ok(StatusValue::Error) => errors += 1,
                Ok(StatusValue::Transitioning) => transitioning += 1,
                _ => {}
            }
        }
        // Rotation.
        self.vault.reset_stats();
        let renewed = chain.renew("r1", KeyType::Ec("P-256"), 365)?;
        let v2 = self.vault.put_secret(
            FLEET_VAULT,
            "shared",
            SecretValue::pem(renewed.pem(PemLayout::default())?),
        );
        let t1 = Instant::now();
        let rotated = wait_until(
            "every fleet worker rotated",
            Duration::from_secs(300),
            || installed(&v2) == n,
        );
        let t_rot = t1.elapsed().as_secs_f64();
        let rot_log = self.vault.requests();
        let rot_throttled = rot_log.iter().filter(|r| r.status == 429).count();
        // Stop the fleet.
        std::thread::scope(|s| {
            for chunk in vms.chunks(n.div_ceil(32).max(1)) {
                s.spawn(move || {
                    for (agent, ext, _) in chunk {
                        let _ = agent.disable(ext, 0);
                    }
                });
            }
        });
        self.line(&format!(
            "## 7. Fleet: {n} workers start at once against one vault throttled like Key Vault"
        ));
        self.line("");
        self.line(&format!(
            "{n} real worker processes (each its own extension directory, `requireInitialSync`, interval 30 s, one \
             certificate), enabled from 32 threads in {enabled:.1} s, against one fake vault with a token bucket of \
             {rate} requests/s (burst {rate}), answering 429 + Retry-After when empty. One run (it takes minutes)."
        ));
        self.line("");
        self.line("| | |");
        self.line("|---|---|");
        match all_in {
            Ok(_) => self.line(&format!("| all installed after | {t_all:.1} s |")),
            Err(e) => self.line(&format!(
                "| all installed | **not within 300 s**: {e} ({} of {n}) |",
                installed(&v1)
            )),
        }
        self.line(&format!(
            "| requests / refused with 429 | {} / {throttled} |",
            stats.requests
        ));
        self.line(&format!(
            "| peak request rate (1 s windows) | {peak} requests/s |"
        ));
        self.line(&format!(
            "| workers in error (goal 0) / still transitioning | {errors} / {transitioning} |"
        ));
        self.target(
            "0 workers in error in the fleet run",
            format!("{errors} of {n}"),
            errors == 0 && all_ok,
        );
        match rotated {
            Ok(_) => self.line(&format!("| rotation: new version → every worker has it | {t_rot:.1} s (interval 30 s ± 10 %; {rot_throttled} requests refused with 429) |")),
            Err(e) => self.line(&format!("| rotation | **not within 300 s**: {e} ({} of {n}) |", installed(&v2))),
        }
        self.line("");
        Ok(())
    }
}

/// The memory of a set of processes (kvvm: poller and supervisor) idle at the default interval.
struct DefaultIdle {
    /// Voluntary context switches of each process (every thread) while it was watched: how often it woke.
    wakes: Vec<u64>,
    /// Sum of VmRSS over the processes, in each sample (KiB).
    rss: Spread,
    /// Every measure of the last sample.
    set: kvvm_sim::meminfo::Set,
    /// CPU time the poller used while it waited (ms).
    idle_cpu_ms: f64,
    /// How long it was watched (s).
    idle_s: f64,
}

struct Steady {
    req_per_cert: Spread,
    imds: Spread,
    handshakes: Spread,
    full_handshakes: Spread,
    cpu_ms: Spread,
    /// Minor page faults per cycle (the poller's): the cost of the pages dropped before each wait.
    minor_faults: Spread,
    idle_rss: u64,
    /// VmRSS after each cycle (KiB).
    idle_rss_spread: Spread,
    anon_kib: u64,
    /// Sum of Pss over the processes, after the last cycle (KiB).
    pss_kib: u64,
    /// The supervisor's VmRSS (KiB), included in `idle_rss`; 0 for the peer.
    supervisor_rss: u64,
    hwm: u64,
    /// Every measure of the processes' memory at idle, after the last cycle (kvvm_sim::meminfo).
    set: kvvm_sim::meminfo::Set,
}

/// The memory section's breakdown: every measure of the idle processes side by side (the target row above uses
/// the sum of VmRSS, the strictest), then where each kvvm process's pages are.
fn memory_breakdown(
    line: &mut dyn FnMut(&str),
    kvvm: &kvvm_sim::meminfo::Set,
    peer: &kvvm_sim::meminfo::Set,
) {
    let m = |kib: u64| format!("{:.2} MiB", mib(kib));
    line(&format!(
        "| distinct physical pages (`/proc/PID/pagemap`: a page shared by poller and supervisor once, shared libc pages in full) | {} | {} | |",
        m(kvvm.distinct_kib),
        m(peer.distinct_kib)
    ));
    line(&format!(
        "| of which anonymous (private to one process) | {} | {} | |",
        m(kvvm.distinct_anon_kib),
        m(peer.distinct_anon_kib)
    ));
    line(&format!(
        "| sum of VmRSS / Pss / anonymous / file-backed at that moment | {} / {} / {} / {} | {} / {} / {} / {} | |",
        m(kvvm.rss_kib()),
        m(kvvm.pss_kib()),
        m(kvvm.anon_kib()),
        m(kvvm.file_kib()),
        m(peer.rss_kib()),
        m(peer.pss_kib()),
        m(peer.anon_kib()),
        m(peer.file_kib())
    ));
    line("");
    line(
        "The target row uses the sum of VmRSS over kvvm's processes (pages the two share count twice); the distinct physical pages are what they occupy together.",
    );
    line("");
    line(
        "| kvvm process | VmRSS | Pss | anonymous | file-backed | threads | largest mappings (Rss, of which anonymous) |",
    );
    line("|---|---|---|---|---|---|---|");
    for (role, p) in ["poller", "supervisor"].iter().zip(&kvvm.processes) {
        let top: Vec<String> = p
            .mappings
            .iter()
            .take(6)
            .map(|g| {
                let name = g.name.rsplit('/').next().unwrap_or(&g.name);
                format!("{name} {} KiB ({})", g.rss_kib, g.anon_kib)
            })
            .collect();
        line(&format!(
            "| {role} | {} | {} | {} | {} | {} | {} |",
            m(p.rss_kib),
            m(p.pss_kib),
            m(p.anon_kib),
            m(p.file_kib),
            p.threads,
            top.join(", ")
        ));
    }
}

fn peak_rate(times: impl Iterator<Item = Instant>) -> usize {
    let times: Vec<Instant> = times.collect();
    let Some(&start) = times.iter().min() else {
        return 0;
    };
    let mut buckets: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &times {
        *buckets
            .entry(t.duration_since(start).as_secs())
            .or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0)
}

fn md5ish(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to notice a changed file.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn mem_gib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0)
}

/// The configuration issue 22 measured from outside: 200 certificates over 4 vaults, +20 ms per vault request,
/// a 5 s interval, the worker started by `enable` (supervisor and poller).
const OUTSIDE_INTERVAL_S: u64 = 5;
/// Whole cycles the CPU is summed over.
const OUTSIDE_CYCLES: u64 = 8;

/// What `/proc/<pid>/status` and `/proc/<pid>/task/*/status` say of a process's memory and wakes.
#[derive(Debug, Clone, Copy, Default)]
struct ProcMemory {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    /// Voluntary context switches of every thread (the process sleeping and being woken).
    voluntary: u64,
}

fn proc_memory(pid: u32) -> Result<ProcMemory> {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut voluntary = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(t) = fs::read_to_string(task.path().join("status")) {
            voluntary += field(&t, "voluntary_ctxt_switches:");
        }
    }
    Ok(ProcMemory {
        rss_kib: field(&status, "VmRSS:"),
        hwm_kib: field(&status, "VmHWM:"),
        anon_kib: field(&status, "RssAnon:"),
        voluntary,
    })
}

/// Resets a process's VmHWM to its current RSS (`clear_refs` 5), so the next reading is the peak since.
fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU time (utime + stime, every thread) of the processes, in ms.
fn cpu_ms(pids: &[u32]) -> Result<f64> {
    let mut ticks = 0;
    for &pid in pids {
        ticks += proc_sample(pid)?.cpu_ticks;
    }
    Ok(ticks as f64 * 1000.0 / ticks_per_sec())
}

/// Per-cycle figures of a poller measured from outside.
#[derive(Debug, Clone, Copy)]
struct OutsideCycle {
    /// CPU of every process over whole cycles, idle between them included, per cycle (ms).
    cpu_ms: f64,
    /// Sum of VmRSS between cycles (KiB), sampled once per cycle; median.
    idle_rss: Spread,
    /// Sum of VmHWM over the measured cycles (peak since the reset at their start; KiB).
    hwm_kib: u64,
    /// Sum of RssAnon between cycles (KiB); median.
    anon: Spread,
}

impl Bench {
    /// Issue 22's measurement, as a user makes it from outside: every kvvm process's utime + stime from `/proc`
    /// over whole cycles (the idle time between them included), and VmRSS, VmHWM and RssAnon, beside the peer
    /// in the same configuration ([`OUTSIDE_INTERVAL_S`], [`LATENCY`], 200 certificates over 4 vaults).
    fn outside(&mut self, agent: &Agent, ext: &Extension) -> Result<()> {
        println!(
            "\n[4] from outside: {} certificates, {} ms per vault request, interval {OUTSIDE_INTERVAL_S} s, \
             {OUTSIDE_CYCLES} whole cycles",
            self.urls.len(),
            LATENCY.as_millis()
        );
        let store = PathBuf::from("/var/lib/kvvm-bench/kvvm");
        let peer_out = PathBuf::from("/var/lib/kvvm-bench/peer");
        let _ = fs::remove_dir_all(&store);
        let _ = fs::remove_dir_all(&peer_out);
        let _ = fs::remove_file(Path::new("/var/lib/waagent").join(NAME).join("state.json"));
        self.vault.set_latency(LATENCY);
        let settings = Settings::public(json!({"secretsManagementSettings": {
            "pollingIntervalInS": OUTSIDE_INTERVAL_S.to_string(),
            "certificateStoreLocation": store,
            "observedCertificates": self.urls,
        }}));
        let run = agent.apply_settings(ext, 2, &settings)?;
        ensure!(run.success(), "enable: {}", run.output);
        let links = wait_until("kvvm's links", Duration::from_secs(60), || {
            count_files(&store, false) == self.urls.len()
        })?;
        let (pid, supervisor) = worker_pids()?;
        let kvvm = self.outside_cycles(&[pid, supervisor])?;
        agent.disable(ext, 2)?;
        if !with_peer() {
            println!(
                "  kvvm: {:.0} ms per cycle; VmRSS {:.1} MiB, RssAnon {:.1} MiB between cycles; VmHWM {:.1} MiB; links \
                 in place {:.2} s after enable (KVVM_BENCH_NO_PEER: the peer is not run)",
                kvvm.cpu_ms,
                kvvm.idle_rss.median / 1024.0,
                kvvm.anon.median / 1024.0,
                mib(kvvm.hwm_kib),
                links.as_secs_f64()
            );
            self.vault.set_latency(Duration::ZERO);
            return Ok(());
        }

        let mut child = self.peer(&peer_out, false, OUTSIDE_INTERVAL_S)?;
        let peer = wait_until("the peer's first cycle", Duration::from_secs(120), || {
            count_files(&peer_out, false) == self.urls.len()
        })
        .and_then(|_| self.outside_cycles(&[child.id()]));
        let _ = child.kill();
        let _ = child.wait();
        let peer = peer?;
        self.vault.set_latency(Duration::ZERO);

        self.line(&format!(
            "## 4. CPU and memory per cycle, measured from outside: {} certificates, {} vaults, +{} ms per vault \
             request, interval {OUTSIDE_INTERVAL_S} s",
            self.urls.len(),
            VAULTS.len(),
            LATENCY.as_millis()
        ));
        self.line("");
        self.line(&format!(
            "The worker started by `enable` (kvvm: the poller and its supervisor, both counted). CPU is utime + stime \
             of every process from `/proc/<pid>/stat`, read between two cycles and again {OUTSIDE_CYCLES} whole \
             cycles later (the idle time between cycles included), divided by {OUTSIDE_CYCLES}. Memory is read \
             between cycles (`VmRSS`, `RssAnon` of `/proc/<pid>/status`, summed over the processes); `VmHWM` is the \
             peak during those cycles (reset through `clear_refs` at their start). kvvm's links were all in place \
             {:.2} s after `enable` (the first poll waits a random 0–{:.1} s).",
            links.as_secs_f64(),
            (OUTSIDE_INTERVAL_S as f64 / 10.0).min(30.0)
        ));
        self.line("");
        self.line("| per cycle | kvvm | peer | target |");
        self.line("|---|---|---|---|");
        self.line(&format!(
            "| CPU (user + sys, every process, idle included) | {:.0} ms | {:.0} ms | ≤ 60 ms and ≤ 1/9 of the peer |",
            kvvm.cpu_ms, peer.cpu_ms
        ));
        let show = |s: Spread| {
            format!(
                "{:.1} MiB (min {:.1}, max {:.1}, n={})",
                s.median / 1024.0,
                s.min / 1024.0,
                s.max / 1024.0,
                s.n
            )
        };
        self.line(&format!(
            "| VmRSS between cycles | {} | {} | ≤ 5 MiB |",
            show(kvvm.idle_rss),
            show(peer.idle_rss)
        ));
        self.line(&format!(
            "| RssAnon between cycles | {} | {} | ≤ 3 MiB |",
            show(kvvm.anon),
            show(peer.anon)
        ));
        self.line(&format!(
            "| VmHWM (peak during the cycles) | {:.1} MiB | {:.1} MiB | ≤ 8 MiB |",
            mib(kvvm.hwm_kib),
            mib(peer.hwm_kib)
        ));
        self.line("");
        self.line(&format!(
            "(/proc tick resolution: {:.0} ms, over {OUTSIDE_CYCLES} cycles.)",
            1000.0 / ticks_per_sec()
        ));
        self.line("");
        self.target(
            "CPU per cycle ≤ 60 ms (200 certificates, +20 ms, 5 s interval, every process, idle included)",
            format!("{:.0} ms", kvvm.cpu_ms),
            kvvm.cpu_ms <= 60.0,
        );
        self.target(
            "CPU per cycle ≥ 9× less than the peer's",
            format!("{:.1}×", peer.cpu_ms / kvvm.cpu_ms.max(1.0)),
            kvvm.cpu_ms * 9.0 <= peer.cpu_ms,
        );
        self.target(
            "VmRSS between cycles ≤ 5 MiB (poller + supervisor, 5 s interval)",
            format!("{:.1} MiB", kvvm.idle_rss.max / 1024.0),
            kvvm.idle_rss.max <= 5.0 * 1024.0,
        );
        self.target(
            "RssAnon between cycles ≤ 3 MiB (poller + supervisor)",
            format!("{:.1} MiB", kvvm.anon.max / 1024.0),
            kvvm.anon.max <= 3.0 * 1024.0,
        );
        self.target(
            "VmHWM during a cycle ≤ 8 MiB (poller + supervisor)",
            format!("{:.1} MiB", mib(kvvm.hwm_kib)),
            kvvm.hwm_kib <= 8 * 1024,
        );
        Ok(())
    }

    /// Measures `pids` over [`OUTSIDE_CYCLES`] whole cycles of one GET per certificate, after one to settle: CPU
    /// from a point 1 s after a cycle's last request to the same point [`OUTSIDE_CYCLES`] cycles later, memory at
    /// each of those points, the peak since the first.
    fn outside_cycles(&self, pids: &[u32]) -> Result<OutsideCycle> {
        let per_cycle = self.urls.len() as u64;
        let start = self.vault.stats().requests_with_token;
        let after = |k: u64| -> Result<()> {
            wait_until("a cycle", Duration::from_secs(120), || {
                self.vault.stats().requests_with_token >= start + k * per_cycle
            })?;
            std::thread::sleep(Duration::from_secs(1));
            Ok(())
        };
        after(1)?;
        for &pid in pids {
            reset_peak(pid);
        }
        let cpu_start = cpu_ms(pids)?;
        let (mut rss, mut anon, mut hwm) = (Vec::new(), Vec::new(), 0);
        for k in 2..=OUTSIDE_CYCLES + 1 {
            after(k)?;
            let memory = pids
                .iter()
                .map(|&pid| proc_memory(pid))
                .collect::<Result<Vec<_>>>()?;
            rss.push(memory.iter().map(|m| m.rss_kib).sum::<u64>() as f64);
            anon.push(memory.iter().map(|m| m.anon_kib).sum::<u64>() as f64);
            hwm = memory.iter().map(|m| m.hwm_kib).sum();
        }
        let cpu = cpu_ms(pids)? - cpu_start;
        Ok(OutsideCycle {
            cpu_ms: cpu / OUTSIDE_CYCLES as f64,
            idle_rss: Spread::of(&rss),
            hwm_kib: hwm,
            anon: Spread::of(&anon),
        })
    }
}

/// Whether the peer runs beside kvvm: `KVVM_BENCH_NO_PEER` (with `KVVM_BENCH_ONLY=initial,outside`) measures kvvm
/// alone, for comparing builds of kvvm with each other in a fraction of the time.
fn with_peer() -> bool {
    std::env::var_os("KVVM_BENCH_NO_PEER").is_none()
}

/// The running worker's poller (from `state.json`) and supervisor (`worker.pid`).
fn worker_pids() -> Result<(u32, u32)> {
    let data = Path::new("/var/lib/waagent").join(NAME);
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(data.join("state.json"))?)?;
    let pid = state["pid"].as_u64().context("poller pid")? as u32;
    let supervisor = fs::read_to_string(data.join("worker.pid"))?
        .trim()
        .parse()
        .context("worker.pid")?;
    Ok((pid, supervisor))
}
