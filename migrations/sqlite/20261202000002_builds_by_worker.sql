-- Heartbeats list a worker's cancelled builds: find them without a scan of
-- every build.
CREATE INDEX builds_worker ON builds (worker_id, status) WHERE worker_id IS NOT NULL;
