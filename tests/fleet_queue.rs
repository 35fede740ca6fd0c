//! The fleet's queue and key store against a real PostgreSQL server:
//! idempotent enqueue, fencing, the in-doubt rule and its resolution,
//! nack/backoff/dead letters/redrive, migrations under concurrency, and calls
//! surviving `pg_terminate_backend`. Skipped (and says so) without a server;
//! see tests/fleet_support.
#![cfg(feature = "postgres")]

mod agent_support;
mod fleet_support;

use std::sync::Arc;
use std::time::Duration;

use agentwal::fleet::{
    Error, Fleet, FleetOptions, Intent, KeyState, NackOutcome, NewItem, OnDoubt, Status,
};
use fleet_support::{fresh_db, pg_or_skip, terminate_backends, Pg};

fn items(n: u32) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            key: format!("item-{i:04}"),
            payload: format!("{{\"i\":{i}}}"),
        })
        .collect()
}

fn short_lease() -> FleetOptions {
    FleetOptions {
        lease: Duration::from_millis(300),
        max_attempts: 3,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        retry_budget: Duration::from_secs(60),
        ..FleetOptions::default()
    }
}

async fn setup(test: &str, db: &str, opts: FleetOptions) -> Option<(Pg, Fleet)> {
    let pg = pg_or_skip(test)?;
    let url = fresh_db(&pg, db).await;
    let fleet = Fleet::connect(&url, opts).await.unwrap();
    Some((pg, fleet))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_idempotent_and_claims_are_exclusive() {
    let Some((_pg, fleet)) = setup("fleet_queue::enqueue", "aw_fq_enqueue", short_lease()).await
    else {
        return;
    };
    assert_eq!(fleet.enqueue(&items(50)).await.unwrap(), 50);
    assert_eq!(fleet.enqueue(&items(60)).await.unwrap(), 10);
    let s = fleet.status().await.unwrap();
    assert_eq!(
        s,
        Status {
            pending: 60,
            ..Status::default()
        }
    );
    // Two claimers at once never get the same item.
    let f = Arc::new(fleet);
    let (a, b) = tokio::join!(f.claim("a", 40), f.claim("b", 40));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 60);
    let mut keys: Vec<_> = a.iter().chain(&b).map(|l| l.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 60, "an item was claimed twice");
    // Fences are unique and the enqueue of a claimed key changes nothing.
    let mut fences: Vec<_> = a.iter().chain(&b).map(|l| l.fence).collect();
    fences.sort();
    fences.dedup();
    assert_eq!(fences.len(), 60);
    assert_eq!(f.enqueue(&items(60)).await.unwrap(), 0);
    assert_eq!(f.status().await.unwrap().in_flight, 60);
    // Bad keys are typed errors, not panics.
    let bad = [NewItem {
        key: String::new(),
        payload: "{}".into(),
    }];
    assert!(matches!(f.enqueue(&bad).await, Err(Error::BadKey { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_is_fenced_and_in_doubt_is_never_run_again() {
    let Some((_pg, fleet)) = setup("fleet_queue::fencing", "aw_fq_fencing", short_lease()).await
    else {
        return;
    };
    fleet.enqueue(&items(1)).await.unwrap();
    let l1 = fleet.claim("w1", 1).await.unwrap().remove(0);
    let key = format!("{}/ledger", l1.key);
    assert_eq!(
        fleet
            .intent(&l1, &key, "w1", OnDoubt::Surface)
            .await
            .unwrap(),
        Intent::Fresh
    );
    // A retried intent call of the same lease (reply lost) is still fresh.
    assert_eq!(
        fleet
            .intent(&l1, &key, "w1", OnDoubt::Surface)
            .await
            .unwrap(),
        Intent::Fresh
    );
    // w1 stalls (the effect ran, nothing recorded): its lease expires.
    tokio::time::sleep(Duration::from_millis(450)).await;
    // Renewal of an expired lease nobody took over still works...
    assert_eq!(
        fleet.renew(&[(l1.key.clone(), l1.fence)]).await.unwrap(),
        vec![l1.key.clone()]
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let l2 = fleet.claim("w2", 1).await.unwrap().remove(0);
    assert_eq!(l2.key, l1.key);
    assert!(l2.fence > l1.fence);
    // ...but not once taken over.
    assert!(fleet
        .renew(&[(l1.key.clone(), l1.fence)])
        .await
        .unwrap()
        .is_empty());
    // The successor sees the effect in doubt and must not run it.
    assert_eq!(
        fleet
            .intent(&l2, &key, "w2", OnDoubt::Surface)
            .await
            .unwrap(),
        Intent::InDoubt
    );
    assert_eq!(fleet.status().await.unwrap().in_doubt, 1);
    let k = fleet.key_status(&key).await.unwrap().unwrap();
    assert_eq!(
        (k.state, k.fence, k.worker.as_str()),
        (KeyState::Intent, l1.fence, "w1")
    );
    // Nothing claims an item in doubt.
    assert!(fleet.claim("w3", 5).await.unwrap().is_empty());
    assert!(matches!(
        fleet.ack(&l2, &[]).await,
        Err(Error::Fenced { .. })
    ));

    // w1 comes back and records what it did: its ack is fenced, but the
    // outcome is a fact; the doubt is resolved and the item is pending again.
    assert!(matches!(
        fleet.ack(&l1, &[(key.clone(), "done by w1".into())]).await,
        Err(Error::Fenced { .. })
    ));
    let s = fleet.status().await.unwrap();
    assert_eq!((s.pending, s.in_doubt), (1, 0));
    let l3 = fleet.claim("w3", 1).await.unwrap().remove(0);
    assert_eq!(
        fleet
            .intent(&l3, &key, "w3", OnDoubt::Surface)
            .await
            .unwrap(),
        Intent::Settled(Some("done by w1".into()))
    );
    // A stale lease cannot ack over its successor.
    assert!(matches!(
        fleet.ack(&l2, &[]).await,
        Err(Error::Fenced { .. })
    ));
    assert!(matches!(
        fleet.nack(&l1, "late").await,
        Err(Error::Fenced { .. })
    ));
    fleet.ack(&l3, &[]).await.unwrap();
    // An ack retried after a lost reply is still a success.
    fleet.ack(&l3, &[]).await.unwrap();
    let s = fleet.status().await.unwrap();
    assert_eq!((s.done, s.in_flight, s.pending), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_resolves_in_doubt_and_reconcile_takes_over() {
    let Some((_pg, fleet)) = setup("fleet_queue::resolve", "aw_fq_resolve", short_lease()).await
    else {
        return;
    };
    fleet.enqueue(&items(2)).await.unwrap();
    let mut ls = fleet.claim("w1", 2).await.unwrap();
    ls.sort_by(|a, b| a.key.cmp(&b.key));
    for l in &ls {
        let k = format!("{}/pay", l.key);
        assert_eq!(
            fleet.intent(l, &k, "w1", OnDoubt::Surface).await.unwrap(),
            Intent::Fresh
        );
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut ls2 = fleet.claim("w2", 2).await.unwrap();
    ls2.sort_by(|a, b| a.key.cmp(&b.key));
    // item-0000: never_repeat → surfaced; the operator says it happened.
    let k0 = format!("{}/pay", ls2[0].key);
    assert_eq!(
        fleet
            .intent(&ls2[0], &k0, "w2", OnDoubt::Surface)
            .await
            .unwrap(),
        Intent::InDoubt
    );
    assert_eq!(
        fleet.in_doubt().await.unwrap(),
        vec![(ls2[0].key.clone(), Some(k0.clone()))]
    );
    assert!(fleet
        .resolve_in_doubt(&ls2[0].key, Some("paid"))
        .await
        .unwrap());
    assert!(!fleet
        .resolve_in_doubt(&ls2[0].key, Some("paid"))
        .await
        .unwrap());
    // item-0001: reconcile → reported only; the probe says it did not happen.
    let k1 = format!("{}/pay", ls2[1].key);
    assert_eq!(
        fleet
            .intent(&ls2[1], &k1, "w2", OnDoubt::Report)
            .await
            .unwrap(),
        Intent::InDoubt
    );
    fleet.take_over(&ls2[1], &k1, "w2").await.unwrap();
    assert_eq!(
        fleet
            .intent(&ls2[1], &k1, "w2", OnDoubt::Report)
            .await
            .unwrap(),
        Intent::Fresh
    );
    fleet
        .settle(&ls2[1], &[(k1.clone(), "paid by w2".into())])
        .await
        .unwrap();
    fleet.ack(&ls2[1], &[]).await.unwrap();
    let l = fleet.claim("w3", 1).await.unwrap().remove(0);
    assert_eq!(l.key, ls2[0].key);
    assert_eq!(
        fleet.intent(&l, &k0, "w3", OnDoubt::Surface).await.unwrap(),
        Intent::Settled(Some("paid".into()))
    );
    fleet.ack(&l, &[]).await.unwrap();
    assert_eq!(fleet.status().await.unwrap().done, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_backs_off_then_dead_letters_and_redrive() {
    let Some((_pg, fleet)) = setup("fleet_queue::nack", "aw_fq_nack", short_lease()).await else {
        return;
    };
    fleet.enqueue(&items(1)).await.unwrap();
    for attempt in 1..=3 {
        let l = loop {
            if let Some(l) = fleet.claim("w", 1).await.unwrap().pop() {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(l.attempts, attempt);
        let expect = if attempt < 3 {
            NackOutcome::Retry
        } else {
            NackOutcome::Dead
        };
        assert_eq!(fleet.nack(&l, "boom").await.unwrap(), expect);
        if attempt == 1 {
            // Backoff: not claimable at once.
            assert!(fleet.claim("w", 1).await.unwrap().is_empty());
        }
    }
    assert_eq!(fleet.status().await.unwrap().dead, 1);
    assert_eq!(fleet.redrive(&[]).await.unwrap(), 1);
    let l = fleet.claim("w", 1).await.unwrap().remove(0);
    assert_eq!(l.attempts, 1);
    // A release gives the attempt back.
    fleet.release(&l).await.unwrap();
    let l = fleet.claim("w", 1).await.unwrap().remove(0);
    assert_eq!(l.attempts, 1);
    // Expired leases count as attempts: past max_attempts it is dead.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let _ = fleet.claim("w", 1).await.unwrap();
    }
    let s = fleet.status().await.unwrap();
    assert_eq!(s.dead, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_race_and_calls_survive_terminated_backends() {
    let Some(pg) = pg_or_skip("fleet_queue::terminate") else {
        return;
    };
    let url = fresh_db(&pg, "aw_fq_terminate").await;
    // Eight workers starting at once: one applies the schema, all agree.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            Fleet::connect(&url, short_lease()).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let fleet = Arc::new(
        Fleet::connect(
            &url,
            FleetOptions {
                lease: Duration::from_secs(30),
                ..short_lease()
            },
        )
        .await
        .unwrap(),
    );
    fleet.enqueue(&items(100)).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (pg, stop) = (pg.clone(), stop.clone());
        tokio::spawn(async move {
            let mut killed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                killed += terminate_backends(&pg, "aw_fq_terminate").await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            killed
        })
    };
    let mut done = 0;
    while done < 100 {
        let Some(l) = fleet.claim("w", 1).await.unwrap().pop() else {
            // A claim whose reply was lost leaves a lease: wait for it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let k = format!("{}/once", l.key);
        match fleet.intent(&l, &k, "w", OnDoubt::Surface).await.unwrap() {
            Intent::Fresh => {}
            other => panic!("{}: {other:?}", l.key),
        }
        fleet.ack(&l, &[(k, "ok".into())]).await.unwrap();
        done += 1;
        if done == 90 {
            // Items whose claim reply was lost are leased to nobody alive.
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "no backend was terminated: the test proves nothing"
    );
    let s = fleet.status().await.unwrap();
    assert_eq!(s.done, 90);
    assert_eq!(s.pending + s.in_flight, 10);
    assert!(fleet.round_trips() > 180);
    eprintln!(
        "fleet_queue::terminate: {killed} backends terminated, {} round trips",
        fleet.round_trips()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_and_options_are_typed_errors() {
    assert!(matches!(
        Fleet::connect("postgresql://[::1", FleetOptions::default()).await,
        Err(Error::BadUrl(_))
    ));
    let o = FleetOptions {
        pool_size: 0,
        ..FleetOptions::default()
    };
    assert!(matches!(
        Fleet::connect("postgresql://localhost/x", o).await,
        Err(Error::InvalidOptions(_))
    ));
    // Nothing listening: Unavailable after the retry budget, no panic.
    let o = FleetOptions {
        retry_budget: Duration::from_millis(300),
        statement_timeout: Duration::from_millis(200),
        ..FleetOptions::default()
    };
    let r = Fleet::connect("postgresql://127.0.0.1:1/x?user=nobody", o).await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_done_items_and_their_keys_only() {
    let Some((_pg, fleet)) = setup("fleet_queue::purge", "aw_fq_purge", short_lease()).await else {
        return;
    };
    fleet.enqueue(&items(2)).await.unwrap();
    let mut ls = fleet.claim("w", 2).await.unwrap();
    ls.sort_by(|a, b| a.key.cmp(&b.key));
    for l in &ls {
        let k = format!("{}/ledger", l.key);
        assert_eq!(
            fleet.intent(l, &k, "w", OnDoubt::Surface).await.unwrap(),
            Intent::Fresh
        );
    }
    fleet
        .ack(&ls[0], &[(format!("{}/ledger", ls[0].key), "ok".into())])
        .await
        .unwrap();
    // Younger than the retention: kept.
    assert_eq!(
        fleet.purge_done(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fleet.purge_done(Duration::from_millis(10)).await.unwrap(),
        1
    );
    assert!(fleet
        .key_status(&format!("{}/ledger", ls[0].key))
        .await
        .unwrap()
        .is_none());
    // The item still in flight and its intent are untouched.
    let k1 = fleet
        .key_status(&format!("{}/ledger", ls[1].key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k1.state, KeyState::Intent);
    let s = fleet.status().await.unwrap();
    assert_eq!((s.done, s.in_flight), (0, 1));
}
