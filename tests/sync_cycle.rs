//! One poll cycle over many certificates and two vaults (in the VM-like namespace, against the fakes): checked
//! in parallel, one token, one challenge per vault, bounded connections resuming TLS sessions, and a
//! second cycle that changes nothing writes nothing.

use std::sync::Arc;
use std::time::Duration;

use kvvm::Identity;
use kvvm::VaultClient;
use kvvm::settings::parse_public_settings;
use kvvm::{CONNECTIONS_PER_HOST, RetryPolicy, Stop};
use kvvm::{KnownOwned, SyncOptions, check_all};
use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{Chain, KeyType, PemLayout};
use kvvm_sim::vault::SecretValue;
use kvvm_sim::vm::Fakes;
use serde_json::json;

const HOSTS: [&str; 2] = ["myvault.vault.azure.net", "othervault.vault.azure.net"];

#[test]
fn a_cycle_is_parallel_with_one_token_and_bounded_connections_per_vault() {
    run_isolated(
        "a_cycle_is_parallel_with_one_token_and_bounded_connections_per_vault",
        || {
            let Fakes { imds, vault } = Fakes::start(&HOSTS);
            let dir = tempfile::tempdir().unwrap();
            let chain = Chain::generate(
                &dir.path().join("pki"),
                "many.example.com",
                KeyType::Ec("P-256"),
                90,
            )
            .unwrap();
            let pem = chain.pem(PemLayout::default()).unwrap();
            let mut urls = Vec::new();
            for i in 0..32 {
                let host = HOSTS[usize::from(i >= 24)];
                vault.put_secret(host, &format!("c{i}"), SecretValue::pem(pem.clone()));
                urls.push(format!("https://{host}/secrets/c{i}"));
            }
            let latency = Duration::from_millis(400);
            vault.add_latency(latency);
            let settings = parse_public_settings(&json!({"secretsManagementSettings": {
                "certificateStoreLocation": dir.path().join("store"),
                "observedCertificates": urls,
            }}))
            .unwrap();
            let identity = Identity::for_user(None, None).unwrap();
            let client =
                Arc::new(VaultClient::with_policy(Arc::new(identity), RetryPolicy::VAULT).unwrap());
            let options = SyncOptions {
                acl_enabled: false,
                retained_versions: 2,
                lock_dir: dir.path().join("store-locks"),
                link_on_renewal: false,
            };
            let certs = &settings.observed_certificates;

            let results = check_all(
                client.clone(),
                certs,
                &[],
                options.clone(),
                &Stop::default(),
            );
            for (cert, r) in certs.iter().zip(&results) {
                let checked = r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", cert.url));
                assert!(checked.changed && checked.link.is_file(), "{checked:?}");
            }
            assert_eq!(
                imds.stats().tokens_issued,
                1,
                "one token for both vaults (same resource)"
            );
            let s = vault.stats();
            assert_eq!(
                s.requests,
                32 + 2,
                "one challenge per vault, then one GET per certificate"
            );
            // At most CONNECTIONS_PER_HOST connections per vault; the parallel ones resume the TLS session of the first
            // round (TLS 1.3 tickets are single-use and the server hands out two per connection, so with more
            // parallel connections than tickets some still do a full handshake).
            for host in HOSTS {
                assert!(
                    s.tls_handshakes_per_sni[host] <= CONNECTIONS_PER_HOST as u64,
                    "{s:?}"
                );
            }
            assert!(
                s.tls_resumed_handshakes >= 4,
                "two tickets per vault from the first round: {s:?}"
            );
            // Parallel, but at most CONNECTIONS_PER_HOST at a time per vault: that many replies of myvault
            // completed within half a reply's latency of each other, never more.
            let arrivals: Vec<_> = vault
                .requests()
                .iter()
                .filter(|r| r.vault_host == HOSTS[0] && r.bearer_token.is_some())
                .map(|r| r.at)
                .collect();
            let most_at_once = arrivals
                .iter()
                .map(|&a| {
                    arrivals
                        .iter()
                        .filter(|&&b| b >= a && b.duration_since(a) < latency / 2)
                        .count()
                })
                .max()
                .unwrap();
            assert_eq!(
                most_at_once, CONNECTIONS_PER_HOST,
                "requests to one vault in flight together"
            );

            // A second cycle with nothing new: one GET per certificate, nothing decoded or written, no new token.
            vault.reset_stats();
            let versions: Vec<String> = results
                .iter()
                .map(|r| r.as_ref().unwrap().version.clone())
                .collect();
            let known: Vec<KnownOwned> = versions
                .iter()
                .map(|v| KnownOwned {
                    version: Some(v.clone()),
                    has_not_after: true,
                })
                .collect();
            let again = check_all(client.clone(), certs, &known, options, &Stop::default());
            assert!(again.iter().all(|r| {
                r.as_ref()
                    .is_ok_and(|c| !c.changed && c.not_after.is_none())
            }));
            let s = vault.stats();
            assert_eq!(s.requests, 32, "{s:?}");
            assert_eq!(
                s.tls_handshakes - s.tls_resumed_handshakes,
                0,
                "pooled connections are reused: {s:?}"
            );
            assert_eq!(imds.stats().tokens_issued, 1);
        },
    );
}
