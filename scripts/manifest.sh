#!/usr/bin/env bash
# Prints the extension image definition (manifest/manifest.xml) for a publisher namespace, type and version:
#   scripts/manifest.sh <publisher> <type> <version>
# package.sh writes it beside the zip; a publisher that registers kvvm under its own name (Azure Stack Hub
# operators, partners) uploads it with the zip, so nothing of theirs collides with Microsoft's extension.
set -euo pipefail
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
[ $# -eq 3 ] || { echo "usage: scripts/manifest.sh <publisher> <type> <version>" >&2; exit 2; }
publisher=$1 type=$2 version=$3
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
    -e "s|<Version>[^<]*</Version>|<Version>$version</Version>|" "$root/manifest/manifest.xml"
