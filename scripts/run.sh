#!/usr/bin/env bash
# Installs what is missing, builds the release controller and page with
# cargo-leptos, and runs `freeagent serve` on its embedded default: SQLite
# under data/, http://127.0.0.1:3000, an admin key generated into
# data/admin.key. The site's files get their .br and .gz twins
# (scripts/compress-site.sh). Extra arguments go to `freeagent serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"
cargo leptos build --release
scripts/compress-site.sh target/site
export LEPTOS_SITE_ROOT="${LEPTOS_SITE_ROOT:-target/site}"
exec target/release/freeagent serve "$@"
