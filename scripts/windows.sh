#!/bin/bash
# The Windows build (x86_64-pc-windows-gnu) and its tests under Wine, on a Linux machine.
#
#   scripts/windows.sh test      build the library's tests for Windows and run them under Wine (in a copy of
#                                the prefix, target/windows/wine-test)
#   scripts/windows.sh prefix    (re)create the Wine prefix the tests run in (target/windows/wine)
#   scripts/windows.sh check     type-check the library, the binary and their tests for Windows (no Wine)
#   scripts/windows.sh build     build kvvm.exe (release) and print its path
#
# rustup cannot fetch another target's standard library here, so the build uses Debian's rustc-web with its
# source (rust-web-src) and builds std for the target (-Zbuild-std, RUSTC_BOOTSTRAP=1 for this target only),
# linked by mingw-w64; `make deps` installs all of it and wine. Wine 8.0 lacks bcryptprimitives.dll, whose
# ProcessPrng std calls for random numbers: scripts/windows/processprng.c is built into the prefix's system32.
# Everything goes to target/windows (its own target folder: another rustc than the Linux build's).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/windows"
wine=/usr/lib/wine/wine64
export WINEPREFIX="$out/wine" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
unset DISPLAY

need() {
    for f in /usr/bin/rustc /usr/lib/rustlib/src/rust/library /usr/bin/x86_64-w64-mingw32-gcc "$wine"; do
        [ -e "$f" ] || { echo "windows: $f is missing: run make deps" >&2; exit 1; }
    done
}

prefix() {
    rm -rf "$WINEPREFIX"
    mkdir -p "$out"
    "$wine" wineboot -i >/dev/null 2>&1
    x86_64-w64-mingw32-gcc -shared -O2 -Wall -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
        "$root/scripts/windows/processprng.c" -ladvapi32
    /usr/lib/wine/wineserver -w
}

cargo_windows() {
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$out/target" \
        CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
        CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$root/scripts/windows/run.sh" \
        cargo "$1" -Zbuild-std=std,panic_abort --target x86_64-pc-windows-gnu "${@:2}"
}

case "${1:-}" in
    prefix) need; prefix ;;
    check)
        # Warnings fail the check, as clippy's -D warnings does on Linux (clippy cannot run on this toolchain).
        need
        log=$(mktemp)
        status=0
        { cargo_windows check -p kvvm --lib --bins "${@:2}" \
            && cargo_windows check -p kvvm --lib --bins --profile test "${@:2}"; } 2>&1 | tee "$log" || status=1
        if grep -q '^warning' "$log"; then echo "windows: the Windows build has warnings" >&2; status=1; fi
        rm -f "$log"
        exit "$status" ;;
    build)
        need
        cargo_windows build --release --locked -p kvvm --bin kvvm >&2
        echo "$out/target/x86_64-pc-windows-gnu/release/kvvm.exe" ;;
    test)
        need
        # The tests run in a copy of the prefix: what they put in it (certificates, a stand-in powershell.exe)
        # stays out of the one the end-to-end tests copy (tests/sim/src/windows.rs), maybe at the same time;
        # both make and copy it under the same lock.
        mkdir -p "$out"
        exec 9>"$out/wine.lock"
        flock 9
        [ -f "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ] || prefix
        rm -rf "$out/wine-test"
        cp -a "$WINEPREFIX" "$out/wine-test"
        flock -u 9
        exec 9>&-
        export WINEPREFIX="$out/wine-test"
        fixtures="$out/fixtures"
        bash "$root/scripts/windows/fixtures.sh" "$fixtures"
        export KVVM_WINDOWS_FIXTURES="Z:${fixtures//\//\\}"
        # A minimal Windows service of the tests' own, for the service management tests.
        x86_64-w64-mingw32-gcc -O2 -Wall -o "$fixtures/test-service.exe" "$root/scripts/windows/test-service.c" -ladvapi32
        export KVVM_WINDOWS_TEST_SERVICE="$KVVM_WINDOWS_FIXTURES\\test-service.exe"
        # A stand-in for powershell.exe, which Wine lacks (the replace notification's test puts it in place).
        x86_64-w64-mingw32-gcc -O2 -Wall -municode -o "$fixtures/fake-powershell.exe" \
            "$root/scripts/windows/fake-powershell.c"
        export KVVM_WINDOWS_FAKE_POWERSHELL="$KVVM_WINDOWS_FIXTURES\\fake-powershell.exe"
        exe=$(cargo_windows test --lib -p kvvm --no-run --message-format=json \
            | sed -n 's/.*"executable":"\([^"]*\.exe\)".*/\1/p' | tail -1)
        [ -n "$exe" ] || { echo "windows: no test executable was built" >&2; exit 1; }
        if [ "$(id -u)" != 0 ]; then
            echo "windows: not root, so no VM-like namespace: the vault test skips (it says so)"
            "$root/scripts/windows/run.sh" "$exe" --test-threads 1
            exit
        fi
        # The VM-like namespace of the Linux tests: the fake IMDS at 169.254.169.254, the fake vault at
        # https://myvault.vault.azure.net with a test CA in the system bundle (which Wine's crypt32 reads into
        # its Root store), a certificate in the vault.
        cargo build --quiet -p kvvm-sim --bin kvvm-sim
        sim="$root/target/debug/kvvm-sim"
        rm -rf "$out/ca" "$out/vault.json"
        "$sim" init-ca --ca-dir "$out/ca" >/dev/null
        "$sim" put --state "$out/vault.json" --vault myvault --name web --pem-file "$fixtures/a.pem" >/dev/null
        unshare --net --mount --fork bash "$root/scripts/netns-setup.sh" --ca-bundle "$out/ca/bundle.pem" -- \
            bash "$root/scripts/windows/in-namespace.sh" "$sim" "$out" "$exe"
        ;;
    *) echo "usage: scripts/windows.sh test | prefix | check | build" >&2; exit 2 ;;
esac
