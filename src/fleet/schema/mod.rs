//! Embedded, versioned schema migrations. Promise: `migrate` brings the
//! database to [`LATEST`] exactly once however many workers start at the same
//! time (a transaction-scoped advisory lock serializes them), each migration
//! applies in one transaction (all of it or none), and a database newer than
//! this build is refused with [`Error::SchemaTooNew`] instead of being used.

use super::error::{Error, Result};
use super::retry::Conn;

/// One migration: its version, a name, and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number (1, 2, ...), applied in order.
    pub version: i32,
    /// Short name, recorded in `agentwal_fleet_schema`.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: &'static str,
}

/// Every migration this build knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "queue, key store and their functions",
    sql: include_str!("v1.sql"),
}];

/// The newest schema version this build knows.
pub const LATEST: i32 = 1;

/// An arbitrary constant for `pg_advisory_xact_lock` ("agentwal" in ASCII).
const LOCK_ID: i64 = 0x6167_656e_7477_616c;

/// Applies the missing migrations; returns the version the database is at.
pub(crate) async fn migrate(conn: &Conn) -> Result<i32> {
    let found = conn
        .run("schema migration", |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS agentwal_fleet_schema (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM agentwal_fleet_schema",
                    &[],
                )
                .await?;
            let current: i32 = row.get(0);
            if current > LATEST {
                tx.rollback().await?;
                return Ok(current);
            }
            for m in MIGRATIONS.iter().filter(|m| m.version > current) {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO agentwal_fleet_schema (version, name) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(current.max(LATEST))
        })
        .await?;
    if found > LATEST {
        return Err(Error::SchemaTooNew {
            found,
            known: LATEST,
        });
    }
    Ok(found)
}
