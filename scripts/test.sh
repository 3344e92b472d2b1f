#!/usr/bin/env bash
# Installs what is missing and runs every test: formatting and lints, the
# Rust unit and integration tests (real router, real SQLite, real agent
# processes), the integration tests again on Postgres (a throwaway cluster
# the tests start and stop themselves), then the browser tests in headless
# Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"
cargo fmt --check
cargo clippy --all-targets --features ssr -- -D warnings
cargo test --features ssr
FREEAGENT_TEST_BACKEND=postgres cargo test --features ssr --test it
scripts/e2e.sh
