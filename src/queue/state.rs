//! The queue's state machine, shared by the owner (replay + live updates)
//! and the read-only view. Every transition is validated: a history that a
//! correct writer cannot produce is refused, never silently applied.

use std::collections::{BTreeMap, BTreeSet};

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Waiting to be claimed (possibly not before a retry time).
    Pending,
    /// Claimed by a worker, not yet acked or nacked.
    InFlight,
    /// Gave up after the maximum number of attempts.
    DeadLettered,
    /// Done. Kept only in the read-only view, until the next compaction.
    Acked,
}

impl ItemState {
    /// The state's name, as in JSON (`pending`, `in_flight`,
    /// `dead_lettered`, `acked`).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::InFlight => "in_flight",
            ItemState::DeadLettered => "dead_lettered",
            ItemState::Acked => "acked",
        }
    }
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One durable state transition (one log record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Enqueue {
        id: u64,
        available_at_ms: u64,
        payload: Vec<u8>,
    },
    Claim {
        id: u64,
        attempt: u32,
        lease_until_ms: u64,
        worker: String,
    },
    Ack {
        id: u64,
        attempt: u32,
    },
    Nack {
        id: u64,
        attempt: u32,
        available_at_ms: u64,
        error: String,
    },
    Dead {
        id: u64,
        attempt: u32,
        error: String,
    },
    Release {
        id: u64,
        attempt: u32,
    },
    /// An operator moved a dead letter back to pending (fresh attempts).
    /// `command`: the operator-inbox command id that carried it, if any.
    Redrive {
        id: u64,
        attempt: u32,
        by: String,
        at_ms: u64,
        command: Option<String>,
    },
    /// An operator dropped a dead letter.
    Purge {
        id: u64,
        attempt: u32,
        by: String,
        at_ms: u64,
        command: Option<String>,
    },
    /// An operator-inbox redrive or purge `command` that changed no item
    /// (no dead letter matched): recorded so that, re-claimed after an
    /// owner crash, it is answered "already applied" like any other.
    Command {
        redrive: bool,
        by: String,
        at_ms: u64,
        command: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub id: u64,
    pub state: ItemState,
    pub attempts: u32,
    pub available_at_ms: u64,
    pub lease_until_ms: u64,
    pub worker: Option<String>,
    pub last_error: Option<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct QueueState {
    pub items: BTreeMap<u64, Item>,
    /// Pending items by (available at, id).
    pub ready: BTreeSet<(u64, u64)>,
    /// In-flight items by (lease until, id).
    pub leases: BTreeSet<(u64, u64)>,
    pub next_id: u64,
    pub acked_total: u64,
    /// `acked_total` of the snapshot the state was restored from.
    pub acked_snapshot: u64,
    /// Dead letters dropped by an operator (all time, since the last snapshot).
    pub purged_total: u64,
    pub in_flight: usize,
    pub dead: usize,
    /// Keep acked items (without payload) instead of forgetting them.
    keep_acked: bool,
    /// Operator-inbox commands applied, by command id (the newest
    /// [`MAX_APPLIED_COMMANDS`]): a command the owner applied but could not
    /// reply to before a crash is answered from here, not applied twice.
    pub commands: BTreeMap<String, AppliedCommand>,
}

/// How many applied operator-inbox command ids the queue remembers.
pub(crate) const MAX_APPLIED_COMMANDS: usize = 1024;

/// What one applied operator-inbox command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppliedCommand {
    /// Redrive (true) or purge.
    pub redrive: bool,
    /// The dead letters it moved or dropped.
    pub ids: Vec<u64>,
    /// Who decided.
    pub by: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

impl QueueState {
    pub fn new(keep_acked: bool) -> Self {
        QueueState {
            items: BTreeMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            next_id: 1,
            acked_total: 0,
            acked_snapshot: 0,
            purged_total: 0,
            in_flight: 0,
            dead: 0,
            keep_acked,
            commands: BTreeMap::new(),
        }
    }

    /// Remembers that command `id` changed item `item` (one record per
    /// item; `None`: a command that changed nothing), forgetting the oldest
    /// commands beyond the cap (command ids begin with their submission
    /// time, so they sort by age).
    pub fn remember_command(
        &mut self,
        id: &str,
        redrive: bool,
        item: Option<u64>,
        by: &str,
        at_ms: u64,
    ) {
        let c = self
            .commands
            .entry(id.to_string())
            .or_insert_with(|| AppliedCommand {
                redrive,
                ids: Vec::new(),
                by: by.to_string(),
                at_ms,
            });
        if let Some(item) = item {
            if !c.ids.contains(&item) {
                c.ids.push(item);
            }
        }
        while self.commands.len() > MAX_APPLIED_COMMANDS {
            self.commands.pop_first();
        }
    }

    pub fn pending(&self) -> usize {
        self.ready.len()
    }

    /// Adds an item as read from a snapshot.
    pub fn insert(&mut self, item: Item) -> Result<(), String> {
        if self.items.contains_key(&item.id) {
            return Err(format!("item {} appears twice", item.id));
        }
        self.index(&item);
        self.items.insert(item.id, item);
        Ok(())
    }

    fn index(&mut self, i: &Item) {
        match i.state {
            ItemState::Pending => {
                self.ready.insert((i.available_at_ms, i.id));
            }
            ItemState::InFlight => {
                self.leases.insert((i.lease_until_ms, i.id));
                self.in_flight += 1;
            }
            ItemState::DeadLettered => self.dead += 1,
            ItemState::Acked => {}
        }
    }

    fn unindex(&mut self, i: &Item) {
        match i.state {
            ItemState::Pending => {
                self.ready.remove(&(i.available_at_ms, i.id));
            }
            ItemState::InFlight => {
                self.leases.remove(&(i.lease_until_ms, i.id));
                self.in_flight -= 1;
            }
            ItemState::DeadLettered => self.dead -= 1,
            ItemState::Acked => {}
        }
    }

    /// Checks that `op` is a valid transition now, without applying it.
    pub fn check(&self, op: &Op) -> Result<(), String> {
        let (id, attempt) = match op {
            // Touches no item: always applies.
            Op::Command { .. } => return Ok(()),
            Op::Enqueue { id, .. } => {
                if *id < self.next_id || self.items.contains_key(id) {
                    return Err(format!(
                        "enqueue of item {id}, but ids below {} are taken",
                        self.next_id
                    ));
                }
                return Ok(());
            }
            Op::Claim { id, attempt, .. } => (*id, *attempt),
            Op::Ack { id, attempt }
            | Op::Nack { id, attempt, .. }
            | Op::Dead { id, attempt, .. }
            | Op::Release { id, attempt }
            | Op::Redrive { id, attempt, .. }
            | Op::Purge { id, attempt, .. } => (*id, *attempt),
        };
        let item = self
            .items
            .get(&id)
            .ok_or_else(|| format!("item {id} does not exist"))?;
        let ok = match op {
            Op::Claim { .. } => {
                matches!(item.state, ItemState::Pending | ItemState::InFlight)
                    && attempt == item.attempts + 1
            }
            Op::Dead { .. } => {
                matches!(item.state, ItemState::Pending | ItemState::InFlight)
                    && attempt == item.attempts
            }
            Op::Redrive { .. } | Op::Purge { .. } => {
                item.state == ItemState::DeadLettered && attempt == item.attempts
            }
            _ => item.state == ItemState::InFlight && attempt == item.attempts,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{op:?} does not apply to item {id} ({:?}, {} attempts)",
                item.state, item.attempts
            ))
        }
    }

    /// Applies a validated transition.
    pub fn apply(&mut self, op: Op) -> Result<(), String> {
        self.check(&op)?;
        if let Op::Enqueue {
            id,
            available_at_ms,
            payload,
        } = op
        {
            let item = Item {
                id,
                state: ItemState::Pending,
                attempts: 0,
                available_at_ms,
                lease_until_ms: 0,
                worker: None,
                last_error: None,
                payload,
            };
            self.next_id = id + 1;
            self.index(&item);
            self.items.insert(id, item);
            return Ok(());
        }
        if let Op::Command {
            redrive,
            by,
            at_ms,
            command,
        } = &op
        {
            self.remember_command(command, *redrive, None, by, *at_ms);
            return Ok(());
        }
        let id = match &op {
            Op::Claim { id, .. }
            | Op::Ack { id, .. }
            | Op::Nack { id, .. }
            | Op::Dead { id, .. }
            | Op::Release { id, .. }
            | Op::Redrive { id, .. }
            | Op::Purge { id, .. } => *id,
            Op::Enqueue { .. } | Op::Command { .. } => unreachable!("handled above"),
        };
        if let Op::Redrive {
            command: Some(c),
            by,
            at_ms,
            ..
        }
        | Op::Purge {
            command: Some(c),
            by,
            at_ms,
            ..
        } = &op
        {
            let redrive = matches!(op, Op::Redrive { .. });
            self.remember_command(c, redrive, Some(id), by, *at_ms);
        }
        let mut item = self.items.remove(&id).expect("checked above");
        self.unindex(&item);
        match op {
            Op::Claim {
                attempt,
                lease_until_ms,
                worker,
                ..
            } => {
                item.state = ItemState::InFlight;
                item.attempts = attempt;
                item.lease_until_ms = lease_until_ms;
                item.worker = Some(worker);
            }
            Op::Ack { .. } => {
                item.state = ItemState::Acked;
                self.acked_total += 1;
                if !self.keep_acked {
                    return Ok(());
                }
                item.payload = Vec::new();
            }
            Op::Nack {
                available_at_ms,
                error,
                ..
            } => {
                item.state = ItemState::Pending;
                item.available_at_ms = available_at_ms;
                item.last_error = Some(error);
                item.worker = None;
            }
            Op::Dead { error, .. } => {
                item.state = ItemState::DeadLettered;
                item.last_error = Some(error);
                item.worker = None;
            }
            Op::Release { .. } => {
                item.state = ItemState::Pending;
                item.available_at_ms = 0;
                item.worker = None;
            }
            Op::Redrive { by, at_ms, .. } => {
                item.state = ItemState::Pending;
                item.attempts = 0;
                item.available_at_ms = 0;
                item.worker = None;
                item.last_error = Some(format!(
                    "redriven by {by} at {at_ms} ms; before: {}",
                    item.last_error.as_deref().unwrap_or("-")
                ));
            }
            Op::Purge { .. } => {
                self.purged_total += 1;
                return Ok(());
            }
            Op::Enqueue { .. } | Op::Command { .. } => unreachable!("handled above"),
        }
        self.index(&item);
        self.items.insert(id, item);
        Ok(())
    }
}

/// A queue record or snapshot that replay refuses.
#[derive(Debug)]
pub(crate) enum ReplayError {
    /// The log below failed.
    Log(crate::log::Error),
    /// A record (or the snapshot, at its LSN) that does not decode or apply.
    Bad { lsn: u64, reason: String },
}

impl From<crate::log::Error> for ReplayError {
    fn from(e: crate::log::Error) -> Self {
        ReplayError::Log(e)
    }
}

impl crate::engine::StateMachine for QueueState {
    type Record = Op;
    type Error = ReplayError;
    /// The encoded snapshot: encoding is one copy of the live items, the
    /// same cost as any frozen copy of them.
    type Snapshot = Vec<u8>;

    fn empty(mode: crate::engine::Mode) -> Self {
        QueueState::new(mode == crate::engine::Mode::History)
    }

    fn restore(lsn: u64, data: &[u8], mode: crate::engine::Mode) -> Result<Self, ReplayError> {
        super::codec::decode_snapshot(data, mode == crate::engine::Mode::History).map_err(|r| {
            ReplayError::Bad {
                lsn,
                reason: format!("snapshot: {r}"),
            }
        })
    }

    fn decode(lsn: u64, kind: u8, payload: &[u8]) -> Result<Option<Op>, ReplayError> {
        super::codec::decode_op(kind, payload)
            .map(Some)
            .map_err(|reason| ReplayError::Bad { lsn, reason })
    }

    fn encode_record(rec: &Op) -> (u8, Vec<u8>) {
        super::codec::encode_op(rec)
    }

    fn check(&self, lsn: u64, rec: &Op) -> Result<(), ReplayError> {
        QueueState::check(self, rec).map_err(|reason| ReplayError::Bad { lsn, reason })
    }

    fn check_batch(&self, first_lsn: u64, recs: &[Op]) -> Result<(), ReplayError> {
        // Ops of one batch (open's repair) touch distinct items.
        for (lsn, r) in (first_lsn..).zip(recs) {
            crate::engine::StateMachine::check(self, lsn, r)?;
        }
        Ok(())
    }

    fn apply(&mut self, _lsn: u64, rec: Op) {
        let r = QueueState::apply(self, rec);
        debug_assert!(r.is_ok(), "a checked queue op failed to apply: {r:?}");
    }

    fn check_apply(&mut self, lsn: u64, rec: Op) -> Result<(), ReplayError> {
        QueueState::apply(self, rec).map_err(|reason| ReplayError::Bad { lsn, reason })
    }

    fn snapshot(&self) -> Vec<u8> {
        super::codec::encode_snapshot(self)
    }

    fn encode(snapshot: Vec<u8>) -> Vec<u8> {
        snapshot
    }
}
