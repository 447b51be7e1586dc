//! `make demo`: runs the packaged extension the way waagent would on a VM, in a temp folder, and prints what
//! happens at each step.

use std::path::PathBuf;
use std::time::Duration;

use kvvm_sim::waagent::{Agent, Settings, StatusValue};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let zip = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: kvvm-demo <package.zip>"))?,
    );
    let dir = tempfile_dir()?;
    let root = dir.join("waagent");
    let logs = dir.join("log");
    let store = dir.join("store");
    println!(
        "== kvvm demo: {} under a simulated waagent in {}",
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
        r.status == StatusValue::Success
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
