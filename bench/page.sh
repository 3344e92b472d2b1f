#!/usr/bin/env bash
# Landing-page figures for the README benchmark, against the release
# controller on 127.0.0.1 (fresh database, default --stats-ttl):
# - the release WASM's size raw, gzipped and brotli (what is served: the
#   .gz/.br twins scripts/compress-site.sh writes, else computed here);
# - bytes on the wire (headers and body, as curl receives them with
#   Accept-Encoding: br, gzip) for a first visit (the page and every file it
#   names, not its links to the API) and a repeat visit (the page, plus any file whose Cache-Control
#   lets a browser not reuse it); the page's own API calls are not counted
#   here (end2end/tests/wire.spec.ts measures Chromium's transferSize);
# - server-rendered `/` pages/s at 64 connections, plain and gzipped, and
#   a build's own page `/builds/{id}` as a browser asks for it;
# - one connection fetching the stylesheet: median latency (the Nagle /
#   delayed-ACK signature is ~40 ms);
# - static files at 64 connections against cached /api/stats, same run;
# - the time from navigation to hydrated in Chromium, cold and warm, for
#   `/` and a build's page (bench/hydrate.mjs).
# Expects `cargo leptos build --release` and scripts/compress-site.sh to have
# run (scripts/e2e.sh does both); BENCH_BUILD=1 does both first.
#
#   bench/page.sh            10 s per load run
#   BENCH_SECONDS=30 bench/page.sh
#   FREEAGENT_BIN=path/to/other/freeagent bench/page.sh   (e.g. a "before")
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_OF_LOAD=${BENCH_SECONDS:-10}
export PATH="$ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"

if [ -n "${BENCH_BUILD:-}" ]; then
  cargo leptos build --release
  scripts/compress-site.sh target/site
fi
BIN=${FREEAGENT_BIN:-$ROOT/target/release/freeagent}
SITE=${LEPTOS_SITE_ROOT:-$ROOT/target/site}
WASM=$(ls -t "$SITE"/pkg/*.wasm 2>/dev/null | head -n1 || true)
[ -n "$WASM" ] && [ -f "$WASM" ] || { echo "no release .wasm under $SITE/pkg: run cargo leptos build --release" >&2; exit 1; }
for tool in wrk curl; do
  command -v $tool >/dev/null || { echo "$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done

raw=$(stat -c %s "$WASM")
if [ -f "$WASM.gz" ]; then gz=$(stat -c %s "$WASM.gz"); else gz=$(gzip -9 -c "$WASM" | wc -c); fi
if [ -f "$WASM.br" ]; then br=$(stat -c %s "$WASM.br"); elif command -v brotli >/dev/null; then
  br=$(brotli -q 11 -c "$WASM" | wc -c); else br=n/a; fi
printf 'page wasm: %s: %s bytes raw, %s gzipped (%s KiB; target <= 250 KB), %s brotli\n' \
  "$(basename "$WASM")" "$raw" "$gz" "$(( (gz + 1023) / 1024 ))" "$br"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# Started directly (no subshell) so that $! is the server itself.
cd "$dir"
LEPTOS_SITE_ROOT="$SITE" RUST_LOG=warn "$BIN" serve \
  --database-url "sqlite://$dir/bench.db" --listen "127.0.0.1:$port" \
  --admin-key bench-admin-key-0123456789 >"$dir/server.log" 2>&1 &
server=$!
cd "$ROOT"
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/" -o "$dir/page.html" || { cat "$dir/server.log" >&2; exit 1; }
printf 'page html: %s bytes\n' "$(stat -c %s "$dir/page.html")"

# Bytes on the wire: headers + body as sent, per URL.
wire() { curl -fsS -o /dev/null -H 'Accept-Encoding: br, gzip' -w '%{size_header} %{size_download}\n' "$base$1" | awk '{print $1 + $2}'; }
header() { curl -fsS -o /dev/null -D - -H 'Accept-Encoding: br, gzip' "$base$1" | tr -d '\r' | awk -v h="$2:" 'tolower($1) == tolower(h) {$1 = ""; sub(/^ /, ""); print}'; }
# Files the page names (its links to the JSON API are for people, not loads).
assets=$(grep -oE '(href|src)="/[^"]+"' "$dir/page.html" | sed -E 's/^(href|src)="//; s/"$//' | grep -v '^/api/' | sort -u)
first=$(wire /); repeat=$first
printf 'wire /: %s bytes (%s)\n' "$first" "$(header / content-encoding || true)"
for asset in $assets; do
  bytes=$(wire "$asset")
  cache=$(header "$asset" cache-control || true)
  printf 'wire %s: %s bytes (%s; %s)\n' "$asset" "$bytes" "$(header "$asset" content-encoding || echo identity)" "${cache:-no Cache-Control}"
  first=$((first + bytes))
  # A browser reuses a file without asking only for a positive max-age.
  case "$cache" in *max-age=[1-9]*) ;; *) repeat=$((repeat + bytes)) ;; esac
done
printf 'wire first visit: %s bytes (page + %s files, without API calls)\n' "$first" "$(wc -w <<<"$assets")"
printf 'wire repeat visit: %s bytes (page + files a browser must fetch again)\n' "$repeat"

load() { # url connections [extra wrk args]: prints "req/s p50 p99"
  local url=$1 conns=$2; shift 2
  local out
  out=$(wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"${SECONDS_OF_LOAD}s" --latency "$@" "$url")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then grep -E 'Non-2xx|Socket errors' <<<"$out" >&2; fi
  awk '/^Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {printf "%.0f %s %s\n", r, p50, p99}' <<<"$out"
}

wrk -t2 -c64 -d2s "$base/" >/dev/null # warm-up
read -r rps _ p99 < <(load "$base/" 64)
printf 'page /: %s pages/s at 64 connections, p99 %s (wrk -t2, %ss, loopback; target >= 10,000)\n' "$rps" "$p99" "$SECONDS_OF_LOAD"
read -r rps _ p99 < <(load "$base/" 64 -H 'Accept-Encoding: gzip, deflate, br, zstd')
printf 'page / (as Chromium asks, gets gzip): %s pages/s at 64 connections, p99 %s\n' "$rps" "$p99"

# A build's own page: the server renders only its shell (the figures come
# from the browser, with the build's secret), so this is the shell's cost.
submitted=$(curl -fsS -X POST "$base/api/builds" -H 'Authorization: Bearer bench-admin-key-0123456789' \
  -H 'Content-Type: application/json' -d '{"platform":"linux"}')
build_id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <<<"$submitted")
page_url=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["pageUrl"])' <<<"$submitted")
read -r rps _ p99 < <(load "$base/builds/$build_id" 64 -H 'Accept-Encoding: gzip, deflate, br, zstd')
printf 'page /builds/%s (as Chromium asks): %s pages/s at 64 connections, p99 %s\n' "$build_id" "$rps" "$p99"

if command -v node >/dev/null && [ -x /usr/bin/chromium ] && [ -d end2end/node_modules/playwright-core ]; then
  printf 'navigation to hydrated, /: %s\n' "$(node bench/hydrate.mjs "$base/" 5)"
  printf 'navigation to hydrated, /builds/%s with its token: %s\n' "$build_id" "$(node bench/hydrate.mjs "$base$page_url" 5)"
else
  echo 'navigation to hydrated: skipped (needs node, /usr/bin/chromium and end2end/node_modules: scripts/setup.sh)'
fi

css=$(grep -oE '/pkg/[^"]+\.css' <<<"$assets" | head -n1)
read -r rps p50 p99 < <(load "$base$css" 1 -H 'Accept-Encoding: br, gzip')
printf 'stylesheet, 1 connection: median %s, p99 %s, %s req/s (%s; target median < 1 ms)\n' "$p50" "$p99" "$rps" "$css"

read -r stats _ _ < <(load "$base/api/stats" 64)
read -r favicon _ _ < <(load "$base/favicon.svg" 64 -H 'Accept-Encoding: br, gzip')
read -r sheet _ _ < <(load "$base$css" 64 -H 'Accept-Encoding: br, gzip')
printf 'at 64 connections: /api/stats (cached) %s req/s, /favicon.svg %s req/s, stylesheet %s req/s\n' "$stats" "$favicon" "$sheet"
awk -v s="$stats" -v f="$favicon" -v c="$sheet" 'BEGIN {
  printf "static / stats: favicon %.2f, stylesheet %.2f (target >= 0.25)\n", f / s, c / s }'
