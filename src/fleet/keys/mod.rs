//! The shared idempotency-key store: the fleet-wide authority on whether an
//! effect key is settled or in flight. Promises:
//!
//! * [`Fleet::intent`] records a key's intent under the caller's lease, in the
//!   same transaction that checks the lease's fencing token, BEFORE the effect
//!   runs. Run the effect only on [`Intent::Fresh`].
//! * A key whose intent was recorded under another lease and never settled is
//!   in doubt for everyone, forever, until its outcome is recorded (by the
//!   worker that ran it, if it comes back) or an operator resolves it: no
//!   worker with an empty disk, and no successor, ever runs it again.
//! * A settled key's result is returned to whoever asks ([`Intent::Settled`]):
//!   the effect is not run again.

use super::error::{check_key, Error, Result};
use super::queue::{proto, Lease};
use super::Fleet;

/// What to do when the key is in doubt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDoubt {
    /// `never_repeat`: move the item to `in_doubt` (same transaction) and
    /// surface it to an operator.
    Surface,
    /// `reconcile`: only report it; the caller probes the outside world, then
    /// [`Fleet::settle`]s (it happened) or [`Fleet::take_over`]s (it did not).
    Report,
}

/// The answer to [`Fleet::intent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// The intent is recorded for this lease: run the effect now.
    Fresh,
    /// Settled earlier: here is its recorded result; do not run it.
    Settled(Option<String>),
    /// Another lease recorded the intent and never its outcome: do not run it.
    InDoubt,
}

/// A key's state in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Intent recorded, outcome not (yet).
    Intent,
    /// Outcome recorded.
    Settled,
}

/// One key of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The effect key.
    pub key: String,
    /// The item whose unit declared it.
    pub item: String,
    /// Fence of the lease that recorded the intent.
    pub fence: i64,
    /// Worker that recorded the intent.
    pub worker: String,
    /// Intent or settled.
    pub state: KeyState,
    /// The recorded result, once settled.
    pub result: Option<String>,
}

impl Fleet {
    /// Records the intent of effect `key` under `lease`, before running it.
    /// One round trip. [`Error::Fenced`] if the lease is no longer current.
    pub async fn intent(
        &self,
        lease: &Lease,
        key: &str,
        worker: &str,
        on_doubt: OnDoubt,
    ) -> Result<Intent> {
        check_key("effect key", key)?;
        let mark = on_doubt == OnDoubt::Surface;
        let rows = self
            .conn
            .query(
                "record effect intent",
                "SELECT c_outcome, c_result FROM agentwal_fleet_intent($1, $2, $3, $4, $5)",
                &[&lease.key, &lease.fence, &key, &worker, &mark],
            )
            .await?;
        let row = rows.first().ok_or_else(|| Error::Protocol {
            what: "record effect intent",
            detail: "no row returned".into(),
        })?;
        let outcome: String = row.try_get(0).map_err(proto("record effect intent"))?;
        let result: Option<String> = row.try_get(1).map_err(proto("record effect intent"))?;
        match outcome.as_str() {
            "fresh" => Ok(Intent::Fresh),
            "settled" => Ok(Intent::Settled(result)),
            "in_doubt" => Ok(Intent::InDoubt),
            "fenced" => Err(Error::Fenced {
                item: lease.key.clone(),
                fence: lease.fence,
            }),
            "no_item" => Err(Error::NoSuchItem {
                item: lease.key.clone(),
            }),
            other => Err(Error::Protocol {
                what: "record effect intent",
                detail: format!("unknown outcome {other:?}"),
            }),
        }
    }

    /// Records outcomes without finishing the item (recorded even when the
    /// lease is stale: the effects happened). [`Error::Fenced`] tells the
    /// caller its lease is gone (the outcomes were still recorded).
    pub async fn settle(&self, lease: &Lease, settle: &[(String, String)]) -> Result<()> {
        for (k, _) in settle {
            check_key("effect key", k)?;
        }
        match self.settle_inner(lease, settle, false).await?.as_str() {
            "settled" => Ok(()),
            "no_item" => Err(Error::NoSuchItem {
                item: lease.key.clone(),
            }),
            _ => Err(Error::Fenced {
                item: lease.key.clone(),
                fence: lease.fence,
            }),
        }
    }

    /// After a reconcile probe said an in-doubt effect did not happen: the
    /// current lease takes its intent over and may run it.
    pub async fn take_over(&self, lease: &Lease, key: &str, worker: &str) -> Result<()> {
        check_key("effect key", key)?;
        match self
            .conn
            .query_text(
                "take over effect intent",
                "SELECT agentwal_fleet_takeover($1, $2, $3, $4)",
                &[&lease.key, &lease.fence, &key, &worker],
            )
            .await?
            .as_str()
        {
            "ok" => Ok(()),
            "no_item" => Err(Error::NoSuchItem {
                item: lease.key.clone(),
            }),
            _ => Err(Error::Fenced {
                item: lease.key.clone(),
                fence: lease.fence,
            }),
        }
    }

    /// The store's record of one key.
    pub async fn key_status(&self, key: &str) -> Result<Option<KeyRecord>> {
        let rows = self
            .conn
            .query(
                "read key",
                "SELECT key, item_key, fence, worker, state, result
                   FROM agentwal_fleet_keys WHERE key = $1",
                &[&key],
            )
            .await?;
        rows.first().map(key_record).transpose()
    }

    /// Items in doubt with the key that stopped them.
    pub async fn in_doubt(&self) -> Result<Vec<(String, Option<String>)>> {
        let rows = self
            .conn
            .query(
                "list items in doubt",
                "SELECT key, doubt_effect FROM agentwal_fleet_items
                  WHERE state = 'in_doubt' ORDER BY key",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(proto("list items in doubt"))?,
                    r.try_get(1).map_err(proto("list items in doubt"))?,
                ))
            })
            .collect()
    }

    /// An operator's decision on an item in doubt: `Some(result)` = the effect
    /// happened (its result is recorded and reused), `None` = it did not (it
    /// may run again). The item goes back to pending. Returns false when the
    /// item is not in doubt.
    pub async fn resolve_in_doubt(&self, item: &str, happened: Option<&str>) -> Result<bool> {
        let h = happened.is_some();
        let r = happened.unwrap_or("");
        match self
            .conn
            .query_text(
                "resolve in doubt",
                "SELECT agentwal_fleet_resolve($1, $2, $3)",
                &[&item, &h, &r],
            )
            .await?
            .as_str()
        {
            "ok" => Ok(true),
            "no_item" => Err(Error::NoSuchItem {
                item: item.to_string(),
            }),
            _ => Ok(false),
        }
    }
}

fn key_record(r: &tokio_postgres::Row) -> Result<KeyRecord> {
    let p = proto("read key");
    let state: String = r.try_get(4).map_err(&p)?;
    Ok(KeyRecord {
        key: r.try_get(0).map_err(&p)?,
        item: r.try_get(1).map_err(&p)?,
        fence: r.try_get(2).map_err(&p)?,
        worker: r.try_get(3).map_err(&p)?,
        state: if state == "settled" {
            KeyState::Settled
        } else {
            KeyState::Intent
        },
        result: r.try_get(5).map_err(&p)?,
    })
}
