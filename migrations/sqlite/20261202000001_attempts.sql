-- Attempts: each run of a build (a requeue by the lease reaper or a release
-- by its worker starts the next) is accounted on its own. Its worker numbers
-- its samples from 1 and its cpuTimeS counter starts from its own zero, so
-- the idempotency key becomes (build, attempt, seq) and a build's CPU
-- seconds the sum over its attempts.
--
-- Existing samples become attempt 1, and each build's existing CPU figures
-- move to its attempt 1, so every figure stays what it was.

-- One row per attempt a worker was handed (and attempt 1 of builds that
-- were requeued before this table existed, whose worker is unknown).
CREATE TABLE attempts (
    build_id           INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,
    worker_id          INTEGER,
    assigned_at        INTEGER,
    -- When and how it ended: completed, failed, cancelled, requeued or
    -- released; both NULL while it runs.
    ended_at           INTEGER,
    outcome            TEXT,
    -- The attempt's CPU accounting in integer microseconds (see
    -- stats::accounting): the sum of its percent-based samples and the
    -- largest cpuTimeS it sent.
    cpu_percent_micros INTEGER NOT NULL DEFAULT 0,
    cpu_counter_micros INTEGER,
    PRIMARY KEY (build_id, attempt)
) WITHOUT ROWID;

-- Attempt 1 takes every build's existing figures. Its worker and times are
-- known only while the build is still at attempt 1.
INSERT INTO attempts (build_id, attempt, worker_id, assigned_at, ended_at, outcome,
                      cpu_percent_micros, cpu_counter_micros)
SELECT id, 1,
       CASE WHEN attempt = 1 THEN worker_id END,
       CASE WHEN attempt = 1 THEN assigned_at END,
       CASE WHEN attempt = 1 AND status IN ('completed', 'failed', 'cancelled') THEN completed_at END,
       CASE WHEN attempt > 1 THEN 'requeued'
            WHEN status IN ('completed', 'failed', 'cancelled') THEN status END,
       cpu_percent_micros, cpu_counter_micros
FROM builds
WHERE worker_id IS NOT NULL OR attempt > 1 OR snapshot_count > 0;

-- The attempt a worker holds (or held last) on builds past their first.
INSERT INTO attempts (build_id, attempt, worker_id, assigned_at, ended_at, outcome)
SELECT id, attempt, worker_id, assigned_at,
       CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN completed_at END,
       CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN status END
FROM builds
WHERE attempt > 1 AND worker_id IS NOT NULL;

-- A build keeps only the sum over its attempts.
ALTER TABLE builds ADD COLUMN cpu_micros INTEGER NOT NULL DEFAULT 0;
UPDATE builds SET cpu_micros = coalesce(cpu_counter_micros, cpu_percent_micros);
ALTER TABLE builds DROP COLUMN cpu_percent_micros;
ALTER TABLE builds DROP COLUMN cpu_counter_micros;

-- Samples keyed by (build, attempt, seq). An attempt of 1 costs no byte of
-- payload in SQLite's record format (it has its own type code).
DROP VIEW samples;
CREATE TABLE sample_rows_by_attempt (
    build_id          INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    sampled_at        INTEGER NOT NULL,
    cpu_percent       NOT NULL,
    memory_mb         NOT NULL,
    cpu_time_s,
    interval_s        INTEGER,
    received_after_ms INTEGER NOT NULL,
    PRIMARY KEY (build_id, attempt, seq)
) WITHOUT ROWID;
INSERT INTO sample_rows_by_attempt
SELECT build_id, 1, seq, sampled_at, cpu_percent, memory_mb, cpu_time_s, interval_s,
       received_after_ms
FROM sample_rows;
DROP TABLE sample_rows;
ALTER TABLE sample_rows_by_attempt RENAME TO sample_rows;

CREATE VIEW samples AS
SELECT build_id, attempt, seq, sampled_at,
       CASE typeof(cpu_percent) WHEN 'integer' THEN cpu_percent / 100.0 ELSE cpu_percent END
           AS cpu_percent,
       CASE typeof(memory_mb) WHEN 'integer' THEN memory_mb / 1024.0 ELSE memory_mb END
           AS memory_mb,
       CASE typeof(cpu_time_s) WHEN 'integer' THEN cpu_time_s / 100.0 ELSE cpu_time_s END
           AS cpu_time_s,
       coalesce(interval_s, 5) AS interval_s,
       sampled_at + received_after_ms AS received_at
FROM sample_rows;

CREATE TABLE sample_tombstones_by_attempt (
    build_id INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (build_id, attempt, seq)
) WITHOUT ROWID;
INSERT INTO sample_tombstones_by_attempt SELECT build_id, 1, seq FROM sample_tombstones;
DROP TABLE sample_tombstones;
ALTER TABLE sample_tombstones_by_attempt RENAME TO sample_tombstones;
