"""`python -m agentwal.demo` in real subprocesses: SIGKILL, SIGTERM and
SIGINT at random moments, re-runs, and the sink and journal checks of the
batch_agent contract (DESIGN.md)."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

import agentwal

RECORDS = 300


class Agent:
    """A running demo whose stdout is read line by line."""

    def __init__(self, d: Path, records: int = RECORDS, work_ms: float = 2, budget: Optional[float] = None, extra: Optional[List[str]] = None, env_extra: Optional[Dict[str, str]] = None):
        env = dict(os.environ)
        env.update(env_extra or {})
        if budget is not None:
            env["SHUTDOWN_TIMEOUT"] = str(budget)
        self.p = subprocess.Popen(
            [
                sys.executable, "-m", "agentwal.demo",
                "--journal", str(d / "journal"),
                "--sink", str(d / "sink.txt"),
                "--records", str(records),
                "--work-ms", str(work_ms),
                *(extra or []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # Not the source tree: `python -m` puts the cwd first on sys.path.
            cwd=d,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.out: List[str] = []
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.p.stderr is not None
        self.err = self.p.stderr.read()

    def wait_line(self, prefix: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            if line is None:
                raise AssertionError(f"demo exited before printing {prefix!r}: {self.out} {self.err}")
            self.out.append(line)
            if line.startswith(prefix):
                return line

    def signal(self, sig: int) -> bool:
        if self.p.poll() is not None:
            return False
        self.p.send_signal(sig)
        return True

    def wait(self, limit: float) -> Tuple[int, float, List[str]]:
        t0 = time.monotonic()
        try:
            code = self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"demo did not exit within {limit}s; output {self.out}")
        took = time.monotonic() - t0
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.out.append(line)
        return code, took, self.out


def summary_number(out: List[str], prefix: str, after: str, before: str) -> int:
    line = next((l for l in out if l.startswith(prefix)), None)
    assert line is not None, f"no {prefix!r} line in {out}"
    return int(line.split(after, 1)[1].split(before, 1)[0])


def resumed_mid_way(out: List[str]) -> int:
    line = next(l for l in out if l.startswith("records done:"))
    return int(line.split(" units resumed mid-way")[0].rsplit(" ", 1)[1])


def resends(out: List[str]) -> int:
    return summary_number(out, "messages sent:", "re-sends: ", ")")


def sink_lines(d: Path) -> Dict[str, List[Tuple[str, str]]]:
    """record id -> [(key, payload)] in sink order."""
    by_record: Dict[str, List[Tuple[str, str]]] = defaultdict(list)
    p = d / "sink.txt"
    text = p.read_text() if p.exists() else ""
    for line in text.splitlines():
        key, payload = line.split("\t")
        by_record[payload.split(" ")[0]].append((key, payload))
    return by_record


def check_final(d: Path, max_dups: int) -> int:
    """Every record committed once, every message delivered, re-sends only
    with the same key and payload, at most `max_dups` of them."""
    by_record = sink_lines(d)
    assert sorted(by_record) == [f"record-{i:06d}" for i in range(RECORDS)], "every record sent, nothing else"
    dups = 0
    keys = set()
    for rec, sends in by_record.items():
        assert len({k for k, _ in sends}) == 1, f"{rec} re-sent with another key: {sends}"
        assert len({p for _, p in sends}) == 1, f"{rec} re-sent with another payload: {sends}"
        assert rec in sends[0][0], f"the key names its unit: {sends[0]}"
        keys.add(sends[0][0])
        dups += len(sends) - 1
    assert len(keys) == RECORDS, "one key per record"
    assert dups <= max_dups, f"{dups} re-sends for {max_dups} kills"
    with agentwal.Journal(d / "journal") as j:
        s = j.summary()
        assert s["units"]["incomplete"] == 0 and s["units"]["aborted"] == 0, s
        assert s["units"]["committed"] == RECORDS, s
        assert s["in_doubt_effects"] == 0 and s["corruption"] is None
        assert all(j.is_committed(f"record-{i:06d}") for i in range(RECORDS))
    return dups


def test_demo_runs_and_rerun_does_nothing(tmp_path):
    a = Agent(tmp_path, records=40, work_ms=0)
    code, _, out = a.wait(60)
    assert code == 0, (out, a.err)
    assert out[0].startswith("agentwal.demo: 40 records, journal ")
    assert "resuming at record 0" in out[0]
    assert any(l == "progress: 40/40 records" for l in out)
    assert any(l.startswith("records done: 40 this run, 40/40 committed (resumed from record 0, 0 units resumed mid-way)") for l in out)
    assert "messages sent: 40 (re-sends: 0)" in out
    assert any(l.startswith("model calls: 40 made, 0 replayed from the journal; tokens spent ") for l in out)
    assert any(l.startswith("journal: ") and " bytes on disk, " in l for l in out)
    lines = (tmp_path / "sink.txt").read_text().splitlines()
    assert len(lines) == 40
    # The fake model is batch_agent's (FNV-1a): same payloads byte for byte.
    assert lines[0].split("\t")[1] == "record-000000 summary-6a414f03"
    a = Agent(tmp_path, records=40, work_ms=0)
    code, _, out = a.wait(60)
    assert code == 0
    assert any(l.startswith("records done: 0 this run, 40/40 committed (resumed from record 40") for l in out)
    assert len((tmp_path / "sink.txt").read_text().splitlines()) == 40


def test_sigkill_at_random_points_then_rerun_commits_every_record_exactly_once(tmp_path):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 2**32))
    print(f"KILL_SEED={seed}")
    rng = random.Random(seed)
    kills = 0
    t0 = time.monotonic()
    # Enough work that six kills of at most 0.6 s each always land, however
    # fast the disk is: 300 records x 15 ms = 4.5 s > 6 x 0.6 s.
    for _ in range(6):
        a = Agent(tmp_path, work_ms=15)
        a.wait_line("agentwal.demo:")
        time.sleep(rng.uniform(0.02, 0.6))
        if a.signal(signal.SIGKILL):
            kills += 1
        a.p.wait(30)
    assert kills >= 3, f"only {kills} kills landed"
    a = Agent(tmp_path)
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    assert resends(out) <= 1
    check_final(tmp_path, kills)
    # Printed, not asserted: shared CI machines make wall-clock limits flaky.
    print(f"kills took {time.monotonic() - t0:.1f}s")


def test_sigkill_inside_the_send_resends_once_with_the_same_key(tmp_path):
    """Kill lands between the sink write and the recorded outcome: the
    re-run re-sends exactly that message, with the same key."""
    code = (
        "import os, sys, agentwal.demo as d\n"
        "real = os.write\n"
        "def write(fd, b):\n"
        "    n = real(fd, b)\n"
        "    if b.startswith(b'record-000005'):\n"
        "        os._exit(9)  # like SIGKILL: after the send, before its outcome\n"
        "    return n\n"
        "d.os.write = write\n"
        "sys.exit(d.main(sys.argv[1:]))\n"
    )
    args = ["--journal", str(tmp_path / "journal"), "--sink", str(tmp_path / "sink.txt"), "--records", str(RECORDS), "--work-ms", "0"]
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 9, p.stderr
    a = Agent(tmp_path, work_ms=0)
    code_, _, out = a.wait(120)
    assert code_ == 0, (out, a.err)
    assert resends(out) == 1 and resumed_mid_way(out) == 1
    assert any("1 replayed from the journal" in l for l in out), out
    by_record = sink_lines(tmp_path)
    assert len(by_record["record-000005"]) == 2
    assert check_final(tmp_path, 1) == 1


@pytest.mark.parametrize("rounds", [6])
def test_sigterm_and_sigint_at_random_moments_lose_nothing_and_repeat_nothing(tmp_path, rounds):
    seed = int(os.environ.get("SIGTERM_SEED", os.getpid()))
    print(f"SIGTERM_SEED={seed}")
    rng = random.Random(seed)
    budget = 10
    stops = 0
    for r in range(rounds):
        sig, want = (signal.SIGTERM, 0) if r % 2 == 0 else (signal.SIGINT, 130)
        a = Agent(tmp_path, work_ms=3, budget=budget)
        a.wait_line("agentwal.demo:")
        time.sleep(rng.uniform(0, 0.25))
        a.signal(sig)
        code, took, out = a.wait(budget + 20)
        if any(l.startswith("shutdown (") for l in out):
            stops += 1
            assert code == want, (sig, out, a.err)
            assert any(l.startswith(f"shutdown ({signal.Signals(sig).name}): stopped before record ") for l in out), out
        else:
            assert code == 0, (out, a.err)
        assert took < budget, f"exit took {took:.1f}s"
        assert resumed_mid_way(out) == 0, f"a graceful stop leaves no unit half done: {out}"
        assert resends(out) == 0, out
    assert stops >= 4, f"signals should have interrupted most runs (stops = {stops})"
    a = Agent(tmp_path, work_ms=0, budget=budget)
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    assert resumed_mid_way(out) == 0 and resends(out) == 0
    assert check_final(tmp_path, 0) == 0


def test_second_signal_exits_at_once_and_the_journal_replays(tmp_path):
    a = Agent(tmp_path, work_ms=20_000, budget=60)
    a.wait_line("agentwal.demo:")
    time.sleep(0.3)
    assert a.signal(signal.SIGINT)
    time.sleep(0.2)
    assert a.signal(signal.SIGINT)
    code, took, out = a.wait(15)
    assert code == 130, (out, a.err)
    assert not any(l.startswith("records done:") for l in out), "it did not finish gracefully"
    a = Agent(tmp_path, work_ms=0, budget=10)
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    assert resumed_mid_way(out) <= 1
    assert check_final(tmp_path, 0) == 0, "the cut unit had not sent yet: no re-send"


def test_shutdown_timeout_cuts_a_unit_that_outlives_the_budget(tmp_path):
    a = Agent(tmp_path, work_ms=30_000, budget=1)
    a.wait_line("agentwal.demo:")
    time.sleep(0.3)
    assert a.signal(signal.SIGTERM)
    code, took, out = a.wait(15)
    assert code == 0, (out, a.err)
    assert took < 1 + 3, f"exit took {took:.1f}s with SHUTDOWN_TIMEOUT=1"
    a = Agent(tmp_path, work_ms=0, budget=10)
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    assert check_final(tmp_path, 0) == 0


def test_bad_shutdown_timeout_and_bad_arguments_exit_2(tmp_path):
    env = dict(os.environ, SHUTDOWN_TIMEOUT="soon")
    p = subprocess.run(
        [sys.executable, "-m", "agentwal.demo", "--journal", str(tmp_path / "j"), "--sink", str(tmp_path / "s")],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )
    assert p.returncode == 2 and "SHUTDOWN_TIMEOUT" in p.stderr
    p = subprocess.run([sys.executable, "-m", "agentwal.demo", "--journal", str(tmp_path / "j")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "--sink" in p.stderr


def test_a_sink_that_cannot_be_opened_exits_2(tmp_path):
    if os.geteuid() == 0:
        # root writes through permissions; use a directory as the sink instead
        (tmp_path / "sink.txt").mkdir()
    else:
        (tmp_path / "sink.txt").write_text("")
        (tmp_path / "sink.txt").chmod(0o444)
    a = Agent(tmp_path, records=5, work_ms=0)
    code, _, out = a.wait(60)
    assert code == 2, (out, a.err)
    assert "sink" in a.err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_exit_code_unfinished_after_sigterm_for_kubernetes_jobs(tmp_path, how):
    extra = ["--exit-code-unfinished", "75"] if how == "flag" else None
    env = {"AGENTWAL_UNFINISHED_EXIT": "75"} if how == "env" else None
    a = Agent(tmp_path, work_ms=20, budget=10, extra=extra, env_extra=env)
    a.wait_line("agentwal.demo:")
    time.sleep(0.2)
    assert a.signal(signal.SIGTERM)
    code, _, out = a.wait(20)
    assert code == 75, (out, a.err)
    # A finished batch keeps 0.
    a = Agent(tmp_path, work_ms=0, budget=10, extra=extra, env_extra=env)
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    p = subprocess.run(
        [sys.executable, "-m", "agentwal.demo", "--journal", str(tmp_path / "j"), "--sink", str(tmp_path / "s"), "--exit-code-unfinished", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert p.returncode == 2 and "1-255" in p.stderr


def test_fail_rate_with_sigkills_commits_everything_and_counts_retries(tmp_path):
    rng = random.Random(int(os.environ.get("KILL_SEED", time.time_ns() % 2**32)))
    kills = 0
    for _ in range(3):
        a = Agent(tmp_path, extra=["--fail-rate", "0.3"])
        a.wait_line("agentwal.demo:")
        time.sleep(rng.uniform(0.05, 0.5))
        if a.signal(signal.SIGKILL):
            kills += 1
        a.p.wait(30)
    a = Agent(tmp_path, extra=["--fail-rate", "0.3"])
    code, _, out = a.wait(120)
    assert code == 0, (out, a.err)
    line = next(l for l in out if l.startswith("summary: "))
    assert line.startswith(f"summary: {RECORDS}/{RECORDS} committed, ")
    done = int(next(l for l in out if l.startswith("records done:")).split()[2])
    retries = int(line.split(" re-sends, ")[1].split(" retries")[0])
    if done >= 30:
        assert retries > 0, line
    check_final(tmp_path, kills)


def test_a_failing_sink_leaves_the_send_in_doubt_then_the_rerun_resends_it_once(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    j = tmp_path / "journal"
    p = subprocess.run(
        [sys.executable, "-m", "agentwal.demo", "--journal", str(j), "--sink", "/dev/full", "--records", "5", "--work-ms", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "cannot write to the sink" in p.stderr and "stays in doubt" in p.stderr
    with agentwal.Journal(j) as jj:
        [u] = jj.incomplete_units()
        assert u["id"] == "record-000000"
        assert [e["state"] for e in u["effects"]] == ["completed", "in_doubt"]
    p = subprocess.run(
        [sys.executable, "-m", "agentwal.demo", "--journal", str(j), "--sink", str(tmp_path / "sink.txt"), "--records", "5", "--work-ms", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "messages sent: 5 (re-sends: 1)" in p.stdout
    assert "model calls: 4 made, 1 replayed from the journal" in p.stdout
