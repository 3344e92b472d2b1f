//! Storing telemetry: a batch of requests is one transaction of a handful
//! of statements (lock the builds, load their attempts, look up
//! tombstones, insert the samples, update the attempts and the builds, the
//! ledger), each carrying the whole batch as arrays, with the same answers
//! and figures as storing the requests one by one in arrival order.

use std::collections::HashSet;

use futures::FutureExt;
use sqlx::PgConnection;

use super::builds::{load_attempts, lock_builds};
use super::{Database, Ledger};
use crate::error::Result;
use crate::storage::TelemetryRequest;
use crate::telemetry::batch::{build_ids, AttemptUpdate, BuildUpdate, Candidate, Plan, SampleKey};
use crate::wire::{StoredSnapshot, TelemetryAnswer};

impl Database {
    /// Stores the requests in one transaction, under the locks of their
    /// builds: a replay reaching another controller at the same moment
    /// waits, then finds its samples stored and counts as a duplicate.
    pub async fn store_telemetry(
        &self,
        requests: Vec<TelemetryRequest>,
        grace_ms: i64,
    ) -> Result<Vec<Result<TelemetryAnswer>>> {
        let shard = self.shard();
        self.transaction(move |conn| store_batch(conn, requests, grace_ms, shard).boxed())
            .await
    }

    /// A build's stored samples, oldest first.
    pub async fn snapshots(&self, build_id: i64) -> Result<Vec<StoredSnapshot>> {
        Ok(sqlx::query_as::<_, StoredSnapshot>(
            "SELECT attempt, seq, sampled_at, cpu_percent, memory_mb, cpu_time_s, interval_s
             FROM samples WHERE build_id = $1 ORDER BY sampled_at, attempt, seq",
        )
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn store_batch(
    conn: &mut PgConnection,
    requests: Vec<TelemetryRequest>,
    grace_ms: i64,
    shard: i16,
) -> Result<Vec<Result<TelemetryAnswer>>> {
    let ids = build_ids(&requests);
    let builds = lock_builds(conn, &ids).await?;
    let attempts = load_attempts(conn, &ids).await?;
    let mut plan = Plan::new(requests, builds, attempts, grace_ms);
    for event in &plan.events {
        sqlx::query(
            "INSERT INTO build_events (build_id, type, at, data, received_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event.build_id)
        .bind(&event.kind)
        .bind(event.at)
        .bind(&event.data)
        .bind(event.received_at)
        .execute(&mut *conn)
        .await?;
    }
    let maybe_tombstoned: Vec<SampleKey> = plan
        .candidates
        .iter()
        .filter(|c| c.check_tombstone)
        .map(Candidate::key)
        .collect();
    if !maybe_tombstoned.is_empty() {
        let tombstoned = tombstoned(conn, &maybe_tombstoned).await?;
        plan.drop_tombstoned(&tombstoned);
    }
    let stored = insert_samples(conn, &plan.candidates).await?;
    let settled = plan.settle(&stored);
    update_attempts(conn, &settled.attempts).await?;
    update_builds(conn, &settled.builds).await?;
    let mut ledger = Ledger::default();
    for delta in &settled.ledger {
        ledger.add(delta);
    }
    ledger.write(conn, shard).await?;
    Ok(settled.answers)
}

/// The keys among `keys` that retention left a tombstone for.
async fn tombstoned(conn: &mut PgConnection, keys: &[SampleKey]) -> Result<HashSet<SampleKey>> {
    let rows: Vec<SampleKey> = sqlx::query_as(
        "SELECT t.build_id, t.attempt, t.seq FROM sample_tombstones t
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS k (build_id, attempt, seq)
           ON t.build_id = k.build_id AND t.attempt = k.attempt AND t.seq = k.seq",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Stores the candidates in one statement; returns the (build, attempt,
/// seq) keys actually inserted, i.e. not seen before.
async fn insert_samples(
    conn: &mut PgConnection,
    candidates: &[Candidate],
) -> Result<HashSet<SampleKey>> {
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    let column = |f: &dyn Fn(&Candidate) -> i64| candidates.iter().map(f).collect::<Vec<i64>>();
    let real = |f: &dyn Fn(&Candidate) -> f64| candidates.iter().map(f).collect::<Vec<f64>>();
    let inserted: Vec<SampleKey> = sqlx::query_as(
        "INSERT INTO samples (build_id, attempt, seq, sampled_at, received_at, interval_s,
                              cpu_percent, memory_mb, cpu_time_s)
         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                              $5::BIGINT[], $6::BIGINT[], $7::DOUBLE PRECISION[],
                              $8::DOUBLE PRECISION[], $9::DOUBLE PRECISION[])
         ON CONFLICT (build_id, attempt, seq) DO NOTHING
         RETURNING build_id, attempt, seq",
    )
    .bind(column(&|c| c.build_id))
    .bind(column(&|c| c.attempt))
    .bind(column(&|c| c.sample.seq))
    .bind(column(&|c| c.sample.sampled_at))
    .bind(column(&|c| c.received_at))
    .bind(column(&|c| c.sample.interval_s))
    .bind(real(&|c| c.sample.cpu_percent))
    .bind(real(&|c| c.sample.memory_mb))
    .bind(
        candidates
            .iter()
            .map(|c| c.sample.cpu_time_s)
            .collect::<Vec<Option<f64>>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Writes the changed builds' figures in one statement.
async fn update_builds(conn: &mut PgConnection, builds: &[BuildUpdate]) -> Result<()> {
    if builds.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE builds SET cpu_micros = builds.cpu_micros + v.cpu_delta,
           peak_memory_mb = v.peak_memory_mb,
           snapshot_count = builds.snapshot_count + v.accepted,
           newest_sampled_at = coalesce(v.newest_at, builds.newest_sampled_at),
           newest_cpu_percent = coalesce(v.newest_cpu_percent, builds.newest_cpu_percent),
           oldest_raw_received_at = coalesce(builds.oldest_raw_received_at, v.first_received)
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::DOUBLE PRECISION[], $4::BIGINT[],
                     $5::BIGINT[], $6::DOUBLE PRECISION[], $7::BIGINT[])
              AS v (id, cpu_delta, peak_memory_mb, accepted, newest_at, newest_cpu_percent,
                    first_received)
         WHERE builds.id = v.id",
    )
    .bind(builds.iter().map(|b| b.id).collect::<Vec<_>>())
    .bind(builds.iter().map(|b| b.cpu_delta).collect::<Vec<_>>())
    .bind(builds.iter().map(|b| b.peak_memory_mb).collect::<Vec<_>>())
    .bind(builds.iter().map(|b| b.accepted).collect::<Vec<_>>())
    .bind(
        builds
            .iter()
            .map(|b| b.newest.map(|n| n.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        builds
            .iter()
            .map(|b| b.newest.map(|n| n.1))
            .collect::<Vec<_>>(),
    )
    .bind(builds.iter().map(|b| b.first_received).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes the changed attempts' CPU accounting in one statement.
async fn update_attempts(conn: &mut PgConnection, attempts: &[AttemptUpdate]) -> Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE attempts SET cpu_percent_micros = v.percent_micros,
           cpu_counter_micros = v.counter_micros
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[])
              AS v (build_id, attempt, percent_micros, counter_micros)
         WHERE attempts.build_id = v.build_id AND attempts.attempt = v.attempt",
    )
    .bind(attempts.iter().map(|a| a.build_id).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>())
    .bind(
        attempts
            .iter()
            .map(|a| a.cpu.percent_micros)
            .collect::<Vec<_>>(),
    )
    .bind(
        attempts
            .iter()
            .map(|a| a.cpu.counter_micros)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
