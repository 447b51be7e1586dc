#!/bin/bash
# kvvm as an Azure VM Application (Azure Compute Gallery): the install, update and remove actions.
#
# The VM Application manager (Microsoft.CPlat.Core.VMApplicationManagerLinux) downloads the application's
# package to /var/lib/waagent/Microsoft.CPlat.Core.VMApplicationManagerLinux/<app>/<version>/, renamed to the
# version's packageFileName (kvvm.tar.gz), and the configuration to configFileName (kvvm-settings.json), then runs
# the manage action with /bin/bash -c from that folder, and judges its exit code:
#
#   install: tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json
#   update:  tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json
#   remove:  tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove
#
# install/update put the kvvm package for this machine in place (the .deb or .rpm beside this script; its own
# scripts enable and start kvvm.service under systemd, outside the manager's CPU-limited slice), make the
# configuration — the extension's public settings JSON — the service's /etc/kvvm/settings.json once
# `kvvm check-settings` accepts it, reload the service, and wait until it is ready: with requireInitialSync, until
# every certificate is installed, so a failing initial sync fails the deployment (treatFailureAsDeploymentFailure).
# remove purges the package: the service stops, its state and logs go; installed certificates stay.
#
# Exit codes: 0 done; 1 failed (the reason on stderr, which the manager keeps beside this script).
# KVVM_WAIT_TIMEOUT (seconds, default 900) bounds the wait for the initial sync.
set -euo pipefail

# The VM Application manager is an extension itself: its AZURE_GUEST_AGENT_EXTENSION_PATH would make `kvvm wait`
# look for an extension there instead of the service.
unset AZURE_GUEST_AGENT_EXTENSION_PATH
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)
settings=/etc/kvvm/settings.json
timeout=${KVVM_WAIT_TIMEOUT:-900}

say() { printf 'kvvm vmapp: %s\n' "$*"; }
fail() {
    printf 'kvvm vmapp: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "must run as root (the VM Application manager runs it so)"

# The package for this machine: its architecture and its package manager.
package_file() {
    local machine deb_arch rpm_arch
    machine=$(uname -m)
    case "$machine" in
        x86_64 | amd64) deb_arch=amd64 rpm_arch=x86_64 ;;
        aarch64 | arm64) deb_arch=arm64 rpm_arch=aarch64 ;;
        *) fail "no kvvm build for this machine's architecture '$machine': x86_64 and aarch64 (arm64) only" ;;
    esac
    if command -v dpkg >/dev/null 2>&1; then
        set -- "$here"/kvvm_*_"$deb_arch".deb
    elif command -v rpm >/dev/null 2>&1; then
        set -- "$here"/kvvm-*."$rpm_arch".rpm
    else
        fail "neither dpkg nor rpm is on this machine: kvvm ships .deb and .rpm packages only"
    fi
    [ -f "$1" ] || fail "this application version has no package for $machine ($1 is missing): rebuild it with make package"
    printf '%s\n' "$1"
}

install_package() {
    local pkg
    pkg=$(package_file)
    say "installing $(basename "$pkg")"
    case "$pkg" in
        # --force-confold: /etc/kvvm/settings.json is the configuration's, never replaced by the package's.
        *.deb) DEBIAN_FRONTEND=noninteractive dpkg --force-confold -i "$pkg" ;;
        *.rpm) rpm -U --replacepkgs "$pkg" ;;
    esac
    command -v systemctl >/dev/null 2>&1 || fail "systemctl is missing: kvvm runs as a systemd service"
}

# Validates the configuration with the installed kvvm, then makes it the service's settings (atomically, 0600)
# and has the service take it up.
apply_settings() {
    local config=$1
    [ -n "$config" ] || fail "no configuration file given (the version's configFileName, e.g. kvvm-settings.json)"
    [ -f "$config" ] || fail "the configuration file $config is missing: set the application's default configuration, or the VM's configurationReference"
    if ! out=$(kvvm check-settings "$config" 2>&1); then
        fail "the configuration is not valid kvvm settings, nothing changed: $out"
    fi
    say "$out"
    install -d -m 0755 /etc/kvvm
    install -m 0600 "$config" "$settings.vmapp-new"
    mv -f "$settings.vmapp-new" "$settings"
    if systemctl is-active --quiet kvvm.service; then
        systemctl reload kvvm.service
    else
        systemctl enable --now kvvm.service
    fi
}

wait_ready() {
    say "waiting for the service (at most $timeout s)"
    if ! out=$(kvvm wait --timeout "$timeout" 2>&1); then
        fail "$out"
    fi
    say "$out"
}

case "${1:-}" in
    install | update)
        install_package
        apply_settings "${2:-}"
        wait_ready
        ;;
    remove)
        if command -v dpkg >/dev/null 2>&1 && dpkg-query -W kvvm >/dev/null 2>&1; then
            say "removing the kvvm package (installed certificates stay)"
            dpkg --purge kvvm
        elif command -v rpm >/dev/null 2>&1 && rpm -q kvvm >/dev/null 2>&1; then
            say "removing the kvvm package (installed certificates stay)"
            rpm -e kvvm
        else
            say "kvvm is not installed: nothing to remove"
        fi
        ;;
    *)
        fail "usage: vmapp.sh install CONFIG | update CONFIG | remove"
        ;;
esac
