#!/usr/bin/env bash
# Controller benchmark (issue 2): builds the release binary, runs it on
# 127.0.0.1 with fresh SQLite files, loads it with Debian's wrk and prints a
# table of the measured figures next to their targets:
#
#   1. single-sample telemetry at 64 connections: req/s, p50, p99, answers
#      (2xx / non-2xx) and samples stored (every request carries a new seq);
#   2. 1000-sample batches at 8 connections: samples/s;
#   3. uncached stats (--stats-ttl 0s) latency at 1 connection, on an empty
#      database and on one seeded with 10 million samples and 1 million
#      finished builds (bench/seed.py writes the file directly, consistent
#      with the running totals the controller keeps), and their ratio;
#   4. server RSS under the telemetry load (VmRSS peak, VmHWM);
#   5. bytes per stored sample on disk;
#   6. bench/page.sh's figures when target/site holds a release build.
#
# Postgres mode (BENCH_BACKENDS, below): the same loads against a throwaway
# Postgres cluster that the script starts in its temp folder on its own
# 127.0.0.1 port (scripts/postgres.sh, fsync and synchronous_commit on) and
# stops at the end, with 1 or N controllers serving one database. With N
# controllers the builds are spread over them (build k's worker claims it on
# controller k mod N and posts its telemetry there), one wrk per controller
# runs at once with the connections split between them (64 = 22+21+21), and
# the figures are req/s summed, non-2xx summed, p50 and p99 the worst of the
# N wrk runs. Stats are measured on the first controller while the others
# run. The seeded database (bench/seed_postgres.sql: the same shape as
# bench/seed.py, seeded once, shared by the Postgres modes) is separate from
# the fresh one each mode's loads write into. One table compares the modes.
#
#   bench/controller.sh                   build, then the full run (~6 min)
#   BENCH_NO_BUILD=1 bench/controller.sh  use target/release/freeagent as is
#   BENCH_BACKENDS=sqlite bench/controller.sh     SQLite alone, as before
#   BENCH_BACKENDS=postgres:3 bench/controller.sh three controllers on Postgres
#
# Knobs (environment): BENCH_BACKENDS (default "sqlite postgres:1
# postgres:3"), BENCH_SECONDS (load per wrk run, default 15),
# BENCH_STATS_SECONDS (10), BENCH_BUILDS (concurrent builds, one worker each,
# default 8), BENCH_SEED_SAMPLES (10000000), BENCH_SEED_BUILDS (1000000),
# BENCH_SEED_TIMEOUT (seconds a seeding may take, 3600), BENCH_PAGE=0 to
# skip bench/page.sh, BENCH_KEEP=1 to keep the temp folder.
# Needs: cargo, wrk, curl, jq, python3; psql and a Postgres server for the
# Postgres modes (scripts/postgres.sh installs Debian's when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

LOAD_S=${BENCH_SECONDS:-15}
STATS_S=${BENCH_STATS_SECONDS:-10}
NBUILDS=${BENCH_BUILDS:-8}
SEED_SAMPLES=${BENCH_SEED_SAMPLES:-10000000}
SEED_BUILDS=${BENCH_SEED_BUILDS:-1000000}
SEED_TIMEOUT=${BENCH_SEED_TIMEOUT:-3600}
BACKENDS=${BENCH_BACKENDS:-sqlite postgres:1 postgres:3}
ADMIN=bench-admin-key-0123456789
BIN=${FREEAGENT_BIN:-$ROOT/target/release/freeagent}
# Connections of the single-sample and the batch load, split over the
# controllers of a mode.
SINGLE_CONNS=64
BATCH_CONNS=8

want_sqlite=""
pg_modes=()
for backend in $BACKENDS; do
  case "$backend" in
    sqlite) want_sqlite=1 ;;
    postgres:[1-9]|postgres:[1-9][0-9]) pg_modes+=("${backend#postgres:}") ;;
    postgres) pg_modes+=(1) ;;
    *) echo "BENCH_BACKENDS: unknown '$backend' (sqlite, postgres:N)" >&2; exit 2 ;;
  esac
done

for tool in wrk curl jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
done

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "== cargo build --release --features ssr" >&2
  cargo build --release --features ssr
fi
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release --features ssr" >&2; exit 1; }

dir=$(mktemp -d /tmp/freeagent-bench.XXXXXX)
server=""     # the one SQLite controller (its RSS is measured)
servers=()    # every controller running now
watcher=""
pg_dir=""     # the Postgres cluster, once started
wrk_pids=()   # spread_wrk's wrk runs under way
cleanup() {
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
  for pid in ${wrk_pids[@]+"${wrk_pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  stop_servers
  if [ -n "$pg_dir" ]; then
    timeout 60 scripts/postgres.sh stop "$pg_dir" >/dev/null 2>&1 || true
  fi
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_servers DATABASE_URL N: N release controllers on fresh 127.0.0.1
# ports serving that database, fresh figures on every stats request, no
# practical telemetry rate limit (one worker per build). Sets urls[] (URL is
# the first) and servers[].
start_servers() {
  local db_url=$1 n=$2 i port pid
  urls=()
  servers=()
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port)
    (cd "$dir" && LEPTOS_SITE_ROOT="$ROOT/target/site" RUST_LOG=info exec "$BIN" serve \
      --database-url "$db_url" --listen "127.0.0.1:$port" --admin-key "$ADMIN" \
      --stats-ttl 0s --telemetry-rate 1000000) >>"$dir/server.log" 2>&1 &
    servers+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  URL=${urls[0]}
  for i in $(seq 0 $((n - 1))); do
    pid=${servers[$i]}
    for _ in $(seq 1 300); do
      curl -fsS -m 2 "${urls[$i]}/healthz" >/dev/null 2>&1 && continue 2
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "the controller at ${urls[$i]} did not come up; the log:" >&2
    tail -n 30 "$dir/server.log" >&2
    exit 1
  done
}

stop_servers() {
  local pid
  for pid in ${servers[@]+"${servers[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${servers[@]+"${servers[@]}"}; do wait "$pid" 2>/dev/null || true; done
  servers=()
  server=""
}

# start_server DB_FILE: one controller on a SQLite file.
start_server() {
  start_servers "sqlite://$1" 1
  server=${servers[0]}
}

stop_server() { stop_servers; }

admin() { # METHOD PATH [BODY]
  curl -fsS -m 30 -X "$1" "$URL$2" -H "Authorization: Bearer $ADMIN" \
    ${3:+-H "Content-Type: application/json" --data "$3"}
}

# wrk's figures: field NAME < wrk output
wrk_field() {
  awk -v name="$1" '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
      return v + 0
    }
    name == "rps"      && /^Requests\/sec/     { print $2 + 0 }
    name == "requests" && / requests in /      { print $1 }
    name == "p50"      && $1 == "50%"          { printf "%.3f\n", ms($2) }
    name == "p99"      && $1 == "99%"          { printf "%.3f\n", ms($2) }
    name == "non2xx"   && /Non-2xx/            { print $NF }
    name == "sockerr"  && /Socket errors/      { s = $0; sub(/.*Socket errors: /, "", s); print s }
  '
}

# wrk, bounded in time whatever the server does.
wrk_bounded() { # SECONDS ARGS...
  local secs=$1; shift
  timeout -k 5 $((secs + 60)) wrk "$@"
}

run_wrk() { # NAME ARGS...: runs wrk, keeps its output in $dir/NAME.wrk
  local name=$1; shift
  local secs
  secs=$(grep -o -- '-d[0-9]*' <<<"$*" | head -n1 | tr -dc 0-9)
  wrk_bounded "${secs:-30}" "$@" >"$dir/$name.wrk" 2>&1 || { cat "$dir/$name.wrk" >&2; exit 1; }
}

# spread_wrk NAME SEQ_BASE CONNS SECONDS SCRIPT [wrk flags]: one wrk per
# controller at once, CONNS split between them, each posting for the builds
# claimed on its controller; outputs in $dir/NAME.J.wrk.
spread_wrk() {
  local name=$1 base=$2 conns=$3 secs=$4 script=$5; shift 5
  local n=${#urls[@]} j c t pids=() failed=""
  for j in $(seq 0 $((n - 1))); do
    c=$(( conns / n + (j < conns % n ? 1 : 0) ))
    t=$(( n == 1 ? 2 : 1 ))
    FA_BUILDS=${ctl_builds[$j]} FA_SEQ_BASE=$base wrk_bounded "$secs" -t"$t" -c"$c" -d"${secs}s" "$@" \
      -s "bench/$script" "${urls[$j]}" >"$dir/$name.$j.wrk" 2>&1 &
    pids+=($!)
  done
  wrk_pids=("${pids[@]}")
  for j in $(seq 0 $((n - 1))); do
    wait "${pids[$j]}" || { cat "$dir/$name.$j.wrk" >&2; failed=1; }
  done
  wrk_pids=()
  [ -z "$failed" ] || exit 1
}

# spread_field NAME FIELD: the figure over a spread_wrk run's outputs: sums
# of rps, requests and non-2xx; the worst p50 / p99.
spread_field() {
  local name=$1 field=$2 file
  for file in "$dir/$name".*.wrk; do wrk_field "$field" <"$file"; done | awk -v f="$field" '
    f == "p50" || f == "p99" { if (NR == 1 || $1 > v) v = $1; next }
    f == "sockerr" { v = v (v == "" ? "" : "; ") $0; next }
    { v += $1 }
    END { if (f == "p50" || f == "p99") printf "%.3f\n", v; else if (v != "") print v }'
}

rss_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server/status"; }

stored_samples() { # sum of snapshotCount over the benchmark's builds
  local total=0 id
  for id in "${build_ids[@]}"; do
    total=$((total + $(admin GET "/api/builds/$id" | jq .snapshotCount)))
  done
  echo "$total"
}

# CPU seconds (user + system) used so far by the processes PIDS.
cpu_seconds() {
  local hz pid total=0
  hz=$(getconf CLK_TCK)
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  awk -v t="$total" -v hz="$hz" 'BEGIN { printf "%.1f\n", t / hz }'
}

# The Postgres server's processes: the postmaster and its children.
pg_pids() {
  local main
  main=$(head -n1 "$pg_dir/data/postmaster.pid" 2>/dev/null) || return 0
  echo "$main" $(pgrep -P "$main" || true)
}

# Busy CPU seconds of the whole machine so far (all cores).
machine_busy() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.1f\n", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}

# register_builds: NBUILDS workers, one building build each, worker k
# claiming and starting its build on controller k mod N. Sets build_ids[],
# ctl_builds[j] ("id:token,..." for controller j) and FA_BUILDS (all).
register_builds() {
  local n=${#urls[@]} i k token id url
  local -a tokens=() pairs=()
  build_ids=()
  ctl_builds=()
  for i in $(seq 1 "$NBUILDS"); do
    tokens+=("$(admin POST /api/workers/register \
      "{\"name\":\"bench-$i\",\"platforms\":[\"linux\"],\"cpuCores\":8,\"memoryMb\":32768}" | jq -r .token)")
    admin POST /api/builds '{"platform":"linux","label":"bench"}' >/dev/null
  done
  for k in "${!tokens[@]}"; do
    token=${tokens[$k]}
    url=${urls[$((k % n))]}
    id=$(curl -fsS -m 30 -X POST "$url/api/workers/poll" -H "Authorization: Bearer $token" | jq -r .build.id)
    [ -n "$id" ] && [ "$id" != null ] || { echo "worker $((k + 1)) claimed nothing on $url" >&2; exit 1; }
    curl -fsS -m 30 -X POST "$url/api/builds/$id/start" -H "Authorization: Bearer $token" >/dev/null
    build_ids+=("$id")
    pairs+=("$id:$token")
    ctl_builds[$((k % n))]="${ctl_builds[$((k % n))]:+${ctl_builds[$((k % n))]},}$id:$token"
  done
  FA_BUILDS=$(IFS=,; echo "${pairs[*]}")
  export FA_BUILDS
}

# One line of the comparison table per mode, in $dir/compare (tab-separated;
# an empty figure, as wrk prints no non-2xx line when there is none, is 0).
compare_row() {
  local out="" v
  for v in "$@"; do out+="${v:-0}"$'\t'; done
  printf '%s\n' "${out%$'\t'}" >>"$dir/compare"
}

host_cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
f() { wrk_field "$2" <"$dir/$1.wrk"; }
calc() { awk "BEGIN { $1 }"; }
verdict() { calc "print (($1) ? \"ok\" : \"MISSED\")"; }
mb() { calc "printf \"%.1f MB\", $1 / 1024"; }

# ==========================================================================
# SQLite: one controller, the full set of figures.
# ==========================================================================
bench_sqlite() {
# --- 1. stats on an empty database --------------------------------------
log "SQLite, empty database: stats latency"
start_server "$dir/api.db"
run_wrk warm-stats -t1 -c1 -d2s "$URL/api/stats"
run_wrk stats-empty -t1 -c1 -d"${STATS_S}s" --latency "$URL/api/stats"

# --- 2. workers and builds for telemetry ---------------------------------
log "registering $NBUILDS workers, one building build each"
register_builds

# --- 3. single-sample telemetry, 64 connections --------------------------
log "single-sample telemetry: 3 s warm-up, ${LOAD_S} s measured"
FA_SEQ_BASE=0 run_wrk warm-single -t2 -c64 -d3s -s bench/telemetry.lua "$URL"
before=$(stored_samples)
(
  peak=0
  while kill -0 "$server" 2>/dev/null; do
    v=$(rss_kb VmRSS || echo 0)
    [ "${v:-0}" -gt "$peak" ] && peak=$v && echo "$peak" >"$dir/rss-peak"
    sleep 0.2
  done
) &
watcher=$!
cpu0=$(cpu_seconds "$server"); busy0=$(machine_busy)
FA_SEQ_BASE=30000000 run_wrk single -t2 -c64 -d"${LOAD_S}s" --latency -s bench/telemetry.lua "$URL"
sqlite_cpu="$(calc "printf \"%.0f\", ($(machine_busy) - $busy0) / $LOAD_S * 100")% busy; controller $(calc "printf \"%.1f\", $(cpu_seconds "$server") - $cpu0") s"
kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true; watcher=""
rss_single_peak=$(cat "$dir/rss-peak" 2>/dev/null || echo 0)
sleep 0.5
single_stored=$(( $(stored_samples) - before ))

# --- 4. 1000-sample batches, 8 connections -------------------------------
log "1000-sample batches: 2 s warm-up, ${LOAD_S} s measured"
FA_SEQ_BASE=100000000 run_wrk warm-batch -t2 -c8 -d2s -s bench/batch.lua "$URL"
before=$(stored_samples)
FA_SEQ_BASE=500000000 run_wrk batch -t2 -c8 -d"${LOAD_S}s" --latency -s bench/batch.lua "$URL"
sleep 0.5
batch_stored=$(( $(stored_samples) - before ))
hwm_kb=$(rss_kb VmHWM)
rss_after_kb=$(rss_kb VmRSS)
stop_server

# Bytes per sample as the API stored them (interleaved builds, the bench's values).
read -r api_samples api_sample_bytes < <(python3 - "$dir/api.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
n = c.execute("SELECT count(*) FROM samples").fetchone()[0]
b = c.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'sample_rows'").fetchone()[0]
print(n, b)
PY
)

# --- 5. seeded database: 10M samples, 1M builds --------------------------
log "seeding $SEED_SAMPLES samples / $SEED_BUILDS builds (python3 bench/seed.py)"
"$BIN" purge --database-url "sqlite://$dir/big.db" --retention-days 30 >/dev/null 2>>"$dir/server.log"
seed_out=$(timeout "$SEED_TIMEOUT" python3 bench/seed.py "$dir/big.db" --builds "$SEED_BUILDS" --samples "$SEED_SAMPLES")
echo "   $seed_out" >&2
# The seeder writes without fsync: flush its ~0.5 GB now, or the kernel's
# writeback of it lands in the stats measurement below (p99 3-6x higher).
sync "$dir/big.db"
log "SQLite, seeded database: stats latency"
start_server "$dir/big.db"
big_total=$(curl -fsS -m 30 "$URL/api/stats" | jq .totalBuilds)
run_wrk warm-stats-big -t1 -c1 -d2s "$URL/api/stats"
run_wrk stats-big -t1 -c1 -d"${STATS_S}s" --latency "$URL/api/stats"
big_rss_kb=$(rss_kb VmRSS)
stop_server

compare_row "sqlite" "$(f single rps)" "$(f single p50)" "$(f single p99)" "$(f single non2xx)" \
  "$(calc "printf \"%.0f\", $(f batch rps) * 1000")" "$(f stats-empty p50)" "$(f stats-empty p99)" \
  "$(f stats-big p50)" "$(f stats-big p99)" "$big_total" "$sqlite_cpu"
}

# ==========================================================================
# Postgres: N controllers on one database.
# ==========================================================================
pg_start() {
  command -v psql >/dev/null || { echo "psql is missing (apt-get install postgresql-client)" >&2; exit 1; }
  pg_dir="$dir/pg"
  # The cluster runs as the postgres user when we are root: let it reach
  # its folder inside ours.
  chmod 711 "$dir"
  local port
  port=$(free_port)
  log "starting a Postgres cluster on 127.0.0.1:$port (scripts/postgres.sh)"
  timeout 300 scripts/postgres.sh start "$pg_dir" "$port" >"$dir/pg-url" 2>>"$dir/pg-start.log" \
    || { cat "$dir/pg-start.log" >&2; exit 1; }
  PG_BASE=$(sed 's#/[^/]*$##' "$dir/pg-url")
  pg_version=$(psql -X -qAt "$PG_BASE/postgres" -c 'SHOW server_version')
}

pg_sql() { # DB SQL
  timeout 120 psql -X -q -v ON_ERROR_STOP=1 "$PG_BASE/$1" -c "$2" >/dev/null
}

# A fresh database, migrated by the controller's own `purge` (as on start).
pg_fresh_db() { # NAME
  pg_sql postgres "DROP DATABASE IF EXISTS $1"
  pg_sql postgres "CREATE DATABASE $1"
  timeout 120 "$BIN" purge --database-url "$PG_BASE/$1" --retention-days 30 >/dev/null 2>>"$dir/server.log"
}

# Commits in DB, and the cluster's WAL fsyncs and bytes so far.
pg_counters() { # DB
  psql -X -qAt -F ' ' "$PG_BASE/postgres" -c "SELECT
    (SELECT xact_commit FROM pg_stat_database WHERE datname = '$1'), wal_sync, wal_bytes
    FROM pg_stat_wal"
}

pg_seeded=""
pg_seed_once() {
  [ -z "$pg_seeded" ] || return 0
  log "seeding $SEED_SAMPLES samples / $SEED_BUILDS builds into Postgres (bench/seed_postgres.sql)"
  pg_fresh_db big
  pg_seed_out=$(timeout "$SEED_TIMEOUT" psql -X -q -v builds="$SEED_BUILDS" -v samples="$SEED_SAMPLES" \
    -v workers=100 -v days=20 -f bench/seed_postgres.sql "$PG_BASE/big" 2>"$dir/seed-postgres.err") \
    || { echo "seeding Postgres failed or took over ${SEED_TIMEOUT} s:" >&2; cat "$dir/seed-postgres.err" >&2; exit 1; }
  echo "   $pg_seed_out" >&2
  pg_seeded=1
}
pg_seed() { tr ' ' '\n' <<<"$pg_seed_out" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

bench_postgres() { # N
  local n=$1 m="pg$1" before cpu0 pgcpu0 busy0 ctl_cpu pg_cpu
  [ -n "$pg_dir" ] || pg_start
  log "Postgres, $n controller(s), empty database: stats latency"
  pg_fresh_db "bench_$n"
  start_servers "$PG_BASE/bench_$n" "$n"
  run_wrk "$m-warm-stats" -t1 -c1 -d2s "$URL/api/stats"
  run_wrk "$m-stats-empty" -t1 -c1 -d"${STATS_S}s" --latency "$URL/api/stats"

  log "registering $NBUILDS workers, claiming on controller k mod $n"
  register_builds

  log "single-sample telemetry over $n controller(s): 3 s warm-up, ${LOAD_S} s measured"
  spread_wrk "$m-warm-single" 0 "$SINGLE_CONNS" 3 telemetry.lua
  before=$(stored_samples)
  sleep 2  # Postgres publishes a backend's counters up to 1 s after it goes idle
  local c0 c1
  read -r -a c0 < <(pg_counters "bench_$n")
  cpu0=$(cpu_seconds "${servers[@]}"); pgcpu0=$(cpu_seconds $(pg_pids)); busy0=$(machine_busy)
  spread_wrk "$m-single" 30000000 "$SINGLE_CONNS" "$LOAD_S" telemetry.lua --latency
  ctl_cpu=$(calc "printf \"%.1f\", $(cpu_seconds "${servers[@]}") - $cpu0")
  pg_cpu=$(calc "printf \"%.1f\", $(cpu_seconds $(pg_pids)) - $pgcpu0")
  pg_busy=$(calc "printf \"%.0f\", ($(machine_busy) - $busy0) / $LOAD_S * 100")
  sleep 2
  read -r -a c1 < <(pg_counters "bench_$n")
  local single_stored_n batch_stored_n
  single_stored_n=$(( $(stored_samples) - before ))

  log "1000-sample batches over $n controller(s): 2 s warm-up, ${LOAD_S} s measured"
  spread_wrk "$m-warm-batch" 100000000 "$BATCH_CONNS" 2 batch.lua
  before=$(stored_samples)
  spread_wrk "$m-batch" 500000000 "$BATCH_CONNS" "$LOAD_S" batch.lua --latency
  sleep 0.5
  batch_stored_n=$(( $(stored_samples) - before ))
  local sreq breq bbad ssock bsock
  sreq=$(spread_field "$m-single" requests); breq=$(spread_field "$m-batch" requests)
  bbad=$(spread_field "$m-batch" non2xx)
  ssock=$(spread_field "$m-single" sockerr); bsock=$(spread_field "$m-batch" sockerr)
  local commits=$((c1[0] - c0[0])) fsyncs=$((c1[1] - c0[1])) walb=$((c1[2] - c0[2]))
  echo "postgres:$n: single-sample $sreq requests, $single_stored_n samples stored" \
    "($(verdict "$single_stored_n >= $sreq")) in $commits commits" \
    "($(calc "printf \"%.1f\", $sreq / ($commits ? $commits : 1)")/commit)," \
    "$fsyncs WAL fsyncs ($(calc "printf \"%.1f\", $sreq / ($fsyncs ? $fsyncs : 1)")/fsync)," \
    "$(calc "printf \"%.0f\", $walb / ($sreq ? $sreq : 1)") WAL bytes/request; batches $breq requests, ${bbad:-0} non-2xx," \
    "$batch_stored_n samples stored ($(verdict "${bbad:-0} == 0 && $batch_stored_n >= $breq * 1000"))" \
    "${ssock:+socket errors, single-sample: $ssock; }${bsock:+socket errors, batches: $bsock}" >>"$dir/compare-extra"
  stop_servers

  pg_seed_once
  log "Postgres, $n controller(s), seeded database: stats latency (first controller)"
  start_servers "$PG_BASE/big" "$n"
  local total
  total=$(curl -fsS -m 30 "$URL/api/stats" | jq .totalBuilds)
  run_wrk "$m-warm-stats-big" -t1 -c1 -d2s "$URL/api/stats"
  run_wrk "$m-stats-big" -t1 -c1 -d"${STATS_S}s" --latency "$URL/api/stats"
  stop_servers

  local sf="spread_field $m-single" bf="spread_field $m-batch"
  compare_row "postgres:$n" "$($sf rps)" "$($sf p50)" "$($sf p99)" "$($sf non2xx)" \
    "$(calc "printf \"%.0f\", $($bf rps) * 1000")" "$(f "$m-stats-empty" p50)" "$(f "$m-stats-empty" p99)" \
    "$(f "$m-stats-big" p50)" "$(f "$m-stats-big" p99)" "$total" \
    "$pg_busy% busy; controllers $ctl_cpu s, postgres $pg_cpu s"
}

[ -z "$want_sqlite" ] || bench_sqlite
for n in ${pg_modes[@]+"${pg_modes[@]}"}; do bench_postgres "$n"; done

# --- 6. the page (optional) ----------------------------------------------
page_out=""
if [ "${BENCH_PAGE:-1}" != 0 ] && ls target/site/pkg/*.wasm >/dev/null 2>&1 && [ -x bench/page.sh ]; then
  log "bench/page.sh"
  page_out=$(FREEAGENT_BIN="$BIN" bench/page.sh 2>&1) || page_out="bench/page.sh failed: $(tail -n 3 <<<"$page_out")"
fi

# --- the tables ----------------------------------------------------------
pg_targets=()
echo
echo "Free Agent controller benchmark, $started_at, commit $commit"
echo "host: $(nproc) cores ($host_cpu), loopback; wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'); ${LOAD_S} s per load run"
[ -z "$pg_dir" ] || echo "postgres: $pg_version, scripts/postgres.sh defaults (fsync on, synchronous_commit on), 127.0.0.1"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "$want_sqlite" ]; then
s_rps=$(f single rps); s_p50=$(f single p50); s_p99=$(f single p99); s_req=$(f single requests)
s_bad=$(f single non2xx); s_sock=$(f single sockerr)
b_rps=$(f batch rps); b_p50=$(f batch p50); b_p99=$(f batch p99); b_req=$(f batch requests)
b_bad=$(f batch non2xx); b_sock=$(f batch sockerr)
e_p50=$(f stats-empty p50); e_p99=$(f stats-empty p99); e_rps=$(f stats-empty rps)
g_p50=$(f stats-big p50); g_p99=$(f stats-big p99); g_rps=$(f stats-big rps)
seed() { tr ' ' '\n' <<<"$seed_out" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

samples_per_s=$(calc "printf \"%.0f\", $b_rps * 1000")
ratio50=$(calc "printf \"%.2f\", $g_p50 / $e_p50")
ratio99=$(calc "printf \"%.2f\", $g_p99 / $e_p99")
seeded_bps=$(calc "printf \"%.1f\", ($(seed size_with_samples) - $(seed size_empty)) / $(seed samples)")
seeded_dbstat=$(calc "printf \"%.1f\", $(seed samples_dbstat_bytes) / $(seed samples)")
api_bps=$(calc "printf \"%.1f\", $api_sample_bytes / $api_samples")

row() { printf '%-48s %-38s %-22s %s\n' "$@"; }
echo
echo "SQLite, one controller:"
row "figure" "measured" "target" "verdict"
row "------------------------------------------------" "--------------------------------------" "----------------------" "-------"
row "single-sample telemetry, 64 conn (wrk -t2)" "$(calc "printf \"%.0f req/s\", $s_rps")" ">= 8,000 req/s" "$(verdict "$s_rps >= 8000")"
row "  latency p50 / p99" "${s_p50} ms / ${s_p99} ms" "p99 <= 20 ms" "$(verdict "$s_p99 <= 20")"
row "  answers" "$s_req done, ${s_bad:-0} non-2xx" "all 2xx" "$(verdict "${s_bad:-0} == 0 && \"${s_sock}\" == \"\"")"
row "  samples stored (snapshotCount delta)" "$single_stored (each request a new seq)" ">= requests done" "$(verdict "$single_stored >= $s_req")"
[ -n "$s_sock" ] && row "  socket errors" "$s_sock" "" ""
row "1000-sample batches, 8 conn (wrk -t2)" "$(calc "printf \"%.0f samples/s\", $samples_per_s")" ">= 200,000 samples/s" "$(verdict "$samples_per_s >= 200000")"
row "  batches/s, latency p50 / p99" "$(calc "printf \"%.1f\", $b_rps")/s, ${b_p50} ms / ${b_p99} ms" "" ""
row "  answers; samples stored" "$b_req done, ${b_bad:-0} non-2xx; $batch_stored" "all 2xx" "$(verdict "${b_bad:-0} == 0 && \"${b_sock}\" == \"\" && $batch_stored >= $b_req * 1000")"
[ -n "$b_sock" ] && row "  socket errors" "$b_sock" "" ""
row "stats, empty DB, 1 conn, ttl 0: p50 / p99" "${e_p50} ms / ${e_p99} ms ($(calc "printf \"%.0f\", $e_rps")/s)" "" ""
row "stats, $(seed samples) samples / $(seed builds) builds: p50" "${g_p50} ms" "<= 1 ms" "$(verdict "$g_p50 <= 1")"
row "  p99" "${g_p99} ms ($(calc "printf \"%.0f\", $g_rps")/s)" "<= 1 ms" "$(verdict "$g_p99 <= 1")"
row "  ratio seeded / empty, p50" "${ratio50}x" "<= 2x" "$(verdict "$ratio50 <= 2")"
row "  ratio seeded / empty, p99" "${ratio99}x" "<= 2x" "$(verdict "$ratio99 <= 2")"
row "  totalBuilds served from seeded DB" "$big_total" "$(seed builds)" "$(verdict "$big_total == $(seed builds)")"
row "server RSS under telemetry load: VmHWM" "$(mb "$hwm_kb")" "<= 48 MB" "$(verdict "$hwm_kb <= 48 * 1024")"
row "  VmRSS peak (single) / after batches" "$(mb "$rss_single_peak") / $(mb "$rss_after_kb")" "" ""
row "  VmRSS, seeded DB after stats load" "$(mb "$big_rss_kb")" "" ""
row "bytes/sample on disk, seeded (file diff)" "$seeded_bps B (dbstat: $seeded_dbstat B)" "<= 48 B" "$(verdict "$seeded_bps <= 48")"
row "bytes/sample, as ingested by the API above" "$api_bps B ($api_samples samples, dbstat)" "<= 48 B" "$(verdict "$api_bps <= 48")"
echo
echo "seeded samples are agent-shaped (fractional cpuPercent/memoryMb, cpuTimeS, key order);"
echo "API-ingested ones are this benchmark's bodies (no cpuTimeS; seqs in per-thread ranges up to ~7e8,"
echo "so 3-4 bytes each where an agent's small seqs take 1-2), interleaved over $NBUILDS builds."
echo "seeding took $(seed seconds) s; samples stored = snapshotCount growth of the benchmark's builds."
fi

echo
echo "SQLite next to Postgres (single-sample: $SINGLE_CONNS conn; batches: $BATCH_CONNS conn, 1000 samples each;"
echo "stats: 1 conn, --stats-ttl 0s, empty and seeded with $SEED_SAMPLES samples / $SEED_BUILDS builds."
echo "With N controllers the connections are split over N wrk runs at once: req/s, non-2xx"
echo "and samples/s are their sums, p50 and p99 the WORST of the N; stats hit the first controller):"
crow() { printf '%-11s %8s %7s %7s %6s %11s %15s %15s  %s\n' "$@"; }
crow "mode" "req/s" "p50 ms" "p99 ms" "non2xx" "batch smp/s" "stats empty" "stats seeded" "CPU during the single-sample run"
crow "" "" "" "" "" "" "p50/p99 ms" "p50/p99 ms" "(machine busy of 2 cores; CPU s)"
crow "-----------" "--------" "-------" "-------" "------" "-----------" "---------------" "---------------" "--------------------------------"
while IFS=$'\t' read -r mode rps p50 p99 bad bsps e50 e99 g50 g99 total cpu; do
  crow "$mode" "$(calc "printf \"%.0f\", $rps")" "$p50" "$p99" "${bad:-0}" "$bsps" "$e50/$e99" "$g50/$g99" "$cpu"
  # The issue's targets, for Postgres with several controllers.
  case "$mode" in
    postgres:1) ;;
    postgres:*) pg_targets+=("$mode: single-sample $(calc "printf \"%.0f\", $rps") req/s (>= 8,000: $(verdict "$rps >= 8000")), p99 $p99 ms (<= 20: $(verdict "$p99 <= 20")), non-2xx ${bad:-0} ($(verdict "${bad:-0} == 0")), seeded stats p99 $g99 ms (<= 2: $(verdict "$g99 <= 2")), p50 $g50 ms ($(verdict "$g50 <= 2")), totalBuilds $total")
  esac
done <"$dir/compare"
if [ -f "$dir/compare-extra" ]; then
  echo
  cat "$dir/compare-extra"
fi
if [ -n "${pg_seed_out:-}" ]; then
  echo "postgres seeding (bench/seed_postgres.sql): $(pg_seed seconds) s ($(pg_seed samples_seconds) s the samples);" \
    "samples table $(calc "printf \"%.1f\", $(pg_seed samples_relation_bytes) / $(pg_seed samples)") B/sample with its index"
fi
for line in ${pg_targets[@]+"${pg_targets[@]}"}; do echo "target check, $line"; done
