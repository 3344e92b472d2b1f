#!/usr/bin/env bash
# Browser tests of the landing page (end2end/): builds the release controller
# with cargo-leptos, once with `--features demo` and once without, then runs
# Playwright with Debian's Chromium against them. Each test file starts its
# own controller on a free 127.0.0.1 port with a fresh database.
#
# Installs what is missing (idempotent): Chromium (apt), Node and npm (apt),
# the npm packages of end2end/ (Playwright without a browser download, and
# binaryen's wasm-opt, which cargo-leptos uses for the release WASM),
# cargo-leptos, the wasm32 target and the wasm-bindgen CLI.
#
#   scripts/e2e.sh                  build both, run every test
#   E2E_SKIP_BUILD=1 scripts/e2e.sh reuse target/e2e/ from the last run
#   scripts/e2e.sh --project=live   extra arguments go to `playwright test`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Everything this needs, installed only when missing (the same script the
# README's commands use).
scripts/setup.sh
# cargo-leptos runs the first wasm-opt on PATH; Debian's binaryen breaks hydration.
export PATH="$ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"

if [ -z "${E2E_SKIP_BUILD:-}" ]; then
  mkdir -p target/e2e
  # Demo first, so that target/release/freeagent ends up the real controller.
  # --bin-features replaces the metadata's list, so ssr is named again.
  # Each binary beside its hash.txt: with hash-files on, Leptos reads the
  # names of /pkg/* from the hash.txt next to the running executable. Both
  # builds share one WASM (only the server's features differ), so one site.
  mkdir -p target/e2e/demo target/e2e/live
  cargo leptos build --release --bin-features ssr --bin-features demo
  cp target/release/freeagent target/e2e/demo/freeagent
  cp target/release/hash.txt target/e2e/demo/hash.txt
  cargo leptos build --release
  cp target/release/freeagent target/e2e/live/freeagent
  cp target/release/hash.txt target/e2e/live/hash.txt
  cmp -s target/e2e/demo/hash.txt target/e2e/live/hash.txt \
    || { echo "the demo and live builds named their files differently" >&2; exit 1; }
  # What visitors download: the .br and .gz twins of every site file.
  scripts/compress-site.sh target/site
fi

cd end2end
FREEAGENT_BIN="$ROOT/target/e2e/live/freeagent" \
FREEAGENT_DEMO_BIN="$ROOT/target/e2e/demo/freeagent" \
LEPTOS_SITE_ROOT="$ROOT/target/site" \
CHROMIUM_PATH=/usr/bin/chromium \
  npx playwright test "$@"
