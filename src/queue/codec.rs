//! Byte encoding of queue records and snapshots (little-endian, length-prefixed).
//!
//! The decoder never trusts a length field: it is checked against the bytes
//! actually present before anything is allocated.

use super::state::{ItemState, Op, QueueState};

/// Record kinds of the queue's own log.
pub(crate) mod kind {
    pub const ENQUEUE: u8 = 1;
    pub const CLAIM: u8 = 2;
    pub const ACK: u8 = 3;
    pub const NACK: u8 = 4;
    pub const DEAD: u8 = 5;
    pub const RELEASE: u8 = 6;
    pub const REDRIVE: u8 = 7;
    pub const PURGE: u8 = 8;
    pub const COMMAND: u8 = 9;
}

/// Magic of a queue snapshot payload.
pub(crate) const SNAPSHOT_MAGIC: &[u8; 4] = b"AGWQ";
/// Version of the queue snapshot payload written (2: with the applied
/// operator-inbox commands after the items). Version 1 is still read.
pub(crate) const SNAPSHOT_VERSION: u32 = 2;

#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.0.extend_from_slice(&v[..len as usize]);
        self
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(s) => self.u8(1).bytes(s.as_bytes()),
        }
    }
}

pub(crate) struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

pub(crate) type DecResult<T> = Result<T, String>;

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }
    fn take(&mut self, n: usize) -> DecResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "needs {n} bytes at offset {}, only {} left",
                    self.pos,
                    self.b.len() - self.pos
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> DecResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> DecResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn bytes(&mut self) -> DecResult<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub fn string(&mut self) -> DecResult<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
    pub fn opt_string(&mut self) -> DecResult<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            t => Err(format!("bad option tag {t}")),
        }
    }
    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    pub fn finish(&self) -> DecResult<()> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.b.len() - self.pos))
        }
    }
}

/// Encodes an operation as (kind, payload).
pub(crate) fn encode_op(op: &Op) -> (u8, Vec<u8>) {
    let mut e = Enc::default();
    let kind = match op {
        Op::Enqueue {
            id,
            available_at_ms,
            payload,
        } => {
            e.u64(*id).u64(*available_at_ms).bytes(payload);
            kind::ENQUEUE
        }
        Op::Claim {
            id,
            attempt,
            lease_until_ms,
            worker,
        } => {
            e.u64(*id)
                .u32(*attempt)
                .u64(*lease_until_ms)
                .bytes(worker.as_bytes());
            kind::CLAIM
        }
        Op::Ack { id, attempt } => {
            e.u64(*id).u32(*attempt);
            kind::ACK
        }
        Op::Nack {
            id,
            attempt,
            available_at_ms,
            error,
        } => {
            e.u64(*id)
                .u32(*attempt)
                .u64(*available_at_ms)
                .bytes(error.as_bytes());
            kind::NACK
        }
        Op::Dead { id, attempt, error } => {
            e.u64(*id).u32(*attempt).bytes(error.as_bytes());
            kind::DEAD
        }
        Op::Release { id, attempt } => {
            e.u64(*id).u32(*attempt);
            kind::RELEASE
        }
        Op::Redrive {
            id,
            attempt,
            by,
            at_ms,
            command,
        }
        | Op::Purge {
            id,
            attempt,
            by,
            at_ms,
            command,
        } => {
            e.u64(*id).u32(*attempt).u64(*at_ms).bytes(by.as_bytes());
            // Optional trailing command id (absent in earlier builds'
            // records, and for direct library calls).
            if let Some(c) = command {
                e.bytes(c.as_bytes());
            }
            if matches!(op, Op::Redrive { .. }) {
                kind::REDRIVE
            } else {
                kind::PURGE
            }
        }
        Op::Command {
            redrive,
            by,
            at_ms,
            command,
        } => {
            e.u8(u8::from(*redrive))
                .u64(*at_ms)
                .bytes(by.as_bytes())
                .bytes(command.as_bytes());
            kind::COMMAND
        }
    };
    (kind, e.0)
}

/// Decodes a record of the queue's log.
pub(crate) fn decode_op(kind: u8, payload: &[u8]) -> DecResult<Op> {
    let mut d = Dec::new(payload);
    let op = match kind {
        kind::ENQUEUE => Op::Enqueue {
            id: d.u64()?,
            available_at_ms: d.u64()?,
            payload: d.bytes()?.to_vec(),
        },
        kind::CLAIM => Op::Claim {
            id: d.u64()?,
            attempt: d.u32()?,
            lease_until_ms: d.u64()?,
            worker: d.string()?,
        },
        kind::ACK => Op::Ack {
            id: d.u64()?,
            attempt: d.u32()?,
        },
        kind::NACK => Op::Nack {
            id: d.u64()?,
            attempt: d.u32()?,
            available_at_ms: d.u64()?,
            error: d.string()?,
        },
        kind::DEAD => Op::Dead {
            id: d.u64()?,
            attempt: d.u32()?,
            error: d.string()?,
        },
        kind::RELEASE => Op::Release {
            id: d.u64()?,
            attempt: d.u32()?,
        },
        kind::REDRIVE | kind::PURGE => {
            let (id, attempt, at_ms, by) = (d.u64()?, d.u32()?, d.u64()?, d.string()?);
            let command = if d.remaining() > 0 {
                Some(d.string()?)
            } else {
                None
            };
            if kind == kind::REDRIVE {
                Op::Redrive {
                    id,
                    attempt,
                    by,
                    at_ms,
                    command,
                }
            } else {
                Op::Purge {
                    id,
                    attempt,
                    by,
                    at_ms,
                    command,
                }
            }
        }
        kind::COMMAND => Op::Command {
            redrive: match d.u8()? {
                0 => false,
                1 => true,
                t => return Err(format!("bad redrive flag {t}")),
            },
            at_ms: d.u64()?,
            by: d.string()?,
            command: d.string()?,
        },
        k => return Err(format!("unknown queue record kind {k}")),
    };
    d.finish()?;
    Ok(op)
}

fn state_byte(s: ItemState) -> u8 {
    match s {
        ItemState::Pending => 0,
        ItemState::InFlight => 1,
        ItemState::DeadLettered => 2,
        ItemState::Acked => 3,
    }
}

/// Encodes the live state (acked items are not kept, only their count).
pub(crate) fn encode_snapshot(s: &QueueState) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(SNAPSHOT_MAGIC);
    e.u32(SNAPSHOT_VERSION).u64(s.next_id).u64(s.acked_total);
    let live: Vec<_> = s
        .items
        .values()
        .filter(|i| i.state != ItemState::Acked)
        .collect();
    e.u64(live.len() as u64);
    for i in live {
        e.u64(i.id)
            .u8(state_byte(i.state))
            .u32(i.attempts)
            .u64(i.available_at_ms)
            .u64(i.lease_until_ms)
            .opt_str(i.worker.as_deref())
            .opt_str(i.last_error.as_deref())
            .bytes(&i.payload);
    }
    e.u64(s.commands.len() as u64);
    for (id, c) in &s.commands {
        e.bytes(id.as_bytes())
            .u8(u8::from(c.redrive))
            .u64(c.at_ms)
            .bytes(c.by.as_bytes())
            .u64(c.ids.len() as u64);
        for item in &c.ids {
            e.u64(*item);
        }
    }
    e.0
}

/// Decodes a snapshot payload into a state.
pub(crate) fn decode_snapshot(b: &[u8], keep_acked: bool) -> DecResult<QueueState> {
    let mut d = Dec::new(b);
    if d.take(4)? != SNAPSHOT_MAGIC {
        return Err("not a work-queue snapshot (bad magic)".into());
    }
    let v = d.u32()?;
    if !(1..=SNAPSHOT_VERSION).contains(&v) {
        return Err(format!(
            "queue snapshot version {v}, this build reads 1 to {SNAPSHOT_VERSION}"
        ));
    }
    let mut s = QueueState::new(keep_acked);
    s.next_id = d.u64()?;
    s.acked_total = d.u64()?;
    s.acked_snapshot = s.acked_total;
    let n = d.u64()?;
    // Each item needs at least 35 bytes: bound the count by the bytes present.
    if n > (d.remaining() / 35) as u64 {
        return Err(format!("item count {n} exceeds what the snapshot can hold"));
    }
    for _ in 0..n {
        let id = d.u64()?;
        let state = match d.u8()? {
            0 => ItemState::Pending,
            1 => ItemState::InFlight,
            2 => ItemState::DeadLettered,
            t => return Err(format!("bad item state {t}")),
        };
        let item = super::state::Item {
            id,
            state,
            attempts: d.u32()?,
            available_at_ms: d.u64()?,
            lease_until_ms: d.u64()?,
            worker: d.opt_string()?,
            last_error: d.opt_string()?,
            payload: d.bytes()?.to_vec(),
        };
        if id >= s.next_id {
            return Err(format!("item {id} at or beyond next id {}", s.next_id));
        }
        s.insert(item).map_err(|e| format!("snapshot: {e}"))?;
    }
    if v >= 2 {
        let n = d.u64()?;
        // Each command needs at least 29 bytes: bound the count first.
        if n > (d.remaining() / 29) as u64 {
            return Err(format!(
                "command count {n} exceeds what the snapshot can hold"
            ));
        }
        for _ in 0..n {
            let id = d.string()?;
            let redrive = d.u8()? != 0;
            let at_ms = d.u64()?;
            let by = d.string()?;
            let k = d.u64()?;
            if k > (d.remaining() / 8) as u64 {
                return Err(format!(
                    "command {id:?} lists more items than the snapshot holds"
                ));
            }
            // Remembered even when it changed nothing (no items).
            s.remember_command(&id, redrive, None, &by, at_ms);
            for _ in 0..k {
                let item = d.u64()?;
                s.remember_command(&id, redrive, Some(item), &by, at_ms);
            }
        }
    }
    d.finish()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_truncations_fail() {
        let ops = [
            Op::Enqueue {
                id: 7,
                available_at_ms: 9,
                payload: b"hello".to_vec(),
            },
            Op::Claim {
                id: 7,
                attempt: 1,
                lease_until_ms: 100,
                worker: "w-1".into(),
            },
            Op::Ack { id: 7, attempt: 1 },
            Op::Nack {
                id: 7,
                attempt: 2,
                available_at_ms: 5,
                error: "boom".into(),
            },
            Op::Dead {
                id: 7,
                attempt: 3,
                error: "gave up".into(),
            },
            Op::Release { id: 7, attempt: 3 },
            Op::Redrive {
                id: 7,
                attempt: 3,
                by: "ops".into(),
                at_ms: 9,
                command: None,
            },
            Op::Purge {
                id: 7,
                attempt: 0,
                by: "ops".into(),
                at_ms: 10,
                command: None,
            },
            Op::Command {
                redrive: true,
                by: "ops".into(),
                at_ms: 11,
                command: "000001764662400000-42-0".into(),
            },
        ];
        for op in ops {
            let (k, p) = encode_op(&op);
            assert_eq!(decode_op(k, &p).unwrap(), op);
            for cut in 0..p.len() {
                assert!(decode_op(k, &p[..cut]).is_err(), "{op:?} cut at {cut}");
            }
            let mut longer = p.clone();
            longer.push(0);
            assert!(decode_op(k, &longer).is_err());
        }
        assert!(decode_op(99, &[]).is_err());
    }

    #[test]
    fn operator_command_ids_round_trip_in_records_and_snapshots() {
        let op = Op::Purge {
            id: 7,
            attempt: 3,
            by: "ops".into(),
            at_ms: 9,
            command: Some("000001764662400000-42-0".into()),
        };
        let (k, p) = encode_op(&op);
        assert_eq!(decode_op(k, &p).unwrap(), op);
        let mut s = QueueState::new(false);
        s.remember_command("000001764662400000-42-0", false, Some(7), "ops", 9);
        // A command that changed nothing is kept by a snapshot too.
        s.remember_command("000001764662400001-42-1", true, None, "ops", 10);
        let back = decode_snapshot(&encode_snapshot(&s), false).unwrap();
        assert_eq!(back.commands.len(), 2);
        assert_eq!(back.commands, s.commands);
    }

    #[test]
    fn huge_length_field_is_refused() {
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_op(kind::ENQUEUE, &p).is_err());
        let mut snap = Vec::new();
        snap.extend_from_slice(SNAPSHOT_MAGIC);
        snap.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        snap.extend_from_slice(&[0; 16]);
        snap.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_snapshot(&snap, false).is_err());
    }
}
