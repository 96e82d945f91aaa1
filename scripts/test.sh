#!/usr/bin/env bash
# The README's test command: every test of the workspace, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked
# Doc tests (examples in the API docs).
cargo test --workspace --doc --locked
