"""agentwal: a write-ahead log that lets agents be killed at any moment
without losing work or repeating a side effect.

This package is a thin Pythonic layer over the Rust journal (the same engine,
the same on-disk format, the same ``wal-inspect``)::

    import agentwal

    journal = agentwal.Journal("/var/lib/agent/journal")
    with journal.unit("ticket-42", kind="ticket", payload={"id": 42}) as unit:
        answer = unit.run("llm", lambda ctx: call_model(prompt), policy="retry_same_key")
        unit.run("slack", lambda ctx: post(answer, idempotency_key=ctx.key),
                 policy="retry_same_key")
    # a clean exit commits; an exception leaves the unit resumable and re-raises

See ``docs/python.md`` for the guide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import os
import threading
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    TypeVar,
    Union,
    cast,
)

from . import _agentwal
from . import errors as _errors
from ._agentwal import Claimed, Compensation, EffectCtx
from ._types import (
    NOT_HAPPENED,
    Approval,
    DidNotHappen,
    Happened,
    NotHappened,
    Permanent,
    Retry,
    StepFailure,
    Transient,
    Unsure,
)
from .errors import (
    AbortRequested,
    CompensationFailed,
    Corrupt,
    Draining,
    EffectFailed,
    EffectMismatch,
    EncodeError,
    Error,
    InDoubt,
    InvalidCall,
    InvalidOptions,
    JournalIOError,
    KeyBusy,
    KeyConflict,
    LeaseLost,
    LeftInDoubt,
    Locked,
    NotAJournal,
    NotFound,
    OperatorRefused,
    PayloadTooLarge,
    Poisoned,
    ReconcileFailed,
    ResultNotReplayable,
    ResultTooLarge,
    RetriesExhausted,
    RollingBack,
    UnitBusy,
    UnitFinished,
    UnknownUnit,
    UnreplayedSteps,
)
from .shutdown import Shutdown, ShuttingDown

__version__: str = _agentwal.__version__

#: ``default_key(unit, name, step)``: the idempotency key the journal derives
#: for an effect without an explicit ``key=`` (the Rust ``journal::default_key``).
default_key: Callable[[str, str, int], str] = _agentwal.default_key

__all__ = [
    "Journal",
    "Unit",
    "UnitContext",
    "AsyncUnitContext",
    "EffectCtx",
    "Compensation",
    "Happened",
    "NotHappened",
    "NOT_HAPPENED",
    "Retry",
    "Approval",
    "StepFailure",
    "Transient",
    "DidNotHappen",
    "Unsure",
    "Permanent",
    "WorkQueue",
    "Claimed",
    "Shutdown",
    "ShuttingDown",
    "effect",
    "current_unit",
    "POLICIES",
    "default_key",
    # errors: one list, kept in errors.py
    *_errors.__all__,
]

T = TypeVar("T")

#: The in-doubt policies an effect may declare (there is no default).
POLICIES = ("retry_same_key", "never_repeat", "reconcile")

_current: contextvars.ContextVar[Optional["Unit"]] = contextvars.ContextVar(
    "agentwal_current_unit", default=None
)


def current_unit() -> Optional["Unit"]:
    """The unit opened by the innermost ``with journal.unit(...)`` (or
    ``async with journal.unit_async(...)``) of this thread / task, or None."""
    return _current.get()


def _takes_no_args(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` accepts no positional argument (then it is called
    without the context). Plain functions and methods are read from their
    code object (``inspect.signature`` costs more than a journal write)."""
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        code = fn.__code__
        if code.co_flags & inspect.CO_VARARGS:
            return False
        return code.co_argcount - (1 if inspect.ismethod(fn) else 0) <= 0
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return not any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in sig.parameters.values()
    )


def _with_ctx(fn: Callable[..., T]) -> Callable[[EffectCtx], T]:
    """Accepts ``fn(ctx)`` and ``fn()`` alike."""
    if _takes_no_args(fn):
        return lambda _ctx: fn()
    return fn


def _check_policy(name: str, policy: str, probe: Any) -> None:
    if policy not in POLICIES:
        raise ValueError(
            f"effect {name!r}: unknown policy {policy!r}; use "
            '"retry_same_key", "never_repeat" or "reconcile"'
        )
    if policy == "reconcile" and probe is None:
        raise TypeError(
            f'effect {name!r}: policy "reconcile" needs probe=callable(ctx) returning '
            "agentwal.Happened(result) or agentwal.NOT_HAPPENED"
        )
    if policy != "reconcile" and probe is not None:
        raise TypeError(f'effect {name!r}: probe= is only used with policy="reconcile"')


def _compensator(compensate: Any) -> Callable[[Compensation], Any]:
    """A callable, a mapping effect name -> callable, or None (nothing to undo)."""
    if compensate is None:

        def refuse(c: Compensation) -> None:
            raise InvalidCall(
                f"unit {c.unit!r}: effect {c.effect!r} (step {c.seq}) is compensable "
                "but rollback() got no compensate= for it"
            )

        return refuse
    if callable(compensate):
        return cast(Callable[[Compensation], Any], compensate)
    if isinstance(compensate, Mapping):
        table = dict(compensate)

        def by_name(c: Compensation) -> Any:
            fn = table.get(c.effect)
            if fn is None:
                raise InvalidCall(
                    f"unit {c.unit!r}: no compensation given for effect {c.effect!r} (step {c.seq})"
                )
            return fn(c)

        return by_name
    raise TypeError("compensate must be a callable, a mapping of effect name to callable, or None")


# ---------------------------------------------------------------------------
# Running journal calls off the event loop
# ---------------------------------------------------------------------------


def _off_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> "asyncio.Future[T]":
    """Runs ``fn`` on a fresh thread (never on the event loop, never in the
    default executor, whose few workers could all be waiting for coroutines
    scheduled back on this loop) and returns an asyncio future."""
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        try:
            r = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            try:
                loop.call_soon_threadsafe(settle, False, e)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits
            return
        try:
            loop.call_soon_threadsafe(settle, True, r)
        except RuntimeError:
            pass

    threading.Thread(target=target, name="agentwal-io", daemon=True).start()
    return fut


async def _await_off_loop(fn: Callable[[], T], on_cancel: Callable[[], None] = lambda: None) -> T:
    """Awaits ``fn`` run off the loop. If the awaiting task is cancelled,
    ``on_cancel`` runs (it interrupts the step's coroutine), the journal call
    is still awaited to its end (so the journal and this handle stay
    consistent), and CancelledError is re-raised."""
    loop = asyncio.get_running_loop()
    fut = _off_loop(loop, fn)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        on_cancel()
        try:
            await fut
        except BaseException:  # noqa: BLE001 - the cancellation wins
            pass
        raise


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------


class Unit:
    """An open unit: a sequence of journaled side effects that commits
    atomically. Get one from :meth:`Journal.unit` / :meth:`Journal.unit_async`.

    Every effect is recorded as a durable *intent* (with its idempotency key)
    before it runs and an *outcome* after. When a unit is resumed after a
    crash, completed effects return their recorded results without running
    again; an effect in doubt (intent without outcome) follows its policy.
    """

    __slots__ = ("_raw", "_kind", "_token", "__weakref__")

    def __init__(self, raw: _agentwal.RawUnit, kind: str) -> None:
        self._raw = raw
        self._kind = kind
        self._token: Optional[contextvars.Token[Optional[Unit]]] = None

    # -- facts ------------------------------------------------------------

    @property
    def id(self) -> str:
        """The unit id."""
        return self._raw.id

    @property
    def kind(self) -> str:
        """The kind given when this handle was opened."""
        return self._kind

    @property
    def resumed(self) -> bool:
        """True when the unit was found incomplete in the journal (a resume)."""
        return self._raw.resumed

    @property
    def closed(self) -> bool:
        """True once committed, rolled back or abandoned."""
        return self._raw.closed

    @property
    def payload(self) -> Any:
        """The payload recorded when the unit began (on resume: the original one)."""
        return self._raw.payload()

    @property
    def next_step(self) -> int:
        """The step number the next :meth:`run` will use."""
        return self._raw.next_step()

    def recorded_effects(self) -> int:
        """Effects recorded for this unit so far (replayed or new)."""
        return self._raw.recorded_effects()

    def effect_status(self, step: int) -> str:
        """``not_started``, ``in_doubt``, ``completed``, ``failed`` or ``compensated``."""
        return self._raw.effect_status(step)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("resumed" if self.resumed else "open")
        return f"<agentwal.Unit {self.id!r} {state}>"

    # -- effects ----------------------------------------------------------

    def run(
        self,
        name: str,
        fn: Callable[..., T],
        policy: str,
        *,
        key: Optional[str] = None,
        compensable: bool = False,
        probe: Optional[Callable[[EffectCtx], Union[Happened[Any], NotHappened]]] = None,
        retry: Optional[Retry] = None,
    ) -> T:
        """Runs (or replays) one effect and returns its result.

        ``fn(ctx)`` (or ``fn()``) does the side effect; ``ctx.key`` is its
        idempotency key (``<unit>/<name>/<step>`` unless ``key=`` is given;
        pass it to the receiver so it can de-duplicate) and ``ctx.attempt``
        is ``"first"`` or ``"retry"``. The result must be JSON-able (dict,
        list, tuple, str, int, float, bool, None, or a pydantic model, stored
        via ``model_dump``); anything else raises TypeError (NaN, huge ints:
        ValueError) before it is recorded.

        ``policy`` (required) says what happens if a crash leaves the effect
        in doubt: ``"retry_same_key"`` runs it again with the same key,
        ``"never_repeat"`` raises :class:`InDoubt` for an operator to decide,
        ``"reconcile"`` asks ``probe(ctx)``, which returns
        ``agentwal.Happened(result)`` or ``agentwal.NOT_HAPPENED``.

        An ``Exception`` raised by ``fn`` is recorded as the effect's failed
        outcome and raised as :class:`EffectFailed` (its ``__cause__`` is the
        original); a resumed unit gets the same EffectFailed without running
        ``fn`` again. A ``BaseException`` that is not an ``Exception``
        (KeyboardInterrupt, SystemExit, CancelledError) records nothing: the
        effect is left in doubt, this handle is closed and the exception
        propagates unchanged.

        ``compensable=True`` makes :meth:`rollback` compensate the effect.

        ``retry=agentwal.Retry(...)`` retries transient failures (raise
        :class:`Transient` / :class:`DidNotHappen`, or an ``OSError``) with
        the same key and a backoff; ``ctx.attempt_number`` counts attempts.
        Raise :class:`Unsure` to record nothing and leave the effect in doubt
        (:class:`LeftInDoubt`).
        """
        _check_policy(name, policy, probe)
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"effect {name!r}: {fn!r} is a coroutine function; use await unit.run_async(...)")
        result: T = self._raw.run(
            name,
            _with_ctx(fn),
            policy,
            key=key,
            compensable=compensable,
            probe=probe,
            retry=retry,
        )
        return result

    async def run_async(
        self,
        name: str,
        fn: Callable[..., Any],
        policy: str,
        *,
        key: Optional[str] = None,
        compensable: bool = False,
        probe: Optional[Callable[[EffectCtx], Any]] = None,
        retry: Optional[Retry] = None,
    ) -> Any:
        """Async :meth:`run`: ``fn(ctx)`` may return a coroutine (it runs on
        this event loop); ``probe`` may be async too. Journal writes and
        ``fsync`` waits run on a separate thread, so the event loop is never
        blocked. Cancelling the awaiting task cancels the step's coroutine:
        its effect is left in doubt (nothing recorded) and CancelledError
        propagates. ``retry.attempt_timeout`` cancels an attempt's coroutine
        that runs longer and counts it as a transient failure."""
        _check_policy(name, policy, probe)
        loop = asyncio.get_running_loop()
        inner: List[concurrent.futures.Future[Any]] = []
        lock = threading.Lock()
        cancelled = [False]
        step_fn = _with_ctx(fn)

        def on_loop(value: Any) -> Any:
            if not inspect.isawaitable(value):
                return value
            with lock:
                if cancelled[0]:
                    # Cancelled before the step's coroutine started: it never
                    # runs (its intent is recorded: in doubt, per its policy).
                    if inspect.iscoroutine(value):
                        value.close()
                    raise asyncio.CancelledError()
                timeout = retry.attempt_timeout if retry is not None else None
                cf = asyncio.run_coroutine_threadsafe(_await(value, timeout), loop)
                inner.append(cf)
            try:
                return cf.result()
            except concurrent.futures.CancelledError:
                # concurrent.futures' CancelledError is an Exception: turn it
                # into asyncio's BaseException so nothing is recorded.
                raise asyncio.CancelledError() from None

        def step(ctx: EffectCtx) -> Any:
            return on_loop(step_fn(ctx))

        probe_fn = None
        if probe is not None:

            def probe_fn(ctx: EffectCtx) -> Any:
                return on_loop(probe(ctx))

        def cancel() -> None:
            with lock:
                cancelled[0] = True
                for cf in inner:
                    cf.cancel()

        return await _await_off_loop(
            lambda: self._raw.run(
                name, step, policy, key=key, compensable=compensable, probe=probe_fn, retry=retry
            ),
            cancel,
        )

    # -- approvals ----------------------------------------------------------

    def approval(self, name: str, payload: Any = None) -> Approval:
        """Asks a human for approval ``name`` (``payload``, JSON-able, is
        shown to the approver) without blocking: the first call records the
        request durably and returns a pending :class:`Approval`; once a
        decision is recorded (:meth:`Journal.decide_approval`,
        ``wal-inspect approve``) every call returns it, also after a crash
        and resume. While pending, leave the unit (it stays incomplete) and
        ask again later::

            a = unit.approval("refund", {"eur": 40})
            if a.pending:
                unit.abandon()  # stays incomplete: run the unit again later
                return
            if a.approved:
                unit.run("refund", do_refund, policy="never_repeat")
        """
        return Approval(**self._raw.approval(name, payload))

    # -- checkpoints --------------------------------------------------------

    def checkpoint(self, state: Any) -> int:
        """Saves JSON-able ``state`` durably (a resumed unit reads it back
        with :meth:`last_checkpoint`); returns its LSN."""
        return self._raw.checkpoint(state)

    async def checkpoint_async(self, state: Any) -> int:
        """Async :meth:`checkpoint` (the fsync waits off the event loop)."""
        return await _await_off_loop(lambda: self._raw.checkpoint(state))

    def last_checkpoint(self) -> Any:
        """The state saved by the latest :meth:`checkpoint`, or None."""
        return self._raw.last_checkpoint()

    # -- ending -----------------------------------------------------------

    def commit(self) -> int:
        """Commits the unit durably and closes the handle; returns the commit
        LSN. Refused with :class:`InvalidCall` while an effect is in doubt."""
        return self._raw.commit()

    async def commit_async(self) -> int:
        """Async :meth:`commit` (the fsync waits off the event loop)."""
        return await _await_off_loop(self._raw.commit)

    def rollback(
        self,
        reason: str,
        compensate: Union[None, Callable[[Compensation], Any], Mapping[str, Callable[[Compensation], Any]]] = None,
    ) -> Dict[str, Any]:
        """Rolls the unit back: calls ``compensate(c)`` for every compensable
        effect that completed (or is in doubt), in reverse step order, each
        between a durable compensation intent and a recorded outcome, then
        records the abort. ``compensate`` is a callable or a mapping from
        effect name to callable; ``c.key`` is the compensation's idempotency
        key, ``c.result`` the effect's recorded result. A failing
        compensation raises :class:`CompensationFailed`; the unit stays
        incomplete and the rollback can be retried. Returns
        ``{"compensated": [...], "already_compensated": [...], "abort_lsn": n}``."""
        return self._raw.rollback(reason, _compensator(compensate))

    async def rollback_async(
        self,
        reason: str,
        compensate: Union[None, Callable[[Compensation], Any], Mapping[str, Callable[[Compensation], Any]]] = None,
    ) -> Dict[str, Any]:
        """Async :meth:`rollback`; compensations may be coroutine functions."""
        loop = asyncio.get_running_loop()
        comp = _compensator(compensate)

        def sync_comp(c: Compensation) -> Any:
            v = comp(c)
            if inspect.isawaitable(v):
                return asyncio.run_coroutine_threadsafe(_await(v), loop).result()
            return v

        return await _await_off_loop(lambda: self._raw.rollback(reason, sync_comp))

    def abandon(self) -> None:
        """Closes the handle without committing: the unit stays incomplete
        and is resumed by the next ``journal.unit(id)`` (as after a crash)."""
        self._raw.abandon()

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> "Unit":
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if exc_type is None:
            if not self.closed:
                self.commit()
        else:
            self.abandon()


class UnitContext(Unit):
    """The unit returned by :meth:`Journal.unit` (a :class:`Unit`; usable
    with ``with``: a clean exit commits, an exception leaves it resumable)."""

    __slots__ = ()


class AsyncUnitContext:
    """``async with journal.unit_async(...) as unit``: begins (or resumes) the
    unit off the event loop; a clean exit commits (off the loop), an
    exception or cancellation leaves it resumable and propagates."""

    __slots__ = ("_journal", "_id", "_kind", "_payload", "_unit", "_token")

    def __init__(self, journal: "Journal", id: str, kind: str, payload: Any) -> None:
        self._journal = journal
        self._id = id
        self._kind = kind
        self._payload = payload
        self._unit: Optional[Unit] = None
        self._token: Optional[contextvars.Token[Optional[Unit]]] = None

    async def __aenter__(self) -> Unit:
        raw = self._journal._j()
        unit_raw = await _await_off_loop(lambda: raw.begin(self._id, self._kind, self._payload))
        self._unit = Unit(unit_raw, self._kind)
        self._token = _current.set(self._unit)
        return self._unit

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        unit = self._unit
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if unit is None:
            return
        if exc_type is None:
            if not unit.closed:
                await unit.commit_async()
        else:
            unit.abandon()


async def _await(aw: Awaitable[T], timeout: Optional[float] = None) -> T:
    if timeout is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise Transient(f"attempt timed out after {timeout}s") from None


# ---------------------------------------------------------------------------
# The effect decorator
# ---------------------------------------------------------------------------


def effect(
    name: Optional[str] = None,
    *,
    policy: str,
    key: Optional[Callable[..., str]] = None,
    compensable: bool = False,
    probe: Optional[Callable[[EffectCtx], Any]] = None,
    retry: Optional[Retry] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares a function as a journaled effect::

        @agentwal.effect(policy="retry_same_key")
        def send(text, *, ctx):
            return slack.post(text, idempotency_key=ctx.key)

        with journal.unit("ticket-42") as unit:
            send("hello")          # journaled in the current unit

    Calling the function inside ``with journal.unit(...)`` (or
    ``async with journal.unit_async(...)`` for ``async def`` functions) runs
    it through :meth:`Unit.run` / :meth:`Unit.run_async` of that unit; a
    parameter named ``ctx`` receives the :class:`EffectCtx`. ``name``
    defaults to the function's name; ``key``, if given, is called with the
    same arguments and returns an explicit idempotency key. Outside a unit
    the call raises :class:`InvalidCall`.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        ename = name or fn.__name__
        _check_policy(ename, policy, probe)
        wants_ctx = "ctx" in inspect.signature(fn).parameters

        def unit_or_raise() -> Unit:
            u = _current.get()
            if u is None:
                raise InvalidCall(
                    f"effect {ename!r} called outside a unit: call it inside "
                    "`with journal.unit(...)` or `async with journal.unit_async(...)`"
                )
            return u

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def arun(*args: Any, **kwargs: Any) -> Any:
                u = unit_or_raise()

                def call(ctx: EffectCtx) -> Any:
                    return fn(*args, **({**kwargs, "ctx": ctx} if wants_ctx else kwargs))

                return await u.run_async(
                    ename,
                    call,
                    policy,
                    key=key(*args, **kwargs) if key else None,
                    compensable=compensable,
                    probe=probe,
                    retry=retry,
                )

            return arun

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            u = unit_or_raise()

            def call(ctx: EffectCtx) -> Any:
                return fn(*args, **({**kwargs, "ctx": ctx} if wants_ctx else kwargs))

            return u.run(
                ename,
                call,
                policy,
                key=key(*args, **kwargs) if key else None,
                compensable=compensable,
                probe=probe,
                retry=retry,
            )

        return run

    return wrap


# ---------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------


class Journal:
    """An open journal, exclusively owning its directory (created if missing,
    0700, files 0600). Safe to share between threads and asyncio tasks: they
    share group commit (one ``fdatasync`` for many writers).

    Use it as a context manager (``with agentwal.Journal(path) as journal``)
    or call :meth:`close`. Options (all optional):

    * ``max_payload_bytes``: largest unit payload / checkpoint / result (as
      JSON); larger ones raise :class:`PayloadTooLarge` before anything is
      written. ``max_record_bytes``, ``segment_size``: log limits.
    * ``compact_every_records`` / ``compact_every_bytes``: automatic compaction.
    * ``retain_keys`` / ``retain_seconds``: how many / how long settled
      idempotency keys and finished unit ids survive compaction;
      ``retain_forever=True`` keeps them all.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        max_payload_bytes: Optional[int] = None,
        max_record_bytes: Optional[int] = None,
        segment_size: Optional[int] = None,
        compact_every_records: Optional[int] = None,
        compact_every_bytes: Optional[int] = None,
        retain_keys: Optional[int] = None,
        retain_seconds: Optional[float] = None,
        retain_forever: bool = False,
    ) -> None:
        self._raw = _agentwal.RawJournal(
            os.fspath(path),
            max_payload_bytes=max_payload_bytes,
            max_record_bytes=max_record_bytes,
            segment_size=segment_size,
            compact_every_records=compact_every_records,
            compact_every_bytes=compact_every_bytes,
            retain_keys=retain_keys,
            retain_seconds=retain_seconds,
            retain_forever=retain_forever,
        )

    def _j(self) -> _agentwal.RawJournal:
        return self._raw

    @property
    def path(self) -> str:
        """The journal directory."""
        return self._raw.path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._raw.closed

    def __repr__(self) -> str:
        return f"<agentwal.Journal {self.path!r}{' closed' if self.closed else ''}>"

    # -- units --------------------------------------------------------------

    def unit(self, id: str, kind: str = "unit", payload: Any = None) -> UnitContext:
        """Begins unit ``id``, or resumes it if a previous run left it
        incomplete (then ``kind`` and ``payload`` are ignored; read the
        recorded payload with ``unit.payload``). ``payload`` must be
        JSON-able. A unit that already ended raises :class:`UnitFinished`;
        one open elsewhere in this process raises :class:`UnitBusy`.

        Use it with ``with``: a clean exit commits; an exception leaves the
        unit incomplete (resumable) and propagates."""
        return UnitContext(self._raw.begin(id, kind, payload), kind)

    def unit_async(self, id: str, kind: str = "unit", payload: Any = None) -> AsyncUnitContext:
        """``async with journal.unit_async(id, ...) as unit``: :meth:`unit`
        for asyncio (begin and commit run off the event loop)."""
        return AsyncUnitContext(self, id, kind, payload)

    def unit_state(self, id: str) -> Optional[str]:
        """``"committed"``, ``"aborted"``, ``"incomplete"``, or None if unknown
        (or no longer retained)."""
        return self._raw.unit_state(id)

    def is_committed(self, id: str) -> bool:
        """True when unit ``id`` is committed (as far as retention remembers)."""
        return self._raw.unit_state(id) == "committed"

    def incomplete_units(self) -> List[Dict[str, Any]]:
        """Incomplete units now, with their effects, by begin LSN."""
        return self._raw.incomplete_units()

    def rollback(
        self,
        id: str,
        reason: str,
        compensate: Union[None, Callable[[Compensation], Any], Mapping[str, Callable[[Compensation], Any]]] = None,
    ) -> Dict[str, Any]:
        """Rolls back incomplete unit ``id`` (see :meth:`Unit.rollback`)."""
        return self._raw.rollback(id, reason, _compensator(compensate))

    def resolve(
        self,
        id: str,
        step: int,
        *,
        happened: bool,
        result: Any = None,
        by: str = "python",
        reason: str = "",
    ) -> str:
        """Records an operator's decision for in-doubt ``step`` of unit
        ``id`` (what ``wal-inspect resolve`` does), attributed to ``by`` with
        ``reason``: it happened (the resumed unit gets ``result``), or it did
        not (the unit may run it again with the same key). Refused with
        :class:`OperatorRefused` (nothing written) when the step is not in
        doubt or the result does not fit. Returns what changed."""
        return self._raw.operator_resolve(id, step, happened, result, by, reason)

    def request_abort(self, id: str, *, by: str = "python", reason: str = "") -> str:
        """Records an operator's abort of incomplete unit ``id`` (``wal-inspect
        abort``): with nothing to compensate it ends aborted at once;
        otherwise opening it raises :class:`AbortRequested` and
        :meth:`rollback` runs its compensations. Returns what changed."""
        return self._raw.request_abort(id, by, reason)

    def decide_approval(
        self, id: str, name: str, *, approved: bool, by: str = "python", reason: str = ""
    ) -> str:
        """Records a human decision for approval ``name`` of unit ``id``
        (``wal-inspect approve``), once. Returns what changed."""
        return self._raw.decide_approval(id, name, approved, by, reason)

    def key_status(self, key: str) -> Optional[Dict[str, Any]]:
        """The idempotency key's entry in the key index, or None."""
        return self._raw.key_status(key)

    # -- views --------------------------------------------------------------

    def units(self, state: Optional[str] = None) -> List[Dict[str, Any]]:
        """Rows of ``wal-inspect units --json`` (``id``, ``kind``, ``state``,
        ``effects``, ``effects_done``, ``effects_in_doubt``, ...), optionally
        only ``state`` (committed, aborted, incomplete). Committed units
        folded into a snapshot are counted by :meth:`summary`, not listed."""
        return self._raw.units(state)

    def show(self, id: str) -> Dict[str, Any]:
        """``wal-inspect show UNIT --json``: the unit's history, effect by
        effect, with in-doubt effects explained."""
        return self._raw.show(id)

    def summary(self) -> Dict[str, Any]:
        """``wal-inspect summary --json``: segments, records, bytes, LSN
        range, units by state, in-doubt effects, keys, torn tail, corruption."""
        return self._raw.summary()

    def stats(self) -> Dict[str, Any]:
        """Counters of this handle (live units, keys, committed, disk bytes, ...)."""
        return self._raw.stats()

    def replay_report(self) -> Dict[str, Any]:
        """What replay found when the journal was opened."""
        return self._raw.replay_report()

    # -- maintenance ----------------------------------------------------------

    def compact(self) -> Dict[str, Any]:
        """Writes a snapshot and removes the segments it covers."""
        return self._raw.compact()

    def sync(self) -> int:
        """Makes everything appended so far durable; returns the durable LSN."""
        return self._raw.sync()

    def close(self) -> None:
        """Syncs and closes (idempotent). The directory lock is released once
        the last open unit handle is gone."""
        self._raw.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Work queue
# ---------------------------------------------------------------------------


class WorkQueue:
    """The durable work queue kept next to a journal (``<journal>/queue``):
    claim / ack / nack with attempt counts, leases and dead letters, and a
    drain for shutdown. Items are bytes or JSON-able values."""

    def __init__(
        self,
        journal_dir: Union[str, "os.PathLike[str]"],
        *,
        max_attempts: Optional[int] = None,
        lease_seconds: Optional[float] = None,
    ) -> None:
        self._raw = _agentwal.RawQueue(
            os.fspath(journal_dir), max_attempts=max_attempts, lease_seconds=lease_seconds
        )

    def enqueue(self, payload: Any, *, delay: float = 0.0) -> int:
        """Adds an item durably (bytes as is, anything else as JSON); returns its id."""
        return self._raw.enqueue(payload, delay)

    def claim(self, worker: str) -> Optional[Claimed]:
        """Claims the next pending item for ``worker`` (None when none is ready)."""
        return self._raw.claim(worker)

    def ack(self, item: Claimed) -> None:
        """Marks a claimed item done (durable)."""
        self._raw.ack(item)

    def nack(self, item: Claimed, error: str, *, delay: float = 0.0) -> str:
        """Gives a claimed item back after a failure: ``"retry"`` (pending
        again after ``delay``) or ``"dead_lettered"`` (last attempt)."""
        return self._raw.nack(item, error, delay)

    def drain(self, timeout: float) -> Dict[str, Any]:
        """Stops intake and waits up to ``timeout`` seconds for in-flight
        items; the rest are durably released to pending."""
        return self._raw.drain(timeout)

    def stats(self) -> Dict[str, int]:
        """Counts: pending, in_flight, dead_lettered, acked_total."""
        return self._raw.stats()

    def items(self) -> List[Dict[str, Any]]:
        """Every item with its state and attempts."""
        return self._raw.items()

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.items())

    def close(self) -> None:
        """Syncs and closes (idempotent)."""
        self._raw.close()

    def __enter__(self) -> "WorkQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
