//! The health endpoints answered over real HTTP/1.1 on 127.0.0.1.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::time::Duration;

use agentwal::runtime::health::HealthServer;
use agentwal::runtime::{Metrics, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request and returns (status, body).
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(buf).expect("utf-8 response");
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn probes_follow_the_shutdown_state() {
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let metrics = Arc::new(Metrics::new());
    let server = HealthServer::spawn("127.0.0.1:0", shutdown.clone(), metrics.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());

    assert_eq!(request(addr, "GET", "/health").await.0, 200);
    assert_eq!(
        request(addr, "GET", "/ready").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(request(addr, "GET", "/nope").await.0, 404);
    // Only POST starts a shutdown.
    assert_eq!(request(addr, "GET", "/shutdown").await.0, 405);
    assert!(!shutdown.is_triggered());

    // The library counts its own work: a committed unit shows up without
    // the application counting anything.
    let dir = tempfile::tempdir().unwrap();
    let journal = agentwal::Journal::open(dir.path(), agentwal::JournalOptions::small()).unwrap();
    let mut unit = journal.begin("health-u1", "t", &()).unwrap();
    unit.run(agentwal::Effect::retry_same_key("e"), |_| {
        Ok::<_, String>(1)
    })
    .unwrap();
    unit.commit().unwrap();
    let (code, body) = request(addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    let committed: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("agentwal_units_total{state=\"committed\"} "))
        .unwrap_or_else(|| panic!("no committed units in\n{body}"))
        .parse()
        .unwrap();
    assert!(committed >= 1.0, "{body}");
    assert!(
        body.contains("# TYPE agentwal_fsync_seconds histogram"),
        "{body}"
    );
    assert!(body.contains("agentwal_fsync_seconds_bucket{le="), "{body}");
    assert!(
        body.lines().any(|l| l == "agentwal_shutting_down 0"),
        "{body}"
    );

    let (code, _) = request(addr, "POST", "/shutdown").await;
    assert_eq!(code, 202);
    assert!(shutdown.is_triggered());
    assert_eq!(shutdown.exit_code(), 0);

    // Alive but no longer ready.
    assert_eq!(request(addr, "GET", "/health").await.0, 200);
    assert_eq!(request(addr, "GET", "/ready").await.0, 503);
    let (_, body) = request(addr, "GET", "/metrics").await;
    assert!(
        body.lines().any(|l| l == "agentwal_shutting_down 1"),
        "{body}"
    );
    // A second POST is harmless.
    assert_eq!(request(addr, "POST", "/shutdown").await.0, 202);

    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "server still listening"
    );
}

#[tokio::test]
async fn binding_a_taken_port_is_a_typed_error() {
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let metrics = Arc::new(Metrics::new());
    let first = HealthServer::spawn("127.0.0.1:0", shutdown.clone(), metrics.clone())
        .await
        .unwrap();
    let taken = first.local_addr().to_string();
    let err = HealthServer::spawn(&taken, shutdown, metrics)
        .await
        .unwrap_err();
    assert!(
        matches!(err, agentwal::runtime::Error::Http { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&taken));
    first.stop().await.unwrap();
}
