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

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

[ -x /usr/bin/chromium ] || apt_install chromium
command -v npm >/dev/null || apt_install nodejs npm

if [ ! -x end2end/node_modules/.bin/playwright ] || [ ! -x end2end/node_modules/.bin/wasm-opt ]; then
  (cd end2end && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
# cargo-leptos runs the first wasm-opt on PATH; Debian's binaryen breaks hydration.
export PATH="$ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"

command -v cargo-leptos >/dev/null || cargo install cargo-leptos --version 0.3.11 --locked
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
command -v wasm-bindgen >/dev/null || cargo install wasm-bindgen-cli --version 0.2.130 --locked

if [ -z "${E2E_SKIP_BUILD:-}" ]; then
  mkdir -p target/e2e
  # Demo first, so that target/release/freeagent ends up the real controller.
  # --bin-features replaces the metadata's list, so ssr is named again.
  cargo leptos build --release --bin-features ssr --bin-features demo
  cp target/release/freeagent target/e2e/freeagent-demo
  cargo leptos build --release
  cp target/release/freeagent target/e2e/freeagent
fi

cd end2end
FREEAGENT_BIN="$ROOT/target/e2e/freeagent" \
FREEAGENT_DEMO_BIN="$ROOT/target/e2e/freeagent-demo" \
LEPTOS_SITE_ROOT="$ROOT/target/site" \
CHROMIUM_PATH=/usr/bin/chromium \
  npx playwright test "$@"
