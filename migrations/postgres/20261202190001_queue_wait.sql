-- Time to a machine (queueWaitP50Ms, queueWaitP95Ms): how many builds were
-- first assigned in each UTC minute (`slot`) with a queue wait in each
-- log-scale bucket (src/stats/queue_wait.rs), sharded like `totals`: a
-- claim adds to its transaction's shard, so concurrent claims with similar
-- waits do not queue on one row. Claims delete the minutes that left the
-- 24-hour window, so this holds at most one day of claims. Builds
-- claimed before this migration are not counted: the window fills within a
-- day.
CREATE TABLE queue_wait_slots (
    slot    BIGINT NOT NULL,
    shard   SMALLINT NOT NULL CHECK (shard >= 0 AND shard < 16),
    bucket  INTEGER NOT NULL,
    builds  BIGINT NOT NULL,
    PRIMARY KEY (slot, shard, bucket)
);
