#!/usr/bin/env bash
# Landing-page figures for the README benchmark: the release WASM bundle's
# size raw and gzipped, and server-rendered `/` throughput at 64 connections
# with wrk against the release controller on 127.0.0.1 (fresh database,
# default --stats-ttl). Expects `cargo leptos build --release` to have run
# (scripts/e2e.sh does); BENCH_BUILD=1 builds first.
#
#   bench/page.sh            10 s of load
#   BENCH_SECONDS=30 bench/page.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_OF_LOAD=${BENCH_SECONDS:-10}
export PATH="$ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"

if [ -n "${BENCH_BUILD:-}" ]; then
  cargo leptos build --release
fi
BIN=${FREEAGENT_BIN:-$ROOT/target/release/freeagent}
WASM=$(ls "$ROOT"/target/site/pkg/*.wasm | head -n1)
[ -f "$WASM" ] || { echo "no release .wasm under target/site/pkg: run cargo leptos build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

raw=$(stat -c %s "$WASM")
gz=$(gzip -9 -c "$WASM" | wc -c)
printf 'page wasm: %s bytes raw, %s bytes gzipped (%s KiB gzipped; target <= 250 KB)\n' \
  "$raw" "$gz" "$(( (gz + 1023) / 1024 ))"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# Started directly (no subshell) so that $! is the server itself.
cd "$dir"
LEPTOS_SITE_ROOT="$ROOT/target/site" RUST_LOG=warn "$BIN" serve \
  --database-url "sqlite://$dir/bench.db" --listen "127.0.0.1:$port" \
  --admin-key bench-admin-key-0123456789 >"$dir/server.log" 2>&1 &
server=$!
cd "$ROOT"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/" -o "$dir/page.html" || { cat "$dir/server.log" >&2; exit 1; }
printf 'page html: %s bytes\n' "$(stat -c %s "$dir/page.html")"

wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null # warm-up
out=$(wrk -t2 -c64 -d"${SECONDS_OF_LOAD}s" --latency "http://127.0.0.1:$port/")
rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)
printf 'page /: %.0f pages/s at 64 connections, p99 %s (wrk -t2, %ss, loopback; target >= 10,000)\n' "$rps" "$p99" "$SECONDS_OF_LOAD"
[ -z "$errors" ] || printf 'page /: %s\n' "$errors"
