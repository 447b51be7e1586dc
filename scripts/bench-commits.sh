#!/bin/bash
# Which change bought what: measures kvvm alone at each commit of a series, the same way `make bench` measures
# it from outside (bench §1's initial sync, §4's CPU and memory per cycle), and writes bench/COMMITS.md, which
# `make bench` then puts in bench/RESULTS.md.
#
#   scripts/bench-commits.sh BASE END [NOTE]     e.g. scripts/bench-commits.sh 3b3b1e4 2e96820 "issue 22"
#
# Each commit's kvvm is built as `make package` builds it (x86_64, glibc 2.17) into its own worktree and put into
# the current package in place of bin/kvvm-x86_64, so every commit runs under today's bench, fakes and handler.
# Needs `make package` first (the zip and the link folder). Two runs per commit; it takes about 3 minutes each.
set -euo pipefail
base=${1:?usage: bench-commits.sh BASE END [NOTE]}
end=${2:?usage: bench-commits.sh BASE END [NOTE]}
note=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.venv/bin:$HOME/.cargo/bin:$PATH"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
zip="$root/dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-$version.zip"
[ -f "$zip" ] || { echo "bench-commits: $zip is missing: run make package first" >&2; exit 1; }
work=$(mktemp -d /tmp/kvvm-bench-commits.XXXXXX)
trap 'git worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cargo build --release --quiet -p kvvm-bench
cp target/release/kvvm-bench "$work/bench"

runs=2
rows=()
for commit in $base $(git rev-list --reverse "$base..$end"); do
    short=$(git rev-parse --short "$commit")
    subject=$(git log -1 --format=%s "$commit")
    git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    git worktree add -f --detach "$work/tree" "$commit" >/dev/null
    echo "bench-commits: $short $subject"
    (cd "$work/tree" && CARGO_TARGET_DIR="$work/target" \
        CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-L native=$root/target/zig-link/x86_64 -C link-arg=-Wl,--allow-shlib-undefined" \
        cargo zigbuild --release --locked --target x86_64-unknown-linux-gnu.2.17 --bin kvvm >/dev/null 2>&1) || {
        rows+=("| \`$short\` | $subject | build failed | | | | |"); continue; }
    rm -rf "$work/zip" && mkdir -p "$work/zip/z"
    (cd "$work/zip/z" && unzip -q "$zip" && cp "$work/target/x86_64-unknown-linux-gnu/release/kvvm" bin/kvvm-x86_64 \
        && zip -q -X -D -r "../$(basename "$zip")" .)
    initial=() cpu=() rss=() anon=() hwm=()
    for _ in $(seq $runs); do
        out=$(KVVM_BENCH_NO_PEER=1 KVVM_BENCH_ONLY=initial,outside "$work/bench" "$work/zip/$(basename "$zip")" "$root" 2>&1 \
            | grep -E '^  kvvm:' || true)
        initial+=("$(sed -n 's/^  kvvm: \([0-9.]*\) s (min.*/\1/p' <<<"$out")")
        cpu+=("$(sed -n 's/^  kvvm: \([0-9]*\) ms per cycle.*/\1/p' <<<"$out")")
        rss+=("$(sed -n 's/.*VmRSS \([0-9.]*\) MiB.*/\1/p' <<<"$out")")
        anon+=("$(sed -n 's/.*RssAnon \([0-9.]*\) MiB.*/\1/p' <<<"$out")")
        hwm+=("$(sed -n 's/.*VmHWM \([0-9.]*\) MiB.*/\1/p' <<<"$out")")
    done
    join() { local IFS=/; echo "$*"; }
    rows+=("| \`$short\` | $subject | $(join "${initial[@]}") s | $(join "${cpu[@]}") ms | $(join "${rss[@]}") | $(join "${anon[@]}") | $(join "${hwm[@]}") |")
done

{
    echo "Measured by \`scripts/bench-commits.sh $base $end\`${note:+ ($note)} on $(date -u +%Y-%m-%d): kvvm alone, each commit's"
    echo "binary in today's package, $runs runs each (shown as run 1 / run 2): the initial sync of §1 and §4's figures from"
    echo "outside (200 certificates, 4 vaults, +20 ms per vault request, 5 s interval; both processes; memory in MiB)."
    echo "The first row is the tree before the series."
    echo
    echo "| commit | change | initial sync | CPU per cycle | VmRSS idle | RssAnon | VmHWM |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} > bench/COMMITS.md
echo "bench-commits: wrote bench/COMMITS.md"
