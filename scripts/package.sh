#!/usr/bin/env bash
# Builds the extension package waagent installs: dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-<version>.zip
# holding HandlerManifest.json (at the zip root, where waagent looks first), handler, bin/kvvm (a sh script that
# runs the build for `uname -m`), bin/kvvm-x86_64 and bin/kvvm-aarch64.
#
# Both binaries are linked against glibc 2.17 with cargo-zigbuild (zig from .venv, see install-deps.sh) so that
# one package runs on every distro the extension supports, on x86_64 and Arm64 VM sizes; glibc-check.sh then
# proves it. The profile strips them (Cargo.toml). File modes in the zip do
# not matter: waagent's unzip drops them and adds u+x to every file.
#
# Environment: KVVM_GLIBC (default 2.17) — the glibc baseline to link against and check.
set -euo pipefail

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
cd "$root"
glibc=${KVVM_GLIBC:-2.17}
name=Microsoft.Azure.KeyVault.KeyVaultForLinux
version=$(bash scripts/version.sh) || { echo "package: no version from Cargo.toml" >&2; exit 1; }
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

# -lacl (exacl / posix-acl) must come from the build machine's libacl1-dev (libacl1-dev:arm64 for aarch64), but
# zig's linker searches only its own glibc stubs. Expose just libacl in a private directory per target (adding
# all of /usr/lib/<triple> would let the system's libc.so shadow zig's 2.17 stubs), and let lld accept that the
# system libacl.so itself refers to the build machine's newer glibc (stat@GLIBC_2.33): on the target, its own
# libacl.so.1 resolves against its own glibc. Our binary's references are still only what glibc-check.sh allows.
#
# aarch64: rustup cannot fetch another target's standard library here, so that build uses Debian's rustc-web
# (/usr/bin/rustc, with libstd-rust-web-dev:arm64; see install-deps.sh); zig links it and compiles ring's C
# and assembly for aarch64.
#
#   build <rust arch> <debian multiarch dir>   → target/<arch>-unknown-linux-gnu/release/kvvm
build() {
    local arch=$1 multiarch=$2 triple="$1-unknown-linux-gnu"
    local linkdir="$root/target/zig-link/$arch" var
    mkdir -p "$linkdir"
    local lib=libacl.so dir found=""
    for dir in "/usr/lib/$multiarch" "/lib/$multiarch"; do
        if [ -e "$dir/$lib" ]; then ln -sfn "$dir/$lib" "$linkdir/$lib"; found=1; break; fi
    done
    if [ -z "$found" ] && [ "$arch" = x86_64 ]; then
        for dir in /usr/lib64 /usr/lib; do
            if [ -e "$dir/$lib" ]; then ln -sfn "$dir/$lib" "$linkdir/$lib"; found=1; break; fi
        done
    fi
    [ -n "$found" ] || { echo "package: $lib for $arch is missing (libacl1-dev:${multiarch%%-*}): run 'make deps'" >&2; return 1; }
    local extra="-L native=$linkdir -C link-arg=-Wl,--allow-shlib-undefined"
    var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
    local rustc_env=()
    if [ "$arch" != "$(uname -m)" ]; then
        [ -d "/usr/lib/rustlib/$triple/lib" ] ||
            { echo "package: no $triple standard library (libstd-rust-web-dev:arm64): run 'make deps'" >&2; return 1; }
        rustc_env=(RUSTC=/usr/bin/rustc)
    fi
    local start
    start=$(date +%s)
    echo "package: cargo zigbuild --release --target $triple.$glibc${rustc_env:+ (${rustc_env[*]})}"
    # RUSTFLAGS, when set, wins over the per-target variable in cargo: extend whichever cargo will read.
    if [ -n "${RUSTFLAGS:-}" ]; then
        env "${rustc_env[@]}" RUSTFLAGS="$RUSTFLAGS $extra" \
            cargo zigbuild --release --locked --target "$triple.$glibc" --bin kvvm
    else
        env "${rustc_env[@]}" "$var=${!var:-} $extra" \
            cargo zigbuild --release --locked --target "$triple.$glibc" --bin kvvm
    fi
    echo "package: $arch build took $(( $(date +%s) - start )) s"
}

# Both builds, then both checks: the package is never made with one architecture missing.
archs="x86_64 aarch64"
build x86_64 x86_64-linux-gnu
build aarch64 aarch64-linux-gnu

stage=$(mktemp -d "$root/target/package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp HandlerManifest.json handler "$stage/"
cp scripts/bin-kvvm.sh "$stage/bin/kvvm"
files="HandlerManifest.json handler bin/kvvm"
for arch in $archs; do
    cp "target/$arch-unknown-linux-gnu/release/kvvm" "$stage/bin/kvvm-$arch"
    chmod 0755 "$stage/bin/kvvm-$arch"
    files="$files bin/kvvm-$arch"
done
chmod 0755 "$stage/handler" "$stage/bin/kvvm"
chmod 0644 "$stage/HandlerManifest.json"

mkdir -p dist
zipfile="$root/dist/$name-$version.zip"
rm -f "$zipfile"
# -X: no extra attributes; -D: no directory entries (waagent creates parents as it extracts).
# shellcheck disable=SC2086
(cd "$stage" && zip -q -X -D -9 "$zipfile" $files)
echo "package: $zipfile ($(stat -c %s "$zipfile") bytes)"

for arch in $archs; do
    bash "$root/scripts/glibc-check.sh" "target/$arch-unknown-linux-gnu/release/kvvm" "$glibc"
done
