//! `make bench`: how long `enable` keeps waagent waiting (target ≤ 100 ms), measured on the packaged binary
//! under the waagent simulator: a cold enable that starts the worker, a repeated enable (no-op), and an enable
//! with new settings handed to the running worker. Medians of several runs, with min and max.

use std::path::Path;
use std::time::Duration;

use kvvm_sim::waagent::{Agent, Settings};
use serde_json::json;

const RUNS: usize = 15;

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:6.1} ms   min {:6.1} ms   max {:6.1} ms   ({} runs)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn main() {
    let zip = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(format!(
            "Microsoft.Azure.KeyVault.KeyVaultForLinux-{}.zip",
            env!("CARGO_PKG_VERSION")
        ));
    assert!(
        zip.is_file(),
        "{} is missing: run `make package`",
        zip.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(&dir.path().join("lib"), &dir.path().join("log"));
    let settings = |n: usize| {
        let certs: Vec<String> = (0..n)
            .map(|i| format!("https://myvault.vault.azure.net/secrets/c{i}"))
            .collect();
        Settings::public(json!({"secretsManagementSettings": {
            "certificateStoreLocation": dir.path().join("store"), "observedCertificates": certs}}))
    };
    let run = agent.install_and_enable(&zip, 0, &settings(1)).unwrap();
    assert!(run.ok(), "{}", run.describe());
    let ext = run.extension.unwrap();

    let (mut cold, mut again, mut reload) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let seq = i as u64 + 1;
        assert!(agent.disable(&ext, seq - 1).unwrap().unwrap().success());
        let r = agent
            .apply_settings(&ext, seq, &settings(1 + i % 5))
            .unwrap();
        assert!(
            r.success() && r.stdout.contains("worker started"),
            "{}",
            r.output
        );
        cold.push(r.duration);
        let r = agent.enable(&ext, seq).unwrap();
        assert!(
            r.success() && r.stdout.contains("already applied"),
            "{}",
            r.output
        );
        again.push(r.duration);
    }
    for i in 0..RUNS {
        let seq = (RUNS + 1 + i) as u64;
        let r = agent.apply_settings(&ext, seq, &settings(200)).unwrap();
        assert!(
            r.success() && r.stdout.contains("handed to the running worker"),
            "{}",
            r.output
        );
        reload.push(r.duration);
    }
    agent.disable(&ext, (2 * RUNS) as u64).unwrap();
    println!(
        "enable latency (command start to exit, through `handler` and sh, as waagent runs it):"
    );
    println!("  starts the worker            {}", stats(cold));
    println!("  same settings again (no-op)  {}", stats(again));
    println!("  new settings (200 certs)     {}", stats(reload));
    println!("target: ≤ 100 ms");
}
