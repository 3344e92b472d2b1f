-- Time to a machine (queueWaitP50Ms, queueWaitP95Ms): how many builds were
-- first assigned in each UTC minute (`slot`) with a queue wait in each
-- log-scale bucket (src/stats/queue_wait.rs). Claims add to their minute's
-- row and delete the minutes that left the 24-hour window, so this holds
-- at most one day of claims. Builds claimed before this migration are not
-- counted: the window fills within a day.
CREATE TABLE queue_wait_slots (
    slot    INTEGER NOT NULL,
    bucket  INTEGER NOT NULL,
    builds  INTEGER NOT NULL,
    PRIMARY KEY (slot, bucket)
) WITHOUT ROWID;
