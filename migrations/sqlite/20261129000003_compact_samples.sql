-- Raw samples in fewer bytes on disk (bench/controller.sh: 55.9 B per
-- agent-shaped sample before). The three measurements are stored as small
-- integers whenever that is exact, `received_at` as a short offset from
-- `sampled_at`, and the default interval as NULL. Readers keep using
-- `samples`, now a view that decodes, so every value reads back exactly
-- as it was sent.
CREATE TABLE sample_rows (
    build_id          INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    sampled_at        INTEGER NOT NULL,
    -- No declared type, so no affinity: each value keeps the storage class
    -- it was written with. INTEGER n means n / 100 for cpu_percent and
    -- cpu_time_s, n / 1024 (KiB) for memory_mb, written only when that
    -- division gives back exactly the number sent; REAL is the number itself.
    cpu_percent       NOT NULL,
    memory_mb         NOT NULL,
    cpu_time_s,
    -- NULL: the default interval, 5 s.
    interval_s        INTEGER,
    -- received_at - sampled_at, ms.
    received_after_ms INTEGER NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;

INSERT INTO sample_rows
SELECT build_id, seq, sampled_at,
       CASE WHEN CAST(round(cpu_percent * 100) AS INTEGER) / 100.0 = cpu_percent
            THEN CAST(round(cpu_percent * 100) AS INTEGER) ELSE cpu_percent END,
       CASE WHEN CAST(round(memory_mb * 1024) AS INTEGER) / 1024.0 = memory_mb
            THEN CAST(round(memory_mb * 1024) AS INTEGER) ELSE memory_mb END,
       CASE WHEN CAST(round(cpu_time_s * 100) AS INTEGER) / 100.0 = cpu_time_s
            THEN CAST(round(cpu_time_s * 100) AS INTEGER) ELSE cpu_time_s END,
       nullif(interval_s, 5),
       received_at - sampled_at
FROM samples;

DROP TABLE samples;

CREATE VIEW samples AS
SELECT build_id, seq, sampled_at,
       CASE typeof(cpu_percent) WHEN 'integer' THEN cpu_percent / 100.0 ELSE cpu_percent END
           AS cpu_percent,
       CASE typeof(memory_mb) WHEN 'integer' THEN memory_mb / 1024.0 ELSE memory_mb END
           AS memory_mb,
       CASE typeof(cpu_time_s) WHEN 'integer' THEN cpu_time_s / 100.0 ELSE cpu_time_s END
           AS cpu_time_s,
       coalesce(interval_s, 5) AS interval_s,
       sampled_at + received_after_ms AS received_at
FROM sample_rows;
