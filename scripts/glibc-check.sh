#!/usr/bin/env bash
# Prints the highest GLIBC_x.y symbol version an ELF binary needs and fails if it is above the baseline.
#
# The packaged binary must run on every distro the extension supports (the oldest, SUSE 15 and Ubuntu 18.04,
# have glibc 2.26 / 2.27); package.sh links against glibc 2.17 and this check proves nothing newer slipped in.
#
#   scripts/glibc-check.sh <binary> [max]      max defaults to 2.17
set -euo pipefail

bin=${1:?usage: glibc-check.sh <binary> [max-glibc-version]}
max=${2:-2.17}
[ -f "$bin" ] || { echo "glibc-check: $bin: no such file" >&2; exit 2; }

# readelf first: it reads an ELF of any architecture (the host's objdump knows only the host's), so the aarch64
# build is checked on an x86_64 build machine too.
if command -v readelf >/dev/null 2>&1; then
    syms=$(readelf --wide --dyn-syms "$bin")
elif command -v objdump >/dev/null 2>&1; then
    syms=$(objdump -T "$bin")
else
    echo "glibc-check: neither objdump nor readelf found (install binutils)" >&2
    exit 2
fi

# Every versioned reference looks like GLIBC_2.17 (objdump) or @GLIBC_2.17 (readelf); take the highest.
highest=$(grep -o 'GLIBC_[0-9][0-9.]*' <<<"$syms" | sed 's/^GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -1 || true)
if [ -z "$highest" ]; then
    echo "glibc-check: $bin needs no versioned glibc symbol (static or not linked against glibc)"
    exit 0
fi
echo "glibc-check: $bin needs GLIBC_$highest (allowed: GLIBC_$max)"
if [ "$(printf '%s\n%s\n' "$highest" "$max" | sort -t. -k1,1n -k2,2n -k3,3n | tail -1)" != "$max" ]; then
    echo "glibc-check: FAIL — symbols newer than GLIBC_$max:" >&2
    grep -o '[^ ]*GLIBC_[0-9][0-9.]*.*' <<<"$syms" | awk -v max="$max" '
        { match($0, /GLIBC_[0-9][0-9.]*/); v = substr($0, RSTART + 6, RLENGTH - 6);
          split(v, a, "."); split(max, b, ".");
          if (a[1] > b[1] || (a[1] == b[1] && a[2] + 0 > b[2] + 0)) print "  " $0 }' | sort -u >&2
    exit 1
fi
