//! Retries of transient failures: a failed attempt is not a failed effect.
//! Each test can fail: counting attempts, what is recorded, the policies'
//! limits, and a real SIGKILL during a backoff (the child is this very test
//! binary, re-run with an environment variable).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agentwal::journal::{
    Effect, EffectStatus, Error, Journal, JournalOptions, JournalRecord, OnExhausted, RetryPolicy,
    StepError,
};
use agentwal::log::LogReader;

fn fast(max: u32) -> RetryPolicy {
    RetryPolicy::exponential(max).backoff(Duration::from_millis(1), Duration::from_millis(4))
}

/// Records of unit `u` of the journal in `dir`, by type name.
fn record_types(dir: &std::path::Path) -> Vec<String> {
    let r = LogReader::open(dir).unwrap();
    r.iter_from(1)
        .map(|rec| {
            let rec = rec.unwrap();
            JournalRecord::decode(rec.kind, rec.payload())
                .unwrap()
                .type_name()
                .to_string()
        })
        .collect()
}

#[test]
fn transient_failures_are_retried_and_only_the_success_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let mut seen = Vec::new();
    let v: u32 = u
        .run(Effect::retry_same_key("llm").retry(fast(5)), |ctx| {
            seen.push(ctx.attempt_number());
            if ctx.attempt_number() < 3 {
                Err(StepError::transient("429"))
            } else {
                Ok(7)
            }
        })
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(seen, [1, 2, 3]);
    u.commit().unwrap();
    drop(j);
    let types = record_types(d.path());
    assert_eq!(
        types.iter().filter(|t| *t == "attempt_failed").count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "attempt_started").count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "effect_outcome").count(),
        1,
        "{types:?}"
    );
    // Replay hands back the success; nothing runs.
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    assert!(j.key_outcome("u/llm/0").unwrap().is_ok());
}

#[test]
fn io_errors_are_transient_by_default_and_plain_strings_permanent() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let calls = AtomicU32::new(0);
    let v: u32 = u
        .run(Effect::retry_same_key("io").retry(fast(3)), |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(std::io::Error::other("connection reset"))
            } else {
                Ok(1)
            }
        })
        .unwrap();
    assert_eq!((v, calls.load(Ordering::SeqCst)), (1, 2));
    let calls = AtomicU32::new(0);
    let e = u
        .run(Effect::retry_same_key("bad").retry(fast(3)), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>("400 bad request".to_string())
        })
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );
    assert!(matches!(e, Error::EffectFailed { ref message, .. } if message == "400 bad request"));
}

#[test]
fn exhausted_attempts_record_the_last_failure_once() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let mut n = 0;
    let e = u
        .run(Effect::retry_same_key("llm").retry(fast(4)), |_| {
            n += 1;
            Err::<u32, _>(StepError::transient("503"))
        })
        .unwrap_err();
    assert_eq!(n, 4);
    match e {
        Error::EffectFailed { message, .. } => {
            assert!(
                message.contains("503") && message.contains("attempt 4"),
                "{message}"
            )
        }
        e => panic!("{e}"),
    }
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::Failed));
}

#[test]
fn the_deadline_stops_retries() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let p = RetryPolicy::exponential(1000)
        .backoff(Duration::from_millis(20), Duration::from_millis(20))
        .jitter(0.0)
        .deadline(Duration::from_millis(100));
    let t = Instant::now();
    let mut n = 0;
    let e = u
        .run(Effect::retry_same_key("llm").retry(p), |_| {
            n += 1;
            Err::<u32, _>(StepError::transient("429"))
        })
        .unwrap_err();
    assert!(
        n <= 6,
        "{n} attempts in a 100 ms deadline with 20 ms backoff"
    );
    // Generous: the deadline is 100 ms; 20 s only catches "never stopped"
    // on a loaded machine (the attempt count above is the real check).
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(e.to_string().contains("deadline"), "{e}");
}

#[test]
fn never_repeat_is_retried_only_when_the_attempt_did_not_happen() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let mut n = 0;
    let e = u
        .run(Effect::never_repeat("pay").retry(fast(5)), |_| {
            n += 1;
            Err::<u32, _>(StepError::transient("timeout: it may have happened"))
        })
        .unwrap_err();
    assert_eq!(n, 1, "never_repeat must not repeat a transient failure");
    assert!(matches!(e, Error::EffectFailed { .. }));
    let mut n = 0;
    let v = u
        .run(Effect::never_repeat("pay2").retry(fast(5)), |_| {
            n += 1;
            if n < 3 {
                Err(StepError::not_happened("refused before charging"))
            } else {
                Ok(5u32)
            }
        })
        .unwrap();
    assert_eq!((v, n), (5, 3));
}

#[test]
fn an_in_doubt_error_records_nothing_and_resume_retries_with_the_same_key() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let e = u
        .run(Effect::retry_same_key("send"), |_| {
            Err::<u32, _>(StepError::in_doubt("disk full"))
        })
        .unwrap_err();
    assert!(
        matches!(e, Error::LeftInDoubt { ref key, .. } if key == "u/send/0"),
        "{e}"
    );
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::InDoubt));
    drop(u);
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(Effect::retry_same_key("send"), |ctx| {
            assert_eq!((ctx.key(), ctx.attempt_number()), ("u/send/0", 2));
            Ok::<_, String>(9)
        })
        .unwrap();
    assert_eq!(v, 9);
    u.commit().unwrap();
}

#[test]
fn leave_in_doubt_on_exhaustion_then_resume_starts_a_new_round() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let p = fast(2).on_exhausted(OnExhausted::LeaveInDoubt);
    let mut u = j.begin("u", "t", &()).unwrap();
    let e = u
        .run(Effect::retry_same_key("llm").retry(p), |_| {
            Err::<u32, _>(StepError::transient("429"))
        })
        .unwrap_err();
    assert!(
        matches!(e, Error::RetriesExhausted { attempts: 2, .. }),
        "{e}"
    );
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::InDoubt));
    drop(u);
    drop(j);
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let mut seen = Vec::new();
    let v: u32 = u
        .run(Effect::retry_same_key("llm").retry(p), |ctx| {
            seen.push(ctx.attempt_number());
            if ctx.attempt_number() < 4 {
                Err(StepError::transient("429"))
            } else {
                Ok(1)
            }
        })
        .unwrap();
    assert_eq!((v, seen), (1, vec![3, 4]));
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_attempt_that_times_out_is_retried() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let p = fast(3).attempt_timeout(Duration::from_millis(50));
    let v: u32 = u
        .run_async(Effect::retry_same_key("llm").retry(p), |ctx| async move {
            if ctx.attempt_number() == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, String>(ctx.attempt_number())
        })
        .await
        .unwrap();
    assert_eq!(v, 2);
}

/// The child of the kill test: one effect that fails transiently twice
/// (fast), then waits in an 8 s backoff where the parent kills it.
#[test]
fn child_process_for_kill_test() {
    let Ok(dir) = std::env::var("AGENTWAL_RETRY_CHILD") else {
        return;
    };
    let j = Journal::open(&dir, JournalOptions::small()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let p = RetryPolicy::exponential(4)
        .backoff(Duration::from_millis(1), Duration::from_secs(8))
        .multiplier(30_000.0)
        .jitter(0.0);
    let _ = u.run(Effect::retry_same_key("llm").retry(p), |ctx| {
        eprintln!("attempt {}", ctx.attempt_number());
        Err::<u32, _>(StepError::transient("429"))
    });
    unreachable!("killed during the backoff");
}

#[test]
fn sigkill_during_a_backoff_neither_resets_nor_multiplies_attempts() {
    if std::env::var("AGENTWAL_RETRY_CHILD").is_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_for_kill_test", "--nocapture"])
        .env("AGENTWAL_RETRY_CHILD", d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until attempt 2 failed durably (the child is then in its 30 s backoff).
    let t = Instant::now();
    loop {
        let failed = LogReader::open(d.path())
            .ok()
            .map(|_| {
                record_types(d.path())
                    .iter()
                    .filter(|t| *t == "attempt_failed")
                    .count()
            })
            .unwrap_or(0);
        if failed >= 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "child never failed twice"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL mid-backoff
    child.wait().unwrap();

    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::InDoubt));
    let mut u = j.begin("u", "t", &()).unwrap();
    let mut seen = Vec::new();
    // The same policy, without the long wait: the budget of 4 continues.
    let p = RetryPolicy::exponential(4).backoff(Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let e = u
        .run(Effect::retry_same_key("llm").retry(p), |ctx| {
            seen.push(ctx.attempt_number());
            Err::<u32, _>(StepError::transient("429"))
        })
        .unwrap_err();
    // Attempts 1 and 2 ran before the kill: only 3 and 4 are left.
    assert_eq!(seen, [3, 4], "{e}");
    // What is left of the recorded backoff (8 s) is honoured after the restart.
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
}
