#!/usr/bin/env bash
# make demo: run the freshly built package under the waagent simulator (and, as root, the local fake vault
# and identity endpoint) and print what happens.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(bash "$root/scripts/version.sh")
zip="$root/dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-$version.zip"
cd "$root"
cargo build --quiet -p kvvm-sim --bin kvvm-demo
exec "$root/target/debug/kvvm-demo" "$zip"
