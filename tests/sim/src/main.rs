//! `kvvm-sim`: runs the fake Key Vault and IMDS (and optionally Azure Arc himds) in the foreground for
//! `make demo` and benchmarks, seeded and rotated from a JSON state file that it watches, so a demo script can
//! rotate a certificate by editing one file (`kvvm-sim put`) without any extra control protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use kvvm_sim::imds::{FakeImds, TokenAuthority};
use kvvm_sim::netns::DEFAULT_HOSTS;
use kvvm_sim::tls::{BUNDLE_FILE, CA_CERT_FILE, TestCa};
use kvvm_sim::vault::{FakeVault, SecretValue};
use serde::{Deserialize, Serialize};

const HELP: &str = "\
kvvm-sim — fake Azure Key Vault + IMDS for kvvm demos and benchmarks

USAGE:
  kvvm-sim init-ca --ca-dir DIR
      Create a test CA in DIR (ca.pem, ca.key, bundle.pem = system bundle + CA) unless one exists.
      Mount bundle.pem over /etc/ssl/certs/ca-certificates.crt (scripts/netns-setup.sh --ca-bundle).

  kvvm-sim serve --ca-dir DIR [--state FILE] [--vault-addr 127.0.0.1:443] [--imds-addr 169.254.169.254:80]
                 [--arc-addr 127.0.0.1:40342 --arc-key-dir /var/opt/azcmagent/tokens]
                 [--host NAME]... [--token-lifetime-secs N] [--latency-ms N] [--throttle VAULT=RATE:BURST]...
                 [--stats-file FILE]
      Serve until killed. The vault's certificate (signed by the CA in DIR, created if missing) covers
      myvault.vault.azure.net, othervault.vault.azure.net, myvault.vault.azure.cn, vault.evil.example and
      every --host. --state FILE is read at start and re-read whenever it changes: each entry whose value
      differs from what was last stored becomes a new version (a rotation), printed as
      `version <vault> <name> <version>`. --stats-file is rewritten every second with the counters (JSON).

  kvvm-sim put --state FILE --vault VAULT --name NAME (--pem-file F | --pfx-file F | --value TEXT)
               [--content-type T] [--unmanaged] [--disabled]
      (PEM/PFX entries are certificate-backed, `managed: true`, unless --unmanaged.)
      Add or replace one entry in the state file (created if missing); a running `serve` picks it up
      within a second. VAULT is a host (myvault.vault.azure.net) or a bare name (myvault → .vault.azure.net).

STATE FILE:
  {\"secrets\": [{\"vault\": \"myvault.vault.azure.net\", \"name\": \"c1\",
                 \"value\": \"<PEM text or base64 PFX>\", \"content_type\": \"application/x-pem-file\",
                 \"managed\": true, \"enabled\": true}]}
";

/// The watched seed file.
#[derive(Serialize, Deserialize, Default, Debug)]
struct StateFile {
    #[serde(default)]
    secrets: Vec<SeedSecret>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct SeedSecret {
    vault: String,
    name: String,
    value: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default = "yes")]
    managed: bool,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

struct Args(Vec<String>);

impl Args {
    fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == flag)?;
        if i + 1 >= self.0.len() {
            return None;
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Some(v)
    }
    fn take_all(&mut self, flag: &str) -> Vec<String> {
        std::iter::from_fn(|| self.take(flag)).collect()
    }
    fn flag(&mut self, flag: &str) -> bool {
        match self.0.iter().position(|a| a == flag) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
    fn finish(self) -> Result<()> {
        if let Some(a) = self.0.first() {
            bail!("unknown or incomplete argument '{a}' (see kvvm-sim --help)");
        }
        Ok(())
    }
}

fn vault_host(v: &str) -> String {
    if v.contains('.') {
        v.to_ascii_lowercase()
    } else {
        format!("{}.vault.azure.net", v.to_ascii_lowercase())
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kvvm-sim: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Ok(());
    }
    let cmd = argv.remove(0);
    let args = Args(argv);
    match cmd.as_str() {
        "init-ca" => init_ca(args),
        "serve" => serve(args),
        "put" => put(args),
        other => bail!("unknown command '{other}' (see kvvm-sim --help)"),
    }
}

fn load_or_create_ca(dir: &Path) -> Result<TestCa> {
    if dir.join(CA_CERT_FILE).exists() {
        return TestCa::load(dir).with_context(|| format!("loading the CA from {}", dir.display()));
    }
    let ca = TestCa::generate();
    ca.write(dir)
        .with_context(|| format!("writing the CA to {}", dir.display()))?;
    Ok(ca)
}

fn init_ca(mut args: Args) -> Result<()> {
    let dir = PathBuf::from(args.take("--ca-dir").context("--ca-dir DIR is required")?);
    args.finish()?;
    load_or_create_ca(&dir)?;
    println!("{}", dir.join(BUNDLE_FILE).display());
    Ok(())
}

fn serve(mut args: Args) -> Result<()> {
    let dir = PathBuf::from(args.take("--ca-dir").context("--ca-dir DIR is required")?);
    let state = args.take("--state").map(PathBuf::from);
    let vault_addr: SocketAddr = args
        .take("--vault-addr")
        .unwrap_or_else(|| "127.0.0.1:443".into())
        .parse()
        .context("--vault-addr")?;
    let imds_addr: SocketAddr = args
        .take("--imds-addr")
        .unwrap_or_else(|| "169.254.169.254:80".into())
        .parse()
        .context("--imds-addr")?;
    let arc_addr = args.take("--arc-addr");
    let arc_dir = args.take("--arc-key-dir");
    let hosts = args.take_all("--host");
    let lifetime = args.take("--token-lifetime-secs");
    let latency = args.take("--latency-ms");
    let throttles = args.take_all("--throttle");
    let stats_file = args.take("--stats-file").map(PathBuf::from);
    args.finish()?;

    let ca = load_or_create_ca(&dir)?;
    let mut names: Vec<&str> = DEFAULT_HOSTS.to_vec();
    names.extend(hosts.iter().map(String::as_str));
    let tokens = TokenAuthority::new();
    let vault = FakeVault::start(vault_addr, ca.server_config(&names), tokens.clone())
        .with_context(|| format!("binding the vault on {vault_addr}"))?;
    let imds = FakeImds::start(imds_addr, tokens.clone())
        .with_context(|| format!("binding IMDS on {imds_addr}"))?;
    let arc = match arc_addr {
        Some(a) => {
            let a: SocketAddr = a.parse().context("--arc-addr")?;
            let d = PathBuf::from(arc_dir.unwrap_or_else(|| "/var/opt/azcmagent/tokens".into()));
            Some(
                FakeImds::start_arc(a, tokens.clone(), &d)
                    .with_context(|| format!("binding Arc himds on {a}"))?,
            )
        }
        None => None,
    };
    if let Some(l) = lifetime {
        let secs: u64 = l.parse().context("--token-lifetime-secs")?;
        imds.set_token_lifetime(Duration::from_secs(secs));
        if let Some(a) = &arc {
            a.set_token_lifetime(Duration::from_secs(secs));
        }
    }
    if let Some(ms) = latency {
        vault.add_latency(Duration::from_millis(ms.parse().context("--latency-ms")?));
    }
    for t in throttles {
        let (v, spec) = t.split_once('=').context("--throttle VAULT=RATE:BURST")?;
        let (rate, burst) = spec
            .split_once(':')
            .context("--throttle VAULT=RATE:BURST")?;
        vault.throttle(
            &vault_host(v),
            rate.parse().context("--throttle rate")?,
            burst.parse().context("--throttle burst")?,
        );
    }
    println!(
        "kvvm-sim: vault on {}, IMDS on {}{}; CA bundle {}",
        vault.addr(),
        imds.addr(),
        arc.as_ref()
            .map(|a| format!(", Arc himds on {}", a.addr()))
            .unwrap_or_default(),
        dir.join(BUNDLE_FILE).display()
    );

    let mut stored: HashMap<(String, String), SeedSecret> = HashMap::new();
    let mut seen_mtime: Option<SystemTime> = None;
    loop {
        if let Some(path) = &state {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime.is_some() && mtime != seen_mtime {
                seen_mtime = mtime;
                match read_state(path) {
                    Ok(st) => apply(&vault, &st, &mut stored),
                    Err(e) => eprintln!("kvvm-sim: ignoring {}: {e:#}", path.display()),
                }
            }
        }
        if let Some(f) = &stats_file {
            let stats = serde_json::json!({"vault": vault.stats(), "imds": imds.stats(),
                "arc": arc.as_ref().map(FakeImds::stats)});
            let tmp = f.with_extension("tmp");
            if std::fs::write(&tmp, stats.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, f);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn read_state(path: &Path) -> Result<StateFile> {
    let text = std::fs::read_to_string(path)?;
    if text.trim().is_empty() {
        return Ok(StateFile::default());
    }
    Ok(serde_json::from_str(&text)?)
}

fn apply(vault: &FakeVault, st: &StateFile, stored: &mut HashMap<(String, String), SeedSecret>) {
    for s in &st.secrets {
        let host = vault_host(&s.vault);
        let key = (host.clone(), s.name.to_ascii_lowercase());
        if stored.get(&key) == Some(s) {
            continue;
        }
        let mut value = SecretValue::plain(s.value.clone());
        value.content_type = s.content_type.clone();
        value.managed = s.managed;
        value.enabled = s.enabled;
        let version = vault.put_secret(&host, &s.name, value);
        println!("version {host} {} {version}", s.name);
        stored.insert(key, s.clone());
    }
}

fn put(mut args: Args) -> Result<()> {
    let path = PathBuf::from(args.take("--state").context("--state FILE is required")?);
    let vault = args.take("--vault").context("--vault VAULT is required")?;
    let name = args.take("--name").context("--name NAME is required")?;
    let pem = args.take("--pem-file");
    let pfx = args.take("--pfx-file");
    let text = args.take("--value");
    let content_type = args.take("--content-type");
    let unmanaged = args.flag("--unmanaged");
    let disabled = args.flag("--disabled");
    args.finish()?;
    let (value, default_type) = match (pem, pfx, text) {
        (Some(f), None, None) => (
            std::fs::read_to_string(&f).with_context(|| format!("reading {f}"))?,
            Some("application/x-pem-file".to_string()),
        ),
        (None, Some(f), None) => {
            use base64::Engine as _;
            let der = std::fs::read(&f).with_context(|| format!("reading {f}"))?;
            (
                base64::engine::general_purpose::STANDARD.encode(der),
                Some("application/x-pkcs12".to_string()),
            )
        }
        (None, None, Some(v)) => (v, None),
        _ => bail!("give exactly one of --pem-file, --pfx-file, --value"),
    };
    let mut st = if path.exists() {
        read_state(&path)?
    } else {
        StateFile::default()
    };
    let content_type = content_type.or(default_type);
    let certificate = matches!(
        content_type.as_deref(),
        Some("application/x-pem-file" | "application/x-pkcs12")
    );
    let entry = SeedSecret {
        vault: vault_host(&vault),
        name: name.clone(),
        value,
        content_type,
        managed: certificate && !unmanaged,
        enabled: !disabled,
    };
    st.secrets
        .retain(|s| !(vault_host(&s.vault) == entry.vault && s.name.eq_ignore_ascii_case(&name)));
    st.secrets.push(entry);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&st)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
