"""Retry policies and error classes: a failed attempt is not a failed effect."""

from __future__ import annotations

import asyncio

import pytest

import agentwal

FAST = dict(initial_backoff=0.001, max_backoff=0.002)


def test_transient_failures_are_retried_with_the_same_key(journal):
    seen = []

    def flaky(ctx):
        seen.append((ctx.key, ctx.attempt_number))
        if ctx.attempt_number < 3:
            raise agentwal.Transient("HTTP 429", retry_after=0.001)
        return "ok"

    with journal.unit("r1") as unit:
        assert unit.run("llm", flaky, policy="retry_same_key", retry=agentwal.Retry(max_attempts=5, **FAST)) == "ok"
    assert [n for _, n in seen] == [1, 2, 3]
    assert len({k for k, _ in seen}) == 1


def test_os_errors_are_transient_other_exceptions_permanent(journal):
    calls = []

    def io_then_ok(ctx):
        calls.append(ctx.attempt_number)
        if ctx.attempt_number == 1:
            raise ConnectionResetError("peer reset")
        return 1

    def bug(ctx):
        calls.append("bug")
        raise KeyError("not retried")

    with journal.unit("r2") as unit:
        assert unit.run("a", io_then_ok, policy="retry_same_key", retry=agentwal.Retry(**FAST)) == 1
        with pytest.raises(agentwal.EffectFailed):
            unit.run("b", bug, policy="retry_same_key", retry=agentwal.Retry(**FAST))
        unit.rollback("bug")
    assert calls == [1, 2, "bug"]


def test_exhausted_retries_record_the_failure_or_leave_it_in_doubt(journal):
    def always(ctx):
        raise agentwal.Transient("503")

    unit = journal.unit("r3")
    with pytest.raises(agentwal.EffectFailed, match="503"):
        unit.run("x", always, policy="retry_same_key", retry=agentwal.Retry(max_attempts=2, **FAST))
    unit.abandon()

    unit = journal.unit("r4")
    with pytest.raises(agentwal.RetriesExhausted) as ei:
        unit.run("x", always, policy="retry_same_key", retry=agentwal.Retry(max_attempts=2, on_exhausted="leave_in_doubt", **FAST))
    assert ei.value.attempts == 2 and ei.value.effect == "x"
    assert unit.closed
    [u] = [u for u in journal.incomplete_units() if u["id"] == "r4"]
    assert u["effects"][0]["state"] == "in_doubt"
    # A later resume starts a new round with the same key.
    with journal.unit("r4") as unit:
        assert unit.run("x", lambda ctx: ctx.attempt, policy="retry_same_key", retry=agentwal.Retry(**FAST)) == "retry"


def test_never_repeat_is_retried_only_when_the_attempt_did_not_happen(journal):
    tries = []

    def refused_then_ok(ctx):
        tries.append(ctx.attempt_number)
        if ctx.attempt_number == 1:
            raise agentwal.DidNotHappen("rate limited before processing")
        return "paid"

    def maybe(ctx):
        tries.append("maybe")
        raise agentwal.Transient("timeout after sending")

    with journal.unit("r5") as unit:
        assert unit.run("pay", refused_then_ok, policy="never_repeat", retry=agentwal.Retry(**FAST)) == "paid"
        with pytest.raises(agentwal.EffectFailed):
            unit.run("pay2", maybe, policy="never_repeat", retry=agentwal.Retry(**FAST))
        unit.rollback("failed")
    assert tries == [1, 2, "maybe"]


def test_unsure_records_nothing_and_leaves_the_effect_in_doubt(journal):
    unit = journal.unit("r6")
    with pytest.raises(agentwal.LeftInDoubt) as ei:
        unit.run("send", lambda ctx: (_ for _ in ()).throw(agentwal.Unsure("connection dropped mid-request")), policy="retry_same_key")
    assert isinstance(ei.value.__cause__, agentwal.Unsure)
    assert "connection dropped" in str(ei.value)
    assert unit.closed
    with journal.unit("r6") as unit:
        assert unit.run("send", lambda ctx: (ctx.attempt, ctx.key), policy="retry_same_key")[0] == "retry"


def test_retry_options_are_validated(journal):
    with pytest.raises(ValueError):
        agentwal.Retry(max_attempts=0)
    with pytest.raises(ValueError):
        agentwal.Retry(on_exhausted="give_up")
    with journal.unit("r7") as unit:
        with pytest.raises(ValueError, match="non-negative"):
            unit.run("x", lambda: 1, policy="retry_same_key", retry=agentwal.Retry(initial_backoff=-1))


def test_async_attempt_timeout_is_a_transient_failure(journal):
    async def main():
        async def slow_then_fast(ctx):
            if ctx.attempt_number == 1:
                await asyncio.sleep(10)
            return ctx.attempt_number

        async with journal.unit_async("r8") as unit:
            r = await unit.run_async(
                "llm", slow_then_fast, policy="retry_same_key",
                retry=agentwal.Retry(attempt_timeout=0.1, **FAST),
            )
            assert r == 2

    asyncio.run(asyncio.wait_for(main(), 30))


def test_effect_decorator_takes_a_retry_policy(journal):
    @agentwal.effect(policy="retry_same_key", retry=agentwal.Retry(**FAST))
    def call(*, ctx):
        if ctx.attempt_number == 1:
            raise TimeoutError("slow")
        return ctx.attempt_number

    with journal.unit("r9"):
        assert call() == 2
