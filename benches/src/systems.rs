//! The systems under test: agentwal and the baselines, each as a factory of
//! one durable operation, so every system runs in the same measuring loop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwal::journal::{Effect, Journal, JournalOptions};
use agentwal::log::{Durability, Log, LogOptions};

use crate::measure::Res;

/// Bytes of one agentwal record carrying `payload_len` bytes (header + padding),
/// so the raw baseline writes exactly as many bytes per operation.
pub fn record_bytes(payload_len: usize) -> usize {
    agentwal::log::testing::encoded_len(payload_len)
}

/// A deterministic payload of `len` bytes.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Creates a file of `size` zero bytes written for real (not a hole, not
/// `fallocate`), made durable with its directory entry.
pub fn zero_file(path: &Path, size: u64) -> Res<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], off)?;
        off += n as u64;
    }
    // Size and blocks durable before measuring, like an agentwal segment.
    f.sync_all()?;
    File::open(path.parent().ok_or("file without parent")?)?.sync_all()?;
    Ok(f)
}

/// The physical limit: `pwrite` of one record-sized buffer + `fdatasync`, on a
/// preallocated file (overwrite of allocated blocks, no size change).
pub fn raw_prealloc(path: &Path, record: usize, size: u64) -> Res<impl FnMut() -> Res> {
    let f = zero_file(path, size)?;
    let buf = payload(record);
    let mut pos = 0u64;
    Ok(move || {
        if pos + record as u64 > size {
            pos = 0;
        }
        f.write_all_at(&buf, pos)?;
        f.sync_data()?;
        pos += record as u64;
        Ok(())
    })
}

/// `write` + `fdatasync` on a growing file (every sync commits a size change).
pub fn raw_append(path: &Path, record: usize) -> Res<impl FnMut() -> Res> {
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    File::open(path.parent().ok_or("file without parent")?)?.sync_all()?;
    let buf = payload(record);
    Ok(move || {
        f.write_all(&buf)?;
        f.sync_data()?;
        Ok(())
    })
}

/// A JSON checkpoint file rewritten per item: write tmp, fsync, rename over
/// the checkpoint, fsync the directory (the usual "atomic save").
pub fn json_checkpoint(dir: &Path, payload_len: usize) -> Res<impl FnMut() -> Res> {
    let tmp = dir.join("checkpoint.json.tmp");
    let dst = dir.join("checkpoint.json");
    let dir_handle = File::open(dir)?;
    let result: String = "r".repeat(payload_len);
    let mut item = 0u64;
    Ok(move || {
        item += 1;
        let doc = serde_json::json!({ "next_item": item, "last_result": result });
        let bytes = serde_json::to_vec(&doc)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        dir_handle.sync_all()?;
        Ok(())
    })
}

/// Opens the SQLite database shared by the writers (WAL, synchronous=FULL).
pub fn sqlite_setup(path: &Path) -> Res<()> {
    let conn = sqlite_conn(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
    )?;
    Ok(())
}

fn sqlite_conn(path: &Path) -> Res<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite refused WAL mode (got {mode})").into());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(60))?;
    Ok(conn)
}

/// One SQLite transaction per item (BEGIN IMMEDIATE; INSERT; COMMIT).
pub fn sqlite_writer(path: &Path, payload_len: usize) -> Res<impl FnMut() -> Res> {
    let mut conn = sqlite_conn(path)?;
    let p = payload(payload_len);
    Ok(move || {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT INTO items (payload) VALUES (?1)")?
            .execute([&p])?;
        tx.commit()?;
        Ok(())
    })
}

/// okaywal: one entry with one chunk per item, committed durably.
pub fn okaywal_open(dir: &Path) -> Res<okaywal::WriteAheadLog> {
    Ok(okaywal::WriteAheadLog::recover(dir, okaywal::LogVoid)?)
}

/// One okaywal entry per call.
pub fn okaywal_writer(wal: okaywal::WriteAheadLog, payload_len: usize) -> impl FnMut() -> Res {
    let p = payload(payload_len);
    move || {
        let mut e = wal.begin_entry()?;
        e.write_chunk(&p)?;
        e.commit()?;
        Ok(())
    }
}

/// agentwal with default options (64 MiB preallocated segments).
pub fn agentwal_open(dir: &Path) -> Res<Log> {
    Ok(Log::open(dir, LogOptions::default())?)
}

/// One durable agentwal append per call.
pub fn agentwal_writer(log: Log, payload_len: usize) -> impl FnMut() -> Res {
    let p = payload(payload_len);
    move || {
        log.append_with(1, &p, Durability::Durable)?;
        Ok(())
    }
}

/// Record kinds of the emulated journal unit.
const UNIT_BEGIN: u8 = 10;
const UNIT_INTENT: u8 = 11;
const UNIT_OUTCOME: u8 = 12;
const UNIT_COMMIT: u8 = 13;

/// The same unit emulated with 4 log records: begin
/// (buffered), effect intent (durable: it must be on disk before the effect
/// runs), effect outcome (buffered), commit (durable) — what the journal
/// costs on top of the log.
pub fn agentwal_unit_writer(log: Log, thread: usize) -> impl FnMut() -> Res {
    let outcome = payload(256);
    let mut item = 0u64;
    move || {
        item += 1;
        let unit = format!("t{thread}-item-{item:08}");
        let begin = format!("{{\"unit\":\"{unit}\",\"input\":\"record {item}\"}}");
        let intent = format!("{{\"unit\":\"{unit}\",\"effect\":\"send\",\"key\":\"{unit}/send/0\",\"policy\":\"retry\"}}");
        let commit = format!("{{\"unit\":\"{unit}\"}}");
        log.append_with(UNIT_BEGIN, begin.as_bytes(), Durability::Buffered)?;
        log.append_with(UNIT_INTENT, intent.as_bytes(), Durability::Durable)?;
        // (the side effect would run here)
        log.append_with(UNIT_OUTCOME, &outcome, Durability::Buffered)?;
        log.append_with(UNIT_COMMIT, commit.as_bytes(), Durability::Durable)?;
        Ok(())
    }
}

/// The real journal with default options.
pub fn journal_open(dir: &Path, opts: JournalOptions) -> Res<Journal> {
    Ok(Journal::open(dir, opts)?)
}

/// One full journal unit per call, as `batch_agent` does it: `begin` (its
/// record is buffered), one effect run under `retry_same_key` (its intent is
/// made durable before the effect runs, its outcome recorded after),
/// `commit` (durable).
pub fn journal_unit_writer(journal: Journal, thread: usize) -> impl FnMut() -> Res {
    // Unit ids are unique over the whole run (cells run many times).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let result = "r".repeat(200);
    move || {
        let item = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("t{thread}-item-{item:09}");
        let mut unit = journal.begin(&id, "item", &item)?;
        let _sent: String = unit.run(Effect::retry_same_key("send"), |_ctx| {
            Ok::<_, String>(result.clone())
        })?;
        unit.commit()?;
        Ok(())
    }
}

/// A fresh, empty directory `name` under `root`.
pub fn fresh_dir(root: &Path, name: &str) -> Res<PathBuf> {
    let d = root.join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Sum of the sizes of the plain files in `dir` (what the journal occupies).
pub fn dir_bytes(dir: &Path) -> Res<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}
