"""Graceful shutdown for Python agents: the same rules as the Rust runtime.

* SIGTERM (Kubernetes, ``docker stop``, systemd) or SIGINT (Ctrl-C) starts
  shutdown: no new unit starts, the unit in progress finishes and commits,
  the process exits with the conventional code (0 for SIGTERM, 130 for
  SIGINT) within ``SHUTDOWN_TIMEOUT`` seconds (environment, default 25; keep
  it below ``terminationGracePeriodSeconds``).
* A second signal exits at once (with the first signal's code): the journal
  stays consistent, the interrupted unit replays as incomplete.
* With ``exit_at_deadline=True`` a unit still running when the budget runs
  out is cut the same way.

Synchronous agents::

    shutdown = agentwal.Shutdown.install(exit_at_deadline=True)
    for item in items:
        with shutdown.unit_guard() as ok:
            if not ok:
                break                      # shutting down: stop intake
            with journal.unit(...) as unit:
                ...
    sys.exit(shutdown.exit_code)

asyncio agents::

    shutdown = agentwal.Shutdown.install_async()
    workers = [asyncio.create_task(worker(shutdown)) for _ in range(8)]
    await shutdown.wait_async()
    await shutdown.drain_tasks(workers)   # waits up to the remaining budget
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from contextlib import contextmanager

from .errors import Error

__all__ = ["Shutdown", "ShuttingDown", "timeout_from_env", "parse_timeout"]

#: Environment variable holding the shutdown budget in seconds.
SHUTDOWN_TIMEOUT_ENV = "SHUTDOWN_TIMEOUT"
#: Budget when the variable is unset or empty.
DEFAULT_SHUTDOWN_TIMEOUT = 25.0
#: Exit code after SIGINT (128 + 2), as shells report it.
EXIT_SIGINT = 130


class ShuttingDown(Error):
    """Shutdown began: no new unit may start."""


def parse_timeout(value: str) -> float:
    """Parses a budget in seconds (``"25"``, ``"0.5"``); refuses negative,
    non-finite and absurd (more than a day) values with ValueError."""
    try:
        secs = float(value.strip())
    except ValueError:
        raise ValueError(
            f"invalid {SHUTDOWN_TIMEOUT_ENV}={value!r}: expected a number of seconds, e.g. 25"
        ) from None
    if secs != secs or secs in (float("inf"), float("-inf")) or secs < 0:
        raise ValueError(
            f"invalid {SHUTDOWN_TIMEOUT_ENV}={value!r}: must be a non-negative number of seconds"
        )
    if secs > 86_400:
        raise ValueError(f"invalid {SHUTDOWN_TIMEOUT_ENV}={value!r}: must be at most 86400 seconds")
    return secs


def timeout_from_env() -> float:
    """``SHUTDOWN_TIMEOUT`` in seconds, or 25 when unset or empty."""
    v = os.environ.get(SHUTDOWN_TIMEOUT_ENV, "")
    if not v.strip():
        return DEFAULT_SHUTDOWN_TIMEOUT
    return parse_timeout(v)


_REASONS: Dict[int, str] = {int(signal.SIGTERM): "SIGTERM", int(signal.SIGINT): "SIGINT"}


class Shutdown:
    """The shutdown controller: who asked, the deadline, the units still in
    progress. Thread-safe; one per process is typical."""

    def __init__(self, timeout: Optional[float] = None) -> None:
        self.timeout: float = timeout_from_env() if timeout is None else float(timeout)
        self._lock = threading.Condition()
        self._reason: Optional[str] = None
        self._deadline: Optional[float] = None
        self._units = 0
        self._signals = 0
        self._event = threading.Event()
        self._exit_at_deadline = False
        self._watchdog: Optional[threading.Thread] = None
        self._unfinished: Optional[int] = None
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []

    # -- installing -----------------------------------------------------------

    @classmethod
    def install(
        cls,
        *,
        timeout: Optional[float] = None,
        exit_at_deadline: bool = False,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    ) -> "Shutdown":
        """Creates a controller and installs it as the handler of SIGTERM and
        SIGINT (call from the main thread). SIGINT no longer raises
        KeyboardInterrupt: it starts a graceful shutdown like SIGTERM."""
        s = cls(timeout)
        s._exit_at_deadline = exit_at_deadline
        for sig in signals:
            signal.signal(sig, s._handler)
        return s

    @classmethod
    def install_async(
        cls,
        *,
        timeout: Optional[float] = None,
        exit_at_deadline: bool = False,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    ) -> "Shutdown":
        """Like :meth:`install`, through the running event loop's
        ``add_signal_handler`` (Unix), so waiters wake up on the loop."""
        s = cls(timeout)
        s._exit_at_deadline = exit_at_deadline
        lp = loop or asyncio.get_running_loop()
        for sig in signals:
            lp.add_signal_handler(sig, s.on_signal, _REASONS.get(sig, f"signal {sig}"))
        return s

    def _handler(self, signum: int, _frame: Any) -> None:
        self.on_signal(_REASONS.get(signum, f"signal {signum}"))

    # -- triggering -------------------------------------------------------------

    def on_signal(self, reason: str) -> None:
        """What a signal does: the first starts shutdown, a second exits at
        once with the first signal's exit code."""
        with self._lock:
            self._signals += 1
            second = self._signals > 1 and self._reason is not None
        if second:
            self._force_exit()
        self.trigger(reason)

    def trigger(self, reason: str = "requested") -> bool:
        """Starts shutdown (e.g. from a preStop hook); False if it already began."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            self._deadline = time.monotonic() + self.timeout
            self._lock.notify_all()
        self._event.set()
        for loop, fut in list(self._async_waiters):
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:
                pass
        if self._exit_at_deadline:
            self._arm_watchdog()
        return True

    def _force_exit(self) -> None:
        # A forced exit (second signal, deadline) leaves work unfinished.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(self.unfinished_exit_code)

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None:
            return

        def watch() -> None:
            while True:
                left = self.remaining()
                if left <= 0:
                    break
                time.sleep(min(left, 0.5))
            if self.outstanding_units() > 0:
                self._force_exit()

        self._watchdog = threading.Thread(target=watch, name="agentwal-shutdown-watchdog", daemon=True)
        self._watchdog.start()

    def set_exit_at_deadline(self, on: bool) -> None:
        """Exit (with the shutdown's exit code) when the deadline passes with
        a unit still running; the unit replays as incomplete."""
        self._exit_at_deadline = on
        if on and self.triggered:
            self._arm_watchdog()

    # -- state -------------------------------------------------------------------

    @property
    def triggered(self) -> bool:
        """True once shutdown began."""
        return self._event.is_set()

    @property
    def reason(self) -> Optional[str]:
        """``"SIGTERM"``, ``"SIGINT"``, ``"requested"``, or None."""
        return self._reason

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, else 0."""
        return EXIT_SIGINT if self._reason == "SIGINT" else 0

    def set_unfinished_exit_code(self, code: Optional[int]) -> None:
        """Opt-in (Kubernetes Jobs): the exit code of a shutdown that left
        work unfinished, instead of 0 after SIGTERM (SIGINT keeps 130).
        None restores the default."""
        self._unfinished = code

    @property
    def unfinished_exit_code(self) -> int:
        """The exit code for a shutdown that left work unfinished: the code set
        by :meth:`set_unfinished_exit_code` when :attr:`exit_code` would be 0,
        otherwise :attr:`exit_code`."""
        code = self.exit_code
        if self._unfinished is not None and code == 0:
            return self._unfinished
        return code

    @property
    def deadline(self) -> Optional[float]:
        """``time.monotonic()`` value of the deadline, once triggered."""
        return self._deadline

    def remaining(self) -> float:
        """Seconds left in the budget (the full timeout before shutdown began)."""
        if self._deadline is None:
            return self.timeout
        return max(0.0, self._deadline - time.monotonic())

    # -- units -------------------------------------------------------------------

    def begin_unit(self) -> "_UnitGuard":
        """Registers a unit in progress; raises :class:`ShuttingDown` once
        shutdown began. Use as a context manager (or call ``.release()``)."""
        with self._lock:
            if self._reason is not None:
                raise ShuttingDown(f"shutdown ({self._reason}) began: no new unit starts")
            self._units += 1
        return _UnitGuard(self)

    @contextmanager
    def unit_guard(self) -> Iterator[bool]:
        """``with shutdown.unit_guard() as ok:`` — ``ok`` is False once
        shutdown began (stop intake); otherwise the unit is counted until the
        block ends."""
        try:
            g = self.begin_unit()
        except ShuttingDown:
            yield False
            return
        with g:
            yield True

    def _release(self) -> None:
        with self._lock:
            self._units -= 1
            self._lock.notify_all()

    def outstanding_units(self) -> int:
        """Units registered with :meth:`begin_unit` and not yet released."""
        with self._lock:
            return self._units

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until shutdown begins (True) or ``timeout`` passes (False)."""
        return self._event.wait(timeout)

    def wait_units(self) -> bool:
        """Blocks until every registered unit finished or the deadline passed;
        True when all finished."""
        with self._lock:
            while self._units > 0:
                left = self.remaining()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
            return True

    async def wait_async(self) -> None:
        """Awaits the start of shutdown."""
        if self.triggered:
            return
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[None]" = loop.create_future()
        entry = (loop, fut)
        self._async_waiters.append(entry)
        try:
            if self.triggered:
                return
            await fut
        finally:
            self._async_waiters.remove(entry)

    async def drain_tasks(self, tasks: Iterable["asyncio.Future[Any]"]) -> bool:
        """Waits for ``tasks`` up to the remaining budget, then cancels the
        rest (their units stay incomplete and resume on the next run).
        True when all finished in time."""
        tasks = list(tasks)
        if not tasks:
            return True
        done, pending = await asyncio.wait(tasks, timeout=self.remaining())
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return not pending


def _set_done(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _UnitGuard:
    """A unit counted by :meth:`Shutdown.begin_unit`; released once."""

    __slots__ = ("_s", "_released")

    def __init__(self, s: Shutdown) -> None:
        self._s = s
        self._released = False

    def release(self) -> None:
        """Stops counting the unit (idempotent)."""
        if not self._released:
            self._released = True
            self._s._release()

    def __enter__(self) -> "_UnitGuard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
