//! Human-readable rendering of the reports (the default output of
//! `wal-inspect`; `--json` prints the report structs instead).

use std::fmt::Write;

use super::dump::DumpRecord;
use super::queue::QueueReport;
use super::repair::RepairReport;
use super::summary::{CompactedUnits, Summary};
use super::units::{UnitDetail, UnitRow};
use super::verify::VerifyReport;
use crate::journal::{KeyView, UnitState};
use crate::log::Lsn;

/// A plain text table: left-aligned columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new<S: ToString>(header: &[S]) -> Self {
        Table {
            rows: vec![header.iter().map(ToString::to_string).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    /// True when there is no data row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renders the table, one line per row.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

/// Byte counts for people: `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `summary` as text.
pub fn summary(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "journal            {}", s.dir);
    let _ = writeln!(
        o,
        "segments           {} ({} of log data, {} on disk)",
        s.segments,
        human_bytes(s.bytes),
        human_bytes(s.disk_bytes)
    );
    let _ = writeln!(o, "records            {}", s.records);
    let _ = writeln!(
        o,
        "LSN range          {} .. {}",
        opt(s.first_lsn),
        opt(s.last_lsn)
    );
    if let Some(l) = s.snapshot_lsn {
        let _ = writeln!(o, "snapshot           covers LSN 1 .. {l}");
    }
    let _ = writeln!(
        o,
        "units              {} committed, {} aborted, {} incomplete",
        s.units.committed, s.units.aborted, s.units.incomplete
    );
    if s.units_compacted.total() > 0 {
        let _ = writeln!(
            o,
            "                   of which {} committed and {} aborted were compacted into the snapshot{}: counted, not listed by `units`",
            s.units_compacted.committed,
            s.units_compacted.aborted,
            s.snapshot_lsn.map(|l| format!(" (LSN {l})")).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "in-doubt effects   {}", s.in_doubt_effects);
    let _ = writeln!(o, "idempotency keys   {}", s.idempotency_keys);
    match &s.torn_tail {
        Some(t) => {
            let _ = writeln!(
                o,
                "torn tail          {} bytes at {} offset {} (unacknowledged; `repair` cuts it)",
                t.bytes, t.segment, t.offset
            );
        }
        None => {
            let _ = writeln!(o, "torn tail          none");
        }
    }
    match &s.corruption {
        Some(c) => {
            let _ = writeln!(
                o,
                "corruption         {} at offset {}: {}",
                c.segment, c.offset, c.reason
            );
        }
        None => {
            let _ = writeln!(o, "corruption         none");
        }
    }
    if let Some(e) = &s.journal_error {
        let _ = writeln!(o, "note               unit counts unavailable: {e}");
    }
    for l in &s.leftovers {
        let _ = writeln!(o, "leftover file      {l}");
    }
    match &s.queue {
        Some(q) => {
            let _ = writeln!(
                o,
                "work queue         {} pending, {} in flight, {} acked",
                q.pending, q.in_flight, q.acked
            );
            let _ = writeln!(
                o,
                "dead letters       {}{}",
                s.dead_letters,
                if s.dead_letters > 0 {
                    format!(
                        " (failed too often; see wal-inspect queue {}, then --redrive or --purge-dead)",
                        s.dir
                    )
                } else {
                    String::new()
                }
            );
        }
        None => {
            let _ = writeln!(o, "dead letters       0 (no work queue)");
        }
    }
    if s.units.incomplete > 0 {
        let _ = writeln!(
            o,
            "next               wal-inspect units {} --state incomplete; wal-inspect show {} <UNIT_ID>",
            s.dir, s.dir
        );
    }
    o
}

/// `verify` as text.
pub fn verify(v: &VerifyReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "checked {} segment(s), {} record(s), {} (LSN {} .. {})",
        v.segments,
        v.records,
        human_bytes(v.bytes),
        opt(v.first_lsn),
        opt(v.last_lsn)
    );
    if let Some(s) = &v.snapshot {
        let _ = writeln!(
            o,
            "snapshot {} (LSN {}, {} bytes): checksum ok",
            s.path, s.lsn, s.bytes
        );
    }
    if let Some(t) = &v.torn_tail {
        let _ = writeln!(
            o,
            "torn tail: {} bytes at {} offset {} (never acknowledged; not corruption; `repair` cuts it)",
            t.bytes, t.segment, t.offset
        );
    }
    for c in &v.problems {
        let _ = writeln!(
            o,
            "CORRUPTION: {} at offset {}: {}",
            c.segment, c.offset, c.reason
        );
    }
    for g in &v.unreachable {
        let _ = writeln!(
            o,
            "unreachable: {} ({} readable record(s){}) comes after the corruption",
            g.segment,
            g.records,
            match (g.first_lsn, g.last_lsn) {
                (Some(a), Some(b)) => format!(", LSN {a} .. {b}"),
                _ => String::new(),
            }
        );
    }
    if let Some(q) = &v.queue {
        let _ = writeln!(o, "work queue log:");
        for line in verify(q).lines() {
            let _ = writeln!(o, "  {line}");
        }
    }
    let _ = writeln!(o, "{}", if v.ok { "OK" } else { "CORRUPT" });
    o
}

/// `s` cut to `max` characters, saying how long the payload was.
fn clip(s: &str, max: usize, len: u64) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}… ({len} bytes; --json shows all)")
}

/// One `dump` record as a text line.
pub fn dump_line(r: &DumpRecord) -> String {
    let body = if let Some(v) = &r.record {
        clip(&v.to_string(), 600, r.len)
    } else if let Some(t) = &r.payload {
        clip(&format!("{t:?}"), 200, r.len)
    } else {
        let h = r.payload_hex.as_deref().unwrap_or("");
        if h.len() > 128 {
            format!("0x{}… ({} bytes)", &h[..128], r.len)
        } else {
            format!("0x{h}")
        }
    };
    format!(
        "{:>8}  kind {:<3} {:<16} {:>7} B  {}",
        r.lsn,
        r.kind,
        r.kind_name.as_deref().unwrap_or("-"),
        r.len,
        body
    )
}

/// `repair` as text.
pub fn repair(r: &RepairReport) -> String {
    let mut o = String::new();
    use super::repair::RepairAction as A;
    let action = match r.action {
        A::NothingToDo => "nothing to do",
        A::CutTornTail => "cut torn tail",
        A::RemovedTornSegment => "removed torn segment",
        A::LossyTruncate => "lossy truncate",
        A::Refused => "REFUSED (nothing changed)",
    };
    let _ = writeln!(o, "{}{action}", if r.dry_run { "dry run: " } else { "" });
    for m in &r.messages {
        let _ = writeln!(o, "  {m}");
    }
    let _ = writeln!(
        o,
        "  log keeps {} record(s), last LSN {}",
        r.records_kept,
        opt(r.last_lsn_kept)
    );
    o
}

/// `queue` as text.
pub fn queue(q: &QueueReport) -> String {
    let mut o = String::new();
    if !q.present {
        let _ = writeln!(
            o,
            "{}",
            q.note.as_deref().unwrap_or("no work queue in this journal")
        );
        return o;
    }
    let _ = writeln!(o, "queue log          {} ({} records)", q.dir, q.records);
    let _ = writeln!(
        o,
        "items              {} pending, {} in flight, {} dead-lettered, {} acked ({} more acked and compacted)",
        q.counts.pending, q.counts.in_flight, q.counts.dead_lettered, q.counts.acked, q.acked_compacted
    );
    if let Some(t) = &q.torn_tail {
        let _ = writeln!(
            o,
            "torn tail          {} bytes at {} offset {}",
            t.bytes, t.segment, t.offset
        );
    }
    if let Some(c) = &q.corruption {
        let _ = writeln!(
            o,
            "corruption         {} at offset {}: {}",
            c.segment, c.offset, c.reason
        );
    }
    if let Some(n) = &q.note {
        let _ = writeln!(o, "note               {n}");
    }
    if !q.items.is_empty() {
        let mut t = Table::new(&["ID", "STATE", "ATTEMPTS", "WORKER", "LAST ERROR"]);
        for i in &q.items {
            t.row(vec![
                i.id.to_string(),
                i.state.to_string(),
                i.attempts.to_string(),
                opt(i.worker.as_deref()),
                opt(i.last_error.as_deref()),
            ]);
        }
        o.push('\n');
        o.push_str(&t.render());
    }
    o
}

/// `units` as a table.
pub fn units(rows: &[UnitRow]) -> String {
    units_with_compacted(rows, None, CompactedUnits::default(), None)
}

/// `units` as a table, with a footer that says how many finished units of
/// the asked-for state were compacted into the snapshot (counted by
/// `summary`, no longer listed), so "317 unit(s)" does not read as a
/// contradiction of "1000 committed".
pub fn units_with_compacted(
    rows: &[UnitRow],
    state: Option<UnitState>,
    compacted: CompactedUnits,
    snapshot_lsn: Option<Lsn>,
) -> String {
    let mut t = Table::new(&[
        "UNIT",
        "KIND",
        "STATE",
        "EFFECTS DONE",
        "IN DOUBT",
        "LAST CHECKPOINT",
        "BEGIN LSN",
        "END LSN",
    ]);
    for r in rows {
        t.row(vec![
            r.id.clone(),
            r.kind.clone(),
            r.state.to_string(),
            format!("{}/{}", r.effects_done, r.effects),
            if r.effects_in_doubt > 0 {
                format!("{} !", r.effects_in_doubt)
            } else {
                "0".into()
            },
            opt(r.last_checkpoint_lsn),
            r.begin_lsn.to_string(),
            opt(r.end_lsn),
        ]);
    }
    let mut o = t.render();
    let hidden = match state {
        None => compacted.total(),
        Some(UnitState::Committed) => compacted.committed,
        Some(UnitState::Aborted) => compacted.aborted,
        Some(UnitState::Incomplete) => 0,
    };
    if hidden == 0 {
        let _ = writeln!(o, "{} unit(s)", rows.len());
    } else {
        let _ = writeln!(
            o,
            "{} unit(s) listed; {hidden} more finished unit(s) ({} committed, {} aborted) were compacted into the snapshot{} and are only counted (see `summary`)",
            rows.len(),
            if state == Some(UnitState::Aborted) { 0 } else { compacted.committed },
            if state == Some(UnitState::Committed) { 0 } else { compacted.aborted },
            snapshot_lsn.map(|l| format!(" at LSN {l}")).unwrap_or_default()
        );
    }
    o
}

/// `show` as text.
pub fn show(d: &UnitDetail) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "unit      {} (kind {})", d.id, d.kind);
    let _ = writeln!(o, "state     {}", d.summary);
    let _ = writeln!(
        o,
        "LSNs      begin {}, end {}, last checkpoint {}",
        d.begin_lsn,
        opt(d.end_lsn),
        opt(d.last_checkpoint_lsn)
    );
    let _ = writeln!(
        o,
        "\neffects ({} done, {} in doubt):",
        d.effects_done, d.effects_in_doubt
    );
    if d.effects.is_empty() {
        let _ = writeln!(o, "  (none recorded)");
    }
    for e in &d.effects {
        let _ = writeln!(
            o,
            "  {} #{} {}  key {}  policy {}  intent LSN {}  outcome LSN {}",
            if e.in_doubt { "!!" } else { "  " },
            e.effect.seq,
            e.effect.name,
            e.effect.key,
            e.effect.policy,
            e.effect.intent_lsn,
            opt(e.effect.outcome_lsn)
        );
        let _ = writeln!(o, "       {}", e.explanation);
        if e.effect.attempts > 1 {
            let _ = writeln!(o, "       attempts: {}", e.effect.attempts);
        }
        if let Some(op) = &e.effect.operator {
            let _ = writeln!(o, "       operator: {op}");
        }
    }
    if !d.approvals.is_empty() {
        let _ = writeln!(o, "\napprovals:");
        for a in &d.approvals {
            let _ = writeln!(
                o,
                "  {:<20} {:<9} {}  payload {}",
                a.name,
                a.status,
                a.by.as_deref()
                    .map(|b| format!("by {b}"))
                    .unwrap_or_default(),
                clip(&a.payload, 200, a.payload.len() as u64)
            );
        }
    }
    if !d.operator_actions.is_empty() {
        let _ = writeln!(o, "\noperator actions:");
        for a in &d.operator_actions {
            let _ = writeln!(
                o,
                "  LSN {:>6}  {}  by {}{}",
                a.lsn,
                a.what,
                a.by,
                if a.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.reason)
                }
            );
        }
    }
    let time_of = |kinds: &[&str]| {
        d.history
            .iter()
            .find(|h| kinds.contains(&h.kind.as_str()))
            .and_then(|h| h.at.clone().zip(h.age.clone()))
            .map(|(at, age)| format!("{at} ({age})"))
    };
    if let Some(began) = time_of(&["unit_begin"]) {
        let ended = time_of(&["commit", "abort"])
            .map(|e| format!(", ended {e}"))
            .unwrap_or_default();
        let _ = writeln!(o, "time      began {began}{ended}");
    }
    let _ = writeln!(o, "\nhistory:");
    for h in &d.history {
        let at = h.at.as_deref().unwrap_or("-");
        let _ = writeln!(o, "  {:>8}  {:<24} {:<21} {}", h.lsn, at, h.kind, h.record);
    }
    if let Some(n) = &d.note {
        let _ = writeln!(o, "  ({n})");
    }
    o
}

/// `keys` as a table.
pub fn keys(keys: &[KeyView]) -> String {
    let mut t = Table::new(&["KEY", "STATUS", "SETTLED LSN", "UNIT", "EFFECT"]);
    for k in keys {
        let status = serde_json::to_value(k.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        t.row(vec![
            k.key.clone(),
            status,
            opt(k.settled_lsn),
            k.unit.clone(),
            k.effect.clone(),
        ]);
    }
    let mut o = t.render();
    let _ = writeln!(o, "{} key(s)", keys.len());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        t.row(vec!["q".into(), "".into()]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\nq\n");
    }

    #[test]
    fn bytes_and_clipping_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(clip("short", 10, 5), "short");
        assert_eq!(
            clip("abcdefghij", 4, 10),
            "abcd… (10 bytes; --json shows all)"
        );
    }
}
