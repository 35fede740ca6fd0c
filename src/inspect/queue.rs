//! `queue`: the durable work queue's items. The queue keeps its own log in
//! `<JOURNAL_DIR>/queue/`; it is read like the journal: read-only, no lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::error::Result;
use super::open::{
    display, holds_log_files, CorruptionInfo, Inspection, OpenOptions, TornTailInfo,
};
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
    /// Items by state.
    pub counts: QueueCounts,
    /// Items acked before the queue's last compaction (no longer listed).
    pub acked_compacted: u64,
    /// Every item the queue's log still describes.
    pub items: Vec<QueueItem>,
    /// A torn tail in the queue's log, if any.
    pub torn_tail: Option<TornTailInfo>,
    /// Corruption in the queue's log, if any (items are listed up to it).
    pub corruption: Option<CorruptionInfo>,
    /// A remark (no queue, or why the items could not be listed).
    pub note: Option<String>,
}

/// One work-queue item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueItem {
    /// The item id.
    pub id: u64,
    /// `pending`, `in_flight`, `dead_lettered` or `acked`.
    pub state: String,
    /// Claims so far.
    pub attempts: u32,
    /// The worker holding it (in flight only).
    pub worker: Option<String>,
    /// The error recorded by the last nack or dead-lettering.
    pub last_error: Option<String>,
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
    /// Done (still in the log).
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
        acked_compacted: 0,
        items: Vec::new(),
        torn_tail: None,
        corruption: None,
        note: None,
    };
    if !storage.is_dir(&dir).unwrap_or(false) {
        // Not a journal at all is an input error, not "no queue".
        Inspection::open_with(storage, journal, OpenOptions::default())?;
        r.note = Some("no work queue in this journal".into());
        return Ok(r);
    }
    let insp = match Inspection::open_with(storage.clone(), &dir, OpenOptions::default()) {
        Ok(i) => i,
        Err(e @ super::Error::NotAJournal { .. }) => {
            if !holds_log_files(storage.as_ref(), &dir) {
                r.note = Some("the work queue directory holds no log yet".into());
                return Ok(r);
            }
            // Files named like a log that are not one: when the journal
            // itself is no journal either, say that (it is the input).
            Inspection::open_with(storage, journal, OpenOptions::default())?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    r.present = true;
    r.records = insp.reader().scan().records();
    r.torn_tail = insp.findings().torn_tail.clone();
    r.corruption = insp.findings().corruption.first().cloned();
    fill_items(&insp, &mut r);
    Ok(r)
}

fn fill_items(insp: &Inspection, r: &mut QueueReport) {
    match crate::queue::queue_view(insp.reader()) {
        Ok(view) => {
            r.acked_compacted = view.acked_compacted;
            for item in &view.items {
                let state = serde_json::to_value(item.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                match state.as_str() {
                    "pending" => r.counts.pending += 1,
                    "in_flight" => r.counts.in_flight += 1,
                    "dead_lettered" => r.counts.dead_lettered += 1,
                    "acked" => r.counts.acked += 1,
                    _ => {}
                }
                r.items.push(QueueItem {
                    id: item.id,
                    state,
                    attempts: item.attempts,
                    worker: item.worker.clone(),
                    last_error: item.last_error.clone(),
                });
            }
        }
        Err(e) => r.note = Some(format!("cannot interpret the queue's records: {e}")),
    }
}
