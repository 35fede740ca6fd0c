//! Snapshot files: the compaction point of the log.
//!
//! A snapshot holds an opaque payload (the journal's live state) that covers
//! every record up to and including its LSN. Layout (little-endian):
//!
//! ```text
//! offset size field
//!      0    8 magic     b"AGWALSNP"
//!      8    4 version   1
//!     12    4 reserved  zero
//!     16    8 lsn       last LSN the snapshot covers
//!     24    8 len       payload length
//!     32    4 crc32     CRC-32 of bytes 0..32 followed by the payload
//!     36    4 reserved  zero
//!     40  len payload
//! ```
//!
//! Written as `snap-<lsn>.tmp`, fsynced, renamed to `snap-<lsn 20 digits>.snap`,
//! then the directory is fsynced: a reader sees either no new snapshot or a
//! complete one.

use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::record::Lsn;
use super::segment::FORMAT_VERSION;
use super::storage::{OpenMode, Storage};

pub(crate) use super::format::SNAPSHOT_MAGIC;
use super::format::{is_snapshot_tmp_name, parse_snapshot_name, snapshot_name, snapshot_tmp_name};
const HEADER: usize = 40;

/// A snapshot read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Last LSN covered.
    pub lsn: Lsn,
    /// The payload.
    pub data: Vec<u8>,
    /// File it was read from.
    pub path: PathBuf,
}

/// Snapshot files of `dir`, sorted by LSN.
pub fn snapshot_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut v: Vec<_> = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .into_iter()
        .filter_map(|p| parse_snapshot_name(&p).map(|l| (l, p)))
        .collect();
    v.sort();
    Ok(v)
}

/// Encodes a snapshot file whole (the library streams its snapshots through
/// `header_of`; whole-buffer encoding is for tests and fuzzing only).
#[cfg(any(test, feature = "testing"))]
pub fn encode(lsn: Lsn, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(&header(lsn, data));
    out.extend_from_slice(data);
    out
}

/// The 40-byte header of a snapshot file holding `data`.
#[cfg(any(test, feature = "testing"))]
fn header(lsn: Lsn, data: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    header_of(lsn, data.len() as u64, h)
}

/// The header for a payload of `len` bytes whose CRC-32 state is `payload`.
fn header_of(lsn: Lsn, len: u64, payload: crc32fast::Hasher) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..32]);
    h.combine(&payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out
}

/// An `io::Write` that streams a payload into a snapshot temporary after its
/// header, in chunks, computing its length and checksum on the way.
struct PayloadWriter<'a> {
    file: &'a dyn super::storage::StorageFile,
    buf: Vec<u8>,
    offset: u64,
    crc: crc32fast::Hasher,
}

impl PayloadWriter<'_> {
    const CHUNK: usize = 256 << 10;

    fn flush_buf(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_at(self.offset, &self.buf)?;
            self.crc.update(&self.buf);
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl std::io::Write for PayloadWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= Self::CHUNK {
            self.flush_buf()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buf()
    }
}

/// Decodes and verifies a snapshot file's bytes.
pub fn decode(path: &Path, b: &[u8]) -> Result<(Lsn, Vec<u8>)> {
    let corrupt = |offset: u64, reason: &str| Error::Corruption {
        segment: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    if b.len() < HEADER {
        return Err(corrupt(0, "snapshot shorter than its header"));
    }
    if &b[0..8] != SNAPSHOT_MAGIC {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let lsn = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
    if len != (b.len() - HEADER) as u64 {
        return Err(corrupt(
            24,
            "snapshot length field does not match the file size",
        ));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..32]);
    h.update(&b[HEADER..]);
    if h.finalize().to_le_bytes() != b[32..36] {
        return Err(corrupt(32, "snapshot checksum mismatch"));
    }
    // Checked after the checksum: only a crafted (checksummed) file gets here.
    if lsn > super::record::MAX_LSN {
        return Err(corrupt(16, "snapshot LSN is out of range"));
    }
    Ok((lsn, b[HEADER..].to_vec()))
}

/// Reads the newest snapshot of `dir`, if any. A damaged newest snapshot is
/// corruption (older segments may already be gone, so no fallback is safe).
pub fn read_latest(storage: &dyn Storage, dir: &Path) -> Result<Option<Snapshot>> {
    let Some((_, path)) = snapshot_files(storage, dir)?.pop() else {
        return Ok(None);
    };
    let bytes = storage
        .map(&path)
        .map_err(|e| Error::io("map snapshot", &path, e))?;
    let (lsn, data) = decode(&path, &bytes)?;
    Ok(Some(Snapshot { lsn, data, path }))
}

/// Writes a snapshot atomically and durably, then removes older snapshots.
#[cfg(test)]
pub fn write(storage: &dyn Storage, dir: &Path, lsn: Lsn, data: &[u8]) -> Result<PathBuf> {
    write_with(storage, dir, lsn, &mut |w| w.write_all(data)).map(|(p, _)| p)
}

/// [`write`] with the payload produced by `fill` into a writer (streamed to
/// the file in chunks: a large payload is never held in memory whole).
/// Returns the file and the payload length.
pub fn write_with(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(PathBuf, u64)> {
    let tmp = dir.join(snapshot_tmp_name(lsn));
    let path = dir.join(snapshot_name(lsn));
    // Temporaries of earlier attempts (a crash or a full disk mid-write) are
    // garbage: the directory has one owner, so none is being written. Left
    // behind they would hold on to the space a full disk needs back.
    if let Ok(names) = storage.list_dir(dir) {
        for p in names.iter().filter(|p| is_snapshot_tmp_name(p)) {
            let _ = storage.remove_file(p);
        }
    }
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create snapshot", &tmp, e))?;
    // The payload first, streamed after the header's place; then the
    // header, which needs the payload's length and checksum.
    let mut w = PayloadWriter {
        file: file.as_ref(),
        buf: Vec::with_capacity(PayloadWriter::CHUNK),
        offset: HEADER as u64,
        crc: crc32fast::Hasher::new(),
    };
    let written = fill(&mut w)
        .and_then(|()| std::io::Write::flush(&mut w))
        .and_then(|()| {
            let len = w.offset - HEADER as u64;
            file.write_at(0, &header_of(lsn, len, w.crc.clone()))
        })
        .map_err(|e| Error::io("write snapshot", &tmp, e));
    let len = w.offset - HEADER as u64;
    drop(w);
    let written = written
        // The content must be durable before the rename can be: otherwise a
        // crash could persist the new name pointing at an empty or partial file.
        .and_then(|()| {
            file.sync_all()
                .map_err(|e| Error::io("fsync snapshot", &tmp, e))
        });
    if let Err(e) = written {
        // Give the space back (ENOSPC is the usual cause); the old snapshot
        // and the log are untouched.
        drop(file);
        let _ = storage.remove_file(&tmp);
        return Err(e);
    }
    storage
        .rename(&tmp, &path)
        .map_err(|e| Error::io("rename snapshot", &path, e))?;
    // The rename is durable only once the directory entry is.
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    for (old, p) in snapshot_files(storage, dir)? {
        if old < lsn {
            storage
                .remove_file(&p)
                .map_err(|e| Error::io("remove old snapshot", &p, e))?;
        }
    }
    Ok((path, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::sim::{FaultKind, FaultOp};
    use crate::log::storage::SimStorage;

    #[test]
    fn a_failed_write_leaves_no_temporary_and_the_next_write_clears_old_ones() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        sim.create_dir_all(dir).unwrap();
        sim.inject(FaultOp::Write, 0, FaultKind::NoSpace);
        assert!(write(&sim, dir, 5, b"state").is_err());
        let tmps = |s: &SimStorage| {
            s.list_dir(dir)
                .unwrap()
                .into_iter()
                .filter(|p| is_snapshot_tmp_name(p))
                .count()
        };
        assert_eq!(tmps(&sim), 0);
        // A temporary abandoned by a crash is removed by the next snapshot.
        sim.open(
            &dir.join("snap-00000000000000000003.tmp"),
            OpenMode::CreateNew,
        )
        .unwrap();
        assert_eq!(tmps(&sim), 1);
        write(&sim, dir, 7, b"state").unwrap();
        assert_eq!(tmps(&sim), 0);
        assert_eq!(read_latest(&sim, dir).unwrap().unwrap().lsn, 7);
    }

    #[test]
    fn round_trip_and_every_bit_flip() {
        let p = Path::new("s");
        let b = encode(9, b"state");
        assert_eq!(decode(p, &b).unwrap(), (9, b"state".to_vec()));
        for bit in 0..b.len() * 8 {
            let mut x = b.clone();
            x[bit / 8] ^= 1 << (bit % 8);
            if (36..40).contains(&(bit / 8)) {
                continue; // reserved bytes
            }
            assert!(decode(p, &x).is_err(), "bit {bit}");
        }
        for cut in 0..b.len() {
            assert!(decode(p, &b[..cut]).is_err());
        }
    }
}
