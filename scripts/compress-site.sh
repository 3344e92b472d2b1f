#!/usr/bin/env bash
# Writes a brotli (.br) and a gzip (.gz) twin next to every file of the
# built site (target/site by default), for the controller's ServeDir to send
# to browsers that accept them: compressed once here at the highest levels,
# instead of on every request. Run after `cargo leptos build --release`
# (scripts/run.sh and scripts/e2e.sh do). Safe to run again: a twin is
# rewritten only when older than its file.
#
#   scripts/compress-site.sh [SITE_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${1:-${LEPTOS_SITE_ROOT:-target/site}}
[ -d "$SITE" ] || { echo "no site at $SITE: run cargo leptos build --release" >&2; exit 1; }
command -v brotli >/dev/null || { echo "brotli is missing: run scripts/setup.sh" >&2; exit 1; }

# Twins of files that were deleted (an old hashed name) go with them.
find "$SITE" -type f \( -name '*.br' -o -name '*.gz' \) -print0 |
  while IFS= read -r -d '' twin; do
    [ -e "${twin%.*}" ] || rm -f "$twin"
  done
# Only what compresses: text, WASM, SVG (not images or fonts, already compressed).
find "$SITE" -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.css' -o -name '*.svg' \
  -o -name '*.html' -o -name '*.json' -o -name '*.txt' -o -name '*.xml' \) -print0 |
  while IFS= read -r -d '' file; do
    # -n: the twin gets its own mtime (for -nt above), so give it the mode.
    [ "$file.br" -nt "$file" ] || { brotli -q 11 -n -f -o "$file.br" "$file" && chmod --reference="$file" "$file.br"; }
    [ "$file.gz" -nt "$file" ] || gzip -9 -n -c "$file" >"$file.gz"
  done
