#!/usr/bin/env bash
# Builds the extension package waagent installs: dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-<version>.zip
# holding HandlerManifest.json (at the zip root, where waagent looks first), handler, and bin/kvvm.
#
# The binary is linked against glibc 2.17 with cargo-zigbuild (zig from .venv, see install-deps.sh) so that one
# package runs on every distro the extension supports; glibc-check.sh then proves it. File modes in the zip do
# not matter: waagent's unzip drops them and adds u+x to every file.
#
# Environment: KVVM_GLIBC (default 2.17) — the glibc baseline to link against and check.
set -euo pipefail

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
cd "$root"
glibc=${KVVM_GLIBC:-2.17}
triple=x86_64-unknown-linux-gnu
name=Microsoft.Azure.KeyVault.KeyVaultForLinux
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "package: no version in Cargo.toml" >&2; exit 1; }
for f in HandlerManifest.json handler; do
    [ -f "$f" ] || { echo "package: $f is missing at the repository root" >&2; exit 1; }
done

[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
# cargo-zigbuild runs `zig` if it is on PATH, else `python3 -m ziglang`: the venv's python3 has ziglang.
[ -x .venv/bin/python3 ] && PATH="$root/.venv/bin:$PATH"
export PATH
command -v cargo-zigbuild >/dev/null 2>&1 || { echo "package: cargo-zigbuild missing: run 'make deps'" >&2; exit 1; }
python3 -m ziglang version >/dev/null 2>&1 || command -v zig >/dev/null 2>&1 ||
    { echo "package: zig missing (pip package ziglang in .venv): run 'make deps'" >&2; exit 1; }

# -lacl (exacl / posix-acl) must come from the build machine's libacl1-dev, but zig's linker searches only its
# own glibc stubs. Expose just libacl in a private directory (adding all of /usr/lib/<triple> would let the
# system's libc.so shadow zig's 2.17 stubs), and let lld accept that the system libacl.so itself refers to
# the build machine's newer glibc (stat@GLIBC_2.33): on the target, its own libacl.so.1 resolves against its own
# glibc. Our binary's references are still only what glibc-check.sh below allows.
linkdir="$root/target/zig-link"
mkdir -p "$linkdir"
for lib in libacl.so; do
    for dir in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /lib/x86_64-linux-gnu; do
        if [ -e "$dir/$lib" ]; then ln -sfn "$dir/$lib" "$linkdir/$lib"; break; fi
    done
done
extra="-L native=$linkdir -C link-arg=-Wl,--allow-shlib-undefined"
# RUSTFLAGS, when set, wins over the per-target variable in cargo: extend whichever cargo will read.
if [ -n "${RUSTFLAGS:-}" ]; then
    export RUSTFLAGS="$RUSTFLAGS $extra"
else
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS:-} $extra"
fi

start=$(date +%s)
echo "package: cargo zigbuild --release --target $triple.$glibc"
cargo zigbuild --release --locked --target "$triple.$glibc" --bin kvvm
bin="target/$triple/release/kvvm"
echo "package: build took $(( $(date +%s) - start )) s"

stage=$(mktemp -d "$root/target/package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp HandlerManifest.json handler "$stage/"
cp "$bin" "$stage/bin/kvvm"
strip "$stage/bin/kvvm" 2>/dev/null || true
chmod 0755 "$stage/handler" "$stage/bin/kvvm"
chmod 0644 "$stage/HandlerManifest.json"

mkdir -p dist
zipfile="$root/dist/$name-$version.zip"
rm -f "$zipfile"
# -X: no extra attributes; -D: no directory entries (waagent creates parents as it extracts).
(cd "$stage" && zip -q -X -D -9 "$zipfile" HandlerManifest.json handler bin/kvvm)
echo "package: $zipfile ($(stat -c %s "$zipfile") bytes)"

bash "$root/scripts/glibc-check.sh" "$bin" "$glibc"
