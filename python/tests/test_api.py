"""The synchronous API: units, effects, policies, replay, errors."""

from __future__ import annotations

import json
import math
import os

import pytest

import agentwal
from conftest import open_journal, run_python


def interrupt_inside(unit: agentwal.Unit, name: str, policy: str, **kw) -> None:
    """Starts effect `name` and interrupts it with a BaseException, so its
    intent is durable and no outcome is recorded: in doubt, as after a kill."""

    def boom(ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unit.run(name, boom, policy=policy, **kw)
    assert unit.closed


def test_clean_exit_commits_and_results_are_returned(journal):
    with journal.unit("u1", kind="ticket", payload={"id": 42}) as unit:
        assert not unit.resumed
        assert unit.payload == {"id": 42}
        r = unit.run("llm", lambda ctx: {"text": "hi", "n": [1, 2.5, None, True]}, policy="retry_same_key")
        assert r == {"text": "hi", "n": [1, 2.5, None, True]}
        assert unit.run("plain", lambda: "no ctx needed", policy="never_repeat") == "no ctx needed"
    assert unit.closed
    assert journal.unit_state("u1") == "committed"
    assert journal.is_committed("u1")
    with pytest.raises(agentwal.UnitFinished) as ei:
        journal.unit("u1")
    assert ei.value.unit == "u1"
    assert ei.value.state == "committed"
    assert "already ended (committed)" in str(ei.value)


def test_ctx_carries_the_default_key_and_attempt(journal):
    seen = []
    with journal.unit("t-1") as unit:
        unit.run("a", lambda ctx: seen.append((ctx.unit, ctx.name, ctx.seq, ctx.key, ctx.attempt, ctx.is_retry)), policy="retry_same_key")
        unit.run("b", lambda ctx: seen.append(ctx.key), policy="retry_same_key", key="explicit-key-1")
    assert seen[0][:3] == ("t-1", "a", 0)
    assert seen[0][3].startswith("t-1") and "a" in seen[0][3]
    assert seen[0][4:] == ("first", False)
    assert seen[1] == "explicit-key-1"


def test_exception_leaves_unit_resumable_and_completed_effects_replay(journal):
    calls = []

    def llm(ctx):
        calls.append(ctx.key)
        return {"tokens": 123}

    with pytest.raises(RuntimeError, match="crashed after the model call"):
        with journal.unit("u2", payload={"p": 1}) as unit:
            assert unit.run("llm", llm, policy="retry_same_key") == {"tokens": 123}
            raise RuntimeError("crashed after the model call")
    assert journal.unit_state("u2") == "incomplete"
    assert len(calls) == 1

    with journal.unit("u2", payload={"ignored": True}) as unit:
        assert unit.resumed
        assert unit.payload == {"p": 1}
        # Completed: the recorded result comes back, nothing runs.
        assert unit.run("llm", llm, policy="retry_same_key") == {"tokens": 123}
        assert len(calls) == 1
        unit.run("send", lambda ctx: None, policy="retry_same_key")
    assert journal.unit_state("u2") == "committed"


def test_results_survive_reopen_exactly(jdir):
    value = {"s": "é✓", "i": -(2**63), "u": 2**64 - 1, "f": 0.1, "l": [[], {}], "t": (1, 2), "b": False}
    with open_journal(jdir) as j:
        u = j.unit("r")
        first = u.run("x", lambda: value, policy="retry_same_key")
        u.abandon()
    with open_journal(jdir) as j:
        with j.unit("r") as u:
            got = u.run("x", lambda: pytest.fail("must replay"), policy="retry_same_key")
    expected = dict(value, t=[1, 2])  # tuples come back as lists (JSON arrays)
    # The first run returns what a replay returns.
    assert got == expected == first
    assert isinstance(got["f"], float) and isinstance(got["u"], int)


def test_exception_in_effect_is_recorded_as_failed_and_replayed(journal):
    runs = []

    def flaky(ctx):
        runs.append(1)
        raise ValueError("HTTP 400: bad request")

    unit = journal.unit("f")
    with pytest.raises(agentwal.EffectFailed) as ei:
        unit.run("post", flaky, policy="retry_same_key")
    assert isinstance(ei.value.__cause__, ValueError)
    assert ei.value.effect == "post" and ei.value.step == 0 and ei.value.unit == "f"
    assert "HTTP 400: bad request" in str(ei.value)
    unit.abandon()
    with journal.unit("f") as unit:
        with pytest.raises(agentwal.EffectFailed, match="HTTP 400"):
            unit.run("post", flaky, policy="retry_same_key")
        unit.rollback("gave up")
    assert runs == [1]
    assert journal.unit_state("f") == "aborted"


class Pydanticish:
    """Anything with pydantic v2's model_dump(mode="json")."""

    def __init__(self, **kw):
        self.kw = kw

    def model_dump(self, mode="python"):
        assert mode == "json"
        return dict(self.kw)


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (object(), TypeError, "not JSON-able"),
        ({1: "int key"}, TypeError, "keys must be str"),
        ({"s": {1, 2}}, TypeError, "set"),
        (b"bytes", TypeError, "bytes"),
        (float("nan"), ValueError, "would not replay"),
        ({"x": [math.inf]}, ValueError, "would not replay"),
        (2**70, ValueError, "64-bit"),
    ],
)
def test_non_json_results_raise_before_being_recorded_as_a_value(journal, bad, exc, words):
    unit = journal.unit("bad")
    with pytest.raises(exc, match=words):
        unit.run("x", lambda: bad, policy="retry_same_key")
    # Nothing but a failure was recorded: never a mangled value.
    unit.abandon()
    with journal.unit("bad") as unit:
        with pytest.raises(agentwal.EffectFailed):
            unit.run("x", lambda: 1, policy="retry_same_key")
        unit.rollback("bad result")


def test_non_json_payloads_and_checkpoints_raise_before_anything_is_written(journal):
    with pytest.raises(TypeError):
        journal.unit("p", payload=object())
    assert journal.unit_state("p") is None
    with journal.unit("p") as unit:
        with pytest.raises(ValueError):
            unit.checkpoint({"x": float("nan")})
        assert unit.last_checkpoint() is None


def test_pydantic_models_are_stored_via_model_dump(journal):
    with journal.unit("m", payload=Pydanticish(a=1)) as unit:
        assert unit.payload == {"a": 1}
        assert unit.run("x", lambda: Pydanticish(b=[1, 2]), policy="retry_same_key") == {"b": [1, 2]}


def test_deeply_nested_results_are_refused(journal):
    v: list = []
    for _ in range(200):
        v = [v]
    unit = journal.unit("deep")
    with pytest.raises(ValueError, match="nested deeper"):
        unit.run("x", lambda: v, policy="retry_same_key")
    unit.abandon()


def test_policy_is_required_and_checked(journal):
    with journal.unit("pol") as unit:
        with pytest.raises(TypeError):
            unit.run("x", lambda: 1)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="unknown policy"):
            unit.run("x", lambda: 1, policy="at_least_once")
        with pytest.raises(TypeError, match="needs probe"):
            unit.run("x", lambda: 1, policy="reconcile")
        assert unit.next_step == 0  # nothing was recorded


def test_payload_too_large_is_typed_and_writes_nothing(jdir):
    with open_journal(jdir, max_payload_bytes=1024) as j:
        with pytest.raises(agentwal.PayloadTooLarge) as ei:
            j.unit("big", payload="x" * 5000)
        assert ei.value.limit == 1024 and ei.value.size > 1024
        assert not ei.value.retryable
        assert isinstance(ei.value, ValueError)
        assert j.unit_state("big") is None
        unit = j.unit("big2")
        with pytest.raises(agentwal.PayloadTooLarge):
            unit.run("x", lambda: "y" * 5000, policy="retry_same_key")
        unit.abandon()


def test_effect_mismatch_names_unit_and_step(journal):
    unit = journal.unit("mm")
    unit.run("search", lambda: 1, policy="retry_same_key")
    unit.abandon()
    unit = journal.unit("mm")
    with pytest.raises(agentwal.EffectMismatch) as ei:
        unit.run("browse", lambda: 1, policy="retry_same_key")
    assert ei.value.unit == "mm" and ei.value.step == 0
    assert "search" in str(ei.value) and "browse" in str(ei.value)
    unit.abandon()


def test_in_doubt_retry_same_key_runs_again_with_the_same_key(journal):
    unit = journal.unit("rs")
    interrupt_inside(unit, "send", "retry_same_key")
    unit = journal.unit("rs")
    seen = []
    unit.run("send", lambda ctx: seen.append((ctx.key, ctx.attempt)), policy="retry_same_key")
    unit.commit()
    assert seen == [("rs/send/0", "retry")] or (seen[0][1] == "retry" and seen[0][0].startswith("rs"))


def test_in_doubt_never_repeat_raises_in_doubt_until_an_operator_resolves(journal):
    unit = journal.unit("nr")
    interrupt_inside(unit, "refund", "never_repeat")
    unit = journal.unit("nr")
    with pytest.raises(agentwal.InDoubt) as ei:
        unit.run("refund", lambda: pytest.fail("must not run"), policy="never_repeat")
    assert ei.value.effect == "refund" and ei.value.step == 0 and ei.value.key
    assert not ei.value.retryable
    with pytest.raises(agentwal.InvalidCall, match="in doubt"):
        unit.commit()
    unit.abandon()
    assert journal.incomplete_units()[0]["effects"][0]["state"] == "in_doubt"
    journal.resolve("nr", 0, happened=True, result={"refund_id": "r-1"})
    with journal.unit("nr") as unit:
        assert unit.run("refund", lambda: pytest.fail("must not run"), policy="never_repeat") == {"refund_id": "r-1"}
    assert journal.unit_state("nr") == "committed"


@pytest.mark.parametrize("happened", [True, False])
def test_reconcile_probe_decides(journal, happened):
    unit = journal.unit("rc")
    interrupt_inside(unit, "charge", "reconcile", probe=lambda ctx: agentwal.NOT_HAPPENED)
    probes, runs = [], []

    def probe(ctx):
        probes.append(ctx.key)
        return agentwal.Happened({"charge": "found"}) if happened else agentwal.NOT_HAPPENED

    def charge(ctx):
        runs.append(ctx.attempt)
        return {"charge": "new"}

    with journal.unit("rc") as unit:
        r = unit.run("charge", charge, policy="reconcile", probe=probe)
    assert len(probes) == 1
    if happened:
        assert r == {"charge": "found"} and runs == []
    else:
        assert r == {"charge": "new"} and runs == ["retry"]


def test_failing_probe_raises_reconcile_failed_and_stays_in_doubt(journal):
    unit = journal.unit("rf")
    interrupt_inside(unit, "charge", "reconcile", probe=lambda ctx: agentwal.NOT_HAPPENED)

    def probe(ctx):
        raise ConnectionError("payments API down")

    unit = journal.unit("rf")
    with pytest.raises(agentwal.ReconcileFailed) as ei:
        unit.run("charge", lambda: 1, policy="reconcile", probe=probe)
    assert ei.value.retryable and isinstance(ei.value.__cause__, ConnectionError)
    unit.abandon()
    assert journal.incomplete_units()[0]["effects"][0]["state"] == "in_doubt"


def test_rollback_runs_compensations_in_reverse_order(journal):
    undone = []
    with journal.unit("trip") as unit:
        unit.run("hotel", lambda: {"booking": "h1"}, policy="never_repeat", compensable=True)
        unit.run("flight", lambda: {"booking": "f1"}, policy="never_repeat", compensable=True)
        unit.run("email", lambda: None, policy="retry_same_key")
        report = unit.rollback(
            "customer cancelled",
            {
                "hotel": lambda c: undone.append((c.effect, c.result, c.key)),
                "flight": lambda c: undone.append((c.effect, c.result, c.key)),
            },
        )
    assert [u[0] for u in undone] == ["flight", "hotel"]
    assert undone[0][1] == {"booking": "f1"} and undone[0][2].endswith("/compensate")
    assert report["compensated"] == [1, 0]
    assert journal.unit_state("trip") == "aborted"


def test_failing_compensation_is_retryable(journal):
    unit = journal.unit("cf")
    unit.run("a", lambda: 1, policy="never_repeat", compensable=True)
    fail = [True]

    def comp(c):
        if fail[0]:
            raise OSError("undo failed")

    with pytest.raises(agentwal.CompensationFailed) as ei:
        unit.rollback("x", comp)
    assert ei.value.retryable
    assert journal.unit_state("cf") == "incomplete"
    fail[0] = False
    seen = []
    rep = journal.rollback("cf", "x", lambda c: seen.append(c.retry))
    assert seen == [True] and rep["compensated"] == [0]
    assert journal.unit_state("cf") == "aborted"


def test_checkpoints_survive_a_crash(jdir):
    with open_journal(jdir) as j:
        u = j.unit("ck")
        assert u.last_checkpoint() is None
        u.checkpoint({"page": 3})
        u.checkpoint({"page": 4})
        u.abandon()
    with open_journal(jdir) as j:
        with j.unit("ck") as u:
            assert u.resumed and u.last_checkpoint() == {"page": 4}


def test_effect_decorator_runs_in_the_current_unit(journal):
    calls = []

    @agentwal.effect(policy="retry_same_key")
    def send(text, *, ctx):
        calls.append((text, ctx.key))
        return {"sent": text}

    @agentwal.effect("model", policy="retry_same_key")
    def model(prompt):
        calls.append(prompt)
        return prompt.upper()

    with pytest.raises(agentwal.InvalidCall, match="outside a unit"):
        send("nope")
    assert agentwal.current_unit() is None
    with journal.unit("d1") as unit:
        assert agentwal.current_unit() is unit
        assert model("hi") == "HI"
        assert send("hello") == {"sent": "hello"}
    assert agentwal.current_unit() is None
    assert calls[0] == "hi" and calls[1][0] == "hello" and "send" in calls[1][1]


def test_unit_busy_in_the_same_process(journal):
    u = journal.unit("busy")
    with pytest.raises(agentwal.UnitBusy) as ei:
        journal.unit("busy")
    assert ei.value.retryable
    u.abandon()
    journal.unit("busy").abandon()


def test_a_second_process_gets_locked(jdir):
    with open_journal(jdir):
        p = run_python(
            "import sys, agentwal\n"
            "try:\n"
            "    agentwal.Journal(sys.argv[1])\n"
            "except agentwal.Locked as e:\n"
            "    print('LOCKED', e.retryable, e)\n",
            str(jdir),
        )
    assert p.stdout.startswith("LOCKED True"), p.stdout + p.stderr
    assert "locked by another owner" in p.stdout


def test_corrupt_journal_is_a_typed_error(jdir):
    with open_journal(jdir) as j:
        with j.unit("c") as u:
            u.run("x", lambda: "a" * 100, policy="retry_same_key")
    segs = sorted(p for p in os.listdir(jdir) if p.endswith(".wal") or p.startswith("seg") or p[0].isdigit())
    assert segs, os.listdir(jdir)
    path = os.path.join(jdir, segs[0])
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(b"XXXXXXXX")
    with pytest.raises(agentwal.Error) as ei:
        open_journal(jdir)
    assert isinstance(ei.value, (agentwal.Corrupt, agentwal.NotAJournal)), repr(ei.value)


def test_views_units_summary_show(journal):
    with journal.unit("v1", kind="k") as u:
        u.run("a", lambda: 1, policy="retry_same_key")
    u = journal.unit("v2", kind="k")
    interrupt_inside(u, "b", "never_repeat")
    rows = {r["id"]: r for r in journal.units()}
    assert rows["v1"]["state"] == "committed" and rows["v1"]["effects_done"] == 1
    assert rows["v2"]["state"] == "incomplete" and rows["v2"]["effects_in_doubt"] == 1
    assert [r["id"] for r in journal.units("incomplete")] == ["v2"]
    s = journal.summary()
    assert s["units"] == {"committed": 1, "aborted": 0, "incomplete": 1}
    assert s["in_doubt_effects"] == 1 and s["corruption"] is None
    for field in ("segments", "records", "bytes", "first_lsn", "last_lsn", "idempotency_keys", "torn_tail_bytes"):
        assert field in s
    detail = journal.show("v2")
    assert json.dumps(detail)  # plain JSON-able data
    assert journal.stats()["committed"] == 1
    with pytest.raises(agentwal.InvalidOptions):
        journal.units("bogus")


def test_compact_keeps_committed_ids(jdir):
    with open_journal(jdir, retain_forever=True) as j:
        for i in range(20):
            with j.unit(f"c{i}") as u:
                u.run("x", lambda: i, policy="retry_same_key")
        rep = j.compact()
        assert rep["snapshot_lsn"] > 0
    with open_journal(jdir) as j:
        assert all(j.is_committed(f"c{i}") for i in range(20))
        assert j.summary()["units"]["committed"] == 20


def test_closed_journal_and_unit_raise_invalid_call(jdir):
    j = open_journal(jdir)
    u = j.unit("x")
    u.commit()
    with pytest.raises(agentwal.InvalidCall, match="closed"):
        u.run("a", lambda: 1, policy="retry_same_key")
    j.close()
    j.close()
    with pytest.raises(agentwal.InvalidCall, match="closed"):
        j.unit("y")


def test_coroutine_functions_are_refused_by_sync_run(journal):
    async def step(ctx):
        return 1

    with journal.unit("co") as unit:
        with pytest.raises(TypeError, match="run_async"):
            unit.run("x", step, policy="retry_same_key")


def test_work_queue_claim_ack_nack_dead_letter(tmp_path):
    with agentwal.WorkQueue(tmp_path / "j", max_attempts=2) as q:
        a = q.enqueue({"task": 1})
        b = q.enqueue(b"raw bytes")
        c1 = q.claim("w1")
        assert c1.id == a and c1.attempt == 1 and c1.json() == {"task": 1}
        q.ack(c1)
        c2 = q.claim("w1")
        assert c2.payload == b"raw bytes"
        assert q.nack(c2, "boom") == "retry"
        c3 = q.claim("w1")
        assert c3.id == b and c3.attempt == 2
        assert q.nack(c3, "boom again") == "dead_lettered"
        st = q.stats()
        assert st["pending"] == 0 and st["dead_lettered"] == 1 and st["acked_total"] == 1
        assert q.claim("w1") is None
        with pytest.raises(agentwal.LeaseLost):
            q.ack(c3)
        rep = q.drain(0.1)
        assert rep["timed_out"] is False
        with pytest.raises(agentwal.Draining):
            q.enqueue({"late": True})


def test_default_key_is_the_journal_s(journal):
    with journal.unit("orders/7") as unit:
        k = unit.run("e/mail", lambda ctx: ctx.key, policy="retry_same_key")
    assert k == agentwal.default_key("orders/7", "e/mail", 0)


def test_a_key_belongs_to_one_effect(journal):
    with journal.unit("k1") as unit:
        unit.run("charge", lambda: 1, policy="never_repeat", key="pay-42")
    unit = journal.unit("k2")
    with pytest.raises(agentwal.KeyConflict) as ei:
        unit.run("refund", lambda: pytest.fail("must not run"), policy="never_repeat", key="pay-42")
    assert ei.value.key == "pay-42" and "charge" in ei.value.recorded
    unit.abandon()


def test_every_error_class_is_an_agentwal_error():
    import agentwal.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, agentwal.Error), name
        assert getattr(agentwal, name) is cls, name
        assert cls.__doc__, name


def test_using_the_unit_from_inside_its_own_effect_raises_instead_of_deadlocking(journal):
    with journal.unit("re") as unit:
        seen = []

        def step(ctx):
            seen.append(unit.closed)
            with pytest.raises(agentwal.InvalidCall, match="running an effect"):
                unit.checkpoint({"x": 1})
            with pytest.raises(agentwal.InvalidCall, match="running an effect"):
                unit.run("inner", lambda: 1, policy="retry_same_key")
            return "ok"

        assert unit.run("outer", step, policy="retry_same_key") == "ok"
        assert seen == [False]
    assert journal.unit_state("re") == "committed"


def test_approvals_never_block_and_survive_a_restart(jdir):
    with open_journal(jdir) as j:
        unit = j.unit("refund-9", kind="refund")
        a = unit.approval("refund", {"eur": 40})
        assert a.pending and not a.approved
        unit.abandon()
        j.decide_approval("refund-9", "refund", approved=True, by="alice", reason="ok")
        with pytest.raises(agentwal.OperatorRefused):
            j.decide_approval("refund-9", "refund", approved=False, by="bob")
    with open_journal(jdir) as j:
        with j.unit("refund-9") as unit:
            a = unit.approval("refund", {"eur": 40})
            assert a.approved and a.by == "alice" and a.reason == "ok" and a.at_ms > 0
            unit.run("refund", lambda: "r-1", policy="never_repeat")


def test_operator_not_happened_lets_the_step_run_again_and_abort_is_attributed(journal):
    unit = journal.unit("op1")
    interrupt_inside(unit, "charge", "never_repeat")
    with pytest.raises(agentwal.OperatorRefused):
        journal.resolve("op1", 5, happened=False, by="carol")
    msg = journal.resolve("op1", 0, happened=False, by="carol", reason="no charge in the PSP")
    assert isinstance(msg, str) and msg
    runs = []
    with journal.unit("op1") as unit:
        unit.run("charge", lambda ctx: runs.append(ctx.key), policy="never_repeat")
    assert len(runs) == 1

    unit = journal.unit("op2")
    unit.run("hold", lambda: 1, policy="never_repeat", compensable=True)
    unit.abandon()
    journal.request_abort("op2", by="dave", reason="customer left")
    with pytest.raises(agentwal.AbortRequested) as ei:
        journal.unit("op2")
    assert ei.value.by == "dave"
    undone = []
    journal.rollback("op2", "operator abort", lambda c: undone.append(c.effect))
    assert undone == ["hold"] and journal.unit_state("op2") == "aborted"
