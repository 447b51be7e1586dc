#!/usr/bin/env bash
# Installs what building, packaging and testing kvvm needs, and nothing that is already there.
#
# Run by `make deps` (so by `make test`, `make package` and CI) on a fresh Debian machine as root, and by
# developers. Every step checks before it installs, so a machine that has everything returns in about a second
# and never touches the network. As a non-root user it installs nothing system-wide: it prints what is missing
# and exits non-zero.
#
#   apt:    acl libacl1-dev (exacl links -lacl), openssl, unzip, zip, binutils (readelf for the glibc check),
#           lintian, rpm and file (the .deb is linted, the .rpm listed and installed into a scratch root, and
#           the architecture of the binaries checked in the tests),
#           strace (the store test kills an install at each system call),
#           nginx-light or nginx (used by later tests), python3-venv when the system python lacks it,
#           waagent (WALinuxAgent, Debian's package: tests/real_agent.rs runs its extension handler in a network
#           namespace; the packaged service is never started and is left disabled)
#           default-jre-headless when there is no keytool (the PFX of additionalFormats is checked with it)
#           for the aarch64 build (dpkg architecture arm64 added): rustc-web, libstd-rust-web-dev:arm64,
#           libacl1-dev:arm64, and qemu-user-static (runs the aarch64 binary in tests/arm64.rs),
#           for the Windows build (scripts/windows.sh): rust-web-src, gcc-mingw-w64-x86-64, wine and wine64,
#   rustup: rustfmt, clippy
#   cargo:  cargo-nextest, cargo-zigbuild, cargo-deb, cargo-generate-rpm (all `cargo install --locked`)
#   .venv:  ziglang (the zig toolchain cargo-zigbuild uses to link against glibc 2.17), and the python
#           packages of tests/requirements.txt (which includes bench/peer/requirements.txt)
set -euo pipefail

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
venv="$root/.venv"
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
export PATH

say() { printf 'deps: %s\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ]; }
# A name without an architecture means the native one (with arm64 added, plain `libacl1-dev` matches both).
native_arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
have_deb() {
    local pkg=$1
    case "$pkg" in *:*) ;; *) pkg="$pkg:$native_arch" ;; esac
    # Arch: all packages are not found under a qualified name; try the plain one too.
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] ||
        [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# ---- apt ---------------------------------------------------------------------------------------------------
missing_deb=()
for pkg in acl libacl1-dev openssl unzip zip binutils strace lintian rpm file; do
    have_deb "$pkg" || missing_deb+=("$pkg")
done
# keytool checks the PFX kvvm writes; any JDK/JRE that provides it will do.
command -v keytool >/dev/null 2>&1 || missing_deb+=(default-jre-headless)
# The aarch64 build (see package.sh): rustup cannot fetch another target's standard library on these machines,
# Debian's rustc-web (1.96, /usr/bin/rustc) with libstd-rust-web-dev:arm64 provides one; libacl1-dev:arm64 for
# -lacl; qemu-user-static runs the aarch64 binary in the tests. arm64 must be a dpkg architecture first.
need_arm64_arch=false
dpkg --print-foreign-architectures | grep -qx arm64 || need_arm64_arch=true
for pkg in rustc-web libstd-rust-web-dev:arm64 libacl1-dev:arm64 qemu-user-static; do
    have_deb "$pkg" || missing_deb+=("$pkg")
done
# The Windows build and its tests (scripts/windows.sh): Debian's std sources for -Zbuild-std, mingw-w64 to link,
# wine (8.0; /usr/lib/wine/wine64) to run the .exe. About 1.6 GB; Wine's prefix is made by windows.sh.
for pkg in rust-web-src gcc-mingw-w64-x86-64 wine wine64; do
    have_deb "$pkg" || missing_deb+=("$pkg")
done
need_nginx=false
if ! have_deb nginx-light && ! have_deb nginx && ! have_deb nginx-core && ! command -v nginx >/dev/null 2>&1; then
    need_nginx=true
fi
# Debian's python3 cannot create a venv (no ensurepip) without python3-venv; a pyenv/other python can.
need_pyvenv=false
if ! command -v python3 >/dev/null 2>&1; then
    missing_deb+=(python3 python3-venv)
elif [ ! -x "$venv/bin/python" ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_pyvenv=true
fi

if [ ${#missing_deb[@]} -gt 0 ] || $need_nginx || $need_pyvenv; then
    if ! is_root; then
        list="${missing_deb[*]}"
        $need_nginx && list="$list nginx-light"
        $need_pyvenv && list="$list python3-venv"
        say "missing Debian packages:${list:+ }${list# }"
        say "install them as root:  apt-get update && apt-get install -y --no-install-recommends${list:+ }${list# }"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if $need_arm64_arch; then
        say "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
    fi
    say "apt-get update"
    apt-get update -qq
    if $need_nginx; then
        # bookworm ships nginx-light; newer releases dropped it in favour of plain nginx.
        if [ -n "$(apt-cache policy nginx-light 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)')" ]; then
            missing_deb+=(nginx-light)
        else
            missing_deb+=(nginx)
        fi
    fi
    if $need_pyvenv; then
        pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        missing_deb+=(python3-venv "python$pyver-venv")
    fi
    say "apt-get install ${missing_deb[*]}"
    apt-get install -y -qq --no-install-recommends "${missing_deb[@]}" >/dev/null
    # nginx's package starts a server on port 80; tests start their own, so stop the packaged one if it runs.
    if $need_nginx && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
        systemctl stop nginx || true
    fi
fi

# ---- the real guest agent ----------------------------------------------------------------------------------
# Debian's waagent package starts walinuxagent.service from its postinst (invoke-rc.d / deb-systemd-invoke) and
# enables it for the next boot. On a build machine that agent would try to provision the host and talk to a
# wire server that is not there, so: a policy-rc.d that forbids starting services while it installs (only if the
# machine has none of its own), then disable the unit. It also conflicts with network-manager: --no-remove makes
# apt fail rather than remove anything.
if ! have_deb waagent; then
    if ! is_root; then
        say "missing Debian package: waagent"
        say "install it as root:  apt-get update && apt-get install -y --no-install-recommends --no-remove waagent"
        say "  (then: systemctl disable --now walinuxagent.service, so no agent runs outside the tests' namespace)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    own_policy=false
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# installed by kvvm scripts/install-deps.sh while waagent installs\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=true
    fi
    say "apt-get install waagent (its service stays stopped and disabled)"
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -1)" ] || apt-get update -qq
    rc=0
    apt-get install -y -qq --no-install-recommends --no-remove waagent >/dev/null || rc=$?
    if [ "$rc" != 0 ]; then
        apt-get update -qq && { apt-get install -y -qq --no-install-recommends --no-remove waagent >/dev/null; rc=$?; }
    fi
    $own_policy && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { say "apt-get install waagent failed (rc=$rc)"; exit 1; }
fi
# Whether just installed or already there: the agent must never run as a service on this machine.
if is_root; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-enabled --quiet walinuxagent.service 2>/dev/null || systemctl is-active --quiet walinuxagent.service 2>/dev/null; then
            say "systemctl disable --now walinuxagent.service"
            systemctl disable --now walinuxagent.service >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/walinuxagent ] && command -v update-rc.d >/dev/null 2>&1 && ls /etc/rc2.d/S*walinuxagent >/dev/null 2>&1; then
        say "update-rc.d walinuxagent disable"
        update-rc.d walinuxagent disable >/dev/null 2>&1 || true
    fi
fi

# ---- rust components ---------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install a Rust toolchain (rustup) first"
    exit 1
fi
missing_comp=()
cargo fmt --version >/dev/null 2>&1 || missing_comp+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing_comp+=(clippy)
if [ ${#missing_comp[@]} -gt 0 ]; then
    say "rustup component add ${missing_comp[*]}"
    rustup component add "${missing_comp[@]}"
fi

# ---- cargo tools -------------------------------------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
    say "cargo install cargo-nextest (a few minutes)"
    cargo install cargo-nextest --locked
fi
for tool in cargo-zigbuild cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "cargo install $tool"
        cargo install "$tool" --locked
    fi
done

# ---- python venv: zig and the SDK test requirements ----------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    say "python3 -m venv .venv"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -m ziglang version >/dev/null 2>&1; then
    say "pip install ziglang (into .venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check ziglang
fi
# tests/requirements.txt lists every Python package the tests use (it may include other files with -r).
req="$root/tests/requirements.txt"
if [ -f "$req" ]; then
    # A stamp holding the requirements' hash keeps the no-op path off the network.
    stamp="$venv/.requirements.sha256"
    want=$(for f in "$req" "$root"/tests/*/requirements.txt "$root"/bench/peer/requirements.txt; do if [ -f "$f" ]; then cat "$f"; fi; done | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "pip install -r tests/requirements.txt (into .venv)"
        (cd "$root/tests" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt)
        printf '%s\n' "$want" >"$stamp"
    fi
fi

say "ok"
