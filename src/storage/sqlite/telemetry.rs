//! Storing telemetry: a batch of requests costs a handful of statements
//! (one to load the builds and one their attempts, one insert per 250
//! samples, then the updates of the attempts, the builds and the ledger),
//! with the same answers and figures as storing them one by one in arrival
//! order.

use std::collections::HashSet;

use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::OptionalExtension;

use super::builds::{load_attempts, load_builds};
use super::figures::push_ledger;
use super::script::Script;
use super::Database;
use crate::error::Result;
use crate::storage::TelemetryRequest;
use crate::telemetry::batch::{build_ids, AttemptUpdate, BuildUpdate, Candidate, Plan, SampleKey};
use crate::telemetry::DEFAULT_INTERVAL_S;
use crate::wire::{StoredSnapshot, TelemetryAnswer};

/// Rows per multi-row insert: 9 parameters each stays far below SQLite's
/// limit of 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 250;
/// Builds (or attempts) per multi-row update: at most 8 parameters each.
const BUILDS_PER_UPDATE: usize = 250;

impl Database {
    /// A build's stored samples, oldest first.
    pub async fn snapshots(&self, build_id: i64) -> Result<Vec<StoredSnapshot>> {
        Ok(sqlx::query_as::<_, StoredSnapshot>(
            "SELECT attempt, seq, sampled_at, cpu_percent, memory_mb, cpu_time_s, interval_s
             FROM samples WHERE build_id = ? ORDER BY sampled_at, attempt, seq",
        )
        .bind(build_id)
        .fetch_all(&self.reads)
        .await?)
    }
}

pub(super) fn store_batch(
    conn: &rusqlite::Connection,
    requests: Vec<TelemetryRequest>,
    grace_ms: i64,
) -> Result<Vec<Result<TelemetryAnswer>>> {
    let ids = build_ids(&requests);
    let attempts = load_attempts(conn, &ids)?;
    let builds = load_builds(conn, &ids)?;
    let mut plan = Plan::new(requests, builds, attempts, grace_ms);
    if !plan.events.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT INTO build_events (build_id, type, at, data, received_at) VALUES (?, ?, ?, ?, ?)",
        )?;
        for event in &plan.events {
            insert.execute(rusqlite::params![
                event.build_id,
                event.kind,
                event.at,
                event.data,
                event.received_at
            ])?;
        }
    }
    let mut tombstoned = HashSet::new();
    for candidate in plan.candidates.iter().filter(|c| c.check_tombstone) {
        let (build, attempt, seq) = candidate.key();
        if is_tombstoned(conn, build, attempt, seq)? {
            tombstoned.insert(candidate.key());
        }
    }
    plan.drop_tombstoned(&tombstoned);
    let stored = insert_samples(conn, &plan.candidates)?;
    let settled = plan.settle(&stored);
    let mut script = Script::default();
    push_attempt_updates(&mut script, &settled.attempts);
    push_build_updates(&mut script, &settled.builds);
    for delta in &settled.ledger {
        push_ledger(&mut script, delta);
    }
    script.run(conn)?;
    Ok(settled.answers)
}

/// Adds the changed builds' figures to `script`: one statement per
/// [`BUILDS_PER_UPDATE`] builds.
fn push_build_updates(script: &mut Script, builds: &[BuildUpdate]) {
    for chunk in builds.chunks(BUILDS_PER_UPDATE) {
        let mut sql = String::from(
            "UPDATE builds SET cpu_micros = cpu_micros + v.column2,
               peak_memory_mb = v.column3, snapshot_count = snapshot_count + v.column4,
               newest_sampled_at = coalesce(v.column5, newest_sampled_at),
               newest_cpu_percent = coalesce(v.column6, newest_cpu_percent),
               oldest_raw_received_at = coalesce(oldest_raw_received_at, v.column7)
             FROM (VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?,?,?,?,?,?,?)");
        sql.push_str(") AS v WHERE builds.id = v.column1");
        script.push(&sql);
        for build in chunk {
            script
                .bind(build.id)
                .bind(build.cpu_delta)
                .bind(build.peak_memory_mb)
                .bind(build.accepted)
                .bind(build.newest.map(|n| n.0))
                .bind(build.newest.map(|n| n.1))
                .bind(build.first_received);
        }
    }
}

/// Adds the changed attempts' CPU accounting to `script`: one statement per
/// [`BUILDS_PER_UPDATE`] attempts.
fn push_attempt_updates(script: &mut Script, attempts: &[AttemptUpdate]) {
    for chunk in attempts.chunks(BUILDS_PER_UPDATE) {
        let mut sql = String::from(
            "UPDATE attempts SET cpu_percent_micros = v.column3, cpu_counter_micros = v.column4
             FROM (VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?,?,?,?)");
        sql.push_str(") AS v WHERE attempts.build_id = v.column1 AND attempts.attempt = v.column2");
        script.push(&sql);
        for attempt in chunk {
            script
                .bind(attempt.build_id)
                .bind(attempt.attempt)
                .bind(attempt.cpu.percent_micros)
                .bind(attempt.cpu.counter_micros);
        }
    }
}

fn push_rows(sql: &mut String, rows: usize, row: &str) {
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
}

/// A measurement as `sample_rows` keeps it (see its migration): the integer
/// `value * scale` when dividing that by `scale` gives back exactly `value`
/// (1 to 4 bytes on disk where a REAL takes 8), else `value` itself.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    /// `value * scale`, exactly.
    Scaled(i64),
    /// The value as sent.
    Exact(f64),
}

/// `cpuPercent` and `cpuTimeS` are kept in hundredths when exact.
const HUNDREDTHS: f64 = 100.0;
/// `memoryMb` is kept in KiB when exact (the agent measures whole pages).
const KIB_PER_MIB: f64 = 1024.0;

impl Stored {
    /// How `value` is written with this `scale`.
    fn new(value: f64, scale: f64) -> Stored {
        let scaled = (value * scale).round();
        // SQLite decodes with `n / scale` in doubles, the same division.
        if scaled.abs() < 9.0e15 && scaled / scale == value {
            Stored::Scaled(scaled as i64)
        } else {
            Stored::Exact(value)
        }
    }
}

impl rusqlite::ToSql for Stored {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Owned(match *self {
            Stored::Scaled(n) => SqlValue::Integer(n),
            Stored::Exact(x) => SqlValue::Real(x),
        }))
    }
}

/// Stores the candidates with one statement per [`ROWS_PER_INSERT`];
/// returns the (build, attempt, seq) keys actually inserted, i.e. not seen before.
fn insert_samples(
    conn: &rusqlite::Connection,
    candidates: &[Candidate],
) -> Result<HashSet<SampleKey>> {
    let mut inserted = HashSet::with_capacity(candidates.len());
    for chunk in candidates.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT OR IGNORE INTO sample_rows (build_id, attempt, seq, sampled_at, cpu_percent,
             memory_mb, cpu_time_s, interval_s, received_after_ms) VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?,?,?,?,?,?,?,?,?)");
        sql.push_str(" RETURNING build_id, attempt, seq");
        let mut values: Vec<Box<dyn rusqlite::ToSql>> = Vec::with_capacity(chunk.len() * 9);
        for Candidate {
            build_id,
            attempt,
            sample,
            received_at,
            ..
        } in chunk
        {
            values.push(Box::new(*build_id));
            values.push(Box::new(*attempt));
            values.push(Box::new(sample.seq));
            values.push(Box::new(sample.sampled_at));
            values.push(Box::new(Stored::new(sample.cpu_percent, HUNDREDTHS)));
            values.push(Box::new(Stored::new(sample.memory_mb, KIB_PER_MIB)));
            values.push(Box::new(
                sample.cpu_time_s.map(|t| Stored::new(t, HUNDREDTHS)),
            ));
            values.push(Box::new(
                (sample.interval_s != DEFAULT_INTERVAL_S).then_some(sample.interval_s),
            ));
            values.push(Box::new(received_at - sample.sampled_at));
        }
        // One sample per request is the fleet's shape, so most statements
        // are small and repeat: the cache keeps them prepared.
        let mut statement = conn.prepare_cached(&sql)?;
        let keys = statement.query_map(rusqlite::params_from_iter(&values), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        for key in keys {
            inserted.insert(key?);
        }
    }
    Ok(inserted)
}

fn is_tombstoned(conn: &rusqlite::Connection, id: i64, attempt: i64, seq: i64) -> Result<bool> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM sample_tombstones WHERE build_id = ? AND attempt = ? AND seq = ?",
        )?
        .query_row([id, attempt, seq], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agent-shaped numbers become small integers; anything that would not
    /// read back exactly stays a REAL.
    #[test]
    fn stored_measurements_read_back_exactly() {
        assert_eq!(Stored::new(153.2, HUNDREDTHS), Stored::Scaled(15320));
        assert_eq!(Stored::new(312.75, HUNDREDTHS), Stored::Scaled(31275));
        assert_eq!(Stored::new(2048.5, KIB_PER_MIB), Stored::Scaled(2_097_664));
        assert_eq!(
            Stored::new(257.0 * 4096.0 / 1_048_576.0, KIB_PER_MIB),
            Stored::Scaled(1028)
        );
        assert_eq!(Stored::new(0.123, HUNDREDTHS), Stored::Exact(0.123));
        assert_eq!(Stored::new(100.3, KIB_PER_MIB), Stored::Exact(100.3));
        assert_eq!(Stored::new(1e17, HUNDREDTHS), Stored::Exact(1e17));
        for value in [0.07, 0.29, 1.15, 99.99, 4.35, 1234.56, 0.01] {
            let Stored::Scaled(n) = Stored::new(value, HUNDREDTHS) else {
                panic!("{value} is in hundredths");
            };
            assert_eq!(n as f64 / HUNDREDTHS, value);
        }
    }
}
