-- Workers: one row per registered machine. The token is kept only as its SHA-256.
CREATE TABLE workers (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    platforms     TEXT    NOT NULL, -- JSON array of platform names
    cpu_cores     INTEGER NOT NULL,
    memory_mb     INTEGER NOT NULL,
    token_hash    BLOB    NOT NULL UNIQUE,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE INDEX workers_last_seen ON workers (last_seen_at);

-- Builds, with their per-build telemetry aggregates, which outlive retention.
CREATE TABLE builds (
    id                  INTEGER PRIMARY KEY,
    status              TEXT    NOT NULL,
    platform            TEXT    NOT NULL,
    label               TEXT,
    worker_id           INTEGER REFERENCES workers (id),
    attempt             INTEGER NOT NULL DEFAULT 1,
    submitted_at        INTEGER NOT NULL,
    assigned_at         INTEGER,
    started_at          INTEGER,
    completed_at        INTEGER,
    error               TEXT,
    token_hash          BLOB    NOT NULL UNIQUE,
    -- CPU accounting in integer microseconds (see stats::accounting).
    cpu_percent_micros  INTEGER NOT NULL DEFAULT 0,
    cpu_counter_micros  INTEGER,
    peak_memory_mb      REAL,
    snapshot_count      INTEGER NOT NULL DEFAULT 0,
    newest_sampled_at   INTEGER,
    newest_cpu_percent  REAL,
    -- Set once retention removed raw samples of a build that still takes telemetry.
    has_tombstones      INTEGER NOT NULL DEFAULT 0,
    -- When the oldest raw sample still stored arrived: retention's work list,
    -- so that it needs no index on every sample.
    oldest_raw_received_at INTEGER
);
CREATE INDEX builds_queue ON builds (status, platform, id);
CREATE INDEX builds_raw_age ON builds (oldest_raw_received_at) WHERE oldest_raw_received_at IS NOT NULL;

-- Raw samples. (build_id, seq) is the idempotency key.
CREATE TABLE samples (
    build_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    sampled_at  INTEGER NOT NULL,
    cpu_percent REAL    NOT NULL,
    memory_mb   REAL    NOT NULL,
    cpu_time_s  REAL,
    interval_s  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;

-- Keys of samples that retention removed while their build still accepts
-- telemetry, so that a replay of them stays a duplicate.
CREATE TABLE sample_tombstones (
    build_id INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;

-- Non-sample events of the legacy worker body.
CREATE TABLE build_events (
    id          INTEGER PRIMARY KEY,
    build_id    INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    data        TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX build_events_received ON build_events (received_at);

-- Network-wide running totals, one row, kept in the transaction of every
-- write that changes them so that reading the figures never scans history.
CREATE TABLE totals (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    builds_pending      INTEGER NOT NULL,
    builds_active       INTEGER NOT NULL,
    builds_finished     INTEGER NOT NULL,
    build_time_ms       INTEGER NOT NULL,
    cpu_micros          INTEGER NOT NULL
);
INSERT INTO totals VALUES (1, 0, 0, 0, 0, 0);

-- Per UTC day (days since the epoch) figures of the builds that finished that day.
CREATE TABLE daily (
    day             INTEGER PRIMARY KEY,
    builds_finished INTEGER NOT NULL DEFAULT 0,
    builds_failed   INTEGER NOT NULL DEFAULT 0,
    build_time_ms   INTEGER NOT NULL DEFAULT 0,
    cpu_micros      INTEGER NOT NULL DEFAULT 0
);
