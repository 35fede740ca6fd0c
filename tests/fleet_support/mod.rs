//! Shared by the fleet tests (`tests/fleet_*.rs`): a real PostgreSQL server
//! from the environment, or a clearly reported skip.
//!
//! * `AGENTWAL_PG_URL` — a URL of the server (any database; each test creates
//!   its own). Unset: the tests print `SKIPPED` and pass, unless
//!   `AGENTWAL_REQUIRE_PG=1` (CI), which makes a missing server a failure.
//! * `AGENTWAL_PG_DATA`, `AGENTWAL_PG_BINDIR`, `AGENTWAL_PG_OSUSER` — the
//!   cluster's data directory, server binaries and owner, so a test can
//!   restart the server mid-run (`.ci/run` exports them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The server the tests use.
#[derive(Debug, Clone)]
pub struct Pg {
    pub url: String,
    pub data: Option<PathBuf>,
    pub bindir: Option<PathBuf>,
    pub os_user: Option<String>,
}

pub fn required() -> bool {
    std::env::var("AGENTWAL_REQUIRE_PG").is_ok_and(|v| v == "1")
}

/// The server, or `None` after printing that `test` was skipped.
pub fn pg_or_skip(test: &str) -> Option<Pg> {
    match std::env::var("AGENTWAL_PG_URL") {
        Ok(url) if !url.trim().is_empty() => Some(Pg {
            url,
            data: std::env::var_os("AGENTWAL_PG_DATA").map(PathBuf::from),
            bindir: std::env::var_os("AGENTWAL_PG_BINDIR").map(PathBuf::from),
            os_user: std::env::var("AGENTWAL_PG_OSUSER").ok(),
        }),
        _ => {
            assert!(
                !required(),
                "{test}: AGENTWAL_REQUIRE_PG=1 but AGENTWAL_PG_URL is not set: no PostgreSQL server to test against"
            );
            // Straight to the process's stderr, not through `eprintln!`, which
            // the test harness captures (and hides for a passing test).
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no PostgreSQL server (set AGENTWAL_PG_URL to run the fleet tests; .ci/run starts one)"
            );
            None
        }
    }
}

/// `url` pointed at database `db` (a later `dbname` overrides the URL's own).
pub fn url_with_db(url: &str, db: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if url.contains('?') {
            format!("{url}&dbname={db}")
        } else {
            format!("{url}?dbname={db}")
        }
    } else {
        format!("{url} dbname={db}")
    }
}

/// A client on the server's `postgres` database.
pub async fn admin(pg: &Pg) -> tokio_postgres::Client {
    let url = url_with_db(&pg.url, "postgres");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Creates an empty database `name` (dropping an old one) and returns its URL.
pub async fn fresh_db(pg: &Pg, name: &str) -> String {
    let c = admin(pg).await;
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    url_with_db(&pg.url, name)
}

/// Terminates every backend connected to `db` (other than the caller's).
pub async fn terminate_backends(pg: &Pg, db: &str) -> u64 {
    let c = admin(pg).await;
    let rows = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap();
    rows.len() as u64
}

fn am_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Restarts the server (fast shutdown, then start with the same options).
/// `None` when the environment does not say where the cluster lives.
pub fn restart_server(pg: &Pg) -> Option<()> {
    let data = pg.data.as_ref()?;
    let bindir = pg.bindir.clone().unwrap_or_else(|| PathBuf::from(""));
    let pg_ctl = bindir.join("pg_ctl");
    let log = data
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("restart.log");
    let args = [
        "-D".to_string(),
        data.display().to_string(),
        "-l".to_string(),
        log.display().to_string(),
        "-m".to_string(),
        "fast".to_string(),
        "-w".to_string(),
        "-t".to_string(),
        "60".to_string(),
        "restart".to_string(),
    ];
    let status = match (&pg.os_user, am_root()) {
        (Some(user), true) => Command::new("runuser")
            .args(["-u", user, "--"])
            .arg(&pg_ctl)
            .args(&args)
            .status(),
        _ => Command::new(&pg_ctl).args(&args).status(),
    }
    .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl restart failed: {status}");
    Some(())
}

/// Builds `examples/fleet_agent.rs` with the profile of this test binary and
/// returns its path.
pub fn fleet_agent() -> PathBuf {
    crate::agent_support::example("fleet_agent", &["tokio", "postgres"])
}
