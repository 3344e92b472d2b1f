//! Verify and backup on a SQLite file that a controller may be serving.
//!
//! Verify reads in one read transaction: in WAL mode that is a snapshot,
//! and the controller's writer goes on meanwhile. `--repair` instead takes
//! the write lock first (`BEGIN IMMEDIATE`, waiting on the busy timeout as
//! the controller's writer does), so that nothing changes between the
//! reads and the fixes. Backup is `VACUUM INTO`, itself one read
//! transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, SqliteConnection};

use super::figures::apply_ledger;
use crate::ledger::LedgerDelta;
use crate::storage::verify::{run, stored_ledger, AuditBackend, OperationError, OperationResult};
use crate::verify::{Report, StoredLedger};

/// Opens the existing database file at `url`; never creates one.
async fn connect_existing(url: &str) -> OperationResult<SqliteConnection> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        // As long as the controller's own writer waits for the lock.
        .busy_timeout(Duration::from_secs(10))
        // Reading a chunk of a large history may take more than sqlx's
        // one-second "slow statement" threshold; that is no news.
        .disable_statement_logging();
    let path = options.get_filename();
    if !path.is_file() {
        return Err(OperationError::Missing(path.to_path_buf()));
    }
    Ok(SqliteConnection::connect_with(&options).await?)
}

crate::storage::verify::audit_rows!(SqliteConnection);

impl AuditBackend for SqliteConnection {
    async fn begin(&mut self, fix: bool) -> OperationResult<()> {
        // A deferred BEGIN takes its snapshot at the first read and keeps it.
        self.execute(if fix { "BEGIN IMMEDIATE" } else { "BEGIN" })
            .await?;
        Ok(())
    }

    async fn ledger(&mut self) -> OperationResult<StoredLedger> {
        let totals = sqlx::query_as(
            "SELECT builds_pending, builds_active, builds_finished, build_time_ms, cpu_micros
             FROM totals WHERE id = 1",
        )
        .fetch_one(&mut *self)
        .await?;
        let days = sqlx::query_as(
            "SELECT day, builds_finished, builds_failed, build_time_ms, cpu_micros FROM daily",
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(stored_ledger(totals, days))
    }

    async fn add_to_ledger(&mut self, delta: &LedgerDelta) -> OperationResult<()> {
        Ok(apply_ledger(self, delta).await?)
    }
}

/// See [`crate::storage::verify::verify`].
pub async fn verify_database(url: &str, fix: bool) -> OperationResult<Report> {
    let mut conn = connect_existing(url).await?;
    let report = run(&mut conn, fix).await?;
    conn.close().await?;
    Ok(report)
}

/// See [`crate::storage::verify::backup`]. `VACUUM INTO` copies one read
/// snapshot while the controller goes on writing; the copy is then made
/// durable before this returns.
pub async fn backup_database(url: &str, file: &Path) -> OperationResult<()> {
    let mut conn = connect_existing(url).await?;
    let target = file.to_string_lossy().into_owned();
    sqlx::query("VACUUM INTO $1")
        .bind(&target)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let path = file.to_path_buf();
    tokio::task::spawn_blocking(move || sync_file_and_folder(&path))
        .await
        .map_err(|join| OperationError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(join),
        })?
}

/// fsyncs the file, and its folder so that its name is durable too.
fn sync_file_and_folder(path: &Path) -> OperationResult<()> {
    let io = |source| OperationError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(folder)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
    }
    Ok(())
}
