#!/usr/bin/env bash
# Builds every package of kvvm from one pair of binaries (x86_64 and aarch64, linked against glibc 2.17):
#   dist/<Publisher>.<Type>-<version>.zip   the extension package waagent installs: HandlerManifest.json (at the zip
#                                           root, where waagent looks first), handler, bin/kvvm (a sh script that runs
#                                           the build for `uname -m`), bin/kvvm-x86_64 and bin/kvvm-aarch64; and
#                                           dist/<Publisher>.<Type>-<version>.manifest.xml, the extension image
#                                           definition a publisher registers (manifest/manifest.xml with the names)
#   dist/kvvm_<version>-1_{amd64,arm64}.deb the standalone service (cargo-deb), lintian-clean
#   dist/kvvm-<version>-1.{x86_64,aarch64}.rpm  the same (cargo-generate-rpm)
#   dist/kvvm-vmapp-<version>.tar.gz        the Azure VM Application package: kvvm/vmapp.sh and the four packages
#   dist/<Publisher>.<WindowsType>-<version>.zip  the Windows extension package the Windows guest agent installs:
#                                           HandlerManifest.json (manifest/windows/) and kvvm.exe, built for
#                                           x86_64-pc-windows-gnu by scripts/windows.sh; and its .manifest.xml
#   dist/kvvm-vmapp-<version>.exe           the Windows VM Application package: that kvvm.exe, whose manage actions
#                                           are its own `kvvm.exe vmapp install|update|remove` (docs/deploy/vmapp-windows)
#
# Both binaries are linked against glibc 2.17 with cargo-zigbuild (zig from .venv, see install-deps.sh) so that
# one package runs on every distro the extension supports, on x86_64 and Arm64 VM sizes; glibc-check.sh then
# proves it. The profile strips them (Cargo.toml). File modes in the zip do
# not matter: waagent's unzip drops them and adds u+x to every file.
#
# Environment: KVVM_GLIBC (default 2.17) — the glibc baseline to link against and check; KVVM_PUBLISHER (default
# Microsoft.Azure.KeyVault) and KVVM_TYPE (default KeyVaultForLinux) — the extension's publisher namespace and type,
# for a publisher that registers kvvm under its own name (`make package PUBLISHER=Contoso.Security`); KVVM_WINDOWS_TYPE
# (default KeyVaultForWindows) — the Windows package's type.
set -euo pipefail

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
cd "$root"
glibc=${KVVM_GLIBC:-2.17}
publisher=${KVVM_PUBLISHER:-Microsoft.Azure.KeyVault}
type=${KVVM_TYPE:-KeyVaultForLinux}
windows_type=${KVVM_WINDOWS_TYPE:-KeyVaultForWindows}
version=$(bash scripts/version.sh) || { echo "package: no version from Cargo.toml" >&2; exit 1; }
# waagent names the extension's directory <Publisher>.<Type>-<version>; kvvm takes its state folder's name from it.
# manifest.sh checks the names before anything is built.
manifest=$(bash scripts/manifest.sh "$publisher" "$type" "$version")
windows_manifest=$(bash scripts/manifest.sh "$publisher" "$windows_type" "$version" Windows)
name=$publisher.$type
for f in HandlerManifest.json handler; do
    [ -f "$f" ] || { echo "package: $f is missing at the repository root" >&2; exit 1; }
done

[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
# cargo-zigbuild runs `zig` if it is on PATH, else `python3 -m ziglang`: the venv's python3 has ziglang.
[ -x .venv/bin/python3 ] && PATH="$root/.venv/bin:$PATH"
export PATH
for tool in cargo-zigbuild cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "package: $tool missing: run 'make deps'" >&2; exit 1; }
done
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

# The extension image definition, with this build's names and version.
printf '%s\n' "$manifest" >"dist/$name-$version.manifest.xml"
echo "package: dist/$name-$version.manifest.xml"

# ---- the standalone service: .deb and .rpm for both architectures, from the same binaries ----------------------
mkdir -p target/packaging
gzip -n -9 -c packaging/kvvm.1 >target/packaging/kvvm.1.gz
for arch in $archs; do
    cargo deb --no-build --no-strip --target "$arch-unknown-linux-gnu" --output dist/ >/dev/null
    cargo generate-rpm --target "$arch-unknown-linux-gnu" --payload-compress xz -o dist/ >/dev/null
done
debs="dist/kvvm_${version}-1_amd64.deb dist/kvvm_${version}-1_arm64.deb"
rpms="dist/kvvm-${version}-1.x86_64.rpm dist/kvvm-${version}-1.aarch64.rpm"
for f in $debs $rpms; do
    [ -f "$f" ] || { echo "package: $f was not built" >&2; exit 1; }
    echo "package: $f ($(stat -c %s "$f") bytes)"
done

# ---- the VM Application package: vmapp.sh and the four packages under kvvm/ ------------------------------------
app=$(mktemp -d "$root/target/vmapp.XXXXXX")
trap 'rm -rf "$stage" "$app"' EXIT
mkdir -p "$app/kvvm"
cp packaging/vmapp/vmapp.sh "$app/kvvm/"
chmod 0755 "$app/kvvm/vmapp.sh"
# shellcheck disable=SC2086
cp $debs $rpms "$app/kvvm/"
tarball="dist/kvvm-vmapp-$version.tar.gz"
tar -C "$app" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -czf "$tarball" kvvm
echo "package: $tarball ($(stat -c %s "$tarball") bytes)"

# ---- the Windows extension package: HandlerManifest.json and kvvm.exe at the zip's root -------------------------
# The Windows guest agent unpacks it to C:\Packages\Plugins\<Publisher>.<Type>\<version>\ and runs the manifest's
# commands (`kvvm.exe enable`, ...) from there.
windows_name=$publisher.$windows_type
exe=$(bash scripts/windows.sh build)
windows_stage=$(mktemp -d "$root/target/package-windows.XXXXXX")
trap 'rm -rf "$stage" "$app" "$windows_stage"' EXIT
cp manifest/windows/HandlerManifest.json "$windows_stage/"
cp "$exe" "$windows_stage/kvvm.exe"
windows_zip="$root/dist/$windows_name-$version.zip"
rm -f "$windows_zip"
(cd "$windows_stage" && zip -q -X -D -9 "$windows_zip" HandlerManifest.json kvvm.exe)
printf '%s\n' "$windows_manifest" >"dist/$windows_name-$version.manifest.xml"
echo "package: $windows_zip ($(stat -c %s "$windows_zip") bytes)"
# One file, nothing to unpack: Windows Server 2016 has no tar, and the manager saves it as kvvm.exe.
windows_app="dist/kvvm-vmapp-$version.exe"
cp "$exe" "$windows_app.tmp" && mv -f "$windows_app.tmp" "$windows_app"
echo "package: $windows_app ($(stat -c %s "$windows_app") bytes)"
