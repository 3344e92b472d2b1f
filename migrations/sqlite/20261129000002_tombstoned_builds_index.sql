-- Retention looks up builds that hold tombstones on every pass; without this
-- index that was a scan of every build (~85 ms at a million builds) inside
-- the writer's transaction.
CREATE INDEX builds_tombstoned ON builds (completed_at) WHERE has_tombstones = 1;
