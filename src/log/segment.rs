//! Segment files: naming and the 32-byte segment header.
//!
//! ```text
//! offset size field
//!      0    8 magic      b"AGWALSEG"
//!      8    4 version    segment format version (2; 1 is still read)
//!     12    4 salt       version 2: random, mixed into every record checksum
//!                        version 1: reserved, zero
//!     16    8 first_lsn  LSN of the first record in this segment
//!     24    4 crc32      CRC-32 of bytes 0..24
//!     28    4 reserved   zero
//! ```
//!
//! The salt is drawn afresh for every segment file, so a record is valid
//! only in the segment that wrote it: bytes inside a payload (or left over
//! from an earlier file) cannot pass for a record, which is what lets
//! recovery trust a record found after damage as proof of acknowledged data.
//!
//! A segment is named `<first_lsn as 20 decimal digits>.wal`, so names sort in
//! LSN order.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::record::{Codec, Lsn};

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"AGWALSEG";
/// Format version of snapshot files, and of segments written before
/// salted checksums (still read, never written).
pub const FORMAT_VERSION: u32 = 1;
/// Segment format version this build writes (and the newest it reads):
/// salted record checksums that cover the padding.
pub const SEGMENT_VERSION: u32 = 2;
/// Oldest segment format version this build reads.
pub const OLDEST_SEGMENT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub const SEGMENT_HEADER: usize = 32;
/// File name extension of segments.
pub const SEGMENT_EXT: &str = "wal";

/// File name of the segment whose first record is `first_lsn`.
pub fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.{SEGMENT_EXT}")
}

/// Parses a segment file name back into its first LSN.
pub fn parse_segment_name(path: &Path) -> Option<Lsn> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Segment files of a directory listing, sorted by first LSN.
pub fn segment_files(listing: Vec<PathBuf>) -> Vec<(Lsn, PathBuf)> {
    let mut v: Vec<_> = listing
        .into_iter()
        .filter_map(|p| parse_segment_name(&p).map(|l| (l, p)))
        .collect();
    v.sort();
    v
}

/// Encodes a segment header of the current version with `salt`.
pub fn encode_header(first_lsn: Lsn, salt: u32) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&salt.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Encodes a header of format version 1 (no salt). This build never writes
/// one; tests and tools use it to build journals of the previous format.
#[cfg(any(test, feature = "testing"))]
pub fn encode_header_v1(first_lsn: Lsn) -> [u8; SEGMENT_HEADER] {
    let mut h = encode_header(first_lsn, 0);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A fresh random salt for a new segment. Not cryptographic: it only has to
/// be unpredictable to whoever chooses payload bytes, and different for
/// every segment file (std's `RandomState` keys are random per process and
/// per call, mixed here with the time and the segment's first LSN).
pub fn new_salt(first_lsn: Lsn) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(first_lsn);
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.write_u32(std::process::id());
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

/// A decoded, checked segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// LSN of the first record in the segment.
    pub first_lsn: Lsn,
    /// Format version of the segment.
    pub version: u32,
    /// How its records are checksummed.
    pub codec: Codec,
}

/// Why a header is not valid.
#[derive(Debug)]
pub enum HeaderProblem {
    /// Shorter than a header, all zeros, or a bad checksum: a segment whose
    /// creation may have been torn.
    Damaged(&'static str),
    /// A definite, typed error (wrong magic, newer version).
    Fatal(Error),
}

/// Decodes and checks a segment header (any readable version).
pub fn decode_header(path: &Path, bytes: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
    let Some(h) = bytes.get(..SEGMENT_HEADER) else {
        return Err(HeaderProblem::Damaged("file shorter than a segment header"));
    };
    if h.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Damaged("segment header is all zeros"));
    }
    if crc32fast::hash(&h[0..24]).to_le_bytes() != h[24..28] {
        // A header whose write tore or stopped short (its bytes are ours or
        // still zero) is damage to judge by position, not a foreign file.
        let torn_magic = h[0..8]
            .iter()
            .zip(SEGMENT_MAGIC)
            .all(|(&a, &b)| a == b || a == 0);
        if !torn_magic {
            return Err(HeaderProblem::Fatal(Error::BadMagic {
                path: path.to_path_buf(),
            }));
        }
        return Err(HeaderProblem::Damaged("segment header checksum mismatch"));
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::Fatal(Error::BadMagic {
            path: path.to_path_buf(),
        }));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_SEGMENT_VERSION..=SEGMENT_VERSION).contains(&version) {
        return Err(HeaderProblem::Fatal(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SEGMENT_VERSION,
        }));
    }
    let salt = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    let codec = if version == 1 {
        if salt != 0 {
            return Err(HeaderProblem::Damaged("reserved header bytes are not zero"));
        }
        Codec::V1
    } else {
        Codec::V2 { salt }
    };
    if h[28..32] != [0; 4] {
        return Err(HeaderProblem::Damaged("reserved header bytes are not zero"));
    }
    let first = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    // 0 is never a first LSN (the first record ever is 1).
    if first == 0 || first > super::record::MAX_LSN {
        return Err(HeaderProblem::Fatal(Error::Corruption {
            segment: path.to_path_buf(),
            offset: 16,
            reason: format!("first LSN {first} is out of range"),
        }));
    }
    Ok(SegmentHeader {
        first_lsn: first,
        version,
        codec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let p = PathBuf::from("/j").join(segment_name(42));
        assert_eq!(parse_segment_name(&p), Some(42));
        assert_eq!(parse_segment_name(Path::new("/j/42.wal")), None);
        assert_eq!(parse_segment_name(Path::new("/j/LOCK")), None);
        let v = segment_files(vec![
            PathBuf::from(segment_name(100)),
            PathBuf::from("x.snap"),
            PathBuf::from(segment_name(9)),
        ]);
        assert_eq!(v.iter().map(|x| x.0).collect::<Vec<_>>(), vec![9, 100]);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let p = Path::new("seg");
        let h = encode_header(77, 0xDEAD_BEEF);
        let d = decode_header(p, &h).unwrap();
        assert_eq!(d.first_lsn, 77);
        assert_eq!(d.version, SEGMENT_VERSION);
        assert_eq!(d.codec, Codec::V2 { salt: 0xDEAD_BEEF });
        let old = decode_header(p, &encode_header_v1(77)).unwrap();
        assert_eq!((old.first_lsn, old.version, old.codec), (77, 1, Codec::V1));
        assert!(matches!(
            decode_header(p, &h[..10]),
            Err(HeaderProblem::Damaged(_))
        ));
        for bit in 0..24 * 8 {
            let mut x = h;
            x[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(p, &x).is_err(), "bit {bit}");
        }
        let mut v2 = h;
        v2[8..12].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32fast::hash(&v2[0..24]);
        v2[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_header(p, &v2),
            Err(HeaderProblem::Fatal(Error::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            }))
        ));
    }
}
