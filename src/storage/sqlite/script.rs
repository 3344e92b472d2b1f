//! Statements whose answers nobody reads, collected and run in order.
//!
//! The writer runs them one by one on its own thread (no hand-off per
//! statement, each statement prepared once and cached); `freeagent verify
//! --repair`, on a sqlx connection, sends them as one multi-statement query,
//! one round trip to that connection's thread. Both run the same text with
//! the same values, so the ledger's SQL exists once.

use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, SqliteConnection};

use crate::builds::{AttemptOutcome, BuildStatus};
use crate::error::Result;

/// A value bound to a statement's `?`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Integer(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Real(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Integer(i64::from(value))
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<BuildStatus> for Value {
    fn from(value: BuildStatus) -> Value {
        Value::from(value.as_str())
    }
}

impl From<AttemptOutcome> for Value {
    fn from(value: AttemptOutcome) -> Value {
        Value::from(value.as_str())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(n) => ValueRef::Integer(*n),
            Value::Real(x) => ValueRef::Real(*x),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

/// One statement and the values of its `?`s, in order.
struct Statement {
    sql: String,
    values: Vec<Value>,
}

/// Statements and their values, run in order.
#[derive(Default)]
pub(super) struct Script {
    statements: Vec<Statement>,
}

impl Script {
    /// Appends one statement whose plain `?` parameters take the next
    /// [`Script::bind`]s in order. Numbered parameters (`?1`) would point at
    /// the whole script's values when it is sent as one query, so they are
    /// not allowed.
    pub fn push(&mut self, sql: &str) -> &mut Script {
        debug_assert!(
            !sql.bytes()
                .zip(sql.bytes().skip(1))
                .any(|(question, digit)| question == b'?' && digit.is_ascii_digit()),
            "numbered parameters do not survive concatenation"
        );
        self.statements.push(Statement {
            sql: sql.to_string(),
            values: Vec::new(),
        });
        self
    }

    /// Binds the next `?` of the last statement pushed.
    pub fn bind(&mut self, value: impl Into<Value>) -> &mut Script {
        if let Some(last) = self.statements.last_mut() {
            last.values.push(value.into());
        }
        self
    }

    /// Runs every statement in order on the writer's connection.
    pub fn run(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        for statement in &self.statements {
            conn.prepare_cached(&statement.sql)?
                .execute(rusqlite::params_from_iter(&statement.values))?;
        }
        Ok(())
    }

    /// Runs every statement in one round trip to a sqlx connection's thread.
    pub async fn run_sqlx(self, conn: &mut SqliteConnection) -> Result<()> {
        if self.statements.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        let mut args = SqliteArguments::default();
        for statement in self.statements {
            sql.push_str(&statement.sql);
            sql.push_str(";\n");
            for value in statement.values {
                let added = match value {
                    Value::Null => args.add(None::<i64>),
                    Value::Integer(n) => args.add(n),
                    Value::Real(x) => args.add(x),
                    Value::Text(text) => args.add(text),
                };
                added.map_err(sqlx::Error::Encode)?;
            }
        }
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both runners write the same rows from the same script.
    #[tokio::test]
    async fn both_runners_write_the_same_rows() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let script = || {
            let mut script = Script::default();
            script
                .push("CREATE TABLE IF NOT EXISTS t (a INTEGER, b REAL, c TEXT)")
                .push("INSERT INTO t VALUES (?, ?, ?)")
                .bind(7_i64)
                .bind(Some(1.5))
                .bind(BuildStatus::Building)
                .push("INSERT INTO t VALUES (?, ?, ?)")
                .bind(None::<i64>)
                .bind(None::<f64>)
                .bind(Some(AttemptOutcome::Requeued));
            script
        };
        let conn = rusqlite::Connection::open(&path).expect("open");
        script().run(&conn).expect("run");
        drop(conn);
        let url = format!("sqlite://{}", path.display());
        let mut conn = SqliteConnection::connect(&url).await.expect("connect");
        script().run_sqlx(&mut conn).await.expect("run_sqlx");
        let rows: Vec<(Option<i64>, Option<f64>, String)> =
            sqlx::query_as("SELECT a, b, c FROM t ORDER BY rowid")
                .fetch_all(&mut conn)
                .await
                .expect("rows");
        let once = vec![
            (Some(7), Some(1.5), "building".to_string()),
            (None, None, "requeued".to_string()),
        ];
        assert_eq!(rows, [once.clone(), once].concat());
    }
}
