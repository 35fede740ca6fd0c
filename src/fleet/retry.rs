//! Connections and retries. Promise: an operation either completes once on
//! the server or fails with a typed error; a dropped connection, a server
//! restart or `pg_terminate_backend` is retried with capped exponential
//! backoff on a fresh connection, up to the retry budget. Every operation
//! the fleet retries is idempotent on the server side (fenced, keyed, or
//! harmless to repeat), so a reply lost after the commit never causes a
//! duplicate: at worst a claim whose reply was lost leaves a lease that
//! expires.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::error::{Error, Result};
use super::FleetOptions;

/// Why an attempt failed.
pub(crate) enum Failure {
    /// Worth another attempt on a fresh connection.
    Transient(String),
    /// Final.
    Fatal(Error),
}

pub(crate) fn classify(what: &'static str, e: &tokio_postgres::Error) -> Failure {
    if e.is_closed() {
        return Failure::Transient(e.to_string());
    }
    match e.code() {
        None => Failure::Transient(e.to_string()),
        Some(code) => {
            let c = code.code();
            let transient = c.starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::QUERY_CANCELED;
            if transient {
                Failure::Transient(e.to_string())
            } else {
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                Failure::Fatal(Error::Database {
                    what,
                    code: c.to_string(),
                    message,
                })
            }
        }
    }
}

/// The pool plus the retry policy.
pub(crate) struct Conn {
    pool: Pool,
    opts: FleetOptions,
    round_trips: AtomicU64,
}

impl Conn {
    pub(crate) fn new(url: &str, opts: FleetOptions) -> Result<Conn> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::BadUrl(e.to_string()))?;
        cfg.connect_timeout(opts.statement_timeout);
        if cfg.get_application_name().is_none() {
            cfg.application_name("agentwal-fleet");
        }
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size)
            .build()
            .map_err(|e| Error::InvalidOptions(format!("connection pool: {e}")))?;
        Ok(Conn {
            pool,
            opts,
            round_trips: AtomicU64::new(0),
        })
    }

    pub(crate) fn opts(&self) -> &FleetOptions {
        &self.opts
    }

    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Counts `n` round trips made by the current attempt.
    pub(crate) fn count(&self, n: u64) {
        self.round_trips.fetch_add(n, Ordering::Relaxed);
    }

    /// Runs `f` on a pooled connection, retrying transient failures with
    /// backoff on fresh connections until the retry budget is spent.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(Object) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let began = Instant::now();
        let mut attempts = 0u32;
        let mut delay = Duration::from_millis(20);
        loop {
            attempts += 1;
            let last =
                match tokio::time::timeout(self.opts.statement_timeout, self.pool.get()).await {
                    Err(_) => "timed out waiting for a connection".to_string(),
                    Ok(Err(PoolError::Backend(e))) => match classify(what, &e) {
                        Failure::Transient(m) => m,
                        Failure::Fatal(e) => return Err(e),
                    },
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(client)) => {
                        match tokio::time::timeout(self.opts.statement_timeout, f(client)).await {
                            Ok(Ok(v)) => return Ok(v),
                            Ok(Err(e)) => match classify(what, &e) {
                                Failure::Transient(m) => m,
                                Failure::Fatal(e) => return Err(e),
                            },
                            // The statement may still commit: every retried
                            // operation is idempotent on the server.
                            Err(_) => "statement timed out".to_string(),
                        }
                    }
                };
            let elapsed = began.elapsed();
            if elapsed + delay > self.opts.retry_budget {
                return Err(Error::Unavailable {
                    what,
                    attempts,
                    elapsed,
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

impl Conn {
    /// One prepared (cached per connection) statement, retried as [`Conn::run`].
    pub(crate) async fn query(
        &self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.run(what, |c| async move {
            let st = c.prepare_cached(sql).await?;
            self.count(1);
            c.query(&st, params).await
        })
        .await
    }

    /// Like [`Conn::query`], expecting exactly one row with one text column.
    pub(crate) async fn query_text(
        &self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<String> {
        let rows = self.query(what, sql, params).await?;
        let row = rows.first().ok_or_else(|| Error::Protocol {
            what,
            detail: "no row returned".into(),
        })?;
        row.try_get::<_, String>(0).map_err(|e| Error::Protocol {
            what,
            detail: e.to_string(),
        })
    }
}
