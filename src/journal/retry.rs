//! Retry policies and error classes: a failed *attempt* is not a failed
//! *effect*.
//!
//! An effect declares a [`RetryPolicy`] with [`super::Effect::retry`]. When
//! its code fails, the error is classified ([`ErrorClass`]):
//!
//! * [`ErrorClass::Permanent`]: recorded as the effect's outcome at once
//!   (returned again on every resume, as before).
//! * [`ErrorClass::Transient`] (a 429, a timeout, an I/O error): retried with
//!   the same idempotency key after an exponential backoff with jitter, while
//!   attempts and the total deadline allow; only the last failure is recorded
//!   as the outcome. A `never_repeat` effect is *not* retried on a transient
//!   error (the attempt may have happened): its failure is recorded.
//! * [`ErrorClass::NotHappened`]: transient, and the step guarantees that the
//!   attempt had no effect (the request was refused before anything was
//!   done). The only class a `never_repeat` effect is retried on.
//! * [`ErrorClass::InDoubt`]: the step does not know whether the attempt
//!   happened and wants nothing recorded: the effect stays in doubt (as after
//!   a kill), the call returns [`super::Error::LeftInDoubt`], and the next
//!   resume applies the effect's in-doubt policy.
//!
//! A step says which class an error is by returning a [`StepError`] (any
//! error type `E: Display + 'static` works; `StepError` and
//! [`std::io::Error`] are recognised, everything else is permanent).
//! Default classes: `std::io::Error` is transient, a per-attempt timeout
//! ([`RetryPolicy::attempt_timeout`], async only) is transient.
//!
//! Attempts are counted **durably**: before each retry an attempt-failed
//! record (the error, when the next attempt may start, the deadline) and an
//! attempt-started record are appended durably, so a crash during a backoff
//! or during a retry neither resets the count nor multiplies it; a resumed
//! unit continues the same budget where it stopped, waiting out what is left
//! of the backoff.

use std::any::Any;
use std::fmt::Display;
use std::time::Duration;

/// How an error of an effect's attempt is treated; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Recorded as the effect's outcome; never retried.
    Permanent,
    /// Retried under the effect's [`RetryPolicy`] (not for `never_repeat`).
    Transient,
    /// Transient, and the attempt certainly did not happen: retried under
    /// the policy, `never_repeat` included.
    NotHappened,
    /// Nothing is recorded: the effect stays in doubt and the call returns
    /// [`super::Error::LeftInDoubt`].
    InDoubt,
}

/// An error a step returns to say how it must be treated.
///
/// ```
/// use agentwal::journal::{ErrorClass, StepError};
/// let e = StepError::transient("HTTP 429").retry_after(std::time::Duration::from_secs(2));
/// assert_eq!(e.class(), ErrorClass::Transient);
/// assert_eq!(e.to_string(), "HTTP 429");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
}

impl StepError {
    /// An error of class `class`.
    pub fn new(class: ErrorClass, message: impl Display) -> Self {
        StepError {
            class,
            message: message.to_string(),
            retry_after: None,
        }
    }
    /// A permanent error: recorded as the outcome.
    pub fn permanent(message: impl Display) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }
    /// A transient error (429, 503, timeout): retried under the policy.
    pub fn transient(message: impl Display) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    /// The attempt was refused before anything happened: retried under the
    /// policy, even for `never_repeat`.
    pub fn not_happened(message: impl Display) -> Self {
        Self::new(ErrorClass::NotHappened, message)
    }
    /// Unknown whether it happened; leave the effect in doubt, record nothing.
    pub fn in_doubt(message: impl Display) -> Self {
        Self::new(ErrorClass::InDoubt, message)
    }
    /// Waits at least this long before the next attempt (a `Retry-After`).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        StepError::transient(e)
    }
}

/// The class of an error and its requested minimum delay.
pub(crate) fn classify<E: Display + 'static>(e: &E) -> (ErrorClass, Option<Duration>) {
    let any = e as &dyn Any;
    if let Some(s) = any.downcast_ref::<StepError>() {
        return (s.class, s.retry_after);
    }
    if any.downcast_ref::<std::io::Error>().is_some() {
        return (ErrorClass::Transient, None);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        if let Some(s) = b.downcast_ref::<StepError>() {
            return (s.class, s.retry_after);
        }
        if b.is::<std::io::Error>() {
            return (ErrorClass::Transient, None);
        }
    }
    (ErrorClass::Permanent, None)
}

/// What happens when a transient error exhausts the attempts or the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExhausted {
    /// Record the last error as the effect's failed outcome (default).
    #[default]
    RecordFailure,
    /// Record nothing: the effect stays in doubt, the call returns
    /// [`super::Error::RetriesExhausted`], and a later resume starts a new
    /// round of attempts (with the same key) under the in-doubt policy.
    LeaveInDoubt,
}

/// A per-effect retry policy for transient errors.
///
/// `max_attempts` counts every attempt (1: no retry). The delay before
/// attempt *n + 1* is `initial_backoff * multiplier^(n-1)`, capped at
/// `max_backoff`, minus a random part of up to `jitter` of it (full jitter
/// with `jitter = 1.0`), and at least a [`StepError::retry_after`].
///
/// ```
/// use std::time::Duration;
/// use agentwal::journal::RetryPolicy;
/// let p = RetryPolicy::exponential(5)
///     .backoff(Duration::from_millis(100), Duration::from_secs(10))
///     .deadline(Duration::from_secs(60));
/// assert_eq!(p.max_attempts, 5);
/// assert!(p.delay_before(2, 0.0) == Duration::from_millis(100));
/// assert!(p.delay_before(3, 0.0) == Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts allowed in total (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Largest delay between attempts.
    pub max_backoff: Duration,
    /// Growth factor of the delay (at least 1).
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0: none, 1: full jitter).
    pub jitter: f64,
    /// Time limit of one attempt of an async step (`run_async`); an attempt
    /// that exceeds it is dropped and counts as a transient failure. Sync
    /// steps cannot be interrupted: enforce timeouts inside them.
    pub attempt_timeout: Option<Duration>,
    /// Total time allowed from the first attempt (kept durably across
    /// restarts); no new attempt starts after it.
    pub deadline: Option<Duration>,
    /// What happens when attempts or the deadline run out.
    pub on_exhausted: OnExhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// One attempt, no retry (the default of every effect).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
            attempt_timeout: None,
            deadline: None,
            on_exhausted: OnExhausted::RecordFailure,
        }
    }

    /// Up to `max_attempts` attempts, 100 ms doubling up to 30 s, half jitter.
    pub fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::none()
        }
    }

    /// Sets the first and the largest delay.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the growth factor (values below 1 are taken as 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }

    /// Sets the randomised fraction of each delay (clamped to 0..=1).
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = if j.is_finite() {
            j.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets the per-attempt timeout of async steps.
    pub fn attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = Some(t);
        self
    }

    /// Sets the total deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sets what happens when attempts run out.
    pub fn on_exhausted(mut self, o: OnExhausted) -> Self {
        self.on_exhausted = o;
        self
    }

    /// The delay before attempt `next` (2 or more) for a random draw `r`
    /// in `0..1` (0: no jitter taken off).
    pub fn delay_before(&self, next: u32, r: f64) -> Duration {
        let n = next.saturating_sub(2).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(n);
        let capped = base.min(self.max_backoff.as_secs_f64()).max(0.0);
        let cut = capped * self.jitter.clamp(0.0, 1.0) * r.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped - cut).max(0.0))
    }
}

/// A cheap random number in `0..1` for jitter (no cryptographic quality).
pub(crate) fn jitter_draw(salt: &str) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(salt.as_bytes());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_errors() {
        assert_eq!(
            classify(&StepError::not_happened("x")).0,
            ErrorClass::NotHappened
        );
        assert_eq!(
            classify(&std::io::Error::other("x")).0,
            ErrorClass::Transient
        );
        assert_eq!(classify(&"x".to_string()).0, ErrorClass::Permanent);
        let b: Box<dyn std::error::Error + Send + Sync> = Box::new(StepError::in_doubt("x"));
        assert_eq!(classify(&b).0, ErrorClass::InDoubt);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy::exponential(10)
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .jitter(1.0);
        assert_eq!(p.delay_before(2, 0.0), Duration::from_millis(10));
        assert_eq!(p.delay_before(4, 0.0), Duration::from_millis(40));
        assert_eq!(p.delay_before(9, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay_before(9, 1.0), Duration::ZERO);
        for _ in 0..100 {
            let r = jitter_draw("k");
            assert!((0.0..1.0).contains(&r));
        }
    }
}
