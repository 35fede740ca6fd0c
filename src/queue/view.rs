//! The read-only view of a queue for `wal-inspect queue`: works on a
//! [`LogReader`] (no lock, no write), so it runs beside the owning process.

use super::state::{Item, ItemState, QueueState, ReplayError};
use super::Error;
use crate::engine::{self, Mode};
use crate::log::LogReader;

/// One work-queue item as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueItemView {
    /// The item id.
    pub id: u64,
    /// `pending`, `in_flight`, `dead_lettered` or `acked`.
    pub state: ItemState,
    /// Claims so far.
    pub attempts: u32,
    /// The worker holding it (in flight only).
    pub worker: Option<String>,
    /// The error recorded by the last nack or dead-lettering.
    pub last_error: Option<String>,
}

impl QueueItemView {
    pub(crate) fn from_item(i: &Item) -> Self {
        QueueItemView {
            id: i.id,
            state: i.state,
            attempts: i.attempts,
            worker: i.worker.clone(),
            last_error: i.last_error.clone(),
        }
    }
}

/// Every item the queue's log still describes, by id. Items acked before the
/// last compaction are gone (only counted in `acked_compacted`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueView {
    /// The items.
    pub items: Vec<QueueItemView>,
    /// Items acked before the newest snapshot (no longer listed).
    pub acked_compacted: u64,
}

/// Builds the view from a reader opened on `<journal_dir>/queue` (see
/// [`super::queue_dir`]). A torn tail is ignored (it was never acknowledged);
/// records are replayed up to the last valid one. In-flight items are shown
/// as in flight even if their owner is gone: the next owner re-queues them.
pub fn queue_view(reader: &LogReader) -> Result<QueueView, Error> {
    let dir = reader.dir();
    let bad = |lsn, reason: String| Error::BadRecord {
        dir: dir.to_path_buf(),
        lsn,
        reason,
    };
    let r = engine::open_reader::<QueueState>(reader, Mode::History).map_err(|e| match e {
        ReplayError::Log(e) => Error::Log(e),
        ReplayError::Bad { lsn, reason } => bad(lsn, reason),
    })?;
    let state = r.state;
    let acked_compacted = state.acked_snapshot;
    Ok(QueueView {
        items: state.items.values().map(QueueItemView::from_item).collect(),
        acked_compacted,
    })
}
