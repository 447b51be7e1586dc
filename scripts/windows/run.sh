#!/bin/bash
# cargo's runner for x86_64-pc-windows-gnu: runs the .exe under Wine in scripts/windows.sh's prefix and passes
# its exit code on (Wine's own messages are off: WINEDEBUG=-all).
set -uo pipefail
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
unset DISPLAY
/usr/lib/wine/wine64 "$@"
code=$?
/usr/lib/wine/wineserver -w 2>/dev/null || true
exit $code
