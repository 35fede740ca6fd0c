"""asyncio: coroutines as steps, the event loop never blocked, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

import agentwal
from conftest import open_journal


def run(coro):
    return asyncio.run(coro)


def test_async_unit_commits_and_replays(jdir):
    calls = []

    async def llm(ctx):
        await asyncio.sleep(0.01)
        calls.append(ctx.key)
        return {"answer": 42}

    async def main():
        with open_journal(jdir) as j:
            async with j.unit_async("a1", kind="chat", payload={"q": "?"}) as unit:
                assert agentwal.current_unit() is unit
                assert await unit.run_async("llm", llm, policy="retry_same_key") == {"answer": 42}
                # plain functions work too
                assert await unit.run_async("sync", lambda ctx: 7, policy="retry_same_key") == 7
                await unit.checkpoint_async({"at": 2})
            assert j.unit_state("a1") == "committed"

    run(main())
    assert len(calls) == 1


def test_exception_in_async_unit_leaves_it_resumable(jdir):
    calls = []

    async def llm(ctx):
        calls.append(1)
        return "reply"

    async def first():
        with open_journal(jdir) as j:
            with pytest.raises(RuntimeError):
                async with j.unit_async("a2") as unit:
                    await unit.run_async("llm", llm, policy="retry_same_key")
                    raise RuntimeError("boom")
            assert j.unit_state("a2") == "incomplete"

    async def second():
        with open_journal(jdir) as j:
            async with j.unit_async("a2") as unit:
                assert unit.resumed
                assert await unit.run_async("llm", llm, policy="retry_same_key") == "reply"

    run(first())
    run(second())
    assert calls == [1]


def test_async_effect_failure_is_recorded(journal):
    async def bad(ctx):
        raise ValueError("429 too many requests")

    async def main():
        async with journal.unit_async("a3") as unit:
            with pytest.raises(agentwal.EffectFailed) as ei:
                await unit.run_async("x", bad, policy="retry_same_key")
            assert isinstance(ei.value.__cause__, ValueError)
            await unit.rollback_async("failed")

    run(main())
    assert journal.unit_state("a3") == "aborted"


def test_the_event_loop_keeps_running_during_fsync(journal):
    """Many durable effects while a ticker measures the loop's worst stall."""

    async def main():
        stalls = []
        stop = False

        async def ticker():
            last = time.monotonic()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                stalls.append(now - last)
                last = now

        t = asyncio.create_task(ticker())

        async def worker(w):
            for i in range(10):
                async with journal.unit_async(f"w{w}-{i}") as unit:
                    await unit.run_async("step", lambda ctx: ctx.key, policy="retry_same_key")

        await asyncio.gather(*(worker(w) for w in range(8)))
        stop = True
        await t
        return stalls

    stalls = run(main())
    assert len(stalls) > 20
    # fdatasync takes milliseconds to tens of milliseconds; none of it may
    # land on the loop. Allow scheduling noise on a busy CI machine.
    stalls.sort()
    assert stalls[len(stalls) // 2] < 0.05, stalls[-10:]
    assert sum(1 for u in journal.units() if u["state"] == "committed") == 80


def test_cancelling_a_step_leaves_it_in_doubt(journal):
    async def main():
        ev = asyncio.Event()

        async def slow(ctx):
            ev.set()
            await asyncio.sleep(30)
            return "never"

        async def job():
            async with journal.unit_async("c1") as unit:
                await unit.run_async("send", slow, policy="never_repeat")

        task = asyncio.create_task(job())
        await ev.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    run(main())
    assert time.monotonic() - t0 < 10
    [u] = journal.incomplete_units()
    assert u["id"] == "c1" and u["effects"][0]["state"] == "in_doubt"

    async def resume():
        async with journal.unit_async("c1") as unit:
            with pytest.raises(agentwal.InDoubt):
                await unit.run_async("send", lambda ctx: 1, policy="never_repeat")
            await unit.rollback_async("cancelled")

    run(resume())
    assert journal.unit_state("c1") == "aborted"


def test_async_effect_decorator_and_reconcile_probe(journal):
    @agentwal.effect(policy="retry_same_key")
    async def fetch(url, *, ctx):
        await asyncio.sleep(0)
        return {"url": url, "key": ctx.key}

    async def probe(ctx):
        return agentwal.Happened("found")

    async def main():
        async with journal.unit_async("dec") as unit:
            r = await fetch("https://example.com")
            assert r["url"] == "https://example.com" and "fetch" in r["key"]
            assert await unit.run_async("p", lambda: 1, policy="reconcile", probe=probe) == 1

    run(main())


def test_shutdown_wait_async_and_drain_tasks(monkeypatch):
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "0.5")

    async def main():
        s = agentwal.Shutdown()
        assert s.timeout == 0.5 and not s.triggered

        async def slow():
            await asyncio.sleep(10)

        async def quick():
            await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(slow()), asyncio.create_task(quick())]
        asyncio.get_running_loop().call_later(0.05, s.trigger)
        await s.wait_async()
        assert s.triggered and s.reason == "requested" and s.exit_code == 0
        t0 = time.monotonic()
        all_done = await s.drain_tasks(tasks)
        assert not all_done and time.monotonic() - t0 < 2
        assert tasks[0].cancelled() and tasks[1].done()
        with pytest.raises(agentwal.ShuttingDown):
            s.begin_unit()

    run(main())


def test_install_async_turns_sigterm_into_a_graceful_shutdown():
    import os
    import signal

    async def main():
        s = agentwal.Shutdown.install_async(timeout=5)
        loop = asyncio.get_running_loop()
        try:
            loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(s.wait_async(), 5)
            assert s.reason == "SIGTERM" and s.exit_code == 0
            assert 0 < s.remaining() <= 5
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)

    run(main())


def test_shutdown_timeout_env_is_validated(monkeypatch):
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "2.5")
    assert agentwal.Shutdown().timeout == 2.5
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "")
    assert agentwal.Shutdown().timeout == 25
    for bad in ("-1", "nan", "soon", "100000"):
        monkeypatch.setenv("SHUTDOWN_TIMEOUT", bad)
        with pytest.raises(ValueError, match="SHUTDOWN_TIMEOUT"):
            agentwal.Shutdown()


def test_an_async_step_touching_its_unit_raises_instead_of_blocking_the_loop(journal):
    async def main():
        async with journal.unit_async("are") as unit:

            async def step(ctx):
                with pytest.raises(agentwal.InvalidCall, match="running an effect"):
                    unit.checkpoint({"x": 1})
                return 1

            assert await asyncio.wait_for(unit.run_async("s", step, policy="retry_same_key"), 10) == 1

    run(main())
