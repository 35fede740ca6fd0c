//! The library reports on itself (issue 17): its own metrics through the
//! `metrics` facade (captured here with `metrics-util`'s debugging recorder,
//! thread-local so tests do not share it) and its spans and events through
//! `tracing` (captured with a small test layer): a span per unit and per step
//! carrying the idempotency key, events for recovery decisions and shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwal::journal::{Effect, Journal, JournalOptions, JournalRecord, PolicyKind};
use agentwal::log::{Durability, Log};
use agentwal::queue::{ManualClock, QueueOptions, WorkQueue};
use agentwal::runtime::{Shutdown, ShutdownReason};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---- metrics ----------------------------------------------------------------

/// name{labels} → value, from one snapshot.
fn snapshot(recorder_work: impl FnOnce()) -> BTreeMap<String, DebugValue> {
    // Every test starts with the same global tracing subscriber (see `traced`).
    install_capture();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, recorder_work);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = if labels.is_empty() {
                key.name().to_string()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            (name, v)
        })
        .collect()
}

fn counter(m: &BTreeMap<String, DebugValue>, name: &str) -> u64 {
    match m.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}; have {:?}", m.keys().collect::<Vec<_>>()),
    }
}

fn gauge(m: &BTreeMap<String, DebugValue>, name: &str) -> f64 {
    match m.get(name) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name}: {other:?}; have {:?}", m.keys().collect::<Vec<_>>()),
    }
}

fn histogram(m: &BTreeMap<String, DebugValue>, name: &str) -> Vec<f64> {
    match m.get(name) {
        Some(DebugValue::Histogram(h)) => h.iter().map(|v| v.into_inner()).collect(),
        other => panic!("{name}: {other:?}; have {:?}", m.keys().collect::<Vec<_>>()),
    }
}

#[test]
fn the_journal_and_the_log_record_their_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let m = snapshot(|| {
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        for i in 0..3 {
            let mut u = j.begin(&format!("u{i}"), "t", &i).unwrap();
            u.run(Effect::retry_same_key("e"), |_| Ok::<_, String>(i))
                .unwrap();
            u.commit().unwrap();
        }
        let mut u = j.begin("rolled", "t", &()).unwrap();
        u.run(Effect::never_repeat("r").compensable(), |_| {
            Ok::<_, String>(1)
        })
        .unwrap();
        u.rollback("test", |_| Ok::<_, String>(())).unwrap();
        // Left incomplete, then resumed: its recorded effect is replayed.
        let mut u = j.begin("half", "t", &()).unwrap();
        u.run(Effect::retry_same_key("e"), |_| Ok::<_, String>(5))
            .unwrap();
        drop(u);
        j.compact().unwrap();
        j.close().unwrap();
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        let mut u = j.begin("half", "t", &()).unwrap();
        let v: i32 = u
            .run(Effect::retry_same_key("e"), |_| Ok::<_, String>(99))
            .unwrap();
        assert_eq!(v, 5);
        u.commit().unwrap();
        j.close().unwrap();
    });
    let fsyncs = histogram(&m, "agentwal_fsync_seconds");
    assert!(fsyncs.len() >= 8, "one sample per fdatasync: {fsyncs:?}");
    assert!(fsyncs.iter().all(|s| *s >= 0.0 && *s < 60.0), "{fsyncs:?}");
    let groups = histogram(&m, "agentwal_group_commit_records");
    assert!(
        !groups.is_empty() && groups.iter().all(|g| *g >= 1.0),
        "{groups:?}"
    );
    assert!(counter(&m, "agentwal_appended_records_total") >= 15);
    assert!(counter(&m, "agentwal_appended_bytes_total") > 100);
    assert_eq!(counter(&m, "agentwal_compactions_total"), 1);
    assert_eq!(histogram(&m, "agentwal_compaction_seconds").len(), 1);
    assert_eq!(counter(&m, "agentwal_units_total{state=committed}"), 4);
    assert_eq!(counter(&m, "agentwal_units_total{state=aborted}"), 1);
    assert_eq!(counter(&m, "agentwal_units_begun_total{resumed=false}"), 5);
    assert_eq!(counter(&m, "agentwal_units_begun_total{resumed=true}"), 1);
    assert_eq!(counter(&m, "agentwal_effects_total{outcome=replayed}"), 1);
    assert_eq!(counter(&m, "agentwal_effects_total{outcome=ok}"), 5);
    // The second open found one incomplete unit, which then committed.
    assert_eq!(gauge(&m, "agentwal_units_incomplete"), 0.0);
    assert_eq!(gauge(&m, "agentwal_effects_in_doubt"), 0.0);
}

#[test]
fn an_in_doubt_effect_found_at_open_is_a_gauge() {
    let dir = tempfile::tempdir().unwrap();
    forge_in_doubt(dir.path(), "u-doubt", "send", "k-1");
    let m = snapshot(|| {
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        j.close().unwrap();
    });
    assert_eq!(gauge(&m, "agentwal_effects_in_doubt"), 1.0);
    assert_eq!(gauge(&m, "agentwal_units_incomplete"), 1.0);
}

#[test]
fn the_queue_reports_depth_in_flight_dead_letters_and_lease_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let m = snapshot(|| {
        let q = WorkQueue::open(
            dir.path(),
            QueueOptions {
                max_attempts: 2,
                lease: Duration::from_secs(10),
                clock: clock.clone(),
                ..QueueOptions::default()
            },
        )
        .unwrap();
        for p in [b"a", b"b"] {
            q.enqueue(p).unwrap();
        }
        let a = q.claim("w1").unwrap().unwrap();
        q.nack(&a, Duration::ZERO, "boom").unwrap();
        let a = q.claim("w1").unwrap().unwrap();
        q.nack(&a, Duration::ZERO, "boom again").unwrap(); // second attempt: dead
        let _b = q.claim("w1").unwrap().unwrap();
        clock.advance(Duration::from_secs(11)); // w1's lease on b runs out
        let b_again = q.claim("w2").unwrap().unwrap();
        assert_eq!(b_again.attempt, 2);
        q.close().unwrap();
    });
    assert_eq!(counter(&m, "agentwal_queue_lease_expiries_total"), 1);
    assert_eq!(gauge(&m, "agentwal_queue_dead_letters"), 1.0);
    assert_eq!(gauge(&m, "agentwal_queue_in_flight"), 1.0);
    assert_eq!(gauge(&m, "agentwal_queue_pending"), 0.0);
}

// ---- tracing ----------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[derive(Debug, Clone)]
struct Captured {
    /// `span:<name>` or `event`.
    what: String,
    target: String,
    fields: BTreeMap<String, String>,
    /// For events: the enclosing spans, innermost first, with their fields.
    scope: Vec<(String, BTreeMap<String, String>)>,
}

thread_local! {
    /// Where this thread's spans and events go while `traced` runs.
    static SINK: std::cell::RefCell<Option<Vec<Captured>>> = const { std::cell::RefCell::new(None) };
}

fn push(c: Captured) {
    SINK.with(|s| {
        if let Some(v) = s.borrow_mut().as_mut() {
            v.push(c)
        }
    });
}

/// Installed once as the global subscriber: a scoped (`with_default`)
/// subscriber per test would race with tracing's per-callsite interest cache
/// when tests run in parallel; one global subscriber that routes to the
/// calling thread's sink does not.
struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f.clone());
        }
        push(Captured {
            what: format!("span:{}", attrs.metadata().name()),
            target: attrs.metadata().target().into(),
            fields: f.0,
            scope: Vec::new(),
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let scope = ctx
            .event_scope(event)
            .map(|s| {
                s.map(|span| {
                    let fields = span
                        .extensions()
                        .get::<Fields>()
                        .map(|f| f.0.clone())
                        .unwrap_or_default();
                    (span.name().to_string(), fields)
                })
                .collect()
            })
            .unwrap_or_default();
        push(Captured {
            what: "event".into(),
            target: event.metadata().target().into(),
            fields: f.0,
            scope,
        });
    }
}

fn install_capture() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other global subscriber in this test binary");
    });
}

fn traced(work: impl FnOnce()) -> Vec<Captured> {
    install_capture();
    SINK.with(|s| *s.borrow_mut() = Some(Vec::new()));
    work();
    SINK.with(|s| s.borrow_mut().take().unwrap_or_default())
}

/// A unit killed during `name`: its begin and the effect's intent, no outcome.
fn forge_in_doubt(dir: &std::path::Path, unit: &str, name: &str, key: &str) {
    let log = Log::open(dir, JournalOptions::small().log).unwrap();
    let begin = JournalRecord::UnitBegin {
        unit: unit.into(),
        kind: "job".into(),
        payload: serde_json::json!({}),
        at_ms: 1,
    };
    log.append_with(begin.kind(), &begin.encode(), Durability::Durable)
        .unwrap();
    let intent = JournalRecord::EffectIntent {
        unit: unit.into(),
        seq: 0,
        name: name.into(),
        key: key.into(),
        policy: PolicyKind::RetrySameKey,
        compensable: false,
    };
    log.append_with(intent.kind(), &intent.encode(), Durability::Durable)
        .unwrap();
    log.close().unwrap();
}

#[test]
fn spans_per_unit_and_step_carry_the_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let got = traced(|| {
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        let mut u = j.begin("order-7", "order", &()).unwrap();
        u.run(Effect::retry_same_key("email"), |ctx| {
            tracing::info!(target: "app", "sending with {}", ctx.key());
            Ok::<_, String>(())
        })
        .unwrap();
        u.commit().unwrap();
        j.close().unwrap();
    });
    let unit = got
        .iter()
        .find(|c| c.what == "span:unit")
        .expect("a unit span");
    assert_eq!(unit.fields["unit"], "order-7");
    assert_eq!(unit.fields["resumed"], "false");
    let effect = got
        .iter()
        .find(|c| c.what == "span:effect")
        .expect("an effect span");
    assert_eq!(effect.fields["unit"], "order-7");
    assert_eq!(effect.fields["step"], "0");
    assert_eq!(effect.fields["effect"], "email");
    assert_eq!(effect.fields["key"], "order-7/email/0");
    assert_eq!(effect.fields["policy"], "RetrySameKey");
    // The application's own event inside the effect carries the key.
    let app = got
        .iter()
        .find(|c| c.what == "event" && c.target == "app")
        .expect("the app's event");
    assert_eq!(app.scope[0].0, "effect");
    assert_eq!(app.scope[0].1["key"], "order-7/email/0");
    assert_eq!(
        app.scope[1].0, "unit",
        "the effect span's parent is the unit's"
    );
}

#[test]
fn recovery_decisions_are_events() {
    let dir = tempfile::tempdir().unwrap();
    forge_in_doubt(dir.path(), "u-9", "send", "k-9");
    let got = traced(|| {
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        let mut u = j.begin("u-9", "job", &()).unwrap();
        u.run(Effect::retry_same_key("send"), |_| Ok::<_, String>(()))
            .unwrap();
        u.commit().unwrap();
        j.close().unwrap();
    });
    let recovery: Vec<&Captured> = got
        .iter()
        .filter(|c| c.what == "event" && c.target == "agentwal::recovery")
        .collect();
    let found = recovery
        .iter()
        .find(|c| c.fields["message"].starts_with("in-doubt effect found"))
        .unwrap_or_else(|| panic!("{recovery:?}"));
    assert_eq!(found.fields["key"], "k-9");
    assert_eq!(found.fields["unit"], "u-9");
    assert_eq!(found.fields["policy"], "retry_same_key");
    let decided = recovery
        .iter()
        .find(|c| c.fields["message"] == "in-doubt effect on resume")
        .unwrap_or_else(|| panic!("{recovery:?}"));
    assert_eq!(decided.fields["key"], "k-9");
    assert!(
        decided.fields["decision"].starts_with("retry_same_key"),
        "{decided:?}"
    );
    assert!(recovery
        .iter()
        .any(|c| c.fields["message"] == "journal replayed" && c.fields["in_doubt_effects"] == "1"));
}

/// A torn tail (the second half of the last, unacknowledged write never
/// reached the disk) is cut at open, and the cut is a warning event naming
/// the segment, the offset where the valid log ends and the bytes cut.
#[test]
fn a_torn_tail_cut_at_open_is_an_event_with_segment_offset_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions::small().log;
    let log = Log::open(dir.path(), opts.clone()).unwrap();
    for i in 0..3u8 {
        log.append_with(0, &[i; 64], Durability::Durable).unwrap();
    }
    let last = log
        .append_with(0, &[0xAB; 600], Durability::Buffered)
        .unwrap();
    let at = log
        .read_from(last)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .offset();
    log.close().unwrap();
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .expect("a segment file");
    // Tear the last record: keep its first 300 bytes, zero the rest, as a
    // write cut by a power loss leaves it.
    let mut bytes = std::fs::read(&segment).unwrap();
    let keep = at as usize + 300;
    for b in &mut bytes[keep..] {
        *b = 0;
    }
    // What a cut removes: from the offset to the last non-zero byte.
    let torn = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1 - at;
    std::fs::write(&segment, &bytes).unwrap();

    let got = traced(|| {
        let log = Log::open(dir.path(), opts).unwrap();
        assert!(log.open_report().torn_tail.is_some(), "the tail was torn");
        log.close().unwrap();
    });
    let cut = got
        .iter()
        .find(|c| {
            c.what == "event"
                && c.target == "agentwal::recovery"
                && c.fields["message"].starts_with("torn tail cut")
        })
        .unwrap_or_else(|| panic!("no torn-tail event in {got:?}"));
    assert_eq!(cut.fields["segment"], segment.display().to_string());
    assert_eq!(cut.fields["offset"], at.to_string());
    assert_eq!(cut.fields["bytes"], torn.to_string());
    assert_eq!(cut.fields["whole_segment"], "false");
    assert_eq!(torn, 300, "the torn record's surviving half");
}

#[test]
fn shutdown_is_traced_signal_budget_and_the_forced_exit() {
    let got = traced(|| {
        let forced = Arc::new(Mutex::new(None));
        let f = forced.clone();
        let s = Shutdown::with_force_exit(Duration::from_secs(7), move |code| {
            *f.lock().unwrap() = Some(code)
        });
        let _guard = s.begin_unit().unwrap();
        s.on_signal(ShutdownReason::Sigterm);
        s.on_signal(ShutdownReason::Sigterm);
        assert_eq!(*forced.lock().unwrap(), Some(0));
    });
    let events: Vec<&Captured> = got
        .iter()
        .filter(|c| c.what == "event" && c.target == "agentwal::shutdown")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].fields["reason"], "SIGTERM");
    assert_eq!(events[0].fields["budget_seconds"], "7.0");
    assert_eq!(events[0].fields["units_in_progress"], "1");
    assert_eq!(events[1].fields["units_cut"], "1");
    assert_eq!(events[1].fields["exit_code"], "0");
}
