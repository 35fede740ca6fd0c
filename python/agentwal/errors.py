"""Exceptions of agentwal, mirroring the Rust errors (same messages).

Every exception raised by agentwal derives from :class:`Error`. Attributes
carry the fields of the Rust error (``unit``, ``step``, ``effect``, ``key``,
...) and ``retryable`` says whether retrying the same call may succeed.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "JournalIOError",
    "Locked",
    "Corrupt",
    "NotAJournal",
    "Poisoned",
    "PayloadTooLarge",
    "EncodeError",
    "UnitFinished",
    "UnitBusy",
    "UnknownUnit",
    "EffectMismatch",
    "InDoubt",
    "EffectFailed",
    "ReconcileFailed",
    "CompensationFailed",
    "InvalidCall",
    "InvalidOptions",
    "KeyBusy",
    "KeyConflict",
    "RollingBack",
    "UnreplayedSteps",
    "ResultTooLarge",
    "ResultNotReplayable",
    "LeftInDoubt",
    "RetriesExhausted",
    "AbortRequested",
    "OperatorRefused",
    "Draining",
    "NotFound",
    "LeaseLost",
]


class Error(Exception):
    """Base class of every agentwal error."""

    #: True when retrying the same call may succeed (transient I/O, a busy unit, ...).
    retryable: bool = False


class JournalIOError(Error, OSError):
    """An I/O error in the log (``op``, ``path``, ``errno``). Retryable."""

    retryable = True


class Locked(Error):
    """The journal directory is owned by another process (``dir``, ``pid``)."""

    retryable = True


class Corrupt(Error):
    """Acknowledged data is damaged (``segment``, ``offset``, ``reason`` when known)."""


class NotAJournal(Error):
    """The directory holds files that are not an agentwal journal."""


class Poisoned(Error):
    """A write or fsync failed: the log refuses further writes; reopen it."""


class PayloadTooLarge(Error, ValueError):
    """A payload, checkpoint or result exceeds the limit; nothing was written."""


class EncodeError(Error, TypeError):
    """A value could not be encoded as JSON by the journal."""


class UnitFinished(Error):
    """The unit already ended (``state`` is committed or aborted)."""


class UnitBusy(Error):
    """Another handle in this process is working on the unit right now."""

    retryable = True


class UnknownUnit(Error):
    """No incomplete unit with this id is known."""


class EffectMismatch(Error):
    """On resume the code asked for another effect than the journal recorded at this step."""


class InDoubt(Error):
    """A ``never_repeat`` effect may have happened before a crash; an operator must decide."""


class EffectFailed(Error):
    """The effect failed (now, or in a recorded earlier run); it is not run again.

    On the first run ``__cause__`` is the exception the step raised.
    """


class ReconcileFailed(Error):
    """A reconcile probe failed; the effect stays in doubt."""

    retryable = True


class CompensationFailed(Error):
    """A compensation failed during rollback; the rollback can be retried."""

    retryable = True


class InvalidCall(Error):
    """The call does not fit the unit's state (e.g. commit with an effect in doubt)."""


class InvalidOptions(Error, ValueError):
    """Invalid journal or queue options."""


class KeyBusy(Error):
    """Another live unit of this process is executing the effect with this
    idempotency key right now (``holder``); nothing ran. Retryable."""

    retryable = True


class KeyConflict(Error):
    """The idempotency key is recorded for another effect (``recorded``); a key
    belongs to one effect, so nothing ran and no result is handed over."""


class RollingBack(Error):
    """The unit is rolling back: only finishing the rollback is possible."""


class UnreplayedSteps(Error):
    """Commit refused: the journal records more steps for this resumed unit
    than the code replayed (``replayed`` of ``recorded``)."""


class ResultTooLarge(PayloadTooLarge):
    """The effect ran but its result exceeds the payload limit; it is recorded
    as failed with this reason (it will not run again)."""


class ResultNotReplayable(Error, ValueError):
    """The effect ran but its result would not replay; it is recorded as
    failed with this reason (it will not run again)."""


class LeftInDoubt(Error):
    """The step raised :class:`agentwal.Unsure`: nothing was recorded, the
    effect stays in doubt; resume the unit to apply its in-doubt policy.
    ``__cause__`` is the step's exception."""


class RetriesExhausted(Error):
    """Transient failures used up the retry policy (``on_exhausted=
    "leave_in_doubt"``): the effect stays in doubt (``attempts`` so far) and a
    resume starts a new round with the same key."""


class AbortRequested(Error):
    """An operator asked for this unit to be aborted (``by``, ``reason``): it
    runs nothing more; roll it back to run its compensations."""


class OperatorRefused(Error):
    """An operator decision cannot be applied; nothing was written."""


class Draining(Error):
    """The work queue is draining for shutdown: no enqueue or claim accepted."""


class NotFound(Error, KeyError):
    """The work-queue item does not exist."""


class LeaseLost(Error):
    """The work-queue claim is no longer held."""
