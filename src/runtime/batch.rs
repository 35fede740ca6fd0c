//! Checkpointed batches: process a list of items so that a restart resumes at
//! exactly the next item.
//!
//! **Promises.**
//!
//! * The position is a journal unit of its own (`batch:<id>`) whose
//!   checkpoint records the index of the next item: **one small durable
//!   record per item** (a checkpoint, never a file rewrite). After a crash
//!   the batch resumes at the first item whose completion was not recorded.
//! * With per-item units ([`run_batch_units`]) each item is also a journal
//!   unit (`<id>/<index>`): its effects follow the journal's protocol, and an
//!   item whose unit committed just before a crash (cursor not yet advanced)
//!   is skipped, not redone. Without units ([`run_batch`]) an item cut by a
//!   crash runs again: make it idempotent or use per-item units.
//! * Items are identified by their position: give the same items in the
//!   same order on every run.
//! * With a [`Shutdown`], no new item starts once shutdown began; the item in
//!   progress finishes and is checkpointed.
//! * When every item is done the batch unit commits; running the batch again
//!   does nothing.
//!
//! ```
//! use agentwal::journal::{Journal, JournalOptions};
//! use agentwal::runtime::batch::run_batch;
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
//! let mut seen = Vec::new();
//! let report = run_batch(&journal, "import", ["a", "b", "c"], None, |i, item| {
//!     seen.push((i, item));
//!     Ok::<_, std::io::Error>(())
//! })
//! .unwrap();
//! assert!(report.complete);
//! assert_eq!(seen, vec![(0, "a"), (1, "b"), (2, "c")]);
//! // Already complete: nothing runs again.
//! let again = run_batch(&journal, "import", ["a", "b", "c"], None, |_, _| Err("must not run")).unwrap();
//! assert_eq!(again.processed, 0);
//! ```

use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::journal::{self, Journal, Unit, UnitState};

use super::error::Error;
use super::shutdown::Shutdown;

/// The recorded position of a batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CursorState {
    next: u64,
}

/// The journal unit id holding batch `id`'s position.
pub fn cursor_unit_id(batch_id: &str) -> String {
    format!("batch:{batch_id}")
}

/// The journal unit id of item `index` of batch `id` (per-item units).
pub fn item_unit_id(batch_id: &str, index: u64) -> String {
    format!("{batch_id}/{index:010}")
}

/// The position of a batch, checkpointed in the journal.
#[derive(Debug)]
pub struct BatchCursor {
    unit: Option<Unit>,
    next: u64,
    resumed_at: u64,
}

impl BatchCursor {
    /// Opens (or resumes) the cursor of batch `batch_id`.
    pub fn open(journal: &Journal, batch_id: &str) -> Result<BatchCursor, Error> {
        let id = cursor_unit_id(batch_id);
        match journal.begin(&id, "batch", &serde_json::json!({ "batch": batch_id })) {
            Ok(unit) => {
                let next = unit.last_checkpoint::<CursorState>()?.map_or(0, |c| c.next);
                Ok(BatchCursor {
                    unit: Some(unit),
                    next,
                    resumed_at: next,
                })
            }
            Err(journal::Error::UnitFinished { .. }) => Ok(BatchCursor {
                unit: None,
                next: u64::MAX,
                resumed_at: u64::MAX,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Index of the next item to process (`u64::MAX` once finished).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Where this run started.
    pub fn resumed_at(&self) -> u64 {
        self.resumed_at
    }

    /// True when the batch completed in an earlier run or with [`BatchCursor::finish`].
    pub fn is_finished(&self) -> bool {
        self.unit.is_none()
    }

    /// Records that item `position()` is done: one durable checkpoint record.
    pub fn advance(&mut self) -> Result<u64, Error> {
        let next = self.next + 1;
        self.advance_to(next)
    }

    /// Records that every item before `next` is done.
    pub fn advance_to(&mut self, next: u64) -> Result<u64, Error> {
        let Some(unit) = self.unit.as_mut() else {
            return Err(Error::InvalidArgument(
                "the batch is already finished".into(),
            ));
        };
        if next < self.next {
            return Err(Error::InvalidArgument(format!(
                "batch cursor cannot move back from {} to {next}",
                self.next
            )));
        }
        // Durable before the next item starts: a restart must not redo this one.
        unit.checkpoint(&CursorState { next })?;
        self.next = next;
        Ok(next)
    }

    /// Marks the whole batch done (commits the cursor's unit).
    pub fn finish(mut self) -> Result<(), Error> {
        if let Some(unit) = self.unit.take() {
            unit.commit()?;
        }
        Ok(())
    }
}

/// What a batch run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchReport {
    /// The index this run started at (0 for a fresh batch).
    pub resumed_at: u64,
    /// Items processed by this run.
    pub processed: u64,
    /// Items whose unit had committed before the cursor moved (per-item units).
    pub skipped_committed: u64,
    /// Index of the next item: the item count once complete, `u64::MAX` when
    /// the batch had already completed in an earlier run.
    pub next: u64,
    /// True when every item is done (now or in an earlier run).
    pub complete: bool,
    /// True when the run stopped early because shutdown began.
    pub stopped_by_shutdown: bool,
}

fn item_error(batch: &str, index: u64, e: impl Display) -> Error {
    Error::BatchItem {
        batch: batch.to_string(),
        index,
        message: e.to_string(),
    }
}

/// Runs `f` on every item not yet done, checkpointing after each. An error
/// from `f` stops the run (the failed item is retried by the next run).
pub fn run_batch<I, E, F>(
    journal: &Journal,
    batch_id: &str,
    items: impl IntoIterator<Item = I>,
    shutdown: Option<&Shutdown>,
    mut f: F,
) -> Result<BatchReport, Error>
where
    E: Display,
    F: FnMut(u64, I) -> Result<(), E>,
{
    drive(journal, batch_id, items, shutdown, |_, index, item| {
        f(index, item).map_err(|e| item_error(batch_id, index, e))?;
        Ok(false)
    })
}

/// Like [`run_batch`], but each item is its own journal unit
/// ([`item_unit_id`]): `f` runs the item's effects through the unit, the
/// driver commits it, then advances the cursor. An item found incomplete is
/// resumed (its recorded effects are replayed, not re-run).
pub fn run_batch_units<I, E, F>(
    journal: &Journal,
    batch_id: &str,
    items: impl IntoIterator<Item = I>,
    shutdown: Option<&Shutdown>,
    mut f: F,
) -> Result<BatchReport, Error>
where
    E: Display,
    F: FnMut(u64, I, &mut Unit) -> Result<(), E>,
{
    drive(
        journal,
        batch_id,
        items,
        shutdown,
        |journal, index, item| {
            let id = item_unit_id(batch_id, index);
            if journal.unit_state(&id) == Some(UnitState::Committed) {
                // Committed just before a crash, cursor not advanced: skip.
                return Ok(true);
            }
            let mut unit = journal.begin(
                &id,
                "batch_item",
                &serde_json::json!({ "batch": batch_id, "index": index }),
            )?;
            f(index, item, &mut unit).map_err(|e| item_error(batch_id, index, e))?;
            unit.commit()?;
            Ok(false)
        },
    )
}

/// The shared loop; `step` returns true when the item was skipped.
fn drive<I>(
    journal: &Journal,
    batch_id: &str,
    items: impl IntoIterator<Item = I>,
    shutdown: Option<&Shutdown>,
    mut step: impl FnMut(&Journal, u64, I) -> Result<bool, Error>,
) -> Result<BatchReport, Error> {
    let mut cursor = BatchCursor::open(journal, batch_id)?;
    let mut report = BatchReport {
        resumed_at: cursor.resumed_at(),
        ..BatchReport::default()
    };
    if cursor.is_finished() {
        report.complete = true;
        report.next = cursor.position();
        return Ok(report);
    }
    let start = cursor.position();
    let mut iter = items.into_iter();
    // Skip what earlier runs finished (positions are indices).
    for _ in 0..start {
        if iter.next().is_none() {
            break;
        }
    }
    for (index, item) in (start..).zip(iter) {
        let _guard = match shutdown.map(Shutdown::begin_unit).transpose() {
            Ok(g) => g,
            Err(_) => {
                report.stopped_by_shutdown = true;
                break;
            }
        };
        if step(journal, index, item)? {
            report.skipped_committed += 1;
        } else {
            report.processed += 1;
        }
        cursor.advance()?;
    }
    report.next = cursor.position();
    if !report.stopped_by_shutdown {
        cursor.finish()?;
        report.complete = true;
    }
    Ok(report)
}
