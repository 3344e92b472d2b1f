#!/usr/bin/env python3
"""Seeds a migrated, empty Free Agent SQLite database with finished builds and
their raw samples, directly (the API would take hours for 10 million rows),
for bench/controller.sh.

The database must already carry the schema (bench/controller.sh runs
`freeagent purge` on a fresh file, which creates and migrates it) and must not
be open in a controller. Everything the controller keeps up to date on every
write is set consistently with the rows written, the way the controller
itself would have: each build's one attempt with its CPU accounting
(cpu_percent_micros, cpu_counter_micros), per-build aggregates (cpu_micros,
peak_memory_mb, snapshot_count, newest_*, oldest_raw_received_at), the
single `totals` row and the `daily` rows.

Samples look like the agent's: fractional cpuPercent and memoryMb, a
cumulative cpuTimeS, intervalS 5, received within the retention window (so
that retention does not start deleting them while the benchmark runs).

Prints one line of `key=value` pairs: the file size before and after the
samples (checkpointed, -wal included), the sample_rows table's bytes by dbstat,
and the counts written.

    python3 bench/seed.py DB_PATH [--builds N] [--samples N] [--workers N]
"""

import argparse
import hashlib
import os
import sqlite3
import sys
import time

MS_PER_DAY = 86_400_000
INTERVAL_S = 5
CPU_CORES = 8
MEMORY_MB = 32_768


def stored(value, scale):
    """A measurement as the controller writes it into sample_rows (see
    migrations/*_compact_samples.sql and ingest::Stored): the integer
    value * scale when dividing that by scale gives back exactly value,
    else the value itself."""
    if value is None:
        return None
    n = round(value * scale)
    if abs(n) < 9e15 and n / scale == value:
        return int(n)
    return value


def file_bytes(path):
    total = os.path.getsize(path)
    for suffix in ("-wal", "-journal"):
        if os.path.exists(path + suffix):
            total += os.path.getsize(path + suffix)
    return total


def checkpointed_size(conn, path):
    conn.commit()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode == "wal":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return file_bytes(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db")
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--days", type=int, default=20,
                        help="builds are spread over this many days up to now")
    args = parser.parse_args()
    builds, samples, workers = args.builds, args.samples, args.workers
    if builds < 1 or samples < 0 or workers < 1:
        sys.exit("builds and workers must be >= 1, samples >= 0")

    started_clock = time.monotonic()
    conn = sqlite3.connect(args.db, isolation_level=None)
    present = conn.execute("SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM samples)"
                           " + (SELECT count(*) FROM workers)").fetchone()[0]
    if present:
        sys.exit(f"{args.db} is not empty; seed a freshly migrated database")
    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    size_empty = file_bytes(args.db)

    # Bulk load only: no journal, no fsync. The controller sets WAL and
    # synchronous=FULL again on its own connections when it opens the file.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute("PRAGMA foreign_keys=OFF")

    now = int(time.time() * 1000)
    # Finished builds spread evenly over the last `days` days, the newest
    # finishing a couple of minutes ago: a real spread of `daily` rows, and
    # every raw sample inside the default 30-day retention window.
    span = args.days * MS_PER_DAY
    step = max(1, span // builds)
    t0 = now - span - 10 * 60_000
    per_build, extra = divmod(samples, builds)

    # Per-build aggregates, filled while the samples are generated (samples
    # go in first, in primary-key order, which WITHOUT ROWID wants).
    agg_percent = [0] * (builds + 1)
    agg_counter = [0] * (builds + 1)
    agg_peak = [0.0] * (builds + 1)
    agg_newest = [0] * (builds + 1)
    agg_newest_pct = [0.0] * (builds + 1)

    def times(i):
        submitted = t0 + i * step
        assigned = submitted + 400
        started = assigned + 150
        return submitted, assigned, started

    def count_of(i):
        return per_build + (1 if i <= extra else 0)

    def completed_at(i):
        return times(i)[2] + count_of(i) * INTERVAL_S * 1000 + 800

    def sample_rows():
        for i in range(1, builds + 1):
            _, _, started = times(i)
            n = count_of(i)
            percent_micros = 0
            counter_hundredths = 0
            peak = 0.0
            pct = 0.0
            sampled = started
            for seq in range(1, n + 1):
                k = (i * 31 + seq * 17) % 4000          # cpuPercent in tenths: 0.0..399.9
                pct = k / 10
                mem = 512 + ((i * 13 + seq * 7) % 16000) / 2  # MiB, halves: 512.0..8511.5
                counter_hundredths += k // 2            # CPU seconds in hundredths, cumulative
                cpu_time = counter_hundredths / 100
                sampled = started + seq * INTERVAL_S * 1000
                percent_micros += k * 5000              # round(k/10 * 5 * 1e4)
                if mem > peak:
                    peak = mem
                # interval_s NULL: the default 5 s; received 120 ms after sampling.
                yield (i, 1, seq, sampled, stored(pct, 100), stored(mem, 1024),
                       stored(cpu_time, 100), None, 120)
            agg_percent[i] = percent_micros
            agg_counter[i] = counter_hundredths * 10_000 if n else None
            agg_peak[i] = peak if n else None
            agg_newest[i] = sampled if n else None
            agg_newest_pct[i] = pct if n else None

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sample_rows (build_id, attempt, seq, sampled_at, cpu_percent, memory_mb,"
        " cpu_time_s, interval_s, received_after_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        sample_rows(),
    )
    conn.execute("COMMIT")
    size_samples = file_bytes(args.db)
    samples_seconds = time.monotonic() - started_clock

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO workers (id, name, platforms, cpu_cores, memory_mb, token_hash,"
        " registered_at, last_seen_at) VALUES (?, ?, '[\"linux\"]', ?, ?, ?, ?, ?)",
        ((w, f"seed-worker-{w}", CPU_CORES, MEMORY_MB,
          hashlib.sha256(f"seed-worker-token-{w}".encode()).digest(),
          t0 - MS_PER_DAY, now - MS_PER_DAY) for w in range(1, workers + 1)),
    )

    daily = {}
    totals = {"finished": 0, "time": 0, "cpu": 0}

    def build_rows():
        for i in range(1, builds + 1):
            submitted, assigned, started = times(i)
            n = count_of(i)
            completed = completed_at(i)
            failed = i % 20 == 0
            counter = agg_counter[i]
            cpu = counter if counter is not None else agg_percent[i]
            build_time = completed - started
            day = completed // MS_PER_DAY
            d = daily.setdefault(day, [0, 0, 0, 0])
            d[0] += 1
            d[1] += failed
            d[2] += build_time
            d[3] += cpu
            totals["finished"] += 1
            totals["time"] += build_time
            totals["cpu"] += cpu
            first_received = started + INTERVAL_S * 1000 + 120 if n else None
            yield (i, "failed" if failed else "completed", "linux", None, (i % workers) + 1, 1,
                   submitted, assigned, started, completed,
                   "build command exited with status 1" if failed else None,
                   hashlib.sha256(b"seed-build-token-%d" % i).digest(),
                   cpu, agg_peak[i], n, agg_newest[i], agg_newest_pct[i],
                   0, first_received)

    conn.executemany(
        "INSERT INTO builds (id, status, platform, label, worker_id, attempt, submitted_at,"
        " assigned_at, started_at, completed_at, error, token_hash, cpu_micros,"
        " peak_memory_mb, snapshot_count, newest_sampled_at,"
        " newest_cpu_percent, has_tombstones, oldest_raw_received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        build_rows(),
    )

    def attempt_rows():
        for i in range(1, builds + 1):
            yield (i, 1, (i % workers) + 1, times(i)[1], completed_at(i),
                   "failed" if i % 20 == 0 else "completed", agg_percent[i], agg_counter[i])

    conn.executemany(
        "INSERT INTO attempts (build_id, attempt, worker_id, assigned_at, ended_at, outcome,"
        " cpu_percent_micros, cpu_counter_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        attempt_rows(),
    )
    conn.executemany(
        "INSERT INTO daily (day, builds_finished, builds_failed, build_time_ms, cpu_micros)"
        " VALUES (?, ?, ?, ?, ?)",
        ((day, *v) for day, v in sorted(daily.items())),
    )
    conn.execute(
        "UPDATE totals SET builds_pending = 0, builds_active = 0, builds_finished = ?,"
        " build_time_ms = ?, cpu_micros = ? WHERE id = 1",
        (totals["finished"], totals["time"], totals["cpu"]),
    )
    conn.execute("COMMIT")

    stored_count = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    try:
        dbstat = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name = 'sample_rows'").fetchone()[0]
    except sqlite3.DatabaseError:
        dbstat = None
    # Back to WAL, as the controller keeps it.
    conn.execute("PRAGMA journal_mode=WAL")
    size_full = checkpointed_size(conn, args.db)
    conn.close()
    print(
        f"builds={builds} samples={stored_count} workers={workers} days={len(daily)}"
        f" size_empty={size_empty} size_with_samples={size_samples} size_full={size_full}"
        f" samples_dbstat_bytes={dbstat if dbstat is not None else 'NA'}"
        f" samples_seconds={samples_seconds:.1f} seconds={time.monotonic() - started_clock:.1f}"
    )


if __name__ == "__main__":
    main()
