//! `make demo`: runs the packaged extension the way waagent would on a VM and prints what happens at each step.
//!
//! Part 1 (as root): in a network namespace that looks like an Azure VM — the bundled fake IMDS on
//! 169.254.169.254, the bundled fake Key Vault at `https://myvault.vault.azure.net` with its CA in the OS trust
//! store, tmpfs over `/var/lib/waagent` — the extension is installed and enabled with production defaults, fetches
//! two certificates, and installs a rotated one. Part 2: the handler lifecycle (new settings, a settings mistake,
//! update, uninstall) in a temp folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvvm_sim::imds::{FakeImds, TokenAuthority};
use kvvm_sim::netns;
use kvvm_sim::pki::{Chain, KeyType, PemLayout, PfxVariant};
use kvvm_sim::vault::{FakeVault, SecretValue};
use kvvm_sim::waagent::{Agent, Settings, StatusValue};
use serde_json::json;

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";

fn main() -> anyhow::Result<()> {
    let zip = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: kvvm-demo <package.zip>"))?,
    );
    if netns::in_netns() {
        vault_demo(&zip)?;
        // Part 2 runs in the namespace too, so its worker never reaches a real vault or IMDS.
        return lifecycle_demo(&zip);
    }
    match netns::why_unavailable() {
        None => {
            println!(
                "== part 1: a VM with the bundled Key Vault and identity endpoint (network namespace)"
            );
            let status = netns::reexec_isolated(&[zip.clone().into_os_string()], &[])?;
            anyhow::ensure!(status.success(), "the demo failed ({status})");
            return Ok(());
        }
        Some(why) => println!(
            "== part 1 skipped: the local vault and identity endpoint run in a network namespace, which needs \
             root and unshare ({why}); run `sudo make demo` to see it"
        ),
    }
    lifecycle_demo(&zip)
}

fn vault_demo(zip: &Path) -> anyhow::Result<()> {
    let tokens = TokenAuthority::new();
    let imds = FakeImds::start("169.254.169.254:80".parse()?, tokens.clone())?;
    let vault = FakeVault::start(
        "127.0.0.1:443".parse()?,
        netns::test_ca().server_config(&[HOST]),
        tokens,
    )?;
    let pki = std::env::temp_dir().join(format!("kvvm-demo-pki.{}", std::process::id()));
    println!(
        "\n== 1. the vault holds two certificates (openssl-made chains: root -> intermediate -> leaf)"
    );
    let web = Chain::generate(
        &pki.join("web"),
        "www.contoso.example",
        KeyType::Rsa(2048),
        90,
    )?;
    let api = Chain::generate(
        &pki.join("api"),
        "api.contoso.example",
        KeyType::Ec("P-384"),
        90,
    )?;
    let v_web = vault.put_secret(
        HOST,
        "web",
        SecretValue::pkcs12(&web.pfx(PfxVariant::KeyVault)?),
    );
    let v_api = vault.put_secret(
        HOST,
        "api",
        SecretValue::pem(api.pem(PemLayout::default())?),
    );
    println!("https://{HOST}/secrets/web  version {v_web}  (application/x-pkcs12)");
    println!("https://{HOST}/secrets/api  version {v_api}  (application/x-pem-file)");

    println!(
        "\n== 2. waagent installs and enables the extension (no msiEndpoint, default store, requireInitialSync)"
    );
    let agent =
        Agent::new(Path::new("/var/lib/waagent"), Path::new("/var/log/azure")).with_echo(true);
    let settings = Settings::public(json!({
        "secretsManagementSettings": {
            "pollingIntervalInS": "5",
            "requireInitialSync": true,
            "observedCertificates": [format!("https://{HOST}/secrets/web"), format!("https://{HOST}/secrets/api")],
        }
    }));
    let run = agent.install_and_enable(zip, 0, &settings)?;
    anyhow::ensure!(run.ok(), "install/enable failed:\n{}", run.describe());
    let ext = run
        .extension
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no extension"))?;
    let report = agent.wait_status(&ext, 0, Duration::from_secs(60), |r| {
        r.status != StatusValue::Transitioning
    })?;
    println!(
        "status/0.status: {} — {}",
        report.status.as_str(),
        report.message
    );
    for sub in &report.substatus {
        println!("  substatus {}: {}", sub.status.as_str(), sub.message);
    }

    println!("\n== 3. the store ({STORE}, mode 0700)");
    let ls = Command::new("ls")
        .args(["-l", "--time-style=+", STORE])
        .output()?;
    print!("{}", String::from_utf8_lossy(&ls.stdout));
    for name in ["myvault.web", "myvault.api"] {
        let link = Path::new(STORE).join(name);
        let root = if name.ends_with("web") {
            &web.root
        } else {
            &api.root
        };
        match kvvm_sim::pki::verify_installed(&link, root) {
            Ok(()) => println!(
                "{name}: openssl verify OK against its root; private key matches the leaf; key last"
            ),
            Err(e) => anyhow::bail!("{name}: {e}"),
        }
    }

    println!(
        "\n== 4. the certificate is renewed in the vault; the worker installs it at its next poll"
    );
    let renewed = web.renew("renewed", KeyType::Rsa(2048), 90)?;
    let v2 = vault.put_secret(
        HOST,
        "web",
        SecretValue::pkcs12(&renewed.pfx(PfxVariant::KeyVault)?),
    );
    let started = Instant::now();
    let link = Path::new(STORE).join("myvault.web");
    let want = format!("myvault.web.{v2}");
    while std::fs::read_link(&link)
        .map(|t| t != Path::new(&want))
        .unwrap_or(true)
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the renewed version did not arrive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "myvault.web -> {want} after {:.1} s (serial {})",
        started.elapsed().as_secs_f64(),
        kvvm_sim::pki::serial_of(&link)?
    );

    println!("\n== 5. `kvvm status` on the VM");
    let out = Command::new(ext.dir.join("bin/kvvm"))
        .arg("status")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("\n== 6. what the services saw");
    let v = vault.stats();
    println!(
        "IMDS: {} token(s) issued; Key Vault: {} requests ({} with a token), {} TLS handshake(s)",
        imds.stats().tokens_issued,
        v.requests,
        v.requests_with_token,
        v.tls_handshakes
    );
    if let Some(r) = agent.disable(&ext, 0)? {
        println!("disable → exit {:?}", r.exit_code);
    }
    println!("\n== worker log ({}):", agent.log_dir(&ext).display());
    let text = std::fs::read_to_string(agent.log_dir(&ext).join("kvvm.log")).unwrap_or_default();
    for line in text.lines() {
        println!("  {line}");
    }
    let _ = std::fs::remove_dir_all(&pki);
    Ok(())
}

fn lifecycle_demo(zip: &Path) -> anyhow::Result<()> {
    let zip = zip.to_path_buf();
    let dir = tempfile_dir()?;
    let root = dir.join("waagent");
    let logs = dir.join("log");
    let store = dir.join("store");
    println!(
        "\n== part 2: the handler lifecycle — {} under a simulated waagent in {}",
        zip.display(),
        dir.display()
    );
    let agent = Agent::new(&root, &logs).with_echo(true);
    let settings = |certs: &[&str]| {
        Settings::public(json!({
            "secretsManagementSettings": {
                "pollingIntervalInS": "3600",
                "certificateStoreLocation": store,
                "observedCertificates": certs,
            }
        }))
    };

    println!("\n== 1. fresh install: unzip, HandlerEnvironment.json, settings 0, install, enable");
    let run = agent.install_and_enable(
        &zip,
        0,
        &settings(&["https://myvault.vault.azure.net/secrets/web"]),
    )?;
    anyhow::ensure!(run.ok(), "install/enable failed:\n{}", run.describe());
    let ext = run
        .extension
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no extension"))?;
    let report = agent.wait_status(&ext, 0, Duration::from_secs(10), |r| {
        r.status != StatusValue::Transitioning
    })?;
    println!(
        "status/0.status: {} — {}",
        report.status.as_str(),
        report.message
    );
    let beat = agent.read_heartbeat(&ext)?;
    println!(
        "heartbeat.log: {} — {}",
        beat.reported_status(),
        beat.message
    );

    println!("\n== 2. new settings (seq 1): enable hands them to the running worker");
    let r = agent.apply_settings(
        &ext,
        1,
        &settings(&[
            "https://myvault.vault.azure.net/secrets/web",
            "https://myvault.vault.azure.net/secrets/api",
        ]),
    )?;
    println!("enable → exit {:?}: {}", r.exit_code, r.stdout.trim());
    let report = agent.wait_status(&ext, 1, Duration::from_secs(10), |r| {
        r.message.contains("settings 1")
    })?;
    println!(
        "status/1.status: {} — {}",
        report.status.as_str(),
        report.message
    );

    println!("\n== 3. a settings mistake (seq 2): rejected with a message that says what to fix");
    let bad = Settings::public(
        json!({"secretsManagementSettings": {"observedCertificates": ["https://myvault.vault.azure.net/certificates/web"]}}),
    );
    let r = agent.apply_settings(&ext, 2, &bad)?;
    println!("enable → exit {:?}", r.exit_code);
    let report = agent.read_status(&ext, 2)?;
    println!(
        "status/2.status: {} — {}",
        report.status.as_str(),
        report.message
    );

    println!("\n== 4. update to version 99.0.0 (waagent's order), then uninstall");
    let new = agent.unpack_as(&zip, "99.0.0")?;
    let run = agent.update_unpacked(
        &ext,
        new,
        1,
        &settings(&["https://myvault.vault.azure.net/secrets/web"]),
    )?;
    let ext = run
        .extension
        .ok_or_else(|| anyhow::anyhow!("no extension after update"))?;
    let run = agent.uninstall(&ext, 1)?;
    anyhow::ensure!(run.ok(), "uninstall failed:\n{}", run.describe());

    println!("\n== logs ({}):", agent.log_dir(&ext).display());
    for name in ["handler.log", "kvvm.log"] {
        let text = std::fs::read_to_string(agent.log_dir(&ext).join(name)).unwrap_or_default();
        for line in text.lines() {
            println!("  {name}: {line}");
        }
    }
    std::fs::remove_dir_all(&dir)?;
    println!("\n== done");
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kvvm-demo.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
