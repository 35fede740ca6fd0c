//! `dump`: every valid record, decoded. A record the journal layer
//! understands is shown as its JSON form; otherwise the payload is shown as
//! text when it is printable UTF-8, else as hex.

use serde::Serialize;

use super::error::Result;
use super::open::{display, Inspection};
use super::semantics;
use crate::log::{LogIter, Lsn};

/// Options of [`dump`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// First LSN to show (default: the first record held).
    pub from: Option<Lsn>,
    /// Show at most this many records.
    pub limit: Option<u64>,
}

/// One record of `dump` (one JSON line with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct DumpRecord {
    /// Log sequence number.
    pub lsn: Lsn,
    /// Record kind byte.
    pub kind: u8,
    /// Name of the record type, when the journal layer knows it.
    pub kind_name: Option<String>,
    /// Payload length in bytes.
    pub len: u64,
    /// Highest LSN that was durable when this record was written.
    pub synced_lsn: Lsn,
    /// Segment file holding it.
    pub segment: String,
    /// Byte offset of the record inside the segment.
    pub offset: u64,
    /// The decoded journal record, when the journal layer understands it.
    pub record: Option<serde_json::Value>,
    /// The payload as text, when it is not a journal record and is printable UTF-8.
    pub payload: Option<String>,
    /// The payload in hex, when it is neither.
    pub payload_hex: Option<String>,
}

/// Iterator over the records of a dump.
#[derive(Debug)]
pub struct Dump<'a> {
    insp: &'a Inspection,
    iter: LogIter,
    left: u64,
}

impl Iterator for Dump<'_> {
    type Item = Result<DumpRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let rec = match self.iter.next()? {
            Ok(r) => r,
            Err(e) => {
                self.left = 0;
                return Some(Err(e.into()));
            }
        };
        self.left -= 1;
        let segment = self
            .insp
            .reader()
            .scan()
            .segments
            .iter()
            .rev()
            .find(|s| s.first_lsn <= rec.lsn)
            .map(|s| display(&s.path))
            .unwrap_or_default();
        let p = rec.payload();
        let record = semantics::decode_record(rec.kind, p);
        let kind_name = record
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let text = if record.is_none() { printable(p) } else { None };
        let payload_hex = (record.is_none() && text.is_none()).then(|| hex(p));
        Some(Ok(DumpRecord {
            lsn: rec.lsn,
            kind: rec.kind,
            kind_name,
            len: p.len() as u64,
            synced_lsn: rec.synced_lsn,
            segment,
            offset: rec.offset(),
            record,
            payload: text,
            payload_hex,
        }))
    }
}

/// Records of an opened journal, from `opts.from`, at most `opts.limit`.
pub fn dump(insp: &Inspection, opts: DumpOptions) -> Dump<'_> {
    let from = opts
        .from
        .unwrap_or_else(|| insp.reader().scan().first_lsn().unwrap_or(1));
    Dump {
        insp,
        iter: insp.reader().iter_from(from),
        left: opts.limit.unwrap_or(u64::MAX),
    }
}

fn printable(p: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(p).ok()?;
    s.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r')
        .then(|| s.to_string())
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
