//! No certificate starves when one pass over all of them takes longer than the polling interval (issue 22): a
//! slow vault, a restart part-way through, a vault that throttles. The packaged worker runs in the VM-like
//! namespace against the fake vault; what it fetched, and in which order, is read from the fake's request log.
//!
//! The bound every test holds the worker to: each certificate is checked at least once every
//! ⌈pass ÷ interval⌉ + 1 beats, and none is fetched a second time before every other one was fetched once.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kvvm_sim::netns::run_isolated;
use kvvm_sim::pki::{KeyType, PemLayout};
use kvvm_sim::vault::{RequestRecord, SecretValue};
use kvvm_sim::vm::Vm;
use kvvm_sim::waagent::StatusValue;
use serde_json::{Value, json};

const HOST: &str = "myvault.vault.azure.net";
const STORE: &str = "/var/lib/waagent/Microsoft.Azure.KeyVault.Store";
const CERTIFICATES: usize = 200;
const INTERVAL_S: u64 = 5;
/// The connections kvvm opens to one vault.
const CONNECTIONS: usize = 4;

fn name(i: usize) -> String {
    format!("c{i:03}")
}

/// A VM whose vault holds [`CERTIFICATES`] certificates (one PEM each, all alike), and their URLs.
fn vm_with_certificates() -> (Vm, Vec<String>) {
    let vm = Vm::new();
    let chain = vm.chain("fair", KeyType::Ec("P-256"), 90);
    let pem = chain.pem(PemLayout::default()).unwrap();
    let urls = (0..CERTIFICATES)
        .map(|i| {
            vm.vault()
                .put_secret(HOST, &name(i), SecretValue::pem(pem.clone()));
            format!("https://{HOST}/secrets/{}", name(i))
        })
        .collect();
    (vm, urls)
}

fn settings(urls: &[String], extra: Value) -> Value {
    let mut s = json!({"secretsManagementSettings": {
        "pollingIntervalInS": INTERVAL_S.to_string(),
        "observedCertificates": urls,
    }});
    for (k, v) in extra.as_object().unwrap() {
        s["secretsManagementSettings"][k] = v.clone();
    }
    s
}

/// How many certificates have their link in the store.
fn linked() -> usize {
    (0..CERTIFICATES)
        .filter(|&i| fs::read_link(Path::new(STORE).join(format!("myvault.{}", name(i)))).is_ok())
        .count()
}

/// The secrets fetched (answered 200 with a token) since `since`, in the order the vault saw them.
fn fetched(vm: &Vm, since: Instant) -> Vec<String> {
    vm.vault()
        .requests()
        .iter()
        .filter(|r: &&RequestRecord| r.at >= since && r.status == 200 && r.bearer_token.is_some())
        .filter_map(|r| {
            let path = r.path_and_query.split('?').next()?;
            Some(
                path.strip_prefix("/secrets/")?
                    .trim_end_matches('/')
                    .to_string(),
            )
        })
        .collect()
}

/// The time the bound allows for `beats` beats: each interval may be stretched by 10 %, the first poll waits up
/// to a tenth of the interval, and a second covers the work around the requests.
fn within_beats(beats: u64) -> Duration {
    Duration::from_secs_f64(INTERVAL_S as f64 * (0.1 + 1.1 * beats as f64) + 1.0)
}

/// ⌈pass ÷ interval⌉ + 1.
fn beats_for(pass: Duration) -> u64 {
    (pass.as_secs_f64() / INTERVAL_S as f64).ceil() as u64 + 1
}

/// Waits until every certificate is linked; returns how long it took.
fn wait_all_linked(vm: &Vm, since: Instant, limit: Duration) -> Duration {
    loop {
        let n = linked();
        if n == CERTIFICATES {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "only {n} of {CERTIFICATES} certificates installed {:?} after the start (the bound is {limit:?}); \
             status: {:?}\nlog:\n{}",
            since.elapsed(),
            vm.agent.read_status(vm.ext.as_ref().unwrap(), 0).ok(),
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whenever a certificate is fetched that already had its turn — fetched before, or in `had_turn` (recorded
/// by an earlier poller) — at most `CONNECTIONS - 1` of `first` may still wait for their first fetch: checks
/// that started before it on the vault's other connections, which the vault answered after it (a pause for
/// `Retry-After`, or the order in which concurrent answers come back). Starting in strict order, a certificate
/// is never fetched again while more than that have not been fetched once.
fn assert_turns(order: &[String], first: &HashSet<String>, had_turn: &HashSet<String>) {
    let mut seen: HashSet<&String> = HashSet::new();
    for (i, n) in order.iter().enumerate() {
        if seen.contains(n) || had_turn.contains(n) {
            let waiting: Vec<&String> = first.iter().filter(|f| !seen.contains(f)).collect();
            assert!(
                waiting.len() < CONNECTIONS,
                "{n} was fetched again (fetch {i}) while {} certificate(s) had not been fetched once: {waiting:?}",
                waiting.len()
            );
        }
        seen.insert(n);
    }
}

#[test]
fn a_pass_longer_than_the_interval_reaches_every_certificate() {
    run_isolated(
        "a_pass_longer_than_the_interval_reaches_every_certificate",
        || {
            let (mut vm, urls) = vm_with_certificates();
            // 200 × 150 ms over 4 connections: a pass of about 7.5 s against an interval of 5 s.
            let latency = Duration::from_millis(150);
            vm.vault().set_latency(latency);
            let pass = latency * (CERTIFICATES / CONNECTIONS) as u32;
            let start = Instant::now();
            vm.enable(settings(&urls, json!({})));
            let took = wait_all_linked(&vm, start, within_beats(beats_for(pass)));
            println!("every certificate installed after {took:?} (pass ≈ {pass:?})");
            let all: HashSet<String> = (0..CERTIFICATES).map(name).collect();
            // Let a second pass start, then look at the order of the fetches.
            std::thread::sleep(Duration::from_secs(INTERVAL_S));
            let order = fetched(&vm, start);
            assert!(order.len() > CERTIFICATES, "{} fetches", order.len());
            assert_turns(&order, &all, &HashSet::new());

            // The status says polling cannot keep up, with the measured pass, the interval and the fix.
            let r = vm.wait(
                0,
                Duration::from_secs(30),
                "the polling-behind warning",
                |r| r.message.contains("[polling-behind]"),
            );
            assert_eq!(r.status, StatusValue::Warning, "{}", r.message);
            let polling = r
                .substatus
                .iter()
                .find(|s| s.name == "polling")
                .expect("a polling substatus");
            assert_eq!(polling.status, StatusValue::Warning);
            for words in [
                "pollingIntervalInS (5 s)",
                "Raise pollingIntervalInS to at least",
                "200 certificate(s)",
            ] {
                assert!(polling.message.contains(words), "{}", polling.message);
            }
        },
    );
}

#[test]
fn after_a_restart_part_way_through_the_certificates_not_yet_checked_go_first() {
    run_isolated(
        "after_a_restart_part_way_through_the_certificates_not_yet_checked_go_first",
        || {
            let (mut vm, urls) = vm_with_certificates();
            let latency = Duration::from_millis(150);
            vm.vault().set_latency(latency);
            vm.enable(settings(&urls, json!({})));
            let deadline = Instant::now() + Duration::from_secs(60);
            while linked() < 40 {
                assert!(
                    Instant::now() < deadline,
                    "40 certificates not installed in 60 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // Freeze the poller so that what it recorded cannot change, read it, then kill it: the supervisor
            // starts another one.
            let pid = vm.worker_state().unwrap()["pid"].as_i64().unwrap() as i32;
            // SAFETY: signals to a process of this test's namespace.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
            std::thread::sleep(Duration::from_millis(200));
            let recorded: HashSet<String> = vm.worker_state().unwrap()["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| !c["lastCheck"].is_null())
                .map(|c| {
                    c["url"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            let killed = Instant::now();
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            assert!(
                (20..CERTIFICATES).contains(&recorded.len()),
                "{} recorded before the kill",
                recorded.len()
            );
            let left = CERTIFICATES - recorded.len();
            let pass = latency * (left / CONNECTIONS) as u32;
            // The supervisor waits 1 s before it restarts a poller that was killed.
            let took = wait_all_linked(
                &vm,
                killed,
                Duration::from_secs(1) + within_beats(beats_for(pass)),
            );
            println!(
                "{} recorded before the kill; the rest installed {took:?} after it",
                recorded.len()
            );
            // Every certificate the first poller had not recorded is fetched before any it had.
            let unrecorded: HashSet<String> = (0..CERTIFICATES)
                .map(name)
                .filter(|n| !recorded.contains(n))
                .collect();
            assert_turns(&fetched(&vm, killed), &unrecorded, &recorded);
        },
    );
}

#[test]
fn a_429_storm_slows_every_certificate_alike_and_the_status_says_so_until_it_ends() {
    run_isolated(
        "a_429_storm_slows_every_certificate_alike_and_the_status_says_so_until_it_ends",
        || {
            let (mut vm, urls) = vm_with_certificates();
            let metrics = vm.scratch().join("kvvm.prom");
            // 20 requests a second: one pass over 200 certificates (and the challenge) takes about 10 s.
            let rate = 20.0;
            vm.vault().throttle(HOST, rate, 20);
            let pass = Duration::from_secs_f64(CERTIFICATES as f64 / rate);
            let start = Instant::now();
            vm.enable(settings(
                &urls,
                json!({"metricsFile": metrics.to_str().unwrap()}),
            ));
            let took = wait_all_linked(&vm, start, within_beats(beats_for(pass)));
            println!("every certificate installed after {took:?} behind a {rate}/s throttle");
            let refused = vm
                .vault()
                .requests()
                .iter()
                .filter(|r| r.status == 429)
                .count();
            assert!(refused > 0, "the vault never throttled");
            let all: HashSet<String> = (0..CERTIFICATES).map(name).collect();
            assert_turns(&fetched(&vm, start), &all, &HashSet::new());

            // Behind: the status, `kvvm status --json` and the metrics say so.
            let r = vm.wait(
                0,
                Duration::from_secs(40),
                "the polling-behind warning",
                |r| r.message.contains("[polling-behind]"),
            );
            assert_eq!(r.status, StatusValue::Warning, "{}", r.message);
            let out = vm.kvvm(&["status", "--json"]);
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            let polling = &doc["worker"]["polling"];
            assert_eq!(polling["behind"], true, "{doc:#}");
            assert_eq!(polling["intervalSeconds"], INTERVAL_S);
            assert!(polling["lastPassSeconds"].as_f64().unwrap() > INTERVAL_S as f64);
            assert_eq!(polling["warning"]["reason"], "polling-behind");
            assert_eq!(out.status.code(), Some(1), "needs attention");
            let text = fs::read_to_string(&metrics).unwrap();
            assert!(text.contains("kvvm_poll_behind 1"), "{text}");
            assert!(text.contains(&format!("kvvm_poll_interval_seconds {INTERVAL_S}")));

            // The storm ends: the next passes keep up, and the warning goes.
            vm.vault().unthrottle(HOST);
            let r = vm.wait(0, Duration::from_secs(60), "the warning to clear", |r| {
                r.status == StatusValue::Success
            });
            assert!(!r.message.contains("[polling-behind]"), "{}", r.message);
            assert!(r.substatus.iter().all(|s| s.name != "polling"));
            let text = fs::read_to_string(&metrics).unwrap();
            assert!(text.contains("kvvm_poll_behind 0"), "{text}");
        },
    );
}
