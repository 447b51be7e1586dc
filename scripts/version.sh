#!/usr/bin/env bash
# Prints kvvm's version, the one in Cargo.toml's [workspace.package] that every crate inherits, as cargo reads
# it: the package file name (package.sh), the demo (demo.sh) and `make` all take it from here, never from a
# pattern over the manifest's text.
set -euo pipefail
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd -P)
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
# `cargo pkgid` prints e.g. path+file:///src/kvvm#kvvm@0.1.0 (or …/kvvm#0.1.0 when the folder has the name).
id=$(cargo pkgid --quiet --manifest-path "$root/Cargo.toml" -p kvvm)
version=${id##*[#@]}
[ -n "$version" ] && [ "$version" != "$id" ] || { echo "version: cannot read a version from '$id'" >&2; exit 1; }
echo "$version"
