#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests and black-box tests.
set -euo pipefail
cd "$(dirname "$0")"
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
cargo test --workspace --locked "$@"
