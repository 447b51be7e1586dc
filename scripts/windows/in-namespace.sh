#!/bin/bash
# Inside the VM-like namespace (scripts/windows.sh test): serves the fakes, runs the Windows tests under Wine
# against them, and stops the fakes.
set -uo pipefail
sim=$1 out=$2 exe=$3
"$sim" serve --ca-dir "$out/ca" --state "$out/vault.json" > "$out/fakes.log" 2>&1 &
fakes=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/443 && exec 4<>/dev/tcp/169.254.169.254/80) 2>/dev/null && break
    sleep 0.1
done
KVVM_WINDOWS_VAULT=https://myvault.vault.azure.net/ "$(dirname "$0")/run.sh" "$exe" --test-threads 1
code=$?
kill "$fakes" 2>/dev/null
wait "$fakes" 2>/dev/null
exit $code
