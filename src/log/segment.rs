//! Segment files: naming and the 32-byte segment header.
//!
//! ```text
//! offset size field
//!      0    8 magic      b"AGWALSEG"
//!      8    4 version    format version (1)
//!     12    4 reserved   zero
//!     16    8 first_lsn  LSN of the first record in this segment
//!     24    4 crc32      CRC-32 of bytes 0..24
//!     28    4 reserved   zero
//! ```
//!
//! A segment is named `<first_lsn as 20 decimal digits>.wal`, so names sort in
//! LSN order.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::record::Lsn;

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"AGWALSEG";
/// Current (and newest readable) format version.
pub const FORMAT_VERSION: u32 = 1;
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

/// Encodes a segment header.
pub fn encode_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
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

/// Decodes and checks a segment header, returning its first LSN.
pub fn decode_header(path: &Path, bytes: &[u8]) -> Result<Lsn, HeaderProblem> {
    let Some(h) = bytes.get(..SEGMENT_HEADER) else {
        return Err(HeaderProblem::Damaged("file shorter than a segment header"));
    };
    if h.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Damaged("segment header is all zeros"));
    }
    if crc32fast::hash(&h[0..24]).to_le_bytes() != h[24..28] {
        if &h[0..8] != SEGMENT_MAGIC {
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
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::Fatal(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        }));
    }
    if h[12..16] != [0; 4] || h[28..32] != [0; 4] {
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
    Ok(first)
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
        let h = encode_header(77);
        assert_eq!(decode_header(p, &h).ok(), Some(77));
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
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&v2[0..24]);
        v2[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_header(p, &v2),
            Err(HeaderProblem::Fatal(Error::UnsupportedVersion {
                found: 2,
                ..
            }))
        ));
    }
}
