//! The Fluentd sink against an independent decoder (Python `msgpack`), and its behaviour when the collector
//! is down: logging never blocks and drops are counted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kvvm::{FluentdConfig, FluentdLogger, QUEUE_CAPACITY};
use log::{Level, Log, Record};

fn python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    assert!(
        venv.exists(),
        "{} is missing: run `make deps` (it creates the test venv)",
        venv.display()
    );
    venv
}

fn log(logger: &FluentdLogger, level: Level, message: &str) {
    logger.log(
        &Record::builder()
            .level(level)
            .target("kvvm::worker")
            .args(format_args!("{message}"))
            .build(),
    );
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn records_decode_with_reference_msgpack_and_are_acked() {
    let receiver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fluentd/receiver.py");
    let mut child = Command::new(python())
        .arg(&receiver)
        .args(["--count", "3", "--drop-first", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let logger = FluentdLogger::start(
        FluentdConfig {
            host: "localhost".into(),
            port,
            tag: "akvvm_service".into(),
        },
        log::LevelFilter::Info,
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    log(&logger, Level::Info, "installed myvault.c1 version 0123");
    log(&logger, Level::Debug, "filtered out by level");
    log(&logger, Level::Warn, "second");
    log(&logger, Level::Error, "third — ünïcode");
    let got: Vec<serde_json::Value> = lines
        .take(3)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    let messages: Vec<&str> = got
        .iter()
        .map(|m| m["record"]["message"].as_str().unwrap())
        .collect();
    // The first connection was dropped before the ack: the record was sent again, in order, nothing lost.
    assert_eq!(
        messages,
        [
            "installed myvault.c1 version 0123",
            "second",
            "third — ünïcode"
        ]
    );
    for m in &got {
        assert_eq!(m["tag"], "akvvm_service");
        let secs = m["time"]["event_time"][0].as_u64().unwrap();
        assert!(secs >= before && secs < before + 60, "{m}");
        assert!(m["time"]["event_time"][1].as_u64().unwrap() < 1_000_000_000);
        assert_eq!(m["record"]["pid"], std::process::id());
        assert!(m["option"]["chunk"].as_str().unwrap().starts_with("kvvm-"));
    }
    assert_eq!(got[1]["record"]["level"], "WARN");
    let stats = logger.stats();
    assert_eq!(stats.sent.load(Ordering::Relaxed), 3);
    assert!(
        stats.connects.load(Ordering::Relaxed) >= 2,
        "reconnected after the drop"
    );
}

#[test]
fn a_down_collector_never_blocks_and_drops_are_counted() {
    // A port nobody listens on: connections are refused, the sender backs off, the queue fills.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let logger = FluentdLogger::start(
        FluentdConfig {
            host: "127.0.0.1".into(),
            port,
            tag: "t".into(),
        },
        log::LevelFilter::Info,
    );
    let total = QUEUE_CAPACITY * 3;
    for i in 0..total {
        log(&logger, Level::Info, &format!("record {i}"));
    }
    let stats = logger.stats();
    // Every call returned (we are here), and what did not fit in the bounded queue was counted.
    wait_for(|| stats.dropped.load(Ordering::Relaxed) as usize >= total - QUEUE_CAPACITY - 1);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
}
