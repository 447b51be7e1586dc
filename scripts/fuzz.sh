#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/Cargo.toml) for FUZZ_SECONDS each (default 60), two at a time, starting
# from the checked-in seeds (fuzz/corpus/<target>, never written to: new inputs go to fuzz/corpus-run/).
# A crash leaves its input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ (the replay test
# in `make test` runs it from then on), fix the parser, commit both.
#
# Needs the nightly toolchain (libFuzzer instrumentation) and cargo-fuzz, which it installs if missing.
# FUZZ_SANITIZER: address (default for `make fuzz`) or none (CI: faster to build; panics are still caught).
set -euo pipefail
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
cd "$root/fuzz"
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)"; exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
targets=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^kvvm-fuzz$')
echo "fuzz: building $(echo $targets | wc -w) targets (sanitizer: $sanitizer)"
cargo +nightly fuzz build --sanitizer "$sanitizer" >/dev/null
run() {
    t=$1
    mkdir -p "corpus-run/$t" "artifacts/$t"
    if cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "corpus-run/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"artifacts/$t.log" 2>&1; then
        echo "fuzz: $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$') runs in ${seconds} s, no crash"
    else
        echo "fuzz: $t FAILED; its input is in fuzz/artifacts/$t/ — last lines of the log:"
        tail -n 30 "artifacts/$t.log"
        return 1
    fi
}
export -f run
export seconds sanitizer
failed=0
printf '%s\n' $targets | xargs -P 2 -I{} bash -c 'run {}' || failed=1
if [ "$failed" = 1 ]; then
    echo "fuzz: a target crashed (see above)"; exit 1
fi
echo "fuzz: ok"
