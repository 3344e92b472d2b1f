-- Seeds a migrated, empty Free Agent Postgres database with finished builds
-- and their raw samples, directly in SQL (the API would take hours for 10
-- million rows), for bench/controller.sh's Postgres mode: the counterpart of
-- bench/seed.py, which writes a SQLite file.
--
--   psql -X -q -v builds=1000000 -v samples=10000000 -v workers=100 -v days=20 \
--        -f bench/seed_postgres.sql postgres://postgres@127.0.0.1:PORT/DB
--
-- The database must carry the schema (`freeagent purge --database-url ...`
-- migrates it) and hold no builds, workers or samples. The samples go in
-- first (generate_series, agent-shaped values: fractional cpuPercent and
-- memoryMb, a cumulative cpuTimeS, intervalS 5, received within the
-- retention window). Everything the controller keeps up to date is then
-- computed FROM those raw rows, the way the controller accounts them
-- (stats/accounting.rs): each attempt's percent- and counter-based CPU
-- micros, the builds' aggregates, and the running totals and daily rows,
-- all added to shard 0 of `totals` / `daily`. The last statements check
-- that consistency and fail the seed when it does not hold.
--
-- Prints one line of key=value pairs, like bench/seed.py.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET work_mem = '256MB';
SET maintenance_work_mem = '512MB';
SET client_min_messages = warning;

SELECT clock_timestamp() AS seed_started \gset
SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM workers)
       + (SELECT count(*) FROM samples) AS present \gset
SELECT :present > 0 AS not_empty \gset
\if :not_empty
DO $$ BEGIN RAISE EXCEPTION 'the database is not empty; seed a freshly migrated one'; END $$;
\endif
SELECT pg_database_size(current_database()) AS size_empty \gset

-- Builds finished evenly over the last :days days, the newest a few
-- minutes ago (as in bench/seed.py).
SELECT (extract(epoch FROM now()) * 1000)::BIGINT AS now_ms \gset
SELECT greatest(1, :days::BIGINT * 86400000 / :builds) AS step,
       :now_ms - :days::BIGINT * 86400000 - 600000 AS t0,
       :samples::BIGINT / :builds AS per_build,
       :samples::BIGINT % :builds AS extra \gset

BEGIN;
INSERT INTO workers (id, name, platforms, cpu_cores, memory_mb, token_hash,
                     registered_at, last_seen_at)
SELECT w, 'seed-worker-' || w, '["linux"]', 8, 32768,
       sha256(convert_to('seed-worker-token-' || w, 'UTF8')),
       :t0 - 86400000, :now_ms - 86400000
FROM generate_series(1, :workers) AS w;

-- Build i starts at t0 + i*step + 550 and samples every 5 s; its seq s
-- is sampled at start + 5 s * s and received 120 ms later.
INSERT INTO samples (build_id, attempt, seq, sampled_at, received_at, interval_s,
                     cpu_percent, memory_mb, cpu_time_s)
SELECT i, 1, s, b.started + s * 5000, b.started + s * 5000 + 120, 5,
       ((i * 31 + s * 17) % 4000)::DOUBLE PRECISION / 10,        -- 0.0 .. 399.9
       512 + ((i * 13 + s * 7) % 16000)::DOUBLE PRECISION / 2,   -- 512.0 .. 8511.5 MiB
       s * ((i % 8) + 1) * 0.5::DOUBLE PRECISION                  -- cumulative CPU seconds
FROM generate_series(1::BIGINT, :builds) AS i
CROSS JOIN LATERAL (SELECT :t0 + i * :step + 550 AS started,
                           :per_build + CASE WHEN i <= :extra THEN 1 ELSE 0 END AS n) b
CROSS JOIN LATERAL generate_series(1::BIGINT, b.n) AS s;
SELECT round(extract(epoch FROM clock_timestamp() - :'seed_started')::NUMERIC, 1) AS samples_seconds \gset

-- Each build's figures from its raw samples, as the controller folds them
-- in (percent: round(cpuPercent * intervalS * 1e4) per sample; counter:
-- the largest round(cpuTimeS * 1e6)).
CREATE TEMP TABLE agg AS
SELECT build_id AS id, count(*) AS n,
       sum(round(cpu_percent * interval_s::DOUBLE PRECISION * 10000::DOUBLE PRECISION)::BIGINT)
           AS percent_micros,
       max(round(cpu_time_s * 1000000::DOUBLE PRECISION)::BIGINT) AS counter_micros,
       max(memory_mb) AS peak, max(sampled_at) AS newest_at,
       min(received_at) AS first_received
FROM samples GROUP BY build_id;
CREATE UNIQUE INDEX ON agg (id);
ANALYZE agg;

CREATE TEMP TABLE seeded AS
SELECT i AS id,
       CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'completed' END AS status,
       (i % :workers) + 1 AS worker_id,
       t.submitted, t.submitted + 400 AS assigned, t.submitted + 550 AS started,
       t.submitted + 550 + coalesce(a.n, 0) * 5000 + 800 AS completed,
       coalesce(a.percent_micros, 0) AS percent_micros, a.counter_micros,
       coalesce(a.counter_micros, a.percent_micros, 0) AS cpu_micros,
       a.peak, coalesce(a.n, 0) AS n, a.newest_at,
       (SELECT cpu_percent FROM samples s
         WHERE s.build_id = i AND s.attempt = 1 AND s.seq = a.n) AS newest_cpu_percent,
       a.first_received
FROM generate_series(1::BIGINT, :builds) AS i
CROSS JOIN LATERAL (SELECT :t0 + i * :step AS submitted) t
LEFT JOIN agg a ON a.id = i;

INSERT INTO builds (id, status, platform, label, worker_id, attempt, submitted_at,
                    assigned_at, started_at, completed_at, error, token_hash, cpu_micros,
                    peak_memory_mb, snapshot_count, newest_sampled_at, newest_cpu_percent,
                    has_tombstones, oldest_raw_received_at)
SELECT id, status, 'linux', NULL, worker_id, 1, submitted, assigned, started, completed,
       CASE WHEN status = 'failed' THEN 'build command exited with status 1' END,
       sha256(convert_to('seed-build-token-' || id, 'UTF8')),
       cpu_micros, peak, n, newest_at, newest_cpu_percent, FALSE, first_received
FROM seeded ORDER BY id;

INSERT INTO attempts (build_id, attempt, worker_id, assigned_at, ended_at, outcome,
                      cpu_percent_micros, cpu_counter_micros)
SELECT id, 1, worker_id, assigned, completed, status, percent_micros, counter_micros
FROM seeded ORDER BY id;

-- The ledger: a build counts on the UTC day it finished, with its build
-- time (completed - started) and CPU micros; all of it on shard 0.
INSERT INTO daily (day, shard, builds_finished, builds_failed, build_time_ms, cpu_micros)
SELECT completed / 86400000, 0, count(*), count(*) FILTER (WHERE status = 'failed'),
       sum(completed - started), sum(cpu_micros)
FROM seeded GROUP BY 1
ON CONFLICT (day, shard) DO UPDATE SET
    builds_finished = daily.builds_finished + excluded.builds_finished,
    builds_failed = daily.builds_failed + excluded.builds_failed,
    build_time_ms = daily.build_time_ms + excluded.build_time_ms,
    cpu_micros = daily.cpu_micros + excluded.cpu_micros;
UPDATE totals SET builds_finished = totals.builds_finished + s.finished,
                  build_time_ms = totals.build_time_ms + s.build_time,
                  cpu_micros = totals.cpu_micros + s.cpu
FROM (SELECT count(*) AS finished, sum(completed - started) AS build_time,
             sum(cpu_micros) AS cpu FROM seeded) s
WHERE totals.shard = 0;

-- Later registrations and submissions get ids after the seeded ones.
SELECT setval(pg_get_serial_sequence('workers', 'id'), :workers) AS workers_seq,
       setval(pg_get_serial_sequence('builds', 'id'), :builds) AS builds_seq \gset
COMMIT;

-- Consistency: the ledger equals the recomputation from the builds, and
-- the builds' sample counts equal the raw rows.
SELECT
  (SELECT sum(builds_finished) FROM totals) = (SELECT count(*) FROM builds
     WHERE status IN ('completed', 'failed'))
  AND (SELECT sum(cpu_micros) FROM totals) = (SELECT sum(cpu_micros) FROM builds)
  AND (SELECT sum(build_time_ms) FROM totals)
      = (SELECT sum(completed_at - started_at) FROM builds)
  AND (SELECT sum(builds_finished) FROM daily) = (SELECT sum(builds_finished) FROM totals)
  AND (SELECT sum(cpu_micros) FROM daily) = (SELECT sum(cpu_micros) FROM totals)
  AND (SELECT sum(snapshot_count) FROM builds) = (SELECT count(*) FROM samples)
  AND (SELECT count(*) FROM samples) = :samples
  AS consistent \gset
\if :consistent
\else
DO $$ BEGIN RAISE EXCEPTION 'the seeded figures do not add up'; END $$;
\endif

-- Set hint bits and the visibility map now, so that neither autovacuum
-- nor first reads rewrite 10 million rows during the measurements.
VACUUM (FREEZE, ANALYZE) samples;
VACUUM (FREEZE, ANALYZE) builds;
VACUUM (ANALYZE) attempts, workers, daily, totals;
CHECKPOINT;

SELECT count(DISTINCT day) AS days_seeded FROM daily \gset
SELECT pg_total_relation_size('samples') AS samples_bytes,
       pg_database_size(current_database()) AS size_full,
       round(extract(epoch FROM clock_timestamp() - :'seed_started')::NUMERIC, 1) AS seconds \gset
\echo builds=:builds samples=:samples workers=:workers days=:days_seeded size_empty=:size_empty size_full=:size_full samples_relation_bytes=:samples_bytes samples_seconds=:samples_seconds seconds=:seconds
