"""Small value types shared by the Python layer and the native module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")

__all__ = [
    "Happened",
    "NotHappened",
    "NOT_HAPPENED",
    "Retry",
    "StepFailure",
    "Transient",
    "DidNotHappen",
    "Unsure",
    "Permanent",
    "Approval",
]


class Happened(Generic[T]):
    """A reconcile probe's answer: the effect happened, with this result.

    The result is recorded as the effect's outcome and returned by ``run``.
    """

    __slots__ = ("value",)

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        self.value = value

    def __repr__(self) -> str:
        return f"Happened({self.value!r})"


class NotHappened:
    """A reconcile probe's answer: the effect did not happen; run it again (same key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_HAPPENED"


#: The singleton :class:`NotHappened` answer.
NOT_HAPPENED = NotHappened()


def _is_probe_answer(v: Any) -> bool:
    return isinstance(v, (Happened, NotHappened))


@dataclass(frozen=True)
class Retry:
    """An effect's retry policy for transient errors (the Rust ``RetryPolicy``).

    ``max_attempts`` counts every attempt (1: no retry). The delay before
    attempt *n + 1* is ``initial_backoff * multiplier ** (n - 1)`` seconds,
    capped at ``max_backoff``, minus a random part of up to ``jitter`` of it,
    and at least a :class:`Transient`'s ``retry_after``. ``deadline`` bounds
    the total time from the first attempt. Attempts are counted durably: a
    crash during a backoff neither resets nor multiplies the count.
    ``attempt_timeout`` (``run_async`` only) cancels an attempt that runs
    longer and counts it as transient. ``on_exhausted``:
    ``"record_failure"`` records the last error as the effect's outcome;
    ``"leave_in_doubt"`` records nothing (:class:`agentwal.RetriesExhausted`)
    and a later resume starts a new round with the same key.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: Optional[float] = None
    attempt_timeout: Optional[float] = None
    on_exhausted: str = "record_failure"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("Retry.max_attempts must be at least 1")
        if self.on_exhausted not in ("record_failure", "leave_in_doubt"):
            raise ValueError('Retry.on_exhausted must be "record_failure" or "leave_in_doubt"')


class StepFailure(Exception):
    """Raised by an effect's code to say how its failure is treated (the
    Rust ``StepError``). Use a subclass:

    * :class:`Transient` (a 429, a timeout): retried with the same key under
      the effect's :class:`Retry` policy (not for ``never_repeat``);
    * :class:`DidNotHappen`: transient, and the attempt certainly had no
      effect (refused before anything was done): retried even for
      ``never_repeat``;
    * :class:`Unsure`: unknown whether it happened; nothing is recorded, the
      effect stays in doubt (:class:`agentwal.LeftInDoubt`), and resuming the
      unit applies its in-doubt policy;
    * :class:`Permanent`: recorded as the effect's failed outcome.

    Other exceptions: ``OSError`` (connection errors, timeouts) is transient,
    anything else permanent. ``retry_after`` (seconds) is the least delay
    before the next attempt (an HTTP ``Retry-After``).
    """

    error_class = "permanent"

    def __init__(self, message: str = "", *, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(StepFailure):
    """A transient failure (429, 503, timeout): retried under the policy."""

    error_class = "transient"


class DidNotHappen(StepFailure):
    """The attempt was refused before anything happened: retried under the
    policy, ``never_repeat`` included."""

    error_class = "not_happened"


class Unsure(StepFailure):
    """Unknown whether the attempt happened: record nothing, leave the effect
    in doubt (the unit is resumed later under the effect's policy)."""

    error_class = "in_doubt"


class Permanent(StepFailure):
    """A permanent failure: recorded as the effect's outcome, never retried."""

    error_class = "permanent"


@dataclass(frozen=True)
class Approval:
    """A human decision asked for by :meth:`agentwal.Unit.approval`:
    ``state`` is ``"pending"``, ``"approved"`` or ``"rejected"``; once
    decided, ``by``, ``reason`` and ``at_ms`` (ms since the epoch) say who,
    why and when."""

    state: str
    by: Optional[str] = None
    reason: Optional[str] = None
    at_ms: Optional[int] = None

    @property
    def approved(self) -> bool:
        """True once approved."""
        return self.state == "approved"

    @property
    def rejected(self) -> bool:
        """True once rejected."""
        return self.state == "rejected"

    @property
    def pending(self) -> bool:
        """True while nobody decided."""
        return self.state == "pending"
