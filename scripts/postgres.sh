#!/usr/bin/env bash
# A throwaway Postgres cluster for trying several controllers, benchmarks
# and by-hand checks: never a system service, always 127.0.0.1.
#
#   scripts/postgres.sh start DIR [PORT]   # initdb DIR when new, start, print the database URL
#   scripts/postgres.sh stop DIR           # stop it (DIR stays; rm -rf it to forget the data)
#
# Runs the server as the `postgres` user when invoked as root (Postgres
# refuses to run as root). Installs Debian's postgresql when it is missing.
set -euo pipefail

usage() {
    sed -n '2,8p' "$0" >&2
    exit 2
}

bin_dir() {
    local initdb
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$initdb" ]]; then
        echo "installing Debian's postgresql" >&2
        sudo_if_needed apt-get install -y postgresql >&2
        initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)
    fi
    dirname "$initdb"
}

sudo_if_needed() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

[[ $# -ge 2 ]] || usage
command=$1
dir=$(realpath -m "$2")
port=${3:-55432}
bin=$(bin_dir)

case "$command" in
start)
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    fi
    # fsync stays on: a 2xx from a controller means committed to disk.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >&2
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
        -c "SELECT 1 FROM pg_database WHERE datname = 'freeagent'" | grep -q 1 ||
        as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q \
            -c "CREATE DATABASE freeagent"
    echo "postgres://postgres@127.0.0.1:$port/freeagent"
    ;;
stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    ;;
*)
    usage
    ;;
esac
