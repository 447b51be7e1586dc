//! Every seed of the fuzz corpus and every input the fuzzer once crashed on (`fuzz/regressions/`) goes through
//! the same harness the `cargo fuzz` targets use (`fuzz/harness.rs`), on the stable toolchain, in every
//! `make test`: a crash found stays fixed.

use std::fs;
use std::path::Path;

#[path = "../fuzz/harness.rs"]
mod harness;

fn inputs(dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.path().display().to_string(), fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_regression_input_is_handled_without_a_panic() {
    for (target, harness) in harness::TARGETS {
        let seeds = inputs("fuzz/corpus", target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seed");
        for (path, bytes) in seeds.iter().chain(&inputs("fuzz/regressions", target)) {
            let outcome = std::panic::catch_unwind(|| harness(bytes));
            assert!(outcome.is_ok(), "{target} panicked on {path}");
        }
    }
}

#[test]
fn every_fuzz_target_has_a_harness_and_a_seed_folder() {
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml")).unwrap();
    let declared: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"'))
        .filter(|n| *n != "kvvm-fuzz")
        .collect();
    let harnessed: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(declared, harnessed);
}

/// Found by reading the token parser while writing its fuzz target: an expiry beyond the clock's range
/// (`expires_on` of u64::MAX) overflowed `SystemTime` and panicked; it is refused now.
#[test]
fn a_token_expiry_out_of_the_clocks_range_is_refused() {
    for body in [
        r#"{"access_token":"x","expires_on":"18446744073709551615"}"#,
        r#"{"access_token":"x","expires_in":18446744073709551615}"#,
    ] {
        let err =
            kvvm::parse::parse_token(body.as_bytes(), "http://169.254.169.254/metadata/identity")
                .unwrap_err();
        assert!(
            err.to_string().contains("its expiry time is out of range"),
            "{err}"
        );
    }
}
