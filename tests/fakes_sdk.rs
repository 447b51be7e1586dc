//! Proves kvvm-sim's fakes faithful by driving them with the real Azure SDK for Python
//! (`tests/sdk/sdk_check.py`, `azure-identity` + `azure-keyvault-secrets` from `.venv/`), inside the test
//! network namespace where they sit on the real addresses: IMDS at 169.254.169.254:80, the vault at
//! `https://myvault.vault.azure.net` (127.0.0.1:443).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvvm_sim::httpserver::Reply;
use kvvm_sim::netns::{ca_bundle, run_isolated};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Fakes;

const HOST: &str = "myvault.vault.azure.net";

fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make deps` (it creates .venv and installs tests/sdk/requirements.txt)",
        python.display()
    );
    python
}

/// Runs `tests/sdk/sdk_check.py <seed_file>` with a clean identity environment plus `env`.
fn run_sdk_check(python: &Path, seed_file: &Path, env: &[(&str, &str)]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_check.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg(seed_file)
        .env("REQUESTS_CA_BUNDLE", ca_bundle())
        .env("SSL_CERT_FILE", ca_bundle());
    for var in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "AZURE_CLIENT_ID",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run sdk_check.py");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk_check.py failed ({})", out.status);
}

#[test]
fn azure_sdk_for_python_accepts_the_fakes() {
    let python = venv_python();
    run_isolated("azure_sdk_for_python_accepts_the_fakes", move || {
        let Fakes { imds, vault } = Fakes::start(&[HOST]);
        let tokens = imds.tokens();

        let versions: Vec<String> = ["one", "two"]
            .iter()
            .map(|v| vault.put_secret(HOST, "cert1", SecretValue::pem(format!("PEM {v}"))))
            .collect();
        let paged_versions: Vec<String> = (0..30)
            .map(|i| vault.put_secret(HOST, "many", SecretValue::plain(format!("v{i}"))))
            .collect();
        vault.put_secret(HOST, "throttled", SecretValue::plain("after-429"));
        vault.script_secret(
            HOST,
            "throttled",
            [Reply::Throttle {
                retry_after: Duration::from_secs(1),
            }],
        );
        let seed = serde_json::json!({
            "vault_url": format!("https://{HOST}"),
            "secret": "cert1",
            "value": "PEM two",
            "versions": versions,
            "paged": "many",
            "paged_versions": paged_versions,
            "throttled": "throttled",
            "missing": "nope",
        });
        let dir = tempfile::tempdir().unwrap();
        let seed_file = dir.path().join("seed.json");
        std::fs::write(&seed_file, seed.to_string()).unwrap();

        run_sdk_check(&python, &seed_file, &[]);

        // The SDK went through the challenge: its first request carried no token and got a 401 challenge,
        // and it then fetched exactly the token it needed from IMDS.
        let log = vault.requests();
        assert_eq!(log[0].bearer_token, None, "{log:?}");
        assert_eq!(log[0].status, 401);
        assert!(log[1..].iter().all(|r| r.bearer_token.is_some()));
        let stats = vault.stats();
        assert_eq!(stats.requests_with_token, stats.requests - 1);
        println!("{:#?}", stats.requests_per_path);
        // The SDK asks for `/secrets/<name>/` (empty version) for the latest one.
        assert_eq!(
            stats.requests_per_path[&format!("{HOST}/secrets/throttled/")],
            2
        );
        assert!(stats.requests_per_path[&format!("{HOST}/secrets/many/versions")] >= 6);
        assert_eq!(imds.stats().tokens_issued, 1, "the SDK caches its token");
        let token = log[1].bearer_token.clone().unwrap();
        assert_eq!(
            tokens.get(&token).unwrap().resource,
            "https://vault.azure.net"
        );
    });
}

/// The SDK's Azure Arc credential answers the fake himds' `Basic realm=<key file>` challenge; the key file
/// lives where the real agent puts it (`/var/opt/azcmagent/tokens`, tmpfs in the namespace), which the SDK
/// insists on.
#[test]
fn azure_sdk_for_python_accepts_the_arc_fake() {
    let python = venv_python();
    run_isolated("azure_sdk_for_python_accepts_the_arc_fake", move || {
        let Fakes { imds: arc, vault } =
            Fakes::start_arc(&[HOST], Path::new("/var/opt/azcmagent/tokens"));
        vault.put_secret(HOST, "cert1", SecretValue::pem("PEM arc"));
        let dir = tempfile::tempdir().unwrap();
        let seed_file = dir.path().join("seed.json");
        let seed = serde_json::json!({"mode": "arc", "vault_url": format!("https://{HOST}"),
            "secret": "cert1", "value": "PEM arc"});
        std::fs::write(&seed_file, seed.to_string()).unwrap();
        run_sdk_check(
            &python,
            &seed_file,
            &[
                (
                    "IDENTITY_ENDPOINT",
                    "http://localhost:40342/metadata/identity/oauth2/token",
                ),
                ("IMDS_ENDPOINT", "http://localhost:40342"),
            ],
        );
        let stats = arc.stats();
        assert_eq!(stats.arc_challenges, 1);
        assert_eq!(stats.tokens_issued, 1);
        let log = arc.requests();
        assert_eq!((log[0].status, log[0].authorization.is_none()), (401, true));
        assert!(
            log[1]
                .authorization
                .as_deref()
                .unwrap()
                .starts_with("Basic ")
        );
    });
}
