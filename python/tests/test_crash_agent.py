"""Crash injection into a small user agent: a process exit (like SIGKILL) at
every boundary of every effect of one unit, then re-runs; the ledger
(never_repeat) is written at most once ever, messages are re-sent only with
the same key, model calls are paid again only when they were in doubt."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import agentwal
from conftest import SMALL_SOURCE, open_journal

AGENT = r'''
import os, sys
import agentwal

jdir, out = sys.argv[1], sys.argv[2]
crash = os.environ.get("CRASH_AT", "")


def point(t, effect, when):
    if crash == f"{t}:{effect}:{when}":
        os._exit(137)  # no cleanup at all, like SIGKILL


def append(name, line):
    fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


status = 0
with agentwal.Journal(jdir, **SMALL) as j:
    for t in range(5):
        uid = f"ticket-{t}"
        if j.is_committed(uid):
            continue
        try:
            with j.unit(uid, kind="ticket", payload={"t": t}) as u:
                def llm(ctx):
                    append("llm", ctx.key)
                    point(t, "llm", "inside")
                    return f"answer-{t}"

                point(t, "llm", "before")
                answer = u.run("llm", llm, policy="retry_same_key")
                point(t, "llm", "after")

                def ledger(ctx):
                    append("ledger", f"{uid}\t{ctx.key}")
                    point(t, "ledger", "inside")
                    return {"entry": t}

                point(t, "ledger", "before")
                u.run("ledger", ledger, policy="never_repeat")
                point(t, "ledger", "after")

                def email(ctx):
                    append("email", f"{ctx.key}\t{answer}")
                    point(t, "email", "inside")

                point(t, "email", "before")
                u.run("email", email, policy="retry_same_key")
                point(t, "email", "after")
                point(t, "commit", "before")
        except agentwal.InDoubt as e:
            print("INDOUBT", e.unit, e.effect, e.step, flush=True)
            status = 3
sys.exit(status)
'''

POINTS = [
    f"2:{effect}:{when}"
    for effect in ("llm", "ledger", "email")
    for when in ("before", "inside", "after")
] + ["2:commit:before"]


def run_agent(tmp: Path, crash: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, CRASH_AT=crash)
    return subprocess.run(
        [sys.executable, str(tmp / "agent.py"), str(tmp / "journal"), str(tmp)],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp,
    )


def lines(tmp: Path, name: str) -> list:
    p = tmp / name
    return p.read_text().splitlines() if p.exists() else []


@pytest.mark.parametrize("crash", POINTS)
def test_crash_at_every_effect_boundary(tmp_path, crash):
    (tmp_path / "agent.py").write_text(SMALL_SOURCE + AGENT)
    p = run_agent(tmp_path, crash)
    assert p.returncode == 137, p.stderr
    p = run_agent(tmp_path)
    if crash == "2:ledger:inside":
        # never_repeat in doubt: stops for an operator, the others go on.
        assert p.returncode == 3, p.stderr
        assert p.stdout.strip() == "INDOUBT ticket-2 ledger 1"
        with open_journal(tmp_path / "journal") as j:
            assert [u["id"] for u in j.incomplete_units()] == ["ticket-2"]
            assert all(j.is_committed(f"ticket-{t}") for t in (0, 1, 3, 4))
            # The operator checks the ledger (the line is there) and records it.
            j.resolve("ticket-2", 1, happened=True, result={"entry": 2})
        p = run_agent(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    with open_journal(tmp_path / "journal") as j:
        assert all(j.is_committed(f"ticket-{t}") for t in range(5))
        s = j.summary()
        assert s["units"] == {"committed": 5, "aborted": 0, "incomplete": 0}
        assert s["in_doubt_effects"] == 0
    ledger = Counter(l.split("\t")[0] for l in lines(tmp_path, "ledger"))
    assert ledger == Counter({f"ticket-{t}": 1 for t in range(5)}), "the ledger is written at most once, ever"
    email = Counter(lines(tmp_path, "email"))
    assert len(email) == 5, "one key (and payload) per ticket"
    resent = sum(n - 1 for n in email.values())
    assert resent == (1 if crash == "2:email:inside" else 0), email
    llm = Counter(lines(tmp_path, "llm"))
    assert len(llm) == 5
    assert sum(n - 1 for n in llm.values()) == (1 if crash == "2:llm:inside" else 0), llm
