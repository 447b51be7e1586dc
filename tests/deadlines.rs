//! Deadlines, against fakes that hang: every try is cut off at its limit (a request that is never answered, a
//! body that stalls after its headers, a TLS handshake that never completes), a check whose every try hangs
//! ends with `vault-timeout`, and nothing one request waits for holds up another — neither a hung secret
//! another secret of the same vault, nor a hung token fetch a cached token of another resource. Run inside the
//! VM-like network namespace, so the defaults are the production ones; only the policies' numbers are short.
//!
//! Nothing here asserts how long something took: the fakes' request logs show what happened in which order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvvm::Identity;
use kvvm::{CHECK_DEADLINE, Deadline, RetryPolicy, Stop};
use kvvm::{SecretBundle, VaultClient, VaultError};
use kvvm_sim::httpserver::Reply;
use kvvm_sim::netns::run_isolated;
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Fakes;
use url::Url;

const HOST: &str = "myvault.vault.azure.net";
const NAMES: &[&str] = kvvm_sim::netns::DEFAULT_HOSTS;
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const VAULT_RESOURCE: &str = "https://vault.azure.net";

/// One second per try and waits of 25–50 ms between tries, so a check's attempts are easy to count: with a
/// deadline of 2.6 s, two tries run to their limit and the third is cut off by the deadline.
const TIGHT: RetryPolicy = RetryPolicy {
    per_try_timeout: Duration::from_secs(1),
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(50),
    total: Duration::from_secs(30),
    max_attempts: 10,
};

/// The identity's policy in these tests: a try may take 5 s.
const IDENTITY: RetryPolicy = RetryPolicy {
    per_try_timeout: Duration::from_secs(5),
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    total: Duration::from_secs(30),
    max_attempts: 4,
};

fn fakes() -> Fakes {
    let f = Fakes::start(NAMES);
    for name in ["web", "a", "b"] {
        f.vault.put_secret(HOST, name, SecretValue::pem(PEM));
    }
    f
}

fn client(policy: RetryPolicy) -> VaultClient {
    let identity = Identity::for_user(None, None)
        .unwrap()
        .with_policy(IDENTITY);
    VaultClient::with_policy(Arc::new(identity), policy).unwrap()
}

fn get_within(c: &VaultClient, name: &str, deadline: Duration) -> Result<SecretBundle, VaultError> {
    let url = Url::parse(&format!("https://{HOST}/")).unwrap();
    c.get_secret(
        &url,
        name,
        None,
        Deadline::after(deadline),
        &Stop::default(),
    )
}

fn get(c: &VaultClient, name: &str) -> Result<SecretBundle, VaultError> {
    get_within(c, name, CHECK_DEADLINE)
}

/// Statuses the fake vault logged for secret `name`, in order (0: dropped or left hanging).
fn statuses(f: &Fakes, name: &str) -> Vec<u16> {
    f.vault
        .secret_requests(name)
        .iter()
        .map(|r| r.status)
        .collect()
}

/// Waits (at most 30 s, then fails) until `seen` holds.
fn wait_until(what: &str, mut seen: impl FnMut() -> bool) {
    let t = Instant::now();
    while !seen() {
        assert!(t.elapsed() < Duration::from_secs(30), "never saw: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_request_that_is_never_answered_is_cut_off_and_retried() {
    run_isolated(
        "a_request_that_is_never_answered_is_cut_off_and_retried",
        || {
            let f = fakes();
            let c = client(TIGHT);
            get(&c, "web").unwrap();
            f.vault.reset_stats();
            f.vault
                .script_secret(HOST, "web", [Reply::Hang, Reply::Hang]);
            get(&c, "web").unwrap();
            assert_eq!(statuses(&f, "web"), [0, 0, 200]);
        },
    );
}

#[test]
fn a_body_that_stalls_after_its_headers_is_cut_off_and_retried() {
    run_isolated(
        "a_body_that_stalls_after_its_headers_is_cut_off_and_retried",
        || {
            let f = fakes();
            let c = client(TIGHT);
            get(&c, "web").unwrap();
            f.vault.reset_stats();
            // The headers come at once, the body an hour later.
            f.vault.script_secret(
                HOST,
                "web",
                [Reply::SlowBody {
                    delay: Duration::from_secs(3600),
                }],
            );
            get(&c, "web").unwrap();
            assert_eq!(f.vault.stats().requests, 2);

            // Every body stalls: the check ends at its deadline, saying how far the last try got.
            f.vault.script_secret(
                HOST,
                "web",
                (0..10).map(|_| Reply::SlowBody {
                    delay: Duration::from_secs(3600),
                }),
            );
            let e = get_within(&c, "web", Duration::from_millis(2600)).unwrap_err();
            assert_eq!(e.reason(), "vault-timeout", "{e}");
            assert!(
                e.to_string()
                    .contains("last: the headers came, but not the whole body within "),
                "{e}"
            );
        },
    );
}

#[test]
fn a_tls_handshake_that_never_completes_is_cut_off_and_retried() {
    run_isolated(
        "a_tls_handshake_that_never_completes_is_cut_off_and_retried",
        || {
            let f = fakes();
            // A new client has no connection yet: its first one stalls in the handshake, the second works.
            f.vault.stall_handshakes(1);
            let c = client(TIGHT);
            get(&c, "web").unwrap();
            assert_eq!(f.vault.stalled_handshakes(), 1);
            assert_eq!(f.vault.stats().tls_handshakes, 1);

            // Every handshake stalls: a timeout (retried, then vault-timeout), not a TLS failure (final).
            f.vault.reset_stats();
            f.vault.stall_handshakes(100);
            let e = get_within(&client(TIGHT), "web", Duration::from_millis(2600)).unwrap_err();
            assert_eq!(e.reason(), "vault-timeout", "{e}");
            assert_eq!(f.vault.stalled_handshakes(), 1 + 3, "{e}");
            assert!(
                matches!(e, VaultError::Timeout { attempts: 3, .. }),
                "{e:?}"
            );
            assert_eq!(f.vault.stats().requests, 0);
        },
    );
}

#[test]
fn a_check_whose_every_try_hangs_ends_with_vault_timeout_at_its_deadline() {
    run_isolated(
        "a_check_whose_every_try_hangs_ends_with_vault_timeout_at_its_deadline",
        || {
            let f = fakes();
            let c = client(TIGHT);
            get(&c, "web").unwrap();
            f.vault.reset_stats();
            f.vault
                .script_secret(HOST, "web", (0..10).map(|_| Reply::Hang));
            let e = get_within(&c, "web", Duration::from_millis(2600)).unwrap_err();
            assert_eq!(e.reason(), "vault-timeout", "{e}");
            // Two tries of 1 s, a third cut short by the deadline, and no fourth: the policy would allow 10.
            assert_eq!(statuses(&f, "web"), [0, 0, 0]);
            assert!(
                matches!(
                    e,
                    VaultError::Timeout {
                        attempts: 3,
                        seconds: 3,
                        ..
                    }
                ),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(
                    "vault 'myvault' did not answer for secret 'web' within 3 s (3 attempt(s); last: no answer \
                     within "
                ),
                "{text}"
            );
            assert!(
                text.ends_with(
                    "); check the network path from the VM to the vault: network security groups and firewalls, \
                     the vault's private endpoint and its DNS, and HTTPS_PROXY / NO_PROXY if traffic goes through \
                     a proxy"
                ),
                "{text}"
            );
        },
    );
}

#[test]
fn a_hung_secret_does_not_hold_up_another_secret_of_the_same_vault() {
    run_isolated(
        "a_hung_secret_does_not_hold_up_another_secret_of_the_same_vault",
        || {
            let f = fakes();
            let c = Arc::new(client(RetryPolicy {
                per_try_timeout: Duration::from_secs(5),
                ..TIGHT
            }));
            // The challenge and the token are cached before the hang.
            get(&c, "a").unwrap();
            get(&c, "b").unwrap();
            f.vault.reset_stats();
            f.vault.script_secret(HOST, "a", [Reply::Hang]);
            let first = {
                let c = c.clone();
                std::thread::spawn(move || get(&c, "a").map(|b| b.version))
            };
            wait_until("the request for a hanging", || statuses(&f, "a") == [0]);
            get(&c, "b").unwrap();
            first.join().unwrap().unwrap();
            // b was read while a's first try still hung: before a's retry, which only comes after its limit.
            let log: Vec<(String, u16)> = f
                .vault
                .requests()
                .iter()
                .map(|r| (r.path_and_query.clone(), r.status))
                .collect();
            let path = |name: &str| format!("/secrets/{name}/?api-version=7.4");
            assert_eq!(
                log,
                [(path("a"), 0), (path("b"), 200), (path("a"), 200)],
                "{log:?}"
            );
        },
    );
}

#[test]
fn a_cached_token_is_served_while_another_resources_fetch_hangs() {
    run_isolated(
        "a_cached_token_is_served_while_another_resources_fetch_hangs",
        || {
            let f = fakes();
            let identity = Arc::new(
                Identity::for_user(None, None)
                    .unwrap()
                    .with_policy(IDENTITY),
            );
            let stop = Stop::default();
            let cached = identity
                .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                .unwrap();
            f.imds.script([Reply::Hang]);
            let other = "https://other.example.com";
            let waiter = {
                let identity = identity.clone();
                std::thread::spawn(move || {
                    identity.token(
                        other,
                        Deadline::after(Duration::from_secs(1)),
                        &Stop::default(),
                    )
                })
            };
            let requests_for = |resource: &str| {
                let encoded =
                    url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>();
                f.imds
                    .requests()
                    .iter()
                    .filter(|r| r.path_and_query.contains(&format!("resource={encoded}")))
                    .map(|r| r.status)
                    .collect::<Vec<_>>()
            };
            wait_until("the token request for the other resource hanging", || {
                requests_for(other) == [0]
            });
            // The other fetch hangs (its try has 5 s); the cached token comes at once, without asking IMDS.
            let again = identity
                .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                .unwrap();
            assert_eq!(again.secret(), cached.secret());
            assert_eq!(requests_for(other), [0], "the other fetch still hangs");
            assert_eq!(requests_for(VAULT_RESOURCE), [200]);

            // The waiter's own deadline ended its wait; the fetch went on without it.
            let e = waiter.join().unwrap().unwrap_err();
            assert_eq!(e.reason(), "identity-timeout", "{e}");
            assert!(
                e.to_string().starts_with(
                    "the managed identity endpoint http://169.254.169.254/metadata/identity/oauth2/token gave \
                     no token within "
                ),
                "{e}"
            );
            // The next caller gets the token of that same fetch (cut off at its limit, then retried): IMDS was
            // not asked a third time.
            identity
                .token(other, Deadline::after(CHECK_DEADLINE), &stop)
                .unwrap();
            assert_eq!(requests_for(other), [0, 200]);
        },
    );
}

#[test]
fn a_check_that_cannot_wait_for_the_first_token_leaves_it_to_the_next_one() {
    run_isolated(
        "a_check_that_cannot_wait_for_the_first_token_leaves_it_to_the_next_one",
        || {
            let f = fakes();
            // IMDS is updating (410), and the waits between its tries are longer than the first check lasts.
            let identity = Identity::for_user(None, None)
                .unwrap()
                .with_policy(RetryPolicy {
                    first_backoff: Duration::from_millis(2500),
                    max_backoff: Duration::from_millis(2500),
                    max_attempts: 8,
                    ..IDENTITY
                });
            let c = VaultClient::with_policy(Arc::new(identity), TIGHT).unwrap();
            f.imds.script([Reply::Status(410), Reply::Status(410)]);
            let e = get_within(&c, "web", Duration::from_millis(1500)).unwrap_err();
            assert_eq!(e.reason(), "identity-timeout", "{e}");
            assert!(
                e.to_string()
                    .contains("last: HTTP 410 (gone: IMDS is being updated; retry later))"),
                "{e}"
            );
            // The fetch rode out the 410s on its own; the next check joins it instead of starting over.
            get(&c, "web").unwrap();
            let statuses: Vec<u16> = f.imds.requests().iter().map(|r| r.status).collect();
            assert_eq!(statuses, [410, 410, 200]);
        },
    );
}

#[test]
fn a_token_due_for_refresh_is_still_served_while_the_refresh_hangs() {
    run_isolated(
        "a_token_due_for_refresh_is_still_served_while_the_refresh_hangs",
        || {
            let f = fakes();
            // Tokens that live 4 minutes: due for refresh (under 5 minutes left) but valid for a while.
            f.imds.set_token_lifetime(Duration::from_secs(240));
            let identity = Identity::for_user(None, None)
                .unwrap()
                .with_policy(IDENTITY);
            let stop = Stop::default();
            let first = identity
                .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                .unwrap();
            f.imds.script([Reply::Hang]);
            let statuses = || {
                f.imds
                    .requests()
                    .iter()
                    .map(|r| r.status)
                    .collect::<Vec<_>>()
            };
            // The refresh starts and hangs; the old token is handed out meanwhile, to every caller.
            for _ in 0..3 {
                let t = identity
                    .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                    .unwrap();
                assert_eq!(t.secret(), first.secret());
            }
            wait_until("the refresh hanging", || statuses() == [200, 0]);
            let t = identity
                .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                .unwrap();
            assert_eq!(t.secret(), first.secret());
            assert_eq!(statuses(), [200, 0], "one refresh at a time");
            // The refresh, cut off at its limit and retried, brings a new token.
            wait_until("the refresh retried", || statuses() == [200, 0, 200]);
            wait_until("the new token handed out", || {
                identity
                    .token(VAULT_RESOURCE, Deadline::after(CHECK_DEADLINE), &stop)
                    .unwrap()
                    .secret()
                    != first.secret()
            });
        },
    );
}

#[test]
fn a_hung_challenge_request_does_not_hold_up_another_secrets_challenge() {
    run_isolated(
        "a_hung_challenge_request_does_not_hold_up_another_secrets_challenge",
        || {
            let f = fakes();
            // A new client knows no challenge yet: each secret's first request asks without a token.
            let c = Arc::new(client(RetryPolicy {
                per_try_timeout: Duration::from_secs(5),
                ..TIGHT
            }));
            f.vault.script_secret(HOST, "a", [Reply::Hang]);
            let first = {
                let c = c.clone();
                std::thread::spawn(move || get(&c, "a").map(|b| b.version))
            };
            wait_until("the challenge request for a hanging", || {
                statuses(&f, "a") == [0]
            });
            get(&c, "b").unwrap();
            assert_eq!(statuses(&f, "a"), [0], "a still hangs");
            first.join().unwrap().unwrap();
            assert_eq!(statuses(&f, "b"), [401, 200]);
            // a's retry found the challenge b had cached, and b's token: no second 401, no second token.
            assert_eq!(statuses(&f, "a"), [0, 200]);
            assert_eq!(f.imds.stats().token_requests, 1);
        },
    );
}
