#!/usr/bin/env bash
# Several controllers on one Postgres database, on this machine: starts a
# throwaway Postgres cluster (scripts/postgres.sh) and N `freeagent serve`
# processes on 127.0.0.1:3000, 3001, ... serving its database with one admin
# key, prints their URLs and the agent's command line, and stops all of them
# and the cluster on Ctrl-C (or when they have all exited).
#
#   scripts/controllers.sh               # 2 controllers, cluster in data/postgres
#   scripts/controllers.sh 3             # 3 controllers
#   scripts/controllers.sh 2 /tmp/pg     # cluster in another folder
#
# Environment: FREEAGENT_ADMIN_KEY (else the key in data/admin.key, generated
# there by the first controller when missing, as `freeagent serve` does),
# CONTROLLERS_PORT (first controller's port, 3000), CONTROLLERS_PG_PORT
# (the cluster's, 55432), FREEAGENT_BIN (a built controller; else
# target/release/freeagent, built the way scripts/run.sh does when missing),
# LEPTOS_SITE_ROOT (target/site). Other FREEAGENT_* settings reach every
# controller. The data stays in the cluster's folder; rm -rf it to forget it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N=${1:-2}
PG_DIR=${2:-data/postgres}
FIRST_PORT=${CONTROLLERS_PORT:-3000}
PG_PORT=${CONTROLLERS_PG_PORT:-55432}
[[ "$N" =~ ^[1-9][0-9]?$ ]] || { sed -n '2,18p' "$0" >&2; exit 2; }

BIN=${FREEAGENT_BIN:-$ROOT/target/release/freeagent}
if [[ ! -x "$BIN" ]]; then
    # As scripts/run.sh: install what is missing, build controller and page.
    scripts/setup.sh
    export PATH="$PWD/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"
    cargo leptos build --release
fi
export LEPTOS_SITE_ROOT="${LEPTOS_SITE_ROOT:-target/site}"

pids=()
pg_started=""
stop_all() {
    trap - INT TERM EXIT
    local pid
    for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$pg_started" ]]; then
        echo "stopping the Postgres cluster in $PG_DIR" >&2
        timeout 60 scripts/postgres.sh stop "$PG_DIR" || true
    fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p data
# Postgres runs as the postgres user when we are root: it must reach the
# cluster's folder (scripts/postgres.sh chowns the folder itself only).
if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$(dirname "$(realpath -m "$PG_DIR")")" 2>/dev/null; then
    echo "the postgres user cannot reach $(dirname "$(realpath -m "$PG_DIR")"); give another folder: $0 $N /tmp/freeagent-postgres" >&2
    exit 1
fi
if [[ ! -f "$PG_DIR/data/postmaster.pid" ]] && (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
    echo "port $PG_PORT is taken by another server; choose one with CONTROLLERS_PG_PORT=..." >&2
    exit 1
fi
DATABASE_URL=$(scripts/postgres.sh start "$PG_DIR" "$PG_PORT")
pg_started=1

# start PORT: one controller, its log lines prefixed with its port (the
# prefixing sed ignores Ctrl-C, so the controller's last lines still show).
start() {
    local port=$1
    "$BIN" serve --database-url "$DATABASE_URL" --listen "127.0.0.1:$port" \
        > >(trap '' INT; exec sed -u "s/^/[$port] /") 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do
        curl -fsS -m 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "the controller on port $port did not come up" >&2
    exit 1
}

urls=()
for i in $(seq 0 $((N - 1))); do
    port=$((FIRST_PORT + i))
    # The first one up writes data/admin.key when no key is given; the
    # others then read the same file.
    start "$port"
    urls+=("http://127.0.0.1:$port")
done
controllers=$(IFS=,; echo "${urls[*]}")
if [[ -n "${FREEAGENT_ADMIN_KEY:-}" ]]; then
    key_arg='"$FREEAGENT_ADMIN_KEY"'
else
    key_arg="\"\$(cat $ROOT/data/admin.key)\""
fi

cat <<EOF

$N controllers on $DATABASE_URL:
$(printf '  %s\n' "${urls[@]}")
Admin key: ${FREEAGENT_ADMIN_KEY:+FREEAGENT_ADMIN_KEY}${FREEAGENT_ADMIN_KEY:-$ROOT/data/admin.key}

Lend this machine to them:
  $BIN agent register --controller $controllers --admin-key $key_arg --name my-laptop --platform linux
  $BIN agent --controller $controllers --platform linux --build-command 'make -j4'

Ctrl-C stops the controllers and the cluster.
EOF

# Until Ctrl-C, or until every controller has exited.
for pid in "${pids[@]}"; do wait "$pid" || true; done
