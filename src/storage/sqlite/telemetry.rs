//! Storing telemetry: a batch of requests costs a handful of statements
//! (one to load the builds and one their attempts, one insert per 250
//! samples, one update each of the attempts, the builds and the totals),
//! with the same answers and figures as storing them one by one in arrival
//! order.
//!
//! Every sqlx statement is a round trip to the connection's thread; stored
//! one request at a time, 64 connections of single-sample telemetry spent
//! most of their time in those hand-offs (a third of both cores idle).

use std::collections::{HashMap, HashSet};

use futures::FutureExt;
use sqlx::SqliteConnection;

use super::builds::{load_attempts, load_builds};
use super::figures::apply_ledger;
use super::Database;
use crate::builds::{telemetry_attempt, AttemptRow, BuildRow};
use crate::error::{AppError, Result};
use crate::ledger::{day_of, DayDelta, LedgerDelta, TotalsDelta};
use crate::stats::accounting::AttemptCpu;
use crate::storage::TelemetryRequest;
use crate::telemetry::{check_ranges, Bounds, TelemetryBody, DEFAULT_INTERVAL_S};
use crate::wire::{Rejection, Snapshot, StoredSnapshot, TelemetryAnswer};

/// Rows per multi-row insert: 9 parameters each stays far below SQLite's
/// limit of 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 250;
/// Builds (or attempts) per multi-row update: at most 8 parameters each.
const BUILDS_PER_UPDATE: usize = 250;

impl Database {
    /// Stores the requests as one writer job. Every refusal happens before
    /// the job's first write, and a database error fails the whole group
    /// (see [`super::Writer::write_checked`]).
    pub async fn store_telemetry(
        &self,
        requests: Vec<TelemetryRequest>,
        grace_ms: i64,
    ) -> Result<Vec<Result<TelemetryAnswer>>> {
        self.writer
            .write_checked(move |conn| store_batch(conn, requests, grace_ms).boxed())
            .await
    }

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

/// A build's figures as the batch changes them, in arrival order.
struct BuildProgress {
    row: BuildRow,
    /// Every attempt of the build.
    attempts: Vec<AttemptProgress>,
    accepted: i64,
    /// `sampledAt` and `cpuPercent` of the newest sample this batch stored,
    /// when newer than every sample stored before.
    newest: Option<(i64, f64)>,
    /// When the first accepted sample of this batch arrived.
    first_received: Option<i64>,
}

/// One attempt's figures as the batch changes them.
struct AttemptProgress {
    row: AttemptRow,
    /// Its CPU time before this batch, µs.
    cpu_before: i64,
    /// Seqs offered to the insert by this batch (the first offer wins).
    offered: HashSet<i64>,
    accepted: i64,
}

impl AttemptProgress {
    /// How much this batch changed the attempt's CPU time, µs.
    fn cpu_delta(&self) -> i64 {
        self.row.cpu().micros() - self.cpu_before
    }
}

/// A sample that passed every check, waiting for the insert's verdict.
struct Candidate {
    request: usize,
    build_id: i64,
    attempt: i64,
    sample: Snapshot,
    received_at: i64,
}

async fn store_batch(
    conn: &mut SqliteConnection,
    requests: Vec<TelemetryRequest>,
    grace_ms: i64,
) -> Result<Vec<Result<TelemetryAnswer>>> {
    let mut ids: Vec<i64> = requests.iter().map(|r| r.build_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut attempts: HashMap<i64, Vec<AttemptProgress>> = HashMap::new();
    for row in load_attempts(conn, &ids).await? {
        attempts
            .entry(row.build_id)
            .or_default()
            .push(AttemptProgress {
                cpu_before: row.cpu().micros(),
                offered: HashSet::new(),
                accepted: 0,
                row,
            });
    }
    let mut builds: HashMap<i64, BuildProgress> = load_builds(conn, &ids)
        .await?
        .into_iter()
        .map(|row| {
            let progress = BuildProgress {
                attempts: attempts.remove(&row.id).unwrap_or_default(),
                accepted: 0,
                newest: None,
                first_received: None,
                row,
            };
            (progress.row.id, progress)
        })
        .collect();

    let mut answers = Vec::with_capacity(requests.len());
    let mut candidates = Vec::new();
    for (request, incoming) in requests.into_iter().enumerate() {
        let Some(build) = builds.get_mut(&incoming.build_id) else {
            answers.push(Err(AppError::unknown_build()));
            continue;
        };
        let held = telemetry_attempt(
            &build.row,
            build.attempts.iter().map(|a| &a.row),
            incoming.worker.id,
            incoming.now,
            grace_ms,
        )
        .map(|a| (a.attempt, a.assigned_at));
        let (attempt_number, attempt_assigned_at) = match held {
            Ok(held) => held,
            Err(refusal) => {
                answers.push(Err(refusal));
                continue;
            }
        };
        let samples = match incoming.body {
            TelemetryBody::Event { kind, at, data } => {
                sqlx::query(
                    "INSERT INTO build_events (build_id, type, at, data, received_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(incoming.build_id)
                .bind(kind)
                .bind(at)
                .bind(data)
                .bind(incoming.now)
                .execute(&mut *conn)
                .await?;
                answers.push(Ok(TelemetryAnswer::default()));
                continue;
            }
            TelemetryBody::Samples(samples) => samples,
        };
        let bounds = Bounds {
            cpu_cores: incoming.worker.cpu_cores,
            memory_mb: incoming.worker.memory_mb,
            assigned_at: attempt_assigned_at.unwrap_or(build.row.submitted_at),
            now: incoming.now,
        };
        let has_tombstones = build.row.has_tombstones;
        let Some(attempt) = build
            .attempts
            .iter_mut()
            .find(|a| a.row.attempt == attempt_number)
        else {
            answers.push(Err(AppError::Unavailable));
            continue;
        };
        let mut answer = TelemetryAnswer::default();
        for (index, sample) in samples.into_iter().enumerate() {
            match sample.and_then(|s| check_ranges(&s, &bounds).map(|()| s)) {
                Ok(sample) if !attempt.offered.insert(sample.seq) => answer.duplicates += 1,
                Ok(sample)
                    if has_tombstones
                        && is_tombstoned(conn, incoming.build_id, attempt_number, sample.seq)
                            .await? =>
                {
                    answer.duplicates += 1;
                }
                Ok(sample) => candidates.push(Candidate {
                    request,
                    build_id: incoming.build_id,
                    attempt: attempt_number,
                    sample,
                    received_at: incoming.now,
                }),
                Err(error) => answer.rejected.push(Rejection { index, error }),
            }
        }
        answers.push(Ok(answer));
    }

    let inserted = insert_samples(conn, &candidates).await?;
    for candidate in candidates {
        let Some(Ok(answer)) = answers.get_mut(candidate.request) else {
            continue;
        };
        let Some(build) = builds.get_mut(&candidate.build_id) else {
            continue;
        };
        let key = (candidate.build_id, candidate.attempt, candidate.sample.seq);
        if !inserted.contains(&key) {
            answer.duplicates += 1;
            continue;
        }
        answer.accepted += 1;
        build.accept(candidate.attempt, &candidate.sample, candidate.received_at);
    }

    let changed: Vec<&BuildProgress> = builds.values().filter(|b| b.accepted > 0).collect();
    update_attempts(conn, &changed).await?;
    update_builds(conn, &changed).await?;
    for build in changed {
        if let (true, Some(done)) = (build.row.status.is_finished(), build.row.completed_at) {
            let day = DayDelta {
                cpu_micros: build.cpu_delta(),
                ..DayDelta::default()
            };
            let delta = LedgerDelta {
                day: Some((day_of(done), day)),
                ..LedgerDelta::default()
            };
            apply_ledger(conn, &delta).await?;
        }
    }
    Ok(answers)
}

impl BuildProgress {
    /// How much this batch changed the build's CPU time, µs: the sum of
    /// its attempts' changes.
    fn cpu_delta(&self) -> i64 {
        self.attempts.iter().map(AttemptProgress::cpu_delta).sum()
    }

    /// Folds a newly stored sample of `attempt` into the attempt's and the
    /// build's figures, as SPEC defines them.
    fn accept(&mut self, attempt: i64, sample: &Snapshot, received_at: i64) {
        if let Some(progress) = self.attempts.iter_mut().find(|a| a.row.attempt == attempt) {
            let mut cpu: AttemptCpu = progress.row.cpu();
            cpu.add_sample(sample.cpu_percent, sample.interval_s, sample.cpu_time_s);
            progress.row.set_cpu(cpu);
            progress.accepted += 1;
        }
        let row = &mut self.row;
        self.accepted += 1;
        row.peak_memory_mb = Some(
            row.peak_memory_mb
                .map_or(sample.memory_mb, |p| p.max(sample.memory_mb)),
        );
        // "Newest" is the largest sampledAt; of equal ones, the first stored.
        let newest_at = self.newest.map(|(at, _)| at).or(row.newest_sampled_at);
        if newest_at.is_none_or(|at| sample.sampled_at > at) {
            self.newest = Some((sample.sampled_at, sample.cpu_percent));
        }
        self.first_received.get_or_insert(received_at);
    }
}

/// Writes the changed builds' figures and the network's CPU total: one
/// statement list per [`BUILDS_PER_UPDATE`] builds.
async fn update_builds(conn: &mut SqliteConnection, builds: &[&BuildProgress]) -> Result<()> {
    let mut cpu_delta = 0;
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
        let mut query = sqlx::query(&sql);
        for build in chunk {
            let newest = build.newest;
            let build_cpu_delta = build.cpu_delta();
            cpu_delta += build_cpu_delta;
            query = query
                .bind(build.row.id)
                .bind(build_cpu_delta)
                .bind(build.row.peak_memory_mb)
                .bind(build.accepted)
                .bind(newest.map(|n| n.0))
                .bind(newest.map(|n| n.1))
                .bind(build.first_received);
        }
        query.execute(&mut *conn).await?;
    }
    let totals = TotalsDelta {
        cpu_micros: cpu_delta,
        ..TotalsDelta::default()
    };
    apply_ledger(conn, &LedgerDelta { totals, day: None }).await
}

/// Writes the changed attempts' CPU accounting: one statement per
/// [`BUILDS_PER_UPDATE`] attempts.
async fn update_attempts(conn: &mut SqliteConnection, builds: &[&BuildProgress]) -> Result<()> {
    let changed: Vec<&AttemptRow> = builds
        .iter()
        .flat_map(|b| b.attempts.iter().filter(|a| a.accepted > 0).map(|a| &a.row))
        .collect();
    for chunk in changed.chunks(BUILDS_PER_UPDATE) {
        let mut sql = String::from(
            "UPDATE attempts SET cpu_percent_micros = v.column3, cpu_counter_micros = v.column4
             FROM (VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?,?,?,?)");
        sql.push_str(") AS v WHERE attempts.build_id = v.column1 AND attempts.attempt = v.column2");
        let mut query = sqlx::query(&sql);
        for attempt in chunk {
            query = query
                .bind(attempt.build_id)
                .bind(attempt.attempt)
                .bind(attempt.cpu_percent_micros)
                .bind(attempt.cpu_counter_micros);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
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

impl sqlx::Type<sqlx::Sqlite> for Stored {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <f64 as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for Stored {
    fn encode_by_ref(
        &self,
        args: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self {
            Stored::Scaled(n) => <i64 as sqlx::Encode<sqlx::Sqlite>>::encode_by_ref(n, args),
            Stored::Exact(x) => <f64 as sqlx::Encode<sqlx::Sqlite>>::encode_by_ref(x, args),
        }
    }
}

/// Stores the candidates with one statement per [`ROWS_PER_INSERT`];
/// returns the (build, attempt, seq) keys actually inserted, i.e. not seen before.
async fn insert_samples(
    conn: &mut SqliteConnection,
    candidates: &[Candidate],
) -> Result<HashSet<(i64, i64, i64)>> {
    let mut inserted = HashSet::with_capacity(candidates.len());
    for chunk in candidates.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT OR IGNORE INTO sample_rows (build_id, attempt, seq, sampled_at, cpu_percent,
             memory_mb, cpu_time_s, interval_s, received_after_ms) VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?,?,?,?,?,?,?,?,?)");
        sql.push_str(" RETURNING build_id, attempt, seq");
        let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
        for Candidate {
            build_id,
            attempt,
            sample,
            received_at,
            ..
        } in chunk
        {
            query = query
                .bind(build_id)
                .bind(attempt)
                .bind(sample.seq)
                .bind(sample.sampled_at)
                .bind(Stored::new(sample.cpu_percent, HUNDREDTHS))
                .bind(Stored::new(sample.memory_mb, KIB_PER_MIB))
                .bind(sample.cpu_time_s.map(|t| Stored::new(t, HUNDREDTHS)))
                .bind((sample.interval_s != DEFAULT_INTERVAL_S).then_some(sample.interval_s))
                .bind(received_at - sample.sampled_at);
        }
        inserted.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(inserted)
}

async fn is_tombstoned(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    seq: i64,
) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sample_tombstones WHERE build_id = ? AND attempt = ? AND seq = ?",
    )
    .bind(id)
    .bind(attempt)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?;
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
