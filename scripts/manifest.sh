#!/usr/bin/env bash
# Prints the extension image definition (manifest/manifest.xml) for a publisher namespace, type and version:
#   scripts/manifest.sh <publisher> <type> <version> [Linux|Windows]
# package.sh writes it beside the zip; a publisher that registers kvvm under its own name (Azure Stack Hub
# operators, partners) uploads it with the zip, so nothing of theirs collides with Microsoft's extension.
set -euo pipefail
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: scripts/manifest.sh <publisher> <type> <version> [Linux|Windows]" >&2; exit 2; }
publisher=$1 type=$2 version=$3 os=${4:-Linux}
case "$os" in Linux | Windows) ;; *) echo "manifest: the OS is Linux or Windows, not '$os'" >&2; exit 1 ;; esac
# The names become a directory name in waagent's folder (<publisher>.<type>-<version>) and XML text.
for v in "$publisher" "$type"; do
    case "$v" in
        "" | *[!A-Za-z0-9.]* | .* | *. | *..*)
            echo "manifest: '$v' is not a publisher namespace or type: letters, digits and single dots only" >&2
            exit 1
            ;;
    esac
done
case "$version" in
    *[!0-9.]* | "" | .* | *. | *..*) echo "manifest: '$version' is not a version such as 1.2.3" >&2; exit 1 ;;
esac
sed -e "s|<ProviderNameSpace>[^<]*</ProviderNameSpace>|<ProviderNameSpace>$publisher</ProviderNameSpace>|" \
    -e "s|<Type>[^<]*</Type>|<Type>$type</Type>|" \
    -e "s|<Version>[^<]*</Version>|<Version>$version</Version>|" \
    -e "s|<SupportedOS>Linux</SupportedOS>|<SupportedOS>$os</SupportedOS>|" \
    -e "s|for Linux|for $os|; s|on Linux virtual|on $os virtual|" "$root/manifest/manifest.xml"
