//! The record codec: framing, checksum and alignment of one log record.
//!
//! Layout (all integers little-endian; see `docs/format.md`):
//!
//! ```text
//! offset size field
//!      0    4 crc32      checksum (see below)
//!      4    4 len        payload length in bytes
//!      8    8 lsn        log sequence number of this record
//!     16    8 synced_lsn highest LSN known durable when this record was written
//!     24    1 kind       record type, opaque to the log
//!     25    3 reserved   zero
//!     28  len payload
//!      …  0-7 padding    zeros up to the next multiple of 8
//! ```
//!
//! The checksum depends on the segment's format version ([`Codec`]):
//!
//! * **version 2** (written by this build): CRC-32 (IEEE, crc32fast) of the
//!   segment's 4-byte salt (from the segment header) followed by bytes
//!   `4 .. encoded_len` — padding included. Bytes inside a payload cannot
//!   imitate a record of the segment without knowing its random salt, and a
//!   flipped padding bit fails the checksum.
//! * **version 1** (still read): CRC-32 of bytes `4 .. 28+len`; padding is
//!   not covered, so the decoder requires it to be zero.

use std::ops::Range;

use super::storage::FileBytes;

/// Size of the fixed record header.
pub const RECORD_HEADER: usize = 28;
/// Records start at multiples of this.
pub const ALIGN: usize = 8;
/// Largest payload the format can express (the writer's limit is lower).
pub const FORMAT_MAX_PAYLOAD: u64 = u32::MAX as u64;
/// Largest LSN a segment or snapshot may name. No log can reach it (2^62
/// records), so a larger one is damage or a crafted file, refused before
/// any LSN arithmetic could overflow.
pub const MAX_LSN: u64 = 1 << 62;

/// A log sequence number. The first record of a fresh log has LSN 1.
pub type Lsn = u64;

/// Total on-disk size of a record with `payload_len` bytes of payload.
pub fn encoded_len(payload_len: usize) -> usize {
    (RECORD_HEADER + payload_len).div_ceil(ALIGN) * ALIGN
}

/// How the records of one segment are checksummed; decided by the segment
/// header (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Format version 1: unsalted checksum, padding not covered (must be zero).
    V1,
    /// Format version 2: checksum seeded with the segment's salt, padding covered.
    V2 {
        /// The segment's random salt.
        salt: u32,
    },
}

impl Codec {
    /// The checksum of a record whose bytes after the crc field are `body`
    /// (for version 1 without padding, for version 2 with it).
    fn crc(self, body: &[u8]) -> u32 {
        match self {
            Codec::V1 => crc32fast::hash(body),
            Codec::V2 { salt } => {
                let mut h = crc32fast::Hasher::new();
                h.update(&salt.to_le_bytes());
                h.update(body);
                h.finalize()
            }
        }
    }
}

/// Appends the encoding of one record to `out`, checksummed with `codec`.
///
/// The payload length must fit the format (the writer refuses larger
/// records before encoding); a longer payload is cut at `FORMAT_MAX_PAYLOAD`
/// bytes rather than panicking.
pub fn encode(
    out: &mut Vec<u8>,
    codec: Codec,
    lsn: Lsn,
    synced_lsn: Lsn,
    kind: u8,
    payload: &[u8],
) {
    let payload = &payload[..payload.len().min(FORMAT_MAX_PAYLOAD as usize)];
    let start = out.len();
    let len = payload.len() as u32;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&synced_lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(payload);
    if codec != Codec::V1 {
        out.resize(start + encoded_len(payload.len()), 0);
    }
    let crc = codec.crc(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + encoded_len(payload.len()), 0);
}

/// One decoded record, borrowing the file's bytes (no copy).
#[derive(Clone)]
pub struct Record {
    /// Its log sequence number.
    pub lsn: Lsn,
    /// Its record type byte.
    pub kind: u8,
    /// Highest LSN that was durable when it was written.
    pub synced_lsn: Lsn,
    bytes: FileBytes,
    range: Range<usize>,
}

impl Record {
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
    /// Byte offset of the record header inside its segment file.
    pub fn offset(&self) -> u64 {
        (self.range.start - RECORD_HEADER) as u64
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("lsn", &self.lsn)
            .field("kind", &self.kind)
            .field("len", &self.range.len())
            .finish()
    }
}

/// What is found at a position of a segment.
#[derive(Debug)]
pub enum Decoded {
    /// A valid record; the next one starts at `next`.
    Valid {
        /// The record.
        record: Record,
        /// Offset of the following record.
        next: usize,
    },
    /// The header bytes are all zero: unwritten (preallocated) space.
    Zero,
    /// Not a valid record; why.
    Invalid(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at `pos` of `bytes`, a segment whose header says
/// `codec`. Never panics and never allocates: the length field is checked
/// against the bytes actually present. Every byte of the record, padding
/// included, is checked (by the checksum, or for version 1 padding by
/// requiring zeros).
pub fn decode_at(bytes: &FileBytes, pos: usize, codec: Codec) -> Decoded {
    let b: &[u8] = bytes;
    let Some(header) = b.get(pos..pos.saturating_add(RECORD_HEADER)) else {
        return if b.get(pos..).is_none_or(|rest| rest.iter().all(|&x| x == 0)) {
            Decoded::Zero
        } else {
            Decoded::Invalid("truncated record header")
        };
    };
    if header.iter().all(|&x| x == 0) {
        return Decoded::Zero;
    }
    let len = u32_at(header, 4) as usize;
    // `pos + RECORD_HEADER <= b.len()` here, and `len` is at most 2^32, so
    // none of these additions can overflow.
    let end = pos + RECORD_HEADER + len;
    let padded = pos + encoded_len(len);
    if padded > b.len() {
        return Decoded::Invalid("length field runs past the end of the segment");
    }
    if header[25..28] != [0, 0, 0] {
        return Decoded::Invalid("reserved header bytes are not zero");
    }
    let covered = match codec {
        Codec::V1 => end,
        Codec::V2 { .. } => padded,
    };
    if codec.crc(&b[pos + 4..covered]) != u32_at(header, 0) {
        return Decoded::Invalid("checksum mismatch");
    }
    if b[end..padded].iter().any(|&x| x != 0) {
        return Decoded::Invalid("padding bytes are not zero");
    }
    let lsn = u64_at(header, 8);
    let synced_lsn = u64_at(header, 16);
    if synced_lsn >= lsn {
        return Decoded::Invalid("synced LSN not below the record's LSN");
    }
    if lsn > MAX_LSN {
        return Decoded::Invalid("LSN beyond the largest the format allows");
    }
    Decoded::Valid {
        record: Record {
            lsn,
            kind: header[24],
            synced_lsn,
            bytes: bytes.clone(),
            range: pos + RECORD_HEADER..end,
        },
        next: padded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALTED: Codec = Codec::V2 { salt: 0x5A17_C0DE };

    fn one_with(codec: Codec, payload: &[u8]) -> FileBytes {
        let mut v = Vec::new();
        encode(&mut v, codec, 7, 3, 9, payload);
        FileBytes::new(v)
    }

    fn one(payload: &[u8]) -> FileBytes {
        one_with(SALTED, payload)
    }

    #[test]
    fn round_trip() {
        for len in [0usize, 1, 3, 4, 5, 27, 100, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = one(&payload);
            assert_eq!(b.len(), encoded_len(len));
            assert_eq!(b.len() % ALIGN, 0);
            match decode_at(&b, 0, SALTED) {
                Decoded::Valid { record, next } => {
                    assert_eq!(record.lsn, 7);
                    assert_eq!(record.synced_lsn, 3);
                    assert_eq!(record.kind, 9);
                    assert_eq!(record.payload(), &payload[..]);
                    assert_eq!(next, b.len());
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected_padding_included() {
        for codec in [SALTED, Codec::V1] {
            let b = one_with(codec, b"hello, agentwal: a record to flip");
            assert!(matches!(decode_at(&b, 0, codec), Decoded::Valid { .. }));
            for bit in 0..b.len() * 8 {
                let mut v = b.to_vec();
                v[bit / 8] ^= 1 << (bit % 8);
                let d = decode_at(&FileBytes::new(v), 0, codec);
                assert!(
                    !matches!(d, Decoded::Valid { .. }),
                    "{codec:?}: flip of bit {bit} went undetected"
                );
            }
        }
    }

    #[test]
    fn a_record_checksummed_with_another_salt_or_version_is_invalid() {
        let b = one(b"salted");
        assert!(matches!(decode_at(&b, 0, SALTED), Decoded::Valid { .. }));
        assert!(!matches!(
            decode_at(&b, 0, Codec::V2 { salt: 1 }),
            Decoded::Valid { .. }
        ));
        assert!(!matches!(
            decode_at(&b, 0, Codec::V1),
            Decoded::Valid { .. }
        ));
        let old = one_with(Codec::V1, b"salted");
        assert!(!matches!(decode_at(&old, 0, SALTED), Decoded::Valid { .. }));
    }

    #[test]
    fn every_truncation_is_handled() {
        let payload = b"truncate me at every offset";
        let b = one(payload);
        // A record is whole only with its padding (every write includes it).
        for cut in 0..b.len() {
            let v = b[..cut].to_vec();
            let d = decode_at(&FileBytes::new(v), 0, SALTED);
            assert!(!matches!(d, Decoded::Valid { .. }), "cut at {cut} decoded");
        }
    }

    #[test]
    fn huge_length_field_is_refused_without_allocation() {
        let mut v = one(b"x").to_vec();
        v[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_at(&FileBytes::new(v), 0, SALTED),
            Decoded::Invalid("length field runs past the end of the segment")
        ));
    }

    #[test]
    fn zeros_are_unwritten_space() {
        assert!(matches!(
            decode_at(&FileBytes::new(vec![0u8; 64]), 0, SALTED),
            Decoded::Zero
        ));
        assert!(matches!(
            decode_at(&FileBytes::new(vec![0u8; 5]), 0, Codec::V1),
            Decoded::Zero
        ));
        assert!(matches!(
            decode_at(&FileBytes::new(vec![0u8; 5]), 9, SALTED),
            Decoded::Zero
        ));
    }
}
