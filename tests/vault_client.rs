//! The Key Vault client and the managed-identity client against the fakes, inside the network namespace where
//! IMDS is 169.254.169.254, the vault is myvault.vault.azure.net:443 and the test CA is in the OS trust store —
//! so every default is the production one. Retry policies are shortened through the public constructor.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvvm::{CHECK_DEADLINE, Deadline, RetryPolicy, Stop};
use kvvm::{Identity, IdentityError, UserIdentity, read_arc_key};
use kvvm::{SecretKind, VaultClient, VaultError, Version};
use kvvm_sim::httpserver::Reply;
use kvvm_sim::netns::run_isolated;
use kvvm_sim::tls::TestCa;
use kvvm_sim::vault::{ChallengeResource, FakeVault, SecretValue};
use kvvm_sim::vm::Fakes;
use url::Url;

const HOST: &str = "myvault.vault.azure.net";
const NAMES: &[&str] = kvvm_sim::netns::DEFAULT_HOSTS;
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// Short waits so failure paths are quick; the production policies differ only in their numbers.
const FAST: RetryPolicy = RetryPolicy {
    per_try_timeout: Duration::from_secs(3),
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    total: Duration::from_secs(30),
    max_attempts: 4,
};

fn client(policy: RetryPolicy) -> VaultClient {
    let identity = Identity::for_user(None, None).unwrap().with_policy(FAST);
    VaultClient::with_policy(Arc::new(identity), policy).unwrap()
}

fn vault_url(host: &str) -> Url {
    Url::parse(&format!("https://{host}/")).unwrap()
}

fn get(c: &VaultClient, host: &str, name: &str) -> Result<kvvm::SecretBundle, VaultError> {
    c.get_secret(
        &vault_url(host),
        name,
        None,
        Deadline::after(CHECK_DEADLINE),
        &Stop::default(),
    )
}

/// Whether `c` holds back requests to `host` for at least another second (a `Retry-After`), seen from
/// outside: a check with a one-second deadline then fails at once with the hold as its reason, without asking
/// the vault. (Otherwise it asks for the secret "nothere", which no test stores.)
fn held_back(c: &VaultClient, host: &str) -> bool {
    let e = c
        .get_secret(
            &vault_url(host),
            "nothere",
            None,
            Deadline::after(Duration::from_secs(1)),
            &Stop::default(),
        )
        .unwrap_err();
    e.to_string()
        .contains("(Retry-After), past this check's deadline")
}

/// Requests for `name` in the fake's log: (arrival, status, carried a token).
fn secret_requests(f: &Fakes, name: &str) -> Vec<(Instant, u16, bool)> {
    f.vault
        .secret_requests(name)
        .iter()
        .map(|r| (r.at, r.status, r.bearer_token.is_some()))
        .collect()
}

#[test]
fn latest_version_with_one_token_and_one_handshake() {
    run_isolated("latest_version_with_one_token_and_one_handshake", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let v2 = f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(RetryPolicy::VAULT);
        for _ in 0..20 {
            let b = get(&c, HOST, "web").unwrap();
            assert_eq!(b.version, v2);
            assert_eq!(b.kind(), SecretKind::Pem);
            assert_eq!(b.value(), PEM);
            assert!(b.managed);
        }
        assert_eq!(f.imds.stats().token_requests, 1, "the token is cached");
        let s = f.vault.stats();
        assert_eq!(s.requests, 21, "one challenge, then one GET per read");
        assert_eq!(s.requests_with_token, 20);
        assert_eq!(s.tls_handshakes, 1, "one connection for all reads");
        let log = f.vault.requests();
        assert!(
            log[0].bearer_token.is_none(),
            "the first request carries no token"
        );
        assert_eq!(log[1].path_and_query, "/secrets/web/?api-version=7.4");
        let imds = &f.imds.requests()[0];
        assert!(imds.metadata_header);
        assert_eq!(
            imds.path_and_query,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
        );
    });
}

#[test]
fn pinned_version_and_plain_secret() {
    run_isolated("pinned_version_and_plain_secret", || {
        let f = Fakes::start(NAMES);
        let v1 = f
            .vault
            .put_secret(HOST, "web", SecretValue::pkcs12(b"pfx-one"));
        f.vault
            .put_secret(HOST, "web", SecretValue::pkcs12(b"pfx-two"));
        f.vault
            .put_secret(HOST, "password", SecretValue::plain("hunter2"));
        let c = client(RetryPolicy::VAULT);
        let b = c
            .get_secret(
                &vault_url(HOST),
                "web",
                Some(&Version::parse(&v1).unwrap()),
                Deadline::after(CHECK_DEADLINE),
                &Stop::default(),
            )
            .unwrap();
        assert_eq!(b.version, v1);
        assert_eq!(b.kind(), SecretKind::Pkcs12);
        let plain = get(&c, HOST, "password").unwrap();
        assert_eq!(plain.kind(), SecretKind::NotACertificate);
        assert!(!format!("{plain:?}").contains("hunter2"), "Debug redacts");
    });
}

#[test]
fn transient_vault_errors_are_retried_then_succeed() {
    run_isolated("transient_vault_errors_are_retried_then_succeed", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(FAST);
        get(&c, HOST, "web").unwrap();
        for (sequence, requests) in [
            (
                vec![Reply::Status(500), Reply::Status(503), Reply::Normal],
                3,
            ),
            (vec![Reply::Status(408), Reply::Normal], 2),
            (vec![Reply::Drop, Reply::Status(502), Reply::Normal], 3),
            // Three failures, then the fourth and last attempt the policy allows gets the normal answer.
            (
                vec![Reply::Status(504), Reply::Status(500), Reply::Status(503)],
                4,
            ),
        ] {
            f.vault.reset_stats();
            f.vault.script(HOST, sequence);
            get(&c, HOST, "web").unwrap();
            assert_eq!(f.vault.stats().requests, requests);
        }
    });
}

#[test]
fn vault_gives_up_after_the_policy_with_the_last_answer() {
    run_isolated(
        "vault_gives_up_after_the_policy_with_the_last_answer",
        || {
            let f = Fakes::start(NAMES);
            f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
            let c = client(FAST);
            get(&c, HOST, "web").unwrap();
            f.vault.reset_stats();
            f.vault.script(HOST, (0..10).map(|_| Reply::Status(503)));
            let e = get(&c, HOST, "web").unwrap_err();
            assert_eq!(f.vault.stats().requests, 4, "max_attempts");
            assert_eq!(e.reason(), "vault-unavailable");
            let text = e.to_string();
            assert!(
                text.starts_with(
                    "vault 'myvault' did not return secret 'web' after 4 attempt(s) over "
                ),
                "{text}"
            );
            assert!(
            text.ends_with(
                "last: HTTP 503 ServiceUnavailable: The service is unavailable. Please retry later."
            ),
            "{text}"
        );
        },
    );
}

#[test]
fn retry_after_is_never_undercut() {
    run_isolated("retry_after_is_never_undercut", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(FAST);
        get(&c, HOST, "web").unwrap();
        for (reply, at_least) in [
            (
                Reply::Throttle {
                    retry_after: Duration::from_secs(2),
                },
                Duration::from_secs(2),
            ),
            // An HTTP date has whole seconds, so the server's own rounding may shorten the wait to over 1 s.
            (
                Reply::ThrottleHttpDate {
                    retry_after: Duration::from_secs(2),
                },
                Duration::from_secs(1),
            ),
        ] {
            let start = f.vault.requests().len();
            f.vault.script(HOST, [reply]);
            get(&c, HOST, "web").unwrap();
            let log = f.vault.requests();
            assert_eq!(log.len(), start + 2);
            assert_eq!((log[start].status, log[start + 1].status), (429, 200));
            let gap = log[start + 1].at - log[start].at;
            assert!(gap >= at_least, "retried {gap:?} after the 429");
        }
    });
}

#[test]
fn throttling_holds_back_the_whole_vault() {
    run_isolated("throttling_holds_back_the_whole_vault", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "a", SecretValue::pem(PEM));
        f.vault.put_secret(HOST, "b", SecretValue::pem(PEM));
        let c = Arc::new(client(FAST));
        get(&c, HOST, "a").unwrap();
        f.vault.script_secret(
            HOST,
            "a",
            [Reply::Throttle {
                retry_after: Duration::from_secs(2),
            }],
        );
        let first = {
            let c = c.clone();
            std::thread::spawn(move || get(&c, HOST, "a").map(|b| b.version))
        };
        // Wait until the client holds the vault back (a check whose deadline ends before the Retry-After
        // gives up at once, without a request: "nothere" is answered 404 until then), then read another
        // secret of the same vault.
        let t = Instant::now();
        while !held_back(&c, HOST) {
            assert!(t.elapsed() < Duration::from_secs(10), "no 429 seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        get(&c, HOST, "b").unwrap();
        first.join().unwrap().unwrap();
        let log = f.vault.requests();
        let throttled_at = log.iter().find(|r| r.status == 429).unwrap().at;
        let b_at = log
            .iter()
            .find(|r| r.path_and_query.starts_with("/secrets/b/"))
            .unwrap()
            .at;
        assert!(
            b_at - throttled_at >= Duration::from_secs(2),
            "secret b was read {:?} after the vault said Retry-After: 2",
            b_at - throttled_at
        );
    });
}

#[test]
fn forbidden_and_not_found_say_what_to_do() {
    run_isolated("forbidden_and_not_found_say_what_to_do", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        f.vault.deny(HOST, Some("web"));
        let c = client(FAST);
        let e = get(&c, HOST, "web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "access to secret 'web' in vault 'myvault' was denied to the system-assigned identity (HTTP 403 \
             ForbiddenByRbac); grant it the 'Key Vault Secrets User' role on the vault (Azure RBAC), or the \
             'get' secret permission in the vault's access policy"
        );
        assert_eq!(e.reason(), "vault-forbidden");
        let e = get(&c, HOST, "nothere").unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret 'nothere' was not found in vault 'myvault' (HTTP 404 SecretNotFound); check the certificate \
             name and version in the observedCertificates URL, and that the certificate exists in that vault"
        );
        f.vault.allow(HOST, Some("web"));
        let e = c
            .get_secret(
                &vault_url(HOST),
                "web",
                Some(&Version::parse("0123456789abcdef0123456789abcdef").unwrap()),
                Deadline::after(CHECK_DEADLINE),
                &Stop::default(),
            )
            .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "version 0123456789abcdef0123456789abcdef of secret 'web' was not found"
            ),
            "{e}"
        );
        // Each is final: no retries.
        assert_eq!(secret_requests(&f, "nothere").len(), 1);
    });
}

#[test]
fn user_assigned_identity_names_msi_client_id() {
    run_isolated("user_assigned_identity_names_msi_client_id", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let id = "c7373ae5-91c2-4165-8ab6-7381d6e75619";
        f.imds.add_user_identity(id);
        let identity = Identity::for_user(None, Some(&UserIdentity::ClientId(id.to_string())))
            .unwrap()
            .with_policy(FAST);
        let c = VaultClient::with_policy(Arc::new(identity), FAST).unwrap();
        get(&c, HOST, "web").unwrap();
        assert!(
            f.imds.requests()[0]
                .path_and_query
                .ends_with(&format!("&client_id={id}"))
        );

        let missing = "00000000-1111-2222-3333-444444444444";
        let identity = Identity::for_user(None, Some(&UserIdentity::ClientId(missing.to_string())))
            .unwrap()
            .with_policy(FAST);
        let c = VaultClient::with_policy(Arc::new(identity), FAST).unwrap();
        f.imds.reset_stats();
        let e = get(&c, HOST, "web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the managed identity endpoint http://169.254.169.254/metadata/identity/oauth2/token refused a token \
             for the user-assigned identity with client id 00000000-1111-2222-3333-444444444444 (msiClientId) \
             (HTTP 400: invalid_request: Identity not found): the identity with client id \
             00000000-1111-2222-3333-444444444444 is not assigned to this VM; assign that identity to the VM or \
             scale set (az vm identity assign), or fix authenticationSettings.msiClientId (look its client ID up \
             with `az identity show -g <group> -n <name> --query clientId` and set msiClientId to it)"
        );
        assert_eq!(f.imds.stats().token_requests, 1, "400 is not retried");

        f.vault.deny(HOST, None);
        let identity = Identity::for_user(None, Some(&UserIdentity::ClientId(id.to_string())))
            .unwrap()
            .with_policy(FAST);
        let c = VaultClient::with_policy(Arc::new(identity), FAST).unwrap();
        let e = get(&c, HOST, "web").unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "was denied to the user-assigned identity with client id {id} (msiClientId)"
            )),
            "{e}"
        );
    });
}

#[test]
fn imds_retries_404_410_429_5xx_and_drops() {
    run_isolated("imds_retries_404_410_429_5xx_and_drops", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        f.imds.script([
            Reply::Status(404),
            Reply::Status(410),
            Reply::Throttle {
                retry_after: Duration::from_secs(1),
            },
            Reply::Status(500),
            Reply::Drop,
        ]);
        let identity = Identity::for_user(None, None)
            .unwrap()
            .with_policy(RetryPolicy {
                max_attempts: 8,
                ..FAST
            });
        let c = VaultClient::with_policy(Arc::new(identity), FAST).unwrap();
        get(&c, HOST, "web").unwrap();
        let log = f.imds.requests();
        assert_eq!(
            log.iter().map(|r| r.status).collect::<Vec<_>>(),
            [404, 410, 429, 500, 0, 200]
        );
        assert!(
            log[3].at - log[2].at >= Duration::from_secs(1),
            "Retry-After"
        );
        assert!(log.iter().all(|r| r.metadata_header));

        // A policy that runs out names the endpoint, the count and the last answer.
        f.imds.script((0..10).map(|_| Reply::Status(503)));
        let identity = Identity::for_user(None, None).unwrap().with_policy(FAST);
        let stop = Stop::default();
        let e = identity
            .token(
                "https://vault.azure.net",
                Deadline::after(CHECK_DEADLINE),
                &stop,
            )
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "the managed identity endpoint http://169.254.169.254/metadata/identity/oauth2/token gave no \
                 token after 4 attempt(s) over "
            ),
            "{text}"
        );
        assert!(
            text.contains("last: HTTP 503 (unknown_error: An unexpected error occured while fetching the AAD token.)"),
            "{text}"
        );
        assert!(matches!(e, IdentityError::GaveUp { attempts: 4, .. }));
    });
}

#[test]
fn no_token_for_a_host_outside_the_resource_domain() {
    run_isolated("no_token_for_a_host_outside_the_resource_domain", || {
        let f = Fakes::start(NAMES);
        f.vault
            .put_secret("vault.evil.example", "web", SecretValue::pem(PEM));
        let c = client(FAST);
        let e = get(&c, "vault.evil.example", "web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the vault at 'vault.evil.example' asked for a token for 'https://vault.azure.net', but \
             'vault.evil.example' does not end with '.vault.azure.net'; kvvm sent no token. Check the vault \
             URL in observedCertificates (Key Vault hosts look like <name>.vault.azure.net)"
        );
        // A vault whose challenge names another cloud's resource is refused too.
        f.vault.set_challenge(
            "othervault.vault.azure.net",
            ChallengeResource::Resource("https://vault.azure.cn".into()),
        );
        let e = get(&c, "othervault.vault.azure.net", "web").unwrap_err();
        assert_eq!(e.reason(), "vault-resource-mismatch");
        assert!(f.vault.requests().iter().all(|r| r.bearer_token.is_none()));
        assert_eq!(
            f.imds.stats().token_requests,
            0,
            "no token was even fetched"
        );
    });
}

#[test]
fn sovereign_cloud_resource_comes_from_the_challenge() {
    run_isolated("sovereign_cloud_resource_comes_from_the_challenge", || {
        let f = Fakes::start(NAMES);
        f.vault
            .put_secret("myvault.vault.azure.cn", "web", SecretValue::pem(PEM));
        f.vault.set_challenge(
            HOST,
            ChallengeResource::Scope("https://vault.azure.net/.default".into()),
        );
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(FAST);
        get(&c, "myvault.vault.azure.cn", "web").unwrap();
        get(&c, HOST, "web").unwrap();
        let resources: Vec<String> = f
            .imds
            .requests()
            .iter()
            .map(|r| r.path_and_query.clone())
            .collect();
        assert_eq!(resources.len(), 2);
        assert!(resources[0].ends_with("resource=https%3A%2F%2Fvault.azure.cn"));
        assert!(resources[1].ends_with("resource=https%3A%2F%2Fvault.azure.net"));
    });
}

#[test]
fn a_rejected_token_is_refreshed_once() {
    run_isolated("a_rejected_token_is_refreshed_once", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(FAST);
        get(&c, HOST, "web").unwrap();
        f.imds.tokens().revoke_all();
        get(&c, HOST, "web").unwrap();
        assert_eq!(f.imds.stats().token_requests, 2, "one refresh");

        f.vault
            .script(HOST, [Reply::Status(401), Reply::Status(401)]);
        let e = get(&c, HOST, "web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "vault 'myvault' rejected a fresh token of the system-assigned identity (HTTP 401: AKV10000: Request \
             is missing a Bearer or PoP token.); check that the vault is in the same Microsoft Entra tenant as \
             the identity"
        );
        assert_eq!(f.imds.stats().token_requests, 3);
    });
}

#[test]
fn network_failures_name_the_host() {
    run_isolated("network_failures_name_the_host", || {
        let f = Fakes::start(NAMES);
        let c = client(RetryPolicy {
            max_attempts: 2,
            ..FAST
        });
        let e = get(&c, "nosuchvault.vault.azure.net", "web").unwrap_err();
        assert_eq!(e.reason(), "vault-dns", "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot resolve the vault host 'nosuchvault.vault.azure.net' ("),
            "{e}"
        );
        assert!(e.to_string().ends_with(
            "); check the vault name in observedCertificates. For a vault behind a private endpoint, the VM's \
             DNS must resolve it to the private address (privatelink.vaultcore.azure.net zone); if the VM \
             reaches the internet through a proxy, set HTTPS_PROXY"
        ));

        let e = get(&c, "othervault.vault.azure.net:8443", "web").unwrap_err();
        assert_eq!(e.reason(), "vault-connect", "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot connect to the vault host 'othervault.vault.azure.net' ("),
            "{e}"
        );

        // A server whose certificate comes from a CA the OS store does not hold.
        let stranger = TestCa::generate();
        let _other = FakeVault::start(
            "127.0.0.1:8444".parse().unwrap(),
            stranger.server_config(NAMES),
            f.imds.tokens().clone(),
        )
        .unwrap();
        let e = get(&c, "othervault.vault.azure.net:8444", "web").unwrap_err();
        assert_eq!(e.reason(), "vault-tls", "{e}");
        assert!(
            e.to_string()
                .starts_with("TLS with the vault host 'othervault.vault.azure.net' failed ("),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("kvvm trusts the operating system's certificate store")
        );
        // Its CA added to the system's bundle (this namespace's own): the next check trusts it, without a new
        // client.
        let mut bundle = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/ssl/certs/ca-certificates.crt")
            .unwrap();
        std::io::Write::write_all(&mut bundle, format!("\n{}", stranger.ca_pem()).as_bytes())
            .unwrap();
        drop(bundle);
        let e = get(&c, "othervault.vault.azure.net:8444", "web").unwrap_err();
        assert_ne!(e.reason(), "vault-tls", "the added CA is trusted now: {e}");
    });
}

#[test]
fn a_slow_body_times_out_and_is_retried() {
    run_isolated("a_slow_body_times_out_and_is_retried", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let c = client(RetryPolicy {
            per_try_timeout: Duration::from_secs(1),
            ..FAST
        });
        get(&c, HOST, "web").unwrap();
        f.vault.reset_stats();
        f.vault.script(
            HOST,
            [Reply::SlowBody {
                delay: Duration::from_secs(3),
            }],
        );
        get(&c, HOST, "web").unwrap();
        assert_eq!(f.vault.stats().requests, 2);
    });
}

/// A minimal HTTP CONNECT proxy that records the targets it was asked for.
fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(line.trim().to_string());
                let Ok(mut upstream) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let mut up2 = upstream.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let mut buf = reader.buffer().to_vec();
                    let _ = up2.write_all(&buf);
                    buf.resize(16384, 0);
                    let mut r = reader.into_inner();
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if up2.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = up2.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut upstream, &mut client);
                let _ = client.shutdown(Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    (port, seen)
}

#[test]
fn vault_traffic_uses_https_proxy_and_imds_never_does() {
    run_isolated("vault_traffic_uses_https_proxy_and_imds_never_does", || {
        let f = Fakes::start(NAMES);
        f.vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        f.vault
            .put_secret("othervault.vault.azure.net", "web", SecretValue::pem(PEM));
        let (port, seen) = connect_proxy();
        // SAFETY: this process runs this one test only (inside the namespace), before any thread reads the
        // environment.
        unsafe {
            std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{port}"));
            std::env::set_var("NO_PROXY", "othervault.vault.azure.net");
        }
        let c = client(FAST);
        get(&c, HOST, "web").unwrap();
        get(&c, HOST, "web").unwrap();
        get(&c, "othervault.vault.azure.net", "web").unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            ["CONNECT myvault.vault.azure.net:443 HTTP/1.1"],
            "one tunnel, reused; NO_PROXY honoured; IMDS never proxied"
        );
        assert_eq!(f.imds.stats().token_requests, 1);
        assert_eq!(f.vault.stats().tls_handshakes, 2);
    });
}

#[test]
fn azure_arc_challenge_and_key_file() {
    run_isolated("azure_arc_challenge_and_key_file", || {
        let keys = tempfile::tempdir().unwrap();
        let Fakes { imds: arc, vault } = Fakes::start_arc(NAMES, keys.path());
        vault.put_secret(HOST, "web", SecretValue::pem(PEM));
        let endpoint = Url::parse("http://localhost:40342/metadata/identity").unwrap();
        let identity = Identity::for_user(Some(&endpoint), None)
            .unwrap()
            .with_arc_key_dir(keys.path())
            .with_policy(FAST);
        let c = VaultClient::with_policy(Arc::new(identity), FAST).unwrap();
        get(&c, HOST, "web").unwrap();
        let log = arc.requests();
        assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [401, 200]);
        assert!(log[0].authorization.is_none());
        assert!(
            log[1]
                .authorization
                .as_deref()
                .unwrap()
                .starts_with("Basic ")
        );
        assert!(log[1].path_and_query.contains("api-version=2020-06-01"));

        // The same endpoint with the production key folder: the challenge's file is elsewhere, so refused.
        let identity = Identity::for_user(Some(&endpoint), None)
            .unwrap()
            .with_policy(FAST);
        let e = identity
            .token(
                "https://vault.azure.net",
                Deadline::after(CHECK_DEADLINE),
                &Stop::default(),
            )
            .unwrap_err();
        assert_eq!(e.reason(), "arc-key-path");
        assert!(
            e.to_string().ends_with(
                "which kvvm will not read: it is not directly in the Arc agent's key folder. Only a '.key' file \
                 directly in /var/opt/azcmagent/tokens, at most 4096 bytes, is accepted; check that msiEndpoint \
                 points at the local Arc agent"
            ),
            "{e}"
        );
    });
}

#[test]
fn arc_key_files_are_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("tokens");
    std::fs::create_dir(&keys).unwrap();
    let outside = dir.path().join("outside.key");
    std::fs::write(&outside, "secret-outside").unwrap();
    std::fs::write(keys.join("good.key"), "k3y").unwrap();
    std::fs::write(keys.join("bad.txt"), "k3y").unwrap();
    std::fs::write(keys.join("big.key"), vec![b'x'; 4097]).unwrap();
    std::fs::write(keys.join("max.key"), vec![b'x'; 4096]).unwrap();
    symlink(&outside, keys.join("link.key")).unwrap();
    std::fs::create_dir(keys.join("sub")).unwrap();
    std::fs::write(keys.join("sub/deep.key"), "k3y").unwrap();
    std::fs::create_dir(keys.join("dir.key")).unwrap();

    assert_eq!(
        read_arc_key(&keys.join("good.key"), &keys)
            .unwrap()
            .as_str(),
        "k3y"
    );
    assert_eq!(
        read_arc_key(&keys.join("max.key"), &keys).unwrap().len(),
        4096
    );
    let problem = |p: &Path| match read_arc_key(p, &keys) {
        Err(IdentityError::ArcKeyPath { problem, .. }) => problem,
        other => panic!("{p:?}: {other:?}"),
    };
    assert_eq!(
        problem(&keys.join("bad.txt")),
        "its name does not end in '.key'"
    );
    assert_eq!(problem(&keys.join("big.key")), "it is 4097 bytes long");
    assert_eq!(problem(&keys.join("link.key")), "it is a symbolic link");
    assert_eq!(problem(&keys.join("dir.key")), "it is not a regular file");
    assert_eq!(
        problem(&keys.join("sub/deep.key")),
        "it is not directly in the Arc agent's key folder"
    );
    assert_eq!(
        problem(&outside),
        "it is not directly in the Arc agent's key folder"
    );
    assert_eq!(
        problem(&keys.join("../outside.key")),
        "it contains '.' or '..'"
    );
    assert_eq!(problem(Path::new("good.key")), "it is not an absolute path");
    // A symlinked folder that resolves elsewhere is not the key folder either.
    let fake_dir = dir.path().join("fake");
    symlink(dir.path(), &fake_dir).unwrap();
    assert_eq!(
        problem(&fake_dir.join("outside.key")),
        "it is not directly in the Arc agent's key folder"
    );
}
