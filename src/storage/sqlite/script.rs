//! Several statements sent to the connection's thread as one.
//!
//! Every sqlx statement is a round trip to the connection's own thread, and
//! at fleet-shaped load those hand-offs, not SQLite, are most of the
//! controller's CPU. A transition's writes (the build, its attempt, the
//! totals, the day, the queue wait) need no answer, so they go as one
//! script: sqlx binds plain `?` parameters across its statements in order.

use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Sqlite, SqliteConnection};

use crate::error::Result;

/// Statements and their arguments, run in order by one round trip.
#[derive(Default)]
pub(super) struct Script {
    sql: String,
    args: SqliteArguments<'static>,
    statements: usize,
    /// The first argument that could not be encoded (none can today: every
    /// value is an integer, a float, text or bytes); reported by `run`.
    broken: Option<sqlx::error::BoxDynError>,
}

impl Script {
    /// Appends one statement whose plain `?` parameters take the next
    /// [`Script::bind`]s in order. Numbered parameters (`?1`) would point at
    /// the whole script's arguments, so they are not allowed.
    pub fn push(&mut self, statement: &str) -> &mut Script {
        debug_assert!(
            !statement.contains("?1"),
            "numbered parameters do not survive concatenation"
        );
        self.sql.push_str(statement);
        self.sql.push_str(";\n");
        self.statements += 1;
        self
    }

    pub fn bind<T>(&mut self, value: T) -> &mut Script
    where
        T: 'static + Send + sqlx::Encode<'static, Sqlite> + sqlx::Type<Sqlite>,
    {
        if let Err(error) = self.args.add(value) {
            self.broken.get_or_insert(error);
        }
        self
    }

    /// Runs every statement in one round trip; nothing when empty.
    pub async fn run(self, conn: &mut SqliteConnection) -> Result<()> {
        if let Some(error) = self.broken {
            return Err(sqlx::Error::Encode(error).into());
        }
        if self.statements == 0 {
            return Ok(());
        }
        sqlx::query_with(&self.sql, self.args)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
