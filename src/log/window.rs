//! Reading a segment record by record with bounded memory.
//!
//! **Promises.** A sealed segment is mapped (the page cache holds it, not
//! the heap). The live segment, which the owner writes and recovery zeroes
//! while we read, is read with positional reads through
//! [`Storage::read_range`] in windows of [`READ_CHUNK`] bytes (1 MiB): the
//! heap holds one window, grown only as far as one record that spans its
//! end needs (a record is at most the writer's `max_record_bytes` plus a
//! header; a damaged length field is capped at the end of the file), never
//! the whole segment. Records handed out keep their own window alive, and
//! only theirs. A read error is an error, never a `SIGBUS`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{decode_at, encoded_len, Codec, Decoded, RECORD_HEADER};
use super::storage::{FileBytes, OpenMode, Storage};

/// Bytes read from the live segment at a time.
pub(crate) const READ_CHUNK: usize = 1 << 20;

thread_local! {
    /// The window size on this thread: [`READ_CHUNK`], shrunk by tests
    /// (feature `testing`) and unbounded inside [`whole_live_reads`].
    static CHUNK: std::cell::Cell<usize> = const { std::cell::Cell::new(READ_CHUNK) };
}

/// The window size on this thread.
fn chunk() -> usize {
    CHUNK.with(|c| c.get())
}

/// Runs `f` reading each live segment in one window (one positional read
/// from offset 0 to its end), as one snapshot of the file.
///
/// Why: a reader that does not own the log races the owner's appends.
/// Windows read one after the other show the file at different moments: a
/// record position still zero in one window, and the records written after
/// it in a window read a moment later, which looks exactly like a hole
/// before acknowledged data (corruption). [`super::reader::LogReader`] reads
/// in windows first (bounded memory) and, only when that found damage,
/// looks again with whole reads before it believes it.
pub(crate) fn whole_live_reads<R>(f: impl FnOnce() -> R) -> R {
    let before = CHUNK.with(|c| c.replace(usize::MAX));
    let r = f();
    CHUNK.with(|c| c.set(before));
    r
}

/// Sets the live-segment window size for reads on this thread (feature
/// `testing`; at least 1 byte).
#[cfg(any(test, feature = "testing"))]
pub fn set_read_chunk(bytes: usize) {
    CHUNK.with(|c| c.set(bytes.max(1)));
}

/// A segment's bytes: mapped whole (sealed) or read in windows (live).
#[derive(Debug)]
pub(crate) enum Source {
    /// A sealed segment, mapped.
    Mapped(FileBytes),
    /// The live segment, read in windows up to `end`.
    Live {
        storage: Arc<dyn Storage>,
        path: PathBuf,
        /// Offset past which nothing is read (the file length, or where the
        /// valid records end).
        end: u64,
        /// File offset of `window[0]`.
        start: u64,
        window: FileBytes,
    },
}

impl Source {
    /// The live segment at `path`, to be read up to `max` bytes (or its
    /// length). Reads its first window.
    pub(crate) fn live(
        storage: Arc<dyn Storage>,
        path: &Path,
        max: u64,
    ) -> std::io::Result<Source> {
        let len = storage.open(path, OpenMode::ReadOnly)?.len()?;
        let end = len.min(max);
        let first = end.min(chunk() as u64);
        let window = storage.read_range(path, 0, first)?;
        // A first window shorter than asked: the file shrank, it ends there.
        let end = if (window.len() as u64) < first {
            window.len() as u64
        } else {
            end
        };
        Ok(Source::Live {
            storage,
            path: path.to_path_buf(),
            end,
            start: 0,
            window,
        })
    }

    /// Bytes it has (the mapped length, or the live end).
    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::Mapped(b) => b.len() as u64,
            Source::Live { end, .. } => *end,
        }
    }

    /// Makes `from..from + n` (capped at the end) resident; returns the
    /// window holding it and the window's file offset.
    fn load(&mut self, from: u64, n: u64) -> std::io::Result<(&FileBytes, u64)> {
        match self {
            Source::Mapped(b) => Ok((b, 0)),
            Source::Live {
                storage,
                path,
                end,
                start,
                window,
            } => {
                let want_end = from.saturating_add(n).min(*end);
                let have_end = *start + window.len() as u64;
                if from < *start || want_end > have_end {
                    let len = (want_end.saturating_sub(from)).max(chunk() as u64);
                    let len = len.min(end.saturating_sub(from));
                    let got = storage.read_range(path, from, len)?;
                    if (got.len() as u64) < len {
                        // The file shrank meanwhile: it ends here now.
                        *end = from + got.len() as u64;
                    }
                    *start = from;
                    *window = got;
                }
                Ok((window, *start))
            }
        }
    }

    /// The bytes `from..from + n` (fewer at the end).
    pub(crate) fn bytes(&mut self, from: u64, n: u64) -> std::io::Result<&[u8]> {
        let (w, start) = self.load(from, n)?;
        let lo = usize::try_from(from - start)
            .unwrap_or(usize::MAX)
            .min(w.len());
        let hi = usize::try_from((from - start).saturating_add(n))
            .unwrap_or(usize::MAX)
            .min(w.len());
        Ok(&w[lo..hi])
    }

    /// Decodes the record at `pos` (see [`decode_at`]); `next` is a file
    /// offset.
    pub(crate) fn decode(&mut self, pos: u64, codec: Codec) -> std::io::Result<Decoded> {
        let header = self.bytes(pos, RECORD_HEADER as u64)?;
        let need = if header.len() == RECORD_HEADER {
            let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            encoded_len(len as usize) as u64
        } else {
            RECORD_HEADER as u64
        };
        let (w, start) = self.load(pos, need)?;
        let rel = usize::try_from(pos - start).unwrap_or(usize::MAX);
        Ok(match decode_at(w, rel, codec) {
            Decoded::Valid { record, next } => Decoded::Valid {
                record,
                next: next + start as usize,
            },
            other => other,
        })
    }

    /// Offset just past the last non-zero byte at or after `from`, or
    /// `from`; reads the rest of a live segment one window at a time.
    pub(crate) fn nonzero_end(&mut self, from: u64) -> std::io::Result<u64> {
        if let Source::Mapped(b) = self {
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            return Ok(super::scan::nonzero_end(b, from) as u64);
        }
        let mut last = from;
        let mut off = from;
        while off < self.len() {
            let n = chunk() as u64;
            let b = self.bytes(off, n)?;
            if b.is_empty() {
                break;
            }
            let got = b.len() as u64;
            let e = super::scan::nonzero_end(b, 0) as u64;
            if e > 0 {
                last = off + e;
            }
            off += got;
        }
        Ok(last)
    }

    /// Non-zero bytes in `from..to`, one window at a time.
    pub(crate) fn count_nonzero(&mut self, from: u64, to: u64) -> std::io::Result<u64> {
        let mut n = 0;
        let mut off = from;
        while off < to.min(self.len()) {
            let b = self.bytes(off, (to - off).min(chunk() as u64))?;
            if b.is_empty() {
                break;
            }
            n += b.iter().filter(|&&x| x != 0).count() as u64;
            off += b.len() as u64;
        }
        Ok(n)
    }

    /// The bytes `from..to` as one buffer: what the look-ahead past damage
    /// searches (it needs random access). Only read when a segment has
    /// damage, and only the damaged region up to its last non-zero byte.
    pub(crate) fn region(&mut self, from: u64, to: u64) -> std::io::Result<FileBytes> {
        match self {
            Source::Mapped(b) => {
                let lo = usize::try_from(from).unwrap_or(usize::MAX).min(b.len());
                let hi = usize::try_from(to).unwrap_or(usize::MAX).min(b.len());
                Ok(FileBytes::new(b[lo..hi].to_vec()))
            }
            Source::Live {
                storage,
                path,
                start,
                window,
                ..
            } => {
                // From the window when it holds the region: the same
                // snapshot of the file as the records decoded from it.
                let have_end = *start + window.len() as u64;
                if from >= *start && to <= have_end && from <= to {
                    let lo = usize::try_from(from - *start).unwrap_or(usize::MAX);
                    let hi = usize::try_from(to - *start).unwrap_or(usize::MAX);
                    return Ok(FileBytes::new(window[lo..hi].to_vec()));
                }
                storage.read_range(path, from, to.saturating_sub(from))
            }
        }
    }
}
