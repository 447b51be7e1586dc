#!/usr/bin/env bash
# Prepares a fresh network + mount namespace so kvvm runs exactly as on an Azure VM, then runs a command in it.
# Run it under `unshare --net --mount --fork` (it refuses to touch the host's mounts otherwise):
#
#   unshare --net --mount --fork scripts/netns-setup.sh [--hosts FILE] [--ca-bundle FILE] [--host NAME]... \
#       -- COMMAND [ARGS...]
#
#   --hosts FILE      hosts file to bind-mount over /etc/hosts (default: one mapping the vault names below to
#                     127.0.0.1: myvault.vault.azure.net, othervault.vault.azure.net, myvault.vault.azure.cn,
#                     vault.evil.example, plus every --host NAME)
#   --ca-bundle FILE  CA bundle (system bundle + test CA) to bind-mount over /etc/ssl/certs/ca-certificates.crt
#   --host NAME       extra name for the default hosts file
#
# Inside: loopback up, 169.254.169.254/32 on lo (IMDS), tmpfs over /var/lib/waagent, /var/log/azure and
# /var/opt/azcmagent (mount points are created on the host if missing, empty).
set -euo pipefail

hosts_file=""
ca_bundle=""
extra_hosts=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --hosts) hosts_file="$2"; shift 2 ;;
        --ca-bundle) ca_bundle="$2"; shift 2 ;;
        --host) extra_hosts+=("$2"); shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "netns-setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "netns-setup.sh: no command given after --" >&2; exit 2; }

# Refuse to run in the host's namespaces: the mounts below would hide the real /etc/hosts and CA bundle.
if [[ "$(readlink /proc/self/ns/mnt)" == "$(readlink /proc/1/ns/mnt)" ]]; then
    echo "netns-setup.sh: not in a private mount namespace; run under 'unshare --net --mount --fork'" >&2
    exit 2
fi

ip link set lo up
ip addr add 169.254.169.254/32 dev lo

if [[ -z "$hosts_file" ]]; then
    hosts_file="$(mktemp /tmp/kvvm-netns-hosts.XXXXXX)"
    {
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "127.0.0.1 myvault.vault.azure.net othervault.vault.azure.net myvault.vault.azure.cn vault.evil.example"
        for h in "${extra_hosts[@]}"; do echo "127.0.0.1 $h"; done
    } > "$hosts_file"
fi
mount --bind "$hosts_file" /etc/hosts

if [[ -n "$ca_bundle" ]]; then
    mkdir -p /etc/ssl/certs
    [[ -e /etc/ssl/certs/ca-certificates.crt ]] || touch /etc/ssl/certs/ca-certificates.crt
    mount --bind "$ca_bundle" /etc/ssl/certs/ca-certificates.crt
fi

for d in /var/lib/waagent /var/log/azure /var/opt/azcmagent; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 tmpfs "$d"
done

exec "$@"
