//! The replay engine: one replicated state machine over the log.
//!
//! Every layer that keeps state in a [`crate::log::Log`] (the journal, the
//! work queue) implements [`StateMachine`] and goes through the functions of
//! this module to open, replay, view, append and compact. There is exactly
//! one snapshot-plus-replay loop ([`replay`]); the owner's open
//! ([`open_log`]), the read-only views ([`open_reader`]) and the fuzz entry
//! points ([`replay_parts`]) all call it.
//!
//! # What it promises
//!
//! * **Check before write.** [`append_checked`] asks the machine to
//!   [`StateMachine::check`] a batch of records *before* anything reaches the
//!   log; a refused batch writes nothing. After the append,
//!   [`StateMachine::apply`] cannot fail, so a record that is in the log is
//!   always one that replay accepts: a refused operation never leaves a
//!   journal that cannot be opened.
//! * **Replay is the same code as live operation.** Replay decodes each
//!   record, checks it and applies it exactly like the owner did when it
//!   appended it; a record replay refuses is reported with its LSN.
//! * **Explicit, versioned snapshots.** A machine's snapshot is its own
//!   type ([`StateMachine::Snapshot`]), taken cheaply under the owner's lock
//!   (a frozen view) and encoded *outside* it ([`StateMachine::encode`]).
//! * **Amortized compaction.** [`CompactionPolicy`] compacts when the log
//!   written since the last snapshot is at least `ratio` × that snapshot's
//!   size (and at least a minimum): each snapshot byte is paid for by
//!   `ratio` log bytes, so the bytes written per record stay within
//!   `1 + 1/ratio` of the log alone, whatever the history length.

use std::ops::RangeInclusive;

use crate::log::{self, Durability, Log, LogReader, Lsn};

/// Which state a replay builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The owner's state: only what the future needs (finished work is
    /// dropped at once, retained ids and keys are bounded).
    Owner,
    /// The operator's view: finished work stays visible until the next
    /// snapshot (read-only tools such as `wal-inspect`).
    History,
}

/// A replicated state machine over the log.
///
/// `check` may refuse a record (nothing is written); `apply` is infallible
/// and only ever called with a record that `check` accepted against the same
/// state. `snapshot` takes a cheap frozen view (under the owner's lock),
/// `encode` turns it into bytes (outside the lock), `restore` reads them back.
pub trait StateMachine: Sized {
    /// A decoded record.
    type Record;
    /// The machine's error type (log errors convert into it).
    type Error: From<log::Error>;
    /// A frozen view of the state for a snapshot.
    type Snapshot;

    /// An empty state.
    fn empty(mode: Mode) -> Self;

    /// Rebuilds the state from a snapshot payload covering LSNs `..=lsn`.
    fn restore(lsn: Lsn, data: &[u8], mode: Mode) -> Result<Self, Self::Error>;

    /// Decodes a log record; `Ok(None)` for records of another layer (skipped).
    fn decode(lsn: Lsn, kind: u8, payload: &[u8]) -> Result<Option<Self::Record>, Self::Error>;

    /// Encodes a record as `(kind, payload)`.
    fn encode_record(rec: &Self::Record) -> (u8, Vec<u8>);

    /// Validates `rec` against the current state (`lsn` is where it would
    /// go, for error messages). Must not change anything.
    fn check(&self, lsn: Lsn, rec: &Self::Record) -> Result<(), Self::Error>;

    /// Validates a batch appended in one write: each record against the
    /// state the earlier ones of the batch leave. The default checks each
    /// record against the current state, which is right when the records of
    /// a batch do not depend on each other; machines whose batches do
    /// override it.
    fn check_batch(&self, first_lsn: Lsn, recs: &[Self::Record]) -> Result<(), Self::Error> {
        for (lsn, r) in (first_lsn..).zip(recs) {
            self.check(lsn, r)?;
        }
        Ok(())
    }

    /// Applies a record `check` accepted. Infallible.
    fn apply(&mut self, lsn: Lsn, rec: Self::Record);

    /// Checks then applies one record (replay). Machines that validate and
    /// apply in one pass override it.
    fn check_apply(&mut self, lsn: Lsn, rec: Self::Record) -> Result<(), Self::Error> {
        self.check(lsn, &rec)?;
        self.apply(lsn, rec);
        Ok(())
    }

    /// Takes a frozen view for a snapshot (cheap: called under the lock).
    fn snapshot(&self) -> Self::Snapshot;

    /// Encodes a snapshot (called outside the lock).
    fn encode(snapshot: Self::Snapshot) -> Vec<u8>;
}

/// The outcome of a replay.
#[derive(Debug)]
pub struct Replayed<S> {
    /// The rebuilt state.
    pub state: S,
    /// LSN of the snapshot replay started from (0: none).
    pub snapshot_lsn: Lsn,
    /// Bytes of that snapshot's payload (0: none).
    pub snapshot_bytes: u64,
    /// Log records read after the snapshot (including other layers' records).
    pub records: u64,
    /// Payload bytes of those records.
    pub record_bytes: u64,
}

/// The one replay loop: an optional snapshot, then every record after it,
/// each decoded, checked and applied. Records at or below the snapshot LSN
/// are skipped.
pub fn replay<S, E, P>(
    snapshot: Option<(Lsn, &[u8])>,
    records: impl IntoIterator<Item = Result<(Lsn, u8, P), E>>,
    mode: Mode,
) -> Result<Replayed<S>, S::Error>
where
    S: StateMachine,
    S::Error: From<E>,
    P: AsRef<[u8]>,
{
    let (mut state, snapshot_lsn, snapshot_bytes) = match snapshot {
        Some((lsn, data)) => (S::restore(lsn, data, mode)?, lsn, data.len() as u64),
        None => (S::empty(mode), 0, 0),
    };
    let mut out_records = 0;
    let mut record_bytes = 0;
    for r in records {
        let (lsn, kind, payload) = r?;
        if lsn <= snapshot_lsn {
            continue;
        }
        let payload = payload.as_ref();
        out_records += 1;
        record_bytes += payload.len() as u64;
        if let Some(rec) = S::decode(lsn, kind, payload)? {
            state.check_apply(lsn, rec)?;
        }
    }
    Ok(Replayed {
        state,
        snapshot_lsn,
        snapshot_bytes,
        records: out_records,
        record_bytes,
    })
}

/// [`replay`] of parts already in memory (fuzzing, tools that hold records).
pub fn replay_parts<'a, S: StateMachine>(
    snapshot: Option<(Lsn, &[u8])>,
    records: impl IntoIterator<Item = (Lsn, u8, &'a [u8])>,
    mode: Mode,
) -> Result<Replayed<S>, S::Error> {
    replay::<S, log::Error, &'a [u8]>(snapshot, records.into_iter().map(Ok), mode)
}

/// Replays the newest snapshot and the log after it, for the log's owner.
pub fn open_log<S: StateMachine>(log: &Log, mode: Mode) -> Result<Replayed<S>, S::Error> {
    let snap = log.latest_snapshot()?;
    let from = snap.as_ref().map_or(1, |s| s.lsn + 1);
    let iter = log.read_from(from)?;
    replay::<S, log::Error, _>(
        snap.as_ref().map(|s| (s.lsn, s.data.as_slice())),
        iter.map(|r| r.map(|r| (r.lsn, r.kind, RecordBytes(r)))),
        mode,
    )
}

/// Replays a read-only reader's snapshot and records (no lock, no write).
pub fn open_reader<S: StateMachine>(
    reader: &LogReader,
    mode: Mode,
) -> Result<Replayed<S>, S::Error> {
    let snap = reader.snapshot();
    let from = snap.map_or(1, |s| s.lsn + 1);
    replay::<S, log::Error, _>(
        snap.map(|s| (s.lsn, s.data.as_slice())),
        reader
            .iter_from(from)
            .map(|r| r.map(|r| (r.lsn, r.kind, RecordBytes(r)))),
        mode,
    )
}

/// A log record's payload, borrowed from its mapping.
struct RecordBytes(log::Record);

impl AsRef<[u8]> for RecordBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.payload()
    }
}

/// Checks `recs` against `state`, appends them in one write (buffered), then
/// applies them. The caller holds the lock that guards `state` (so the log
/// order is the state order) and waits for durability after releasing it.
/// Nothing is written when the check fails. Returns the LSNs used and the
/// bytes appended (payloads plus record headers).
pub fn append_checked<S: StateMachine>(
    log: &Log,
    state: &mut S,
    recs: Vec<S::Record>,
) -> Result<(RangeInclusive<Lsn>, u64), S::Error> {
    state.check_batch(log.next_lsn(), &recs)?;
    let encoded: Vec<(u8, Vec<u8>)> = recs.iter().map(S::encode_record).collect();
    let bytes = encoded
        .iter()
        .map(|(_, p)| log::record::encoded_len(p.len()) as u64)
        .sum();
    let refs: Vec<(u8, &[u8])> = encoded.iter().map(|(k, p)| (*k, p.as_slice())).collect();
    let range = log.append_batch(&refs, Durability::Buffered)?;
    for (lsn, rec) in range.clone().zip(recs) {
        state.apply(lsn, rec);
    }
    Ok((range, bytes))
}

/// Writes an encoded snapshot covering `..=lsn` (waiting until `lsn` is
/// durable) and removes the segments it covers. Returns the segments removed.
pub fn install_snapshot(log: &Log, lsn: Lsn, data: &[u8]) -> Result<usize, log::Error> {
    if lsn == 0 {
        return Ok(0);
    }
    log.write_snapshot(lsn, data)?;
    log.truncate_before(lsn + 1)
}

/// [`install_snapshot`] with the payload streamed by `fill` (never held in
/// memory whole). Returns the payload length and the segments removed.
pub fn install_snapshot_with(
    log: &Log,
    lsn: Lsn,
    fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(u64, usize), log::Error> {
    if lsn == 0 {
        return Ok((0, 0));
    }
    let (_, len) = log.write_snapshot_with(lsn, fill)?;
    Ok((len, log.truncate_before(lsn + 1)?))
}

/// When to compact: the log tail since the last snapshot is at least
/// `ratio` × the last snapshot's size and at least `min_tail_bytes`.
///
/// Each compaction writes a snapshot of size *S* after at least
/// `ratio` × *S* bytes of log, so snapshot bytes add at most `1 / ratio` to
/// every log byte: compaction costs O(1) amortized per record, and open
/// replays at most `max(min_tail_bytes, ratio × S)` bytes after the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Tail-to-snapshot ratio that triggers a compaction (at least 1).
    pub ratio: u32,
    /// Never compact before this many bytes of log since the last snapshot.
    pub min_tail_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            ratio: 2,
            min_tail_bytes: 4 << 20,
        }
    }
}

impl CompactionPolicy {
    /// True when a log tail of `tail_bytes` after a snapshot of
    /// `snapshot_bytes` is due for compaction.
    pub fn due(&self, tail_bytes: u64, snapshot_bytes: u64) -> bool {
        tail_bytes >= self.min_tail_bytes
            && tail_bytes >= snapshot_bytes.saturating_mul(u64::from(self.ratio.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_trigger_needs_both_the_minimum_and_the_ratio() {
        let p = CompactionPolicy {
            ratio: 2,
            min_tail_bytes: 100,
        };
        assert!(!p.due(99, 0));
        assert!(p.due(100, 0));
        assert!(p.due(100, 50));
        assert!(!p.due(100, 51));
        assert!(p.due(1000, 500));
        assert!(!p.due(999, 500));
    }
}
