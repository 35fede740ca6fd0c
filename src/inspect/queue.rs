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
use crate::queue::ItemState;

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

/// One work-queue item: the queue layer's own view of it.
pub use crate::queue::QueueItemView as QueueItem;

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
                match item.state {
                    ItemState::Pending => r.counts.pending += 1,
                    ItemState::InFlight => r.counts.in_flight += 1,
                    ItemState::DeadLettered => r.counts.dead_lettered += 1,
                    ItemState::Acked => r.counts.acked += 1,
                }
            }
            r.items = view.items;
        }
        Err(e) => r.note = Some(format!("cannot interpret the queue's records: {e}")),
    }
}
