#!/bin/sh
# Packaged as bin/kvvm: runs the kvvm binary built for this machine's architecture, bin/kvvm-<arch> beside this
# script. `handler` execs it for every verb, and operators run it by hand (`bin/kvvm status`, `bin/kvvm sync
# --once`). The package holds x86_64 and aarch64 (arm64) builds, each linked against glibc 2.17.
#
# Exit code 3, with a message on stderr, when the package has no build for the machine (waagent reports the
# non-zero exit and the message; nothing else runs, so no status file is written).
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P) || { echo "kvvm: cannot find its directory" >&2; exit 1; }
machine=$(uname -m 2>/dev/null)
case "$machine" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *)
        echo "kvvm: no build for this machine's architecture '${machine:-unknown}' (uname -m): this package has" \
            "x86_64 and aarch64 (arm64) builds only; use an x86_64 or Arm64 VM size" >&2
        exit 3
        ;;
esac
if [ ! -f "$here/kvvm-$arch" ]; then
    echo "kvvm: $here/kvvm-$arch is missing: this package is incomplete; reinstall the extension" >&2
    exit 3
fi
exec "$here/kvvm-$arch" "$@"
