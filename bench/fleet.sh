#!/usr/bin/env bash
# Fleet benchmark (issue 10): what each volunteer costs the controller.
# Builds the release binary, then for each fleet size runs a fresh release
# controller (SQLite in a fresh temp folder, 127.0.0.1) and `freeagent
# simulate` with that many workers at the default intervals (telemetry every
# 5 s per busy worker, a heartbeat every 30 s, idle workers in 30 s long
# polls), with builds always queued (three per worker are submitted before
# the workers start). It prints for each size:
#
#   - the controller's CPU while the fleet ran, as a share of one core
#     (utime + stime from /proc/PID/stat, over the measured window);
#   - its RSS at the end (and peak), and RSS per worker over the idle
#     controller's;
#   - requests/s and p50/p99 of the answer by route, as the simulator saw
#     them ("poll" is the polls that claimed a build, "poll-wait" the long
#     polls held to the end of their wait, whose time is the wait);
#   - samples sent against samples stored (the database's snapshot counts),
#     and /api/stats checked against the simulator's tally (totalBuilds =
#     builds the simulator finished; answers other than 2xx);
#
# and ends with the 100,000-worker cost projected from the slope between the
# smallest and the largest size. The measured window starts once the workers
# are registered and the builds queued (simulate prints "running") and ends
# when simulate exits (its workers finish their builds over one interval).
#
#   bench/fleet.sh                        build, then 1k, 5k, 10k (~6 min)
#   FLEET_SIZES="1000" FLEET_SECONDS=20 bench/fleet.sh    a quick look
#   BENCH_NO_BUILD=1 bench/fleet.sh       use target/release/freeagent as is
#
# Knobs (environment): FLEET_SIZES (default "1000 5000 10000"),
# FLEET_SECONDS (measured seconds per size, default 60), FLEET_PREQUEUE
# (builds queued per worker before the start, default 3), FLEET_PERF=1 to
# record `perf record -g` of the controller during the largest size (kept
# in the temp folder, which is then kept), BENCH_KEEP=1 to keep the temp
# folder. Needs: cargo, curl, jq, sqlite3, awk; perf for FLEET_PERF.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

SIZES=${FLEET_SIZES:-1000 5000 10000}
SECONDS_EACH=${FLEET_SECONDS:-60}
PREQUEUE_PER=${FLEET_PREQUEUE:-3}
ADMIN=fleet-bench-admin-key-0123456789
BIN=${FREEAGENT_BIN:-$ROOT/target/release/freeagent}

for tool in curl jq sqlite3 awk timeout; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
done

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "== cargo build --release --features ssr" >&2
  cargo build --release --features ssr
fi
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release --features ssr" >&2; exit 1; }

dir=$(mktemp -d /tmp/freeagent-fleet.XXXXXX)
server=""
sim=""
perf_pid=""
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
  [ -n "$sim" ] && kill "$sim" 2>/dev/null || true
  stop_server
  if [ -n "${BENCH_KEEP:-}${FLEET_PERF:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME: a release controller on a fresh SQLite file in
# $dir/NAME, default settings but for the admin key. Sets URL, server, db.
start_server() {
  local name=$1 port
  mkdir -p "$dir/$name"
  db="$dir/$name/freeagent.db"
  port=$(free_port)
  URL="http://127.0.0.1:$port"
  (cd "$dir/$name" && LEPTOS_SITE_ROOT="$ROOT/target/site" RUST_LOG=warn exec "$BIN" serve \
    --database-url "sqlite://$db" --listen "127.0.0.1:$port" --admin-key "$ADMIN") \
    >>"$dir/$name/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    curl -fsS -m 2 "$URL/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  echo "the controller did not come up; the log:" >&2
  tail -n 30 "$dir/$name/server.log" >&2
  exit 1
}

stop_server() {
  [ -n "$server" ] || return 0
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

# CPU ticks (user + system) the controller used so far.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$server/stat"; }
rss_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server/status"; }
HZ=$(getconf CLK_TCK)
# Ticks the hypervisor gave to other guests (steal) and the machine's busy
# ticks, from /proc/stat: a noisy host shows here, not in our figures.
steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

results=()   # one line per size: workers cpu_share rss_kb rss_per_worker_kb total_rps
for n in $SIZES; do
  name="w$n"
  log "$n workers: controller up"
  start_server "$name"
  idle_rss=$(rss_kb VmRSS)
  out="$dir/$name/simulate.out"
  # Registration and pre-queueing run before the measured window; the
  # whole run is bounded whatever happens.
  limit=$((SECONDS_EACH + 600))
  timeout -k 10 "$limit" "$BIN" simulate --controller "$URL" --admin-key "$ADMIN" \
    --workers "$n" --prequeue $((n * PREQUEUE_PER)) --builds-per-minute 0 \
    --duration "${SECONDS_EACH}s" >"$out" 2>"$dir/$name/simulate.err" &
  sim=$!
  until grep -q '^running ' "$out" 2>/dev/null; do
    kill -0 "$sim" 2>/dev/null || { cat "$out" "$dir/$name/simulate.err" >&2; exit 1; }
    sleep 0.2
  done
  log "$n workers: $(head -n1 "$out")"
  t0=$(date +%s.%N)
  c0=$(cpu_ticks)
  s0=$(steal_ticks)
  b0=$(busy_ticks)
  if [ -n "${FLEET_PERF:-}" ] && [ "$n" = "${SIZES##* }" ]; then
    perf record -g -F 499 -p "$server" -o "$dir/perf.data" -- sleep "$((SECONDS_EACH / 2))" \
      >"$dir/perf.log" 2>&1 &
    perf_pid=$!
  fi
  peak_rss=0
  while kill -0 "$sim" 2>/dev/null; do
    r=$(rss_kb VmRSS || echo 0)
    [ "${r:-0}" -gt "$peak_rss" ] && peak_rss=$r
    sleep 1
  done
  sim_rc=0
  wait "$sim" || sim_rc=$?
  sim=""
  c1=$(cpu_ticks)
  t1=$(date +%s.%N)
  s1=$(steal_ticks)
  b1=$(busy_ticks)
  end_rss=$(rss_kb VmRSS)
  if [ -n "$perf_pid" ]; then wait "$perf_pid" 2>/dev/null || true; perf_pid=""; fi
  stats=$(curl -fsS -m 10 "$URL/api/stats")
  stop_server
  json=$(sed -n 's/^simulate-json: //p' "$out")
  if [ -z "$json" ]; then
    echo "simulate printed no summary (exit $sim_rc):" >&2
    cat "$out" >&2; tail -n 20 "$dir/$name/simulate.err" >&2
    exit 1
  fi
  stored=$(sqlite3 -readonly "$db" 'SELECT coalesce(sum(snapshot_count), 0) FROM builds')
  window=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  cpu=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v w="$window" 'BEGIN { printf "%.1f", 100 * d / hz / w }')
  cpu_s=$(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN { printf "%.1f", d / hz }')
  per_worker=$(awk -v r="$peak_rss" -v i="$idle_rss" -v n="$n" 'BEGIN { printf "%.1f", (r - i) / n }')
  rps=$(jq '[.routes | to_entries[] | select(.key != "poll-wait") | .value.perSecond] | add' <<<"$json")
  held=$(jq '.routes["poll-wait"].perSecond // 0' <<<"$json")
  finished=$(jq .builds.finished <<<"$json")
  sent=$(jq .samples.sent <<<"$json")
  acked=$(jq .samples.acknowledged <<<"$json")
  non2xx=$(jq .non2xx <<<"$json")
  total_builds=$(jq .totalBuilds <<<"$stats")
  cpu_ms_per_req=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v r="$rps" -v w="$window" \
    'BEGIN { printf "%.3f", 1000 * d / hz / (r * w + (r == 0)) }')

  printf '\n%d workers, %s s measured (simulate exit %d)\n' "$n" "$window" "$sim_rc"
  printf '  controller CPU   %s%% of one core (%s CPU s; %s ms per request)\n' "$cpu" "$cpu_s" "$cpu_ms_per_req"
  printf '  controller RSS   %d KiB at the end, %d KiB peak, idle %d KiB: %s KiB per worker\n' \
    "$end_rss" "$peak_rss" "$idle_rss" "$per_worker"
  printf '  requests/s       %.0f (and %.1f held long polls/s)\n' "$rps" "$held"
  jq -r '.routes | to_entries[] | "    \(.key | . + "          " | .[0:10]) \(.value.perSecond | . * 10 | round / 10 | tostring | . + "/s        " | .[0:10]) p50 \(.value.p50Ms // 0 | . * 100 | round / 100) ms  p99 \(.value.p99Ms // 0 | . * 100 | round / 100) ms"' <<<"$json"
  printf '  answers          %s other than 2xx; by route and status: %s\n' "$non2xx" "$(jq -c .answers <<<"$json")"
  printf '  builds           finished %s per the simulator, totalBuilds %s per /api/stats: %s\n' \
    "$finished" "$total_builds" "$([ "$finished" = "$total_builds" ] && echo equal || echo DIFFERENT)"
  printf '  samples          sent %s, acknowledged %s, stored %s: %s\n' "$sent" "$acked" "$stored" \
    "$([ "$sent" = "$stored" ] && [ "$acked" = "$stored" ] && echo equal || echo DIFFERENT)"
  printf '  machine          %s%% of its %d cores busy, %s%% stolen by the host\n' \
    "$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v w="$window" -v n="$(nproc)" 'BEGIN { printf "%.0f", 100 * d / hz / w / n }')" \
    "$(nproc)" \
    "$(awk -v d=$((s1 - s0)) -v hz="$HZ" -v w="$window" -v n="$(nproc)" 'BEGIN { printf "%.1f", 100 * d / hz / w / n }')"
  printf '  simulator        RSS %s KiB, %s KiB per worker\n' "$(jq .peakRssKib <<<"$json")" \
    "$(jq '.peakRssKib / .workers | . * 10 | round / 10' <<<"$json")"
  results+=("$n $cpu $peak_rss $per_worker $rps")
done

if [ -n "${FLEET_PERF:-}" ] && [ -f "$dir/perf.data" ]; then
  echo
  echo "perf profile of the controller: $dir/perf.data (perf report -i $dir/perf.data --no-children)"
fi

echo
printf '%-9s %10s %12s %14s %10s\n' workers "CPU %core" "RSS KiB" "KiB/worker" "req/s"
for line in "${results[@]}"; do
  # shellcheck disable=SC2086
  printf '%-9s %10s %12s %14s %10.0f\n' $line
done
if [ "${#results[@]}" -ge 2 ]; then
  first=(${results[0]})
  last=(${results[${#results[@]}-1]})
  awk -v n0="${first[0]}" -v c0="${first[1]}" -v r0="${first[2]}" \
      -v n1="${last[0]}" -v c1="${last[1]}" -v r1="${last[2]}" 'BEGIN {
    dc = (c1 - c0) / (n1 - n0); dr = (r1 - r0) / (n1 - n0)
    printf "projection for 100000 workers (slope %d..%d): CPU %.0f%% of one core (%.1f cores), RSS %.0f MiB\n",
      n0, n1, c1 + dc * (100000 - n1), (c1 + dc * (100000 - n1)) / 100, (r1 + dr * (100000 - n1)) / 1024 }'
fi
