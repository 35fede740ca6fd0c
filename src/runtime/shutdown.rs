//! Graceful shutdown: signals, a deadline budget and unit guards.
//!
//! **Promises.**
//!
//! * The first SIGTERM or SIGINT (or a programmatic [`Shutdown::trigger`],
//!   e.g. from `POST /shutdown`) flips one flag. From then on
//!   [`Shutdown::begin_unit`] refuses new units, [`Shutdown::is_triggered`]
//!   is true (a relaxed atomic load: cheap enough for a tight sync loop) and
//!   every [`Shutdown::triggered`] future completes.
//! * Units that began before the trigger hold a [`UnitGuard`]; the
//!   application waits for them with [`Shutdown::wait_units`] (async) or
//!   [`Shutdown::wait_units_blocking`] (sync), which return at the latest at
//!   the **deadline**: trigger time + `SHUTDOWN_TIMEOUT` seconds (default
//!   25). The budget must be below the pod's `terminationGracePeriodSeconds`,
//!   so that the process exits on its own before the orchestrator's SIGKILL.
//! * [`Shutdown::exit_code`] is the conventional code: 0 after SIGTERM or a
//!   programmatic trigger, 130 (128 + 2) after SIGINT.
//! * A **second** signal exits the process at once with
//!   [`std::process::exit`] and the exit code of the first shutdown reason
//!   (a programmatic trigger is not a signal: the SIGTERM that follows a
//!   preStop `POST /shutdown` is still the first signal). That is
//!   safe with agentwal: every journal record is atomic on its own (checksummed
//!   and ordered), so a unit cut in the middle is replayed as *incomplete* at
//!   the next start, and its effects are classified completed / in doubt /
//!   not started — exactly as after a SIGKILL.
//!
//! ```
//! use agentwal::runtime::Shutdown;
//! use std::time::Duration;
//!
//! let shutdown = Shutdown::new(Duration::from_secs(5)); // no signal handlers
//! let mut done = 0;
//! for _record in 0..10 {
//!     let Ok(_unit) = shutdown.begin_unit() else { break }; // refused once shutdown began
//!     done += 1; // ... one atomic unit of work ...
//!     if done == 3 {
//!         shutdown.trigger(); // what SIGTERM would do
//!     }
//! }
//! assert_eq!(done, 3);
//! assert!(shutdown.wait_units_blocking().all_finished());
//! assert_eq!(shutdown.exit_code(), 0);
//! ```

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::error::Error;

/// Environment variable holding the shutdown budget in seconds.
pub const SHUTDOWN_TIMEOUT_ENV: &str = "SHUTDOWN_TIMEOUT";
/// Budget used when `SHUTDOWN_TIMEOUT` is not set: 25 s, below Kubernetes'
/// default `terminationGracePeriodSeconds` of 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// Exit code after SIGINT (128 + signal number 2), as shells report it.
pub const EXIT_SIGINT: i32 = 130;

/// Why shutdown began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    /// SIGTERM (Kubernetes, `docker stop`, systemd). Exit code 0.
    Sigterm,
    /// SIGINT (Ctrl-C). Exit code 130.
    Sigint,
    /// [`Shutdown::trigger`] (e.g. `POST /shutdown` from a preStop hook). Exit code 0.
    Requested,
}

impl ShutdownReason {
    /// The conventional process exit code for this reason.
    pub fn exit_code(self) -> i32 {
        match self {
            ShutdownReason::Sigint => EXIT_SIGINT,
            ShutdownReason::Sigterm | ShutdownReason::Requested => 0,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownReason::Sigterm => "SIGTERM",
            ShutdownReason::Sigint => "SIGINT",
            ShutdownReason::Requested => "shutdown requested",
        })
    }
}

/// Reads `SHUTDOWN_TIMEOUT` (whole or fractional seconds, e.g. `25` or
/// `2.5`); [`DEFAULT_SHUTDOWN_TIMEOUT`] when unset or empty.
pub fn timeout_from_env() -> Result<Duration, Error> {
    match std::env::var(SHUTDOWN_TIMEOUT_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_timeout(&v),
        _ => Ok(DEFAULT_SHUTDOWN_TIMEOUT),
    }
}

/// Parses a budget in seconds (`"25"`, `"0.5"`). Refuses negative, non-finite
/// and absurd (more than a day) values.
pub fn parse_timeout(value: &str) -> Result<Duration, Error> {
    let bad = |reason| Error::InvalidSetting {
        name: SHUTDOWN_TIMEOUT_ENV,
        value: value.to_string(),
        reason,
    };
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| bad("expected a number of seconds, e.g. 25"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad("must be a non-negative number of seconds"));
    }
    if secs > 86_400.0 {
        return Err(bad("must be at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Default)]
struct State {
    reason: Option<ShutdownReason>,
    deadline: Option<Instant>,
    units: usize,
}

struct Inner {
    /// Mirror of `state.reason.is_some()` for lock-free polling.
    triggered: AtomicBool,
    /// Signals delivered so far (a programmatic trigger is not one).
    signals: AtomicU32,
    state: Mutex<State>,
    /// Signalled when `units` drops to zero (sync waiters).
    idle: Condvar,
    /// Async waiters: `true` once triggered.
    trigger_tx: watch::Sender<bool>,
    /// Async waiters: outstanding unit count.
    units_tx: watch::Sender<usize>,
    timeout: Duration,
    /// What a second signal does (replaceable in tests).
    force: Box<dyn Fn(i32) + Send + Sync>,
    /// Exit (through `force`) when the deadline passes with work outstanding.
    exit_at_deadline: AtomicBool,
    watchdog_armed: AtomicBool,
    /// Exit code for a shutdown that left work unfinished, in place of 0
    /// (`i32::MIN`: not set). See [`Shutdown::set_unfinished_exit_code`].
    unfinished_exit: AtomicI32,
}

/// The shutdown controller. Cheap to clone; all clones share one state.
///
/// # Example
///
/// A worker loop that finishes the unit in progress and stops at a signal.
/// A real program calls [`Shutdown::install_thread`] (reads
/// `SHUTDOWN_TIMEOUT`, listens for SIGTERM/SIGINT); here a SIGTERM is fed in
/// by hand:
///
/// ```
/// use std::time::Duration;
/// use agentwal::runtime::{Shutdown, ShutdownReason};
///
/// let shutdown = Shutdown::new(Duration::from_secs(25)); // or Shutdown::install_thread()?
/// shutdown.set_exit_at_deadline(true); // never outlive the budget
/// let mut done = 0;
/// for record in 0..1000 {
///     // Refused once shutdown began: no new unit starts.
///     let Ok(_unit) = shutdown.begin_unit() else { break };
///     if record == 3 {
///         shutdown.on_signal(ShutdownReason::Sigterm); // the kubelet's SIGTERM
///     }
///     done += 1; // ... one journaled unit; it always finishes ...
/// } // guard dropped: unit done
/// assert_eq!(done, 4);
/// assert!(shutdown.wait_units_blocking().all_finished());
/// assert_eq!(shutdown.exit_code(), 0); // std::process::exit(shutdown.exit_code())
/// ```
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("Shutdown")
            .field("reason", &s.reason)
            .field("units", &s.units)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// The outcome of waiting for outstanding units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitsWait {
    /// Units still running when the wait returned (0 when all finished).
    pub outstanding: usize,
    /// True when the wait returned because the deadline passed.
    pub deadline_passed: bool,
}

impl UnitsWait {
    /// True when every unit finished before the deadline.
    pub fn all_finished(&self) -> bool {
        self.outstanding == 0
    }
}

/// Proof that a unit of work is in progress; shutdown waits for it (up to the
/// deadline). Dropping it ends the unit.
#[must_use = "the unit ends when the guard is dropped"]
pub struct UnitGuard {
    shutdown: Shutdown,
}

impl fmt::Debug for UnitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnitGuard")
    }
}

impl Drop for UnitGuard {
    fn drop(&mut self) {
        let inner = &self.shutdown.inner;
        let mut s = inner.state.lock();
        s.units -= 1;
        let n = s.units;
        drop(s);
        inner.units_tx.send_replace(n);
        if n == 0 {
            inner.idle.notify_all();
        }
    }
}

impl Shutdown {
    /// A controller with the given budget and **no** signal handlers (tests,
    /// embedding in a program that handles signals itself).
    pub fn new(timeout: Duration) -> Shutdown {
        Self::with_force_exit(timeout, |code| std::process::exit(code))
    }

    /// Like [`Shutdown::new`], but a second signal calls `force` with the exit
    /// code instead of [`std::process::exit`] (for tests of the second-signal path).
    pub fn with_force_exit(
        timeout: Duration,
        force: impl Fn(i32) + Send + Sync + 'static,
    ) -> Shutdown {
        let (trigger_tx, _) = watch::channel(false);
        let (units_tx, _) = watch::channel(0usize);
        Shutdown {
            inner: Arc::new(Inner {
                triggered: AtomicBool::new(false),
                signals: AtomicU32::new(0),
                state: Mutex::new(State::default()),
                idle: Condvar::new(),
                trigger_tx,
                units_tx,
                timeout,
                force: Box::new(force),
                exit_at_deadline: AtomicBool::new(false),
                watchdog_armed: AtomicBool::new(false),
                unfinished_exit: AtomicI32::new(i32::MIN),
            }),
        }
    }

    /// Reads `SHUTDOWN_TIMEOUT` and listens for SIGTERM and SIGINT on the
    /// **current** tokio runtime (the handlers are registered before this
    /// returns). Fails with [`Error::NoRuntime`] outside a runtime.
    ///
    /// With a `current_thread` runtime the listener only runs while the
    /// runtime is polled: a program whose work loop is synchronous should use
    /// [`Shutdown::install_thread`] (or a multi-thread runtime) instead.
    pub fn install() -> Result<Shutdown, Error> {
        let shutdown = Shutdown::new(timeout_from_env()?);
        shutdown.listen_on_current_runtime()?;
        Ok(shutdown)
    }

    /// Reads `SHUTDOWN_TIMEOUT` and listens for signals on a dedicated thread
    /// with its own small tokio runtime. Needs no runtime from the caller:
    /// the right choice for a synchronous worker loop.
    pub fn install_thread() -> Result<Shutdown, Error> {
        let shutdown = Shutdown::new(timeout_from_env()?);
        shutdown.listen_on_thread()?;
        Ok(shutdown)
    }

    /// Starts listening for SIGTERM/SIGINT on the current tokio runtime.
    pub fn listen_on_current_runtime(&self) -> Result<(), Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let signals = Signals::register()?;
        let me = self.clone();
        handle.spawn(async move { me.signal_loop(signals).await });
        Ok(())
    }

    /// Starts listening for SIGTERM/SIGINT on a dedicated thread.
    pub fn listen_on_thread(&self) -> Result<(), Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| Error::Install {
                what: "signal runtime",
                source,
            })?;
        // Register inside the runtime's context, before returning, so a signal
        // that arrives right after install is not missed.
        let signals = {
            let _enter = rt.enter();
            Signals::register()?
        };
        let me = self.clone();
        std::thread::Builder::new()
            .name("agentwal-signals".into())
            .spawn(move || rt.block_on(me.signal_loop(signals)))
            .map_err(|source| Error::Install {
                what: "signal thread",
                source,
            })?;
        Ok(())
    }

    async fn signal_loop(self, mut signals: Signals) {
        loop {
            let reason = signals.next().await;
            self.on_signal(reason);
        }
    }

    /// Starts the deadline watchdog thread (once) if shutdown began and
    /// exit-at-deadline is on.
    fn arm_watchdog(&self) {
        let inner = &self.inner;
        if !inner.exit_at_deadline.load(Ordering::Acquire)
            || inner.watchdog_armed.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Some(deadline) = self.deadline() else {
            inner.watchdog_armed.store(false, Ordering::Release);
            return;
        };
        // Fire a little before the deadline (a tenth of the budget, at most
        // 500 ms) so that the process has *exited* within its budget, exit
        // and reaping included, not merely started exiting at the deadline.
        let margin = (inner.timeout / 10).min(Duration::from_millis(500));
        let fire_at = deadline.checked_sub(margin).unwrap_or(deadline);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("agentwal-deadline".into())
            .spawn(move || {
                std::thread::sleep(fire_at.saturating_duration_since(Instant::now()));
                let units = me.outstanding_units();
                if me.inner.exit_at_deadline.load(Ordering::Acquire) && units > 0 {
                    tracing::error!(
                        target: "agentwal::shutdown",
                        budget_seconds = me.inner.timeout.as_secs_f64(),
                        units_cut = units,
                        exit_code = me.unfinished_exit_code(),
                        "shutdown deadline reached: the watchdog cuts the units in progress (they replay as incomplete)"
                    );
                    // The operator sees why the process ended mid-unit.
                    let _ = writeln!(
                        std::io::stderr(),
                        "agentwal: shutdown deadline ({:?}) reached with {units} unit(s) in progress; exiting with code {} (they replay as incomplete)",
                        me.inner.timeout,
                        me.unfinished_exit_code()
                    );
                    (me.inner.force)(me.unfinished_exit_code());
                }
            });
        if spawned.is_err() {
            // Without the watchdog the orchestrator's SIGKILL is the backstop.
            inner.watchdog_armed.store(false, Ordering::Release);
        }
    }

    /// When `true`, a watchdog thread ends the process with
    /// [`Shutdown::exit_code`] when the deadline passes while a unit guard is
    /// still held — so the process always exits within its budget, before the
    /// orchestrator's SIGKILL. As safe as a SIGKILL: the unit is replayed as
    /// incomplete. Off by default (with [`Shutdown::with_force_exit`] the
    /// watchdog calls the given function instead of exiting).
    pub fn set_exit_at_deadline(&self, on: bool) {
        self.inner.exit_at_deadline.store(on, Ordering::Release);
        if on && self.is_triggered() {
            self.arm_watchdog();
        }
    }

    /// What a delivered signal does: the first one starts graceful shutdown,
    /// a second *signal* forces an immediate exit. A programmatic trigger
    /// (`POST /shutdown` from a preStop hook) does not count as a signal, so
    /// the SIGTERM that Kubernetes sends after the hook is still graceful.
    /// Public so that a program that receives signals by other means can feed
    /// them in.
    pub fn on_signal(&self, reason: ShutdownReason) {
        let n = self.inner.signals.fetch_add(1, Ordering::AcqRel) + 1;
        self.trigger_with(reason);
        if n >= 2 {
            // Second signal: the operator wants out now. Safe: records are
            // atomic and an interrupted unit replays as incomplete.
            let code = self.unfinished_exit_code();
            let units = self.outstanding_units();
            tracing::warn!(
                target: "agentwal::shutdown",
                signal = %reason,
                exit_code = code,
                units_cut = units,
                "second signal: exiting now (cut units replay as incomplete)"
            );
            let _ = writeln!(
                std::io::stderr(),
                "agentwal: second signal ({reason}) during shutdown: exiting now with code {code}, {units} unit(s) in progress (they replay as incomplete)"
            );
            (self.inner.force)(code);
        }
    }

    /// Starts graceful shutdown ([`ShutdownReason::Requested`]). Returns true
    /// if this call started it, false if it had already begun.
    pub fn trigger(&self) -> bool {
        self.trigger_with(ShutdownReason::Requested)
    }

    /// Starts graceful shutdown for `reason`. Returns true if this call
    /// started it; a later call changes nothing (the first reason and
    /// deadline stay).
    pub fn trigger_with(&self, reason: ShutdownReason) -> bool {
        let mut s = self.inner.state.lock();
        if s.reason.is_some() {
            return false;
        }
        s.reason = Some(reason);
        s.deadline = Some(Instant::now() + self.inner.timeout);
        self.inner.triggered.store(true, Ordering::Release);
        drop(s);
        tracing::info!(
            target: "agentwal::shutdown",
            reason = %reason,
            budget_seconds = self.inner.timeout.as_secs_f64(),
            units_in_progress = self.outstanding_units(),
            "graceful shutdown began: no new unit starts, the ones in progress finish"
        );
        self.inner.trigger_tx.send_replace(true);
        // Sync waiters re-check the deadline.
        self.inner.idle.notify_all();
        self.arm_watchdog();
        true
    }

    /// True once shutdown began. One atomic load: poll it freely.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// Completes once shutdown began (immediately if it already has).
    pub async fn triggered(&self) {
        let mut rx = self.inner.trigger_tx.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|t| *t).await;
    }

    /// Why shutdown began, if it has.
    pub fn reason(&self) -> Option<ShutdownReason> {
        self.inner.state.lock().reason
    }

    /// The exit code to end the process with: 130 after SIGINT, otherwise 0.
    pub fn exit_code(&self) -> i32 {
        self.reason().map_or(0, ShutdownReason::exit_code)
    }

    /// Makes a shutdown that leaves work unfinished exit with `code` instead
    /// of 0 (`None`: back to the default, 0). Off by default: a SIGTERM exits
    /// 0 whether or not the batch was done, which is what a Deployment or a
    /// StatefulSet wants (the pod is restarted and resumes). A Kubernetes
    /// **Job** must tell "drained, not finished" apart from "finished", or it
    /// is marked Complete with work left; give it a distinct code (the demo's
    /// `--exit-code-unfinished` / `AGENTWAL_UNFINISHED_EXIT`, 75 in
    /// `deploy/kubernetes.yaml`) and match it in the Job's `podFailurePolicy`.
    ///
    /// Applies to the exits the controller makes itself (a second signal,
    /// the deadline watchdog), which always leave work unfinished, and is
    /// returned by [`Shutdown::unfinished_exit_code`] for the program's own
    /// exit path. SIGINT's 130 is never replaced (it is already non-zero).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use agentwal::runtime::{Shutdown, ShutdownReason};
    /// let shutdown = Shutdown::new(Duration::from_secs(25));
    /// shutdown.set_unfinished_exit_code(Some(75));
    /// shutdown.trigger_with(ShutdownReason::Sigterm);
    /// assert_eq!(shutdown.exit_code(), 0); // finished: the usual code
    /// assert_eq!(shutdown.unfinished_exit_code(), 75); // work left
    /// ```
    pub fn set_unfinished_exit_code(&self, code: Option<i32>) {
        self.inner
            .unfinished_exit
            .store(code.unwrap_or(i32::MIN), Ordering::Release);
    }

    /// The exit code for a shutdown that left work unfinished: the code set
    /// by [`Shutdown::set_unfinished_exit_code`] when [`Shutdown::exit_code`]
    /// would be 0, otherwise [`Shutdown::exit_code`].
    pub fn unfinished_exit_code(&self) -> i32 {
        let code = self.exit_code();
        match self.inner.unfinished_exit.load(Ordering::Acquire) {
            i32::MIN => code,
            over if code == 0 => over,
            _ => code,
        }
    }

    /// The configured budget (`SHUTDOWN_TIMEOUT`).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// When the budget runs out: trigger time + timeout. `None` before shutdown began.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.state.lock().deadline
    }

    /// Time left until the deadline (the whole budget before shutdown began,
    /// zero once it passed).
    pub fn remaining(&self) -> Duration {
        match self.deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => self.inner.timeout,
        }
    }

    /// Begins a unit of work. Refused with [`Error::ShuttingDown`] once
    /// shutdown began, so no new unit starts; shutdown waits (up to the
    /// deadline) for every guard handed out before.
    pub fn begin_unit(&self) -> Result<UnitGuard, Error> {
        let mut s = self.inner.state.lock();
        if s.reason.is_some() {
            return Err(Error::ShuttingDown);
        }
        s.units += 1;
        let n = s.units;
        drop(s);
        self.inner.units_tx.send_replace(n);
        Ok(UnitGuard {
            shutdown: self.clone(),
        })
    }

    /// Units in progress now.
    pub fn outstanding_units(&self) -> usize {
        self.inner.state.lock().units
    }

    /// Waits until every unit finished or the deadline passed (sync). Before
    /// shutdown began, waits for the units with the whole budget as limit.
    pub fn wait_units_blocking(&self) -> UnitsWait {
        let start_limit = Instant::now() + self.inner.timeout;
        let mut s = self.inner.state.lock();
        loop {
            if s.units == 0 {
                return UnitsWait {
                    outstanding: 0,
                    deadline_passed: false,
                };
            }
            let deadline = s.deadline.unwrap_or(start_limit);
            if Instant::now() >= deadline {
                return UnitsWait {
                    outstanding: s.units,
                    deadline_passed: true,
                };
            }
            self.inner.idle.wait_until(&mut s, deadline);
        }
    }

    /// Waits until every unit finished or the deadline passed (async).
    pub async fn wait_units(&self) -> UnitsWait {
        let limit = self
            .deadline()
            .unwrap_or_else(|| Instant::now() + self.inner.timeout);
        let mut rx = self.inner.units_tx.subscribe();
        let finished = tokio::time::timeout_at(
            tokio::time::Instant::from_std(limit),
            rx.wait_for(|n| *n == 0),
        )
        .await;
        match finished {
            Ok(_) => UnitsWait {
                outstanding: 0,
                deadline_passed: false,
            },
            Err(_) => UnitsWait {
                outstanding: self.outstanding_units(),
                deadline_passed: true,
            },
        }
    }
}

/// The registered SIGTERM and SIGINT streams.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind, what| signal(kind).map_err(|source| Error::Install { what, source });
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM handler")?,
            int: install(SignalKind::interrupt(), "SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> ShutdownReason {
        tokio::select! {
            _ = self.term.recv() => ShutdownReason::Sigterm,
            _ = self.int.recv() => ShutdownReason::Sigint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    #[test]
    fn parse_timeout_accepts_seconds_and_refuses_garbage() {
        assert_eq!(parse_timeout("25").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_timeout(" 0.5 ").unwrap(), Duration::from_millis(500));
        for bad in ["", "-1", "abc", "NaN", "inf", "100000"] {
            assert!(
                matches!(parse_timeout(bad), Err(Error::InvalidSetting { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn guards_are_refused_after_trigger_and_first_reason_wins() {
        let s = Shutdown::new(Duration::from_secs(5));
        assert!(!s.is_triggered());
        assert_eq!(s.remaining(), Duration::from_secs(5));
        assert!(s.deadline().is_none());
        let g = s.begin_unit().unwrap();
        assert_eq!(s.outstanding_units(), 1);
        assert!(s.trigger_with(ShutdownReason::Sigint));
        assert!(!s.trigger_with(ShutdownReason::Sigterm));
        assert_eq!(s.reason(), Some(ShutdownReason::Sigint));
        assert_eq!(s.exit_code(), 130);
        assert!(s.is_triggered());
        assert!(s.deadline().is_some());
        assert!(s.remaining() <= Duration::from_secs(5));
        assert!(matches!(s.begin_unit(), Err(Error::ShuttingDown)));
        drop(g);
        assert_eq!(s.outstanding_units(), 0);
        assert!(s.wait_units_blocking().all_finished());
    }

    #[test]
    fn second_signal_forces_exit_with_first_code() {
        let code = Arc::new(AtomicI32::new(-1));
        let c = code.clone();
        let s = Shutdown::with_force_exit(Duration::from_secs(5), move |x| {
            c.store(x, Ordering::SeqCst)
        });
        s.on_signal(ShutdownReason::Sigterm);
        assert_eq!(
            code.load(Ordering::SeqCst),
            -1,
            "first signal must not force"
        );
        s.on_signal(ShutdownReason::Sigint);
        assert_eq!(code.load(Ordering::SeqCst), 0, "forced with SIGTERM's code");
    }

    #[test]
    fn unfinished_exit_code_replaces_zero_only() {
        let code = Arc::new(AtomicI32::new(-1));
        let c = code.clone();
        let s = Shutdown::with_force_exit(Duration::from_secs(5), move |x| {
            c.store(x, Ordering::SeqCst)
        });
        assert_eq!(s.unfinished_exit_code(), 0, "not set: the usual code");
        s.set_unfinished_exit_code(Some(75));
        s.on_signal(ShutdownReason::Sigterm);
        assert_eq!(s.exit_code(), 0, "the finished code is unchanged");
        assert_eq!(s.unfinished_exit_code(), 75);
        s.on_signal(ShutdownReason::Sigterm);
        assert_eq!(
            code.load(Ordering::SeqCst),
            75,
            "a forced exit is unfinished"
        );

        let int = Shutdown::new(Duration::from_secs(5));
        int.set_unfinished_exit_code(Some(75));
        int.trigger_with(ShutdownReason::Sigint);
        assert_eq!(int.unfinished_exit_code(), 130, "SIGINT keeps 130");
        int.set_unfinished_exit_code(None);
        assert_eq!(int.unfinished_exit_code(), 130);
    }

    #[test]
    fn sigterm_after_a_programmatic_trigger_is_still_graceful() {
        let code = Arc::new(AtomicI32::new(-1));
        let c = code.clone();
        let s = Shutdown::with_force_exit(Duration::from_secs(5), move |x| {
            c.store(x, Ordering::SeqCst)
        });
        s.trigger(); // preStop: POST /shutdown
        s.on_signal(ShutdownReason::Sigterm); // then the kubelet's SIGTERM
        assert_eq!(code.load(Ordering::SeqCst), -1, "must not force exit");
        assert_eq!(s.exit_code(), 0);
        s.on_signal(ShutdownReason::Sigterm); // an operator insists
        assert_eq!(code.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn watchdog_forces_exit_at_the_deadline_only_with_work_outstanding() {
        let code = Arc::new(AtomicI32::new(-1));
        let c = code.clone();
        let s = Shutdown::with_force_exit(Duration::from_millis(20), move |x| {
            c.store(x, Ordering::SeqCst)
        });
        s.set_exit_at_deadline(true);
        let g = s.begin_unit().unwrap();
        s.trigger_with(ShutdownReason::Sigint);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(code.load(Ordering::SeqCst), 130);
        drop(g);

        let code = Arc::new(AtomicI32::new(-1));
        let c = code.clone();
        let s = Shutdown::with_force_exit(Duration::from_millis(20), move |x| {
            c.store(x, Ordering::SeqCst)
        });
        s.set_exit_at_deadline(true);
        s.trigger();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            code.load(Ordering::SeqCst),
            -1,
            "no unit outstanding: nothing to cut"
        );
    }

    #[test]
    fn blocking_wait_returns_at_the_deadline_with_units_left() {
        let s = Shutdown::new(Duration::from_millis(30));
        let _g = s.begin_unit().unwrap();
        s.trigger();
        let w = s.wait_units_blocking();
        assert_eq!(
            w,
            UnitsWait {
                outstanding: 1,
                deadline_passed: true
            }
        );
        assert_eq!(s.remaining(), Duration::ZERO);
    }

    #[test]
    fn blocking_wait_wakes_when_the_last_guard_drops() {
        let s = Shutdown::new(Duration::from_secs(30));
        let g = s.begin_unit().unwrap();
        s.trigger();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(g);
        });
        let w = s.wait_units_blocking();
        t.join().unwrap();
        assert!(w.all_finished());
        assert!(!w.deadline_passed);
    }

    #[tokio::test]
    async fn async_waits() {
        let s = Shutdown::new(Duration::from_secs(30));
        let g = s.begin_unit().unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.triggered().await;
            s2.wait_units().await
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.trigger();
        drop(g);
        let w = waiter.await.unwrap();
        assert!(w.all_finished());
        // Already triggered: completes at once.
        s.triggered().await;
    }

    #[tokio::test]
    async fn async_wait_times_out() {
        let s = Shutdown::new(Duration::from_millis(20));
        let _g = s.begin_unit().unwrap();
        s.trigger();
        let w = s.wait_units().await;
        assert_eq!(w.outstanding, 1);
        assert!(w.deadline_passed);
    }

    #[test]
    fn install_outside_a_runtime_is_a_typed_error() {
        let s = Shutdown::new(Duration::from_secs(1));
        assert!(matches!(
            s.listen_on_current_runtime(),
            Err(Error::NoRuntime)
        ));
    }
}
