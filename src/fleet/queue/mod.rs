//! The shared work queue. Promises:
//!
//! * [`Fleet::enqueue`] is idempotent by item key: enqueueing a key again
//!   changes nothing, whatever state the item is in.
//! * [`Fleet::claim`] hands each claimable item to one worker at a time
//!   (`FOR UPDATE SKIP LOCKED`), with a lease that expires on PostgreSQL's
//!   clock unless renewed, and a fencing token larger than any earlier lease
//!   of any item.
//! * Ack, nack, release and key intents carry the fencing token; once an item
//!   was taken over, a stale lease can change nothing ([`Error::Fenced`]).
//! * A nack retries after exponential backoff; past `max_attempts` (expired
//!   leases count) the item is a dead letter until [`Fleet::redrive`].

use serde::Serialize;

use super::error::{check_key, Error, Result};
use super::Fleet;

/// An item to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    /// The item key (the idempotency key of the enqueue).
    pub key: String,
    /// The payload, opaque to the fleet (JSON by convention).
    pub payload: String,
}

/// A claimed item: hold it while working, renew it, finish it with its fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The item key.
    pub key: String,
    /// The payload.
    pub payload: String,
    /// The fencing token of this lease.
    pub fence: i64,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Back to pending after the backoff.
    Retry,
    /// Out of attempts: dead-lettered.
    Dead,
}

/// Item counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Waiting to be claimed (including items waiting out a backoff).
    pub pending: u64,
    /// Leased to a worker (including leases that expired and were not yet
    /// reclaimed).
    pub in_flight: u64,
    /// Finished.
    pub done: u64,
    /// Dead letters.
    pub dead: u64,
    /// Stopped because a never-repeat effect is in doubt; an operator decides.
    pub in_doubt: u64,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn fenced(lease: &Lease) -> Error {
    Error::Fenced {
        item: lease.key.clone(),
        fence: lease.fence,
    }
}

impl Fleet {
    /// Enqueues items (one statement per 1,000); returns how many were new.
    pub async fn enqueue(&self, items: &[NewItem]) -> Result<u64> {
        let mut added = 0;
        for chunk in items.chunks(1000) {
            let mut keys = Vec::with_capacity(chunk.len());
            let mut payloads = Vec::with_capacity(chunk.len());
            for it in chunk {
                check_key("item key", &it.key)?;
                keys.push(it.key.as_str());
                payloads.push(it.payload.as_str());
            }
            let rows = self
                .conn
                .query(
                    "enqueue",
                    "WITH ins AS (
                         INSERT INTO agentwal_fleet_items (key, payload)
                         SELECT * FROM unnest($1::text[], $2::text[])
                         ON CONFLICT (key) DO NOTHING RETURNING 1)
                     SELECT count(*) FROM ins",
                    &[&keys, &payloads],
                )
                .await?;
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            added += n as u64;
        }
        Ok(added)
    }

    /// Claims up to `limit` items for `worker` (expired leases first, then
    /// pending items whose backoff passed). One round trip.
    pub async fn claim(&self, worker: &str, limit: u32) -> Result<Vec<Lease>> {
        let o = self.conn.opts();
        let lease_ms = ms(o.lease);
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let max_attempts = o.max_attempts as i32;
        let rows = self
            .conn
            .query(
                "claim",
                "SELECT c_key, c_payload, c_fence, c_attempts FROM agentwal_fleet_claim($1, $2, $3, $4)",
                &[&worker, &lease_ms, &limit, &max_attempts],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    key: r.try_get(0).map_err(proto("claim"))?,
                    payload: r.try_get(1).map_err(proto("claim"))?,
                    fence: r.try_get(2).map_err(proto("claim"))?,
                    attempts: r.try_get(3).map_err(proto("claim"))?,
                })
            })
            .collect()
    }

    /// Extends the given leases by the visibility timeout; returns the keys
    /// of those still held (a missing key was taken over or finished).
    pub async fn renew(&self, leases: &[(String, i64)]) -> Result<Vec<String>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = leases.iter().map(|(k, _)| k.as_str()).collect();
        let fences: Vec<i64> = leases.iter().map(|(_, f)| *f).collect();
        let lease_ms = ms(self.conn.opts().lease);
        let rows = self
            .conn
            .query(
                "renew leases",
                "UPDATE agentwal_fleet_items i
                    SET lease_until = now() + make_interval(secs => $3::bigint / 1000.0),
                        updated_at = now()
                   FROM unnest($1::text[], $2::bigint[]) AS r(key, fence)
                  WHERE i.key = r.key AND i.fence = r.fence AND i.state = 'in_flight'
                  RETURNING i.key",
                &[&keys, &fences, &lease_ms],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(proto("renew leases")))
            .collect()
    }

    /// Finishes the item: records the outcomes of fleet-tracked effects
    /// (`settle`: key, result — recorded even when fenced, since they
    /// happened) and marks the item done if this lease is still current.
    /// One round trip. [`Error::Fenced`] when it is not.
    pub async fn ack(&self, lease: &Lease, settle: &[(String, String)]) -> Result<()> {
        match self.settle_inner(lease, settle, true).await?.as_str() {
            "acked" => Ok(()),
            "no_item" => Err(Error::NoSuchItem {
                item: lease.key.clone(),
            }),
            _ => Err(fenced(lease)),
        }
    }

    pub(crate) async fn settle_inner(
        &self,
        lease: &Lease,
        settle: &[(String, String)],
        ack: bool,
    ) -> Result<String> {
        let keys: Vec<&str> = settle.iter().map(|(k, _)| k.as_str()).collect();
        let results: Vec<&str> = settle.iter().map(|(_, r)| r.as_str()).collect();
        self.conn
            .query_text(
                if ack { "ack" } else { "settle" },
                "SELECT agentwal_fleet_settle($1, $2, $3::text[], $4::text[], $5)",
                &[&lease.key, &lease.fence, &keys, &results, &ack],
            )
            .await
    }

    /// A failed attempt: back to pending after `backoff_base * 2^(attempts-1)`
    /// (capped), or dead-lettered when out of attempts.
    pub async fn nack(&self, lease: &Lease, error: &str) -> Result<NackOutcome> {
        let o = self.conn.opts();
        let exp = u32::try_from(lease.attempts.max(1) - 1)
            .unwrap_or(0)
            .min(30);
        let backoff = o
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(o.backoff_max);
        let backoff_ms = ms(backoff);
        let max_attempts = o.max_attempts as i32;
        match self
            .conn
            .query_text(
                "nack",
                "SELECT agentwal_fleet_nack($1, $2, $3, $4, $5)",
                &[&lease.key, &lease.fence, &error, &backoff_ms, &max_attempts],
            )
            .await?
            .as_str()
        {
            "retry" => Ok(NackOutcome::Retry),
            "dead" => Ok(NackOutcome::Dead),
            "no_item" => Err(Error::NoSuchItem {
                item: lease.key.clone(),
            }),
            _ => Err(fenced(lease)),
        }
    }

    /// Gives the item back untouched (graceful shutdown before it was
    /// started): pending at once, the attempt not counted. A lease already
    /// taken over is left alone.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        self.conn
            .query(
                "release",
                "UPDATE agentwal_fleet_items
                    SET state = 'pending', lease_owner = NULL, lease_until = NULL,
                        attempts = greatest(attempts - 1, 0), available_at = now(),
                        updated_at = now()
                  WHERE key = $1 AND fence = $2 AND state = 'in_flight'",
                &[&lease.key, &lease.fence],
            )
            .await?;
        Ok(())
    }

    /// Moves dead letters back to pending with their attempts reset: the given
    /// keys, or all of them when `keys` is empty. Returns how many moved.
    pub async fn redrive(&self, keys: &[String]) -> Result<u64> {
        let rows = self
            .conn
            .query(
                "redrive",
                "WITH r AS (
                     UPDATE agentwal_fleet_items
                        SET state = 'pending', attempts = 0, available_at = now(),
                            last_error = NULL, updated_at = now()
                      WHERE state = 'dead' AND (cardinality($1::text[]) = 0 OR key = ANY ($1))
                      RETURNING 1)
                 SELECT count(*) FROM r",
                &[&keys],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64)
    }

    /// Item counts by state.
    pub async fn status(&self) -> Result<Status> {
        let rows = self
            .conn
            .query(
                "status",
                "SELECT state, count(*) FROM agentwal_fleet_items GROUP BY state",
                &[],
            )
            .await?;
        let mut s = Status::default();
        for r in &rows {
            let state: String = r.try_get(0).map_err(proto("status"))?;
            let n: i64 = r.try_get(1).map_err(proto("status"))?;
            let n = n as u64;
            match state.as_str() {
                "pending" => s.pending = n,
                "in_flight" => s.in_flight = n,
                "done" => s.done = n,
                "dead" => s.dead = n,
                "in_doubt" => s.in_doubt = n,
                other => {
                    return Err(Error::Protocol {
                        what: "status",
                        detail: format!("unknown item state {other:?}"),
                    })
                }
            }
        }
        Ok(s)
    }

    /// Deletes finished items and their settled keys older than `older_than`
    /// (the fleet's retention, as on the local journal). Returns items removed.
    /// An item deleted here could be enqueued (and run) again: keep the
    /// retention longer than any producer may re-send an item.
    pub async fn purge_done(&self, older_than: std::time::Duration) -> Result<u64> {
        let secs = older_than.as_secs_f64();
        let rows = self
            .conn
            .query(
                "purge",
                "WITH d AS (
                     DELETE FROM agentwal_fleet_items
                      WHERE state = 'done' AND updated_at < now() - make_interval(secs => $1)
                      RETURNING key),
                 k AS (DELETE FROM agentwal_fleet_keys WHERE item_key IN (SELECT key FROM d))
                 SELECT count(*) FROM d",
                &[&secs],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64)
    }
}

pub(crate) fn proto(what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| Error::Protocol {
        what,
        detail: e.to_string(),
    }
}
