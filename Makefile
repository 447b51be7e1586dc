# kvvm — see README.md. `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
# Read when a recipe needs it (`=`, not `:=`): before `make deps` there may be no cargo to ask.
VERSION = $(shell bash scripts/version.sh)

.PHONY: all deps build package demo test lint bench fuzz clean

all: build

deps:
	bash scripts/install-deps.sh

build:
	cargo build --release

# The extension's publisher namespace and type (the zip's name, manifest.xml): a publisher that registers kvvm under
# its own name sets them, e.g. `make package PUBLISHER=Contoso.Security`. The .deb/.rpm packages do not depend on them.
PUBLISHER ?= Microsoft.Azure.KeyVault
TYPE ?= KeyVaultForLinux
WINDOWS_TYPE ?= KeyVaultForWindows

package: deps
	KVVM_PUBLISHER='$(PUBLISHER)' KVVM_TYPE='$(TYPE)' KVVM_WINDOWS_TYPE='$(WINDOWS_TYPE)' bash scripts/package.sh

demo: package
	bash scripts/demo.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

test: deps lint package
	cargo nextest run --workspace --no-fail-fast
	bash scripts/windows.sh test

clean:
	cargo clean
	rm -rf dist

# kvvm against the hand-written SDK poller (bench/peer), in the VM-like namespace (root); writes bench/RESULTS.md.
bench: package
	cargo build --release --quiet -p kvvm-bench
	target/release/kvvm-bench dist/Microsoft.Azure.KeyVault.KeyVaultForLinux-$(VERSION).zip $(CURDIR)

# Every parser of outside input under cargo fuzz for FUZZ_SECONDS each (default 60); see fuzz/harness.rs.
fuzz:
	bash scripts/fuzz.sh
