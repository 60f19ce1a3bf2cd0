#!/usr/bin/env bash
# Runs every test: the Rust workspace suite, then real client libraries in other languages
# (which installs its Python, Node and Go clients itself on first use; see
# interop-tests/clients/run.sh). Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")"

echo "== Rust workspace: unit, property, interop (lapin, raw sockets) and durability tests"
cargo test --workspace

echo "== real client libraries against Warren (Rust, Python, JavaScript, Go, Ruby, PHP, Java, C, Celery)"
bash interop-tests/clients/run.sh
