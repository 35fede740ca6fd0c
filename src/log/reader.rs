//! Reading: record iterators and the read-only [`LogReader`].
//!
//! A `LogReader` never takes the owner lock and never writes, so it can run
//! while another process owns and appends to the directory. Sealed segments
//! are mapped one at a time (memmap2 on the real file system) and unmapped
//! when the iterator moves on, so memory stays flat in the log size. The
//! last (live) segment, which the owner writes and recovery zeroes while we
//! read, is read with positional reads up to the end of its valid records,
//! one 1 MiB window at a time (see `window`), so a concurrent recovery or an
//! I/O error is a typed error, never a `SIGBUS`, and memory does not grow
//! with the segment size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Error, Result};
use super::record::{Codec, Decoded, Lsn, Record};
use super::scan::{scan_dir, ScanReport};
use super::segment::{decode_header, HeaderProblem, SEGMENT_HEADER};
use super::snapshot::{self, Snapshot};
use super::storage::{FsStorage, Storage};
use super::window::Source;

/// Iterator over records `from..=last` of a list of segments.
#[derive(Debug)]
pub struct LogIter {
    storage: Arc<dyn Storage>,
    segments: Vec<(Lsn, PathBuf)>,
    idx: usize,
    current: Option<(Source, u64, Codec)>,
    /// Where the valid records of the last segment end (how much of it to read).
    live_end: u64,
    next_lsn: Lsn,
    from: Lsn,
    last: Lsn,
    failed: bool,
}

impl LogIter {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        segments: Vec<(Lsn, PathBuf)>,
        from: Lsn,
        last: Lsn,
        live_end: u64,
    ) -> Self {
        // Start at the last segment whose first LSN is <= from.
        let idx = segments
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        let next_lsn = segments.get(idx).map_or(from, |s| s.0);
        LogIter {
            storage,
            segments,
            idx,
            current: None,
            live_end,
            next_lsn,
            from,
            last,
            failed: false,
        }
    }

    fn fail(&mut self, e: Error) -> Option<Result<Record>> {
        self.failed = true;
        Some(Err(e))
    }
}

impl Iterator for LogIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.failed || self.next_lsn > self.last {
                return None;
            }
            if self.current.is_none() {
                let (first, path) = self.segments.get(self.idx).cloned()?;
                if first != self.next_lsn {
                    let e = Error::Corruption {
                        segment: path,
                        offset: 0,
                        reason: format!(
                            "expected LSN {}, segment starts at {first}",
                            self.next_lsn
                        ),
                    };
                    return self.fail(e);
                }
                let live = self.idx + 1 == self.segments.len();
                let read = if live {
                    Source::live(self.storage.clone(), &path, self.live_end)
                } else {
                    self.storage.map(&path).map(Source::Mapped)
                };
                let mut src = match read {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return self.fail(Error::LsnOutOfRange {
                            lsn: self.next_lsn,
                            first: self.next_lsn,
                            last: self.last,
                        })
                    }
                    Err(e) => return self.fail(Error::io("read segment", path, e)),
                };
                let header = match src.bytes(0, SEGMENT_HEADER as u64) {
                    Ok(h) => h,
                    Err(e) => return self.fail(Error::io("read segment", path, e)),
                };
                let codec = match decode_header(&path, header) {
                    Ok(h) => h.codec,
                    Err(HeaderProblem::Fatal(e)) => return self.fail(e),
                    Err(HeaderProblem::Damaged(why)) => {
                        return self.fail(Error::Corruption {
                            segment: path,
                            offset: 0,
                            reason: why.to_string(),
                        })
                    }
                };
                self.current = Some((src, SEGMENT_HEADER as u64, codec));
            }
            let (src, pos, codec) = self.current.as_mut().expect("read above");
            let decoded = match src.decode(*pos, *codec) {
                Ok(d) => d,
                Err(e) => {
                    let path = self.segments[self.idx].1.clone();
                    return self.fail(Error::io("read segment", path, e));
                }
            };
            match decoded {
                Decoded::Valid { record, next } if record.lsn == self.next_lsn => {
                    *pos = next as u64;
                    self.next_lsn += 1;
                    if record.lsn >= self.from {
                        return Some(Ok(record));
                    }
                }
                _ => {
                    // End of this segment: continue in the next one, if any.
                    let at = *pos;
                    self.current = None;
                    self.idx += 1;
                    if self.idx >= self.segments.len() {
                        let path = self.segments[self.idx - 1].1.clone();
                        let e = Error::Corruption {
                            segment: path,
                            offset: at,
                            reason: format!("record LSN {} is missing or damaged", self.next_lsn),
                        };
                        return self.fail(e);
                    }
                }
            }
        }
    }
}

/// A read-only view of a journal directory. Takes no lock, writes nothing.
#[derive(Debug)]
pub struct LogReader {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    scan: ScanReport,
    snapshot: Option<Snapshot>,
}

impl LogReader {
    /// Opens `dir` read-only on the real file system.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogReader> {
        Self::open_with(Arc::new(FsStorage), dir)
    }

    /// Opens `dir` read-only through any [`Storage`]. A torn tail or
    /// corruption does not fail the open: both are in [`LogReader::scan`].
    pub fn open_with(storage: Arc<dyn Storage>, dir: impl AsRef<Path>) -> Result<LogReader> {
        let dir = dir.as_ref().to_path_buf();
        match storage.is_dir(&dir) {
            Ok(true) => {}
            Ok(false) => {
                let reason = if storage.map(&dir).is_ok() {
                    "it is a file"
                } else {
                    "no such directory"
                };
                return Err(Error::NotAJournal {
                    path: dir,
                    reason: reason.into(),
                });
            }
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
        // The owner may be appending and compacting while we read. Two races
        // look like damage but move on when looked at again:
        // * appending: the map can show zeros where a record is being written
        //   and, a moment later, the records after it (a hole before
        //   acknowledged data); the record was complete before any later one
        //   was written, so a second scan no longer sees it;
        // * compacting: a new snapshot and the removal of the segments (and
        //   the older snapshot) it covers between our reading the snapshot
        //   and mapping a file: a file vanishes (NotFound), or the first
        //   segment starts past our stale snapshot (an "LSN gap").
        // So read snapshot + scan again, a bounded number of times, until a
        // corruption stays at the same place; real damage stays put.
        let mut last_corruption: Option<(PathBuf, u64)> = None;
        let mut attempt = 0;
        let (snapshot, scan) = loop {
            attempt += 1;
            let look = || {
                snapshot::read_latest(storage.as_ref(), &dir).and_then(|snapshot| {
                    let expected_first = snapshot.as_ref().map(|s| s.lsn + 1);
                    let scan = scan_dir(&storage, &dir, expected_first)?;
                    Ok((snapshot, scan))
                })
            };
            // After a first look that found damage, the live segment is
            // read as one snapshot (see `whole_live_reads`): windows read
            // at different moments can show the owner's append in progress
            // as a hole before later records.
            let read = if last_corruption.is_none() && attempt == 1 {
                look()
            } else {
                super::window::whole_live_reads(look)
            };
            let (snapshot, scan) = match read {
                Err(Error::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 9 =>
                {
                    continue
                }
                r => r?,
            };
            let here = scan
                .corruption
                .as_ref()
                .map(|c| (c.segment.clone(), c.offset));
            if here.is_none() || here == last_corruption || attempt >= 9 {
                break (snapshot, scan);
            }
            last_corruption = here;
        };
        Ok(LogReader {
            storage,
            dir,
            scan,
            snapshot,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the scan found (segments, torn tail, corruption).
    pub fn scan(&self) -> &ScanReport {
        &self.scan
    }

    /// The newest snapshot, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Records with LSN `>= from`, up to the last valid record found by the scan.
    pub fn iter_from(&self, from: Lsn) -> LogIter {
        let segments = self
            .scan
            .segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect();
        let last = self.scan.last_lsn().unwrap_or(0);
        let live_end = self.scan.segments.last().map_or(0, |s| s.end_offset);
        LogIter::new(self.storage.clone(), segments, from, last, live_end)
    }
}
