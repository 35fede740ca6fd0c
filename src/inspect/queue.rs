//! `queue`: the durable work queue's items. The queue keeps its own log in
//! `<JOURNAL_DIR>/queue/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::error::Result;
use super::open::{display, Inspection, OpenOptions};
use crate::log::Storage;

/// The `queue` report.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    /// The queue's log directory.
    pub dir: String,
    /// False when the journal has no work queue.
    pub present: bool,
    /// Records in the queue's log.
    pub records: u64,
    /// Items by state (`pending`, `in_flight`, `dead_lettered`, `acked`).
    pub counts: QueueCounts,
    /// Every item, when this build can interpret the queue's records.
    pub items: Vec<serde_json::Value>,
    /// Why the items could not be listed, if they could not.
    pub note: Option<String>,
}

/// Items by state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueCounts {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Claimed by a worker, not yet acked.
    pub in_flight: u64,
    /// Failed too often; an operator must look at them.
    pub dead_lettered: u64,
    /// Done.
    pub acked: u64,
}

/// The queue directory of a journal.
pub fn queue_dir(journal: &Path) -> PathBuf {
    journal.join("queue")
}

/// Reads the work queue of the journal in `journal` (read-only).
pub fn queue(storage: Arc<dyn Storage>, journal: &Path) -> Result<QueueReport> {
    let dir = queue_dir(journal);
    let mut r = QueueReport {
        dir: display(&dir),
        present: false,
        records: 0,
        counts: QueueCounts::default(),
        items: Vec::new(),
        note: None,
    };
    if !storage.is_dir(&dir).unwrap_or(false) {
        r.note = Some("no work queue in this journal".into());
        return Ok(r);
    }
    let insp = Inspection::open_with(storage, &dir, OpenOptions::default())?;
    r.present = true;
    r.records = insp.reader().scan().records();
    r.note = Some(
        "this build cannot interpret the queue's records; use `wal-inspect dump <dir>/queue`"
            .into(),
    );
    Ok(r)
}
