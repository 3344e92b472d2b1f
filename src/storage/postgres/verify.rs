//! Verify on a Postgres database that controllers may be serving.
//!
//! Verify reads in one `REPEATABLE READ READ ONLY` transaction: one
//! snapshot, taking no lock a controller waits on. `--repair` first locks
//! every table a figure lives in, in the module's lock order (builds, then
//! attempts and samples, then the totals and daily rows), in `EXCLUSIVE`
//! mode: controllers keep reading, and each writer waits at its first
//! write until the repair commits, then applies its change on top of the
//! repaired rows. So no change lands between the reads and the fixes, and
//! no lock cycle can form (every writer takes `builds` first).

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use crate::ledger::LedgerDelta;
use crate::storage::verify::{run, stored_ledger, AuditBackend, OperationResult};
use crate::verify::{Report, StoredLedger};

/// Longest `--repair` waits for the controllers' transactions in flight
/// before it gives up rather than stall them behind it.
const REPAIR_LOCK_TIMEOUT: &str = "30s";

crate::storage::verify::audit_rows!(PgConnection);

/// Repairs write to shard 0: the figures are the sums of the shards, so
/// adding each difference to one shard repairs the sum.
impl AuditBackend for PgConnection {
    async fn begin(&mut self, fix: bool) -> OperationResult<()> {
        if fix {
            self.execute("BEGIN").await?;
            self.execute(
                format!(
                    "SET LOCAL lock_timeout = '{REPAIR_LOCK_TIMEOUT}';
                     LOCK TABLE builds, attempts, samples, totals, daily IN EXCLUSIVE MODE"
                )
                .as_str(),
            )
            .await?;
        } else {
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
        }
        Ok(())
    }

    async fn ledger(&mut self) -> OperationResult<StoredLedger> {
        let totals = sqlx::query_as(
            "SELECT COALESCE(sum(builds_pending), 0)::BIGINT, COALESCE(sum(builds_active), 0)::BIGINT,
                    COALESCE(sum(builds_finished), 0)::BIGINT, COALESCE(sum(build_time_ms), 0)::BIGINT,
                    COALESCE(sum(cpu_micros), 0)::BIGINT
             FROM totals",
        )
        .fetch_one(&mut *self)
        .await?;
        let days = sqlx::query_as(
            "SELECT day, sum(builds_finished)::BIGINT, sum(builds_failed)::BIGINT,
                    sum(build_time_ms)::BIGINT, sum(cpu_micros)::BIGINT
             FROM daily GROUP BY day",
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(stored_ledger(totals, days))
    }

    async fn add_to_ledger(&mut self, delta: &LedgerDelta) -> OperationResult<()> {
        let mut ledger = super::Ledger::default();
        ledger.add(delta);
        Ok(ledger.write(self, 0).await?)
    }
}

/// See [`crate::storage::verify::verify`].
pub async fn verify_database(url: &str, fix: bool) -> OperationResult<Report> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("freeagent verify")
        // A chunk of a large history may take more than sqlx's one-second
        // "slow statement" threshold; that is no news.
        .disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    let report = run(&mut conn, fix).await?;
    conn.close().await?;
    Ok(report)
}
