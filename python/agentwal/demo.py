"""The demo agent, the Python twin of ``examples/batch_agent.rs``.

::

    python -m agentwal.demo --journal DIR --sink FILE [--records N] [--work-ms MS] [--fail-rate P]

Processes N records; each record is one unit: a journaled (fake) model call,
some simulated work, and one message sent to a "sink" file (one line per
delivery attempt: ``<idempotency-key>\\t<payload>``, one ``write`` per line).
Kill it at any moment (even with SIGKILL) and run it again: it resumes at the
first record that is not committed, replays recorded model calls instead of
paying for them again, and re-sends a message only if its send was in doubt
at the kill, always with the same idempotency key.

``--fail-rate P`` makes the simulated model call fail transiently (like an
HTTP 429) with probability P per attempt; the effect's retry policy absorbs
it, every record still ends committed, and the final summary line counts
the retries.

SIGTERM finishes the unit in progress and exits 0 within ``SHUTDOWN_TIMEOUT``
seconds (default 25); SIGINT does the same and exits 130; a second signal
exits at once (the journal replays).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import agentwal
from agentwal.shutdown import Shutdown

PROG = "agentwal.demo"
#: The environment variable behind ``--exit-code-unfinished``.
UNFINISHED_EXIT_ENV = "AGENTWAL_UNFINISHED_EXIT"


def say(msg: str) -> None:
    """Prints a line on stdout; a closed pipe must not stop the agent."""
    try:
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass


def say_err(msg: str) -> None:
    """Like :func:`say`, on stderr."""
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def fake_model(prompt: str) -> Dict[str, Any]:
    """A deterministic stand-in for an LLM call (FNV-1a, as in batch_agent):
    the same prompt always gives the same text and token count."""
    h = 0xCBF29CE484222325
    for b in prompt.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return {"text": f"summary-{h & 0xFFFFFFFF:08x}", "tokens": 50 + h % 200}


#: The model call's retry policy (batch_agent's): transient failures (429s)
#: are retried with a short exponential backoff; if they outlast the budget
#: the call is left in doubt (nothing recorded) and a re-run retries it with
#: the same key.
MODEL_RETRY = agentwal.Retry(
    max_attempts=10_000,
    initial_backoff=0.001,
    max_backoff=0.020,
    jitter=0.5,
    deadline=120.0,
    on_exhausted="leave_in_doubt",
)


@dataclass
class Totals:
    done: int = 0
    sent: int = 0
    resends: int = 0
    model_calls: int = 0
    model_replayed: int = 0
    tokens_spent: int = 0
    tokens_saved: int = 0
    resumed_units: int = 0
    retries: int = 0


def unit_id(i: int) -> str:
    return f"record-{i:06d}"


def process(
    journal: agentwal.Journal,
    sink_fd: int,
    i: int,
    work_s: float,
    fail_rate: float,
    dice: random.Random,
    t: Totals,
) -> None:
    """One record = one unit: model call (journaled), work, send (journaled)."""
    uid = unit_id(i)
    with journal.unit(uid, kind="record", payload={"index": i}) as unit:
        if unit.resumed:
            t.resumed_units += 1

        # The model call: journaled so that a resumed unit does not pay again.
        # In doubt after a kill it is simply called again (same key).
        # Transient failures (429s) are retried by the effect's policy; only
        # a success is recorded. The attempt number is counted durably:
        # retries before a kill count too.
        called = []
        attempt = [1]

        def model(ctx: agentwal.EffectCtx) -> Dict[str, Any]:
            called.append(True)
            attempt[0] = ctx.attempt_number
            if fail_rate > 0 and dice.random() < fail_rate:
                raise agentwal.Transient("model: HTTP 429 Too Many Requests")
            return fake_model(f"summarize record {i}")

        reply = unit.run("model", model, policy="retry_same_key", retry=MODEL_RETRY)
        if called:
            t.retries += max(0, attempt[0] - 1)
        if called:
            t.model_calls += 1
            t.tokens_spent += reply["tokens"]
        else:
            t.model_replayed += 1
            t.tokens_saved += reply["tokens"]

        # The simulated work. A kill here leaves the unit incomplete with its
        # model call recorded: the re-run replays it.
        if work_s > 0:
            time.sleep(work_s)

        # The message: one line per delivery attempt, written before the
        # outcome is recorded. In doubt after a kill -> re-sent, same key.
        def send(ctx: agentwal.EffectCtx) -> None:
            line = f"{ctx.key}\t{uid} {reply['text']}\n".encode()
            try:
                # One write(2) of a short line on an O_APPEND file: a kill
                # leaves the whole line or none of it.
                n = os.write(sink_fd, line)
                if n != len(line):
                    raise OSError(f"short write ({n} of {len(line)} bytes)")
            except OSError as e:
                # A failed delivery (disk full, I/O error) may have reached
                # the receiver in part: it is in doubt, not failed. Recording
                # the error would replay it on every re-run and wedge this
                # record forever; Unsure records nothing (the intent is
                # durable already, like after a kill), the agent stops, and a
                # re-run retries the send with the same key.
                raise agentwal.Unsure(
                    f"cannot write to the sink ({e}); record {uid} stays in doubt, "
                    f"re-run to retry it with key {ctx.key}"
                ) from None
            t.sent += 1
            if ctx.attempt == "retry":
                t.resends += 1
            return None

        unit.run("send", send, policy="retry_same_key")
    # leaving the block committed the unit


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Process records as journaled units; safe to kill and re-run.",
    )
    p.add_argument("--journal", required=True, help="journal directory (created if missing)")
    p.add_argument("--sink", required=True, help="sink file: one line per message delivery attempt")
    p.add_argument("--records", type=int, default=1000, help="number of records in the batch (default 1000)")
    p.add_argument("--work-ms", type=float, default=2, help="simulated work per record, in ms (default 2)")
    p.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability (0-1) that one model call attempt fails transiently (HTTP 429); "
        "the retry policy absorbs it (default 0)",
    )
    p.add_argument(
        "--exit-code-unfinished",
        type=int,
        default=None,
        metavar="N",
        help="exit with N (1-255) instead of 0 when SIGTERM stops the batch before it is finished "
        f"(for Kubernetes Jobs); also {UNFINISHED_EXIT_ENV} (default: unset)",
    )
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {agentwal.__version__}")
    a = p.parse_args(argv)
    if a.exit_code_unfinished is None:
        env = os.environ.get(UNFINISHED_EXIT_ENV, "").strip()
        if env:
            try:
                a.exit_code_unfinished = int(env)
            except ValueError:
                p.error(f"invalid value {env!r} for {UNFINISHED_EXIT_ENV}")
    if a.exit_code_unfinished is not None and not 1 <= a.exit_code_unfinished <= 255:
        p.error("--exit-code-unfinished must be 1-255 (0 is the code of a finished batch)")
    if a.records < 0 or a.records > 0xFFFFFFFF:
        p.error("--records must be between 0 and 4294967295")
    if a.work_ms < 0:
        p.error("--work-ms must be >= 0")
    if not 0.0 <= a.fail_rate <= 1.0:
        p.error(f"--fail-rate must be a probability between 0 and 1, not {a.fail_rate}")
    return a


def run(args: argparse.Namespace, shutdown: Shutdown) -> bool:
    journal = agentwal.Journal(
        args.journal,
        segment_size=4 << 20,
        max_record_bytes=256 << 10,
        max_payload_bytes=64 << 10,
        compact_every_records=4096,
        # Every finished record id is kept so that a re-run skips it.
        retain_forever=True,
    )
    replay = journal.replay_report()
    try:
        sink_fd = os.open(args.sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise RuntimeError(f"cannot open the sink {args.sink}: {e}") from None

    n = args.records
    start = journal._j().first_uncommitted("record-", 0, n, 6)
    tty = sys.stderr.isatty()
    say(
        f"{PROG}: {n} records, journal {args.journal} ({replay['committed']} committed, "
        f"{len(replay['incomplete'])} incomplete at open), resuming at record {start}"
    )

    work_s = args.work_ms / 1000.0
    began = time.monotonic()
    t = Totals()
    step = max(n // 10, 1)
    dice = random.Random()
    stopped_at = n
    last_bar = 0.0
    for i in range(start, n):
        # Refused once shutdown began: no new unit starts; the one in
        # progress (holding its guard) always finishes and commits.
        try:
            guard = shutdown.begin_unit()
        except agentwal.ShuttingDown:
            say(f"shutdown ({shutdown.reason or 'requested'}): stopped before record {i}, re-run to resume")
            stopped_at = i
            break
        with guard:
            if journal.unit_state(unit_id(i)) == "committed":
                continue
            process(journal, sink_fd, i, work_s, args.fail_rate, dice, t)
        t.done += 1
        if tty:
            now = time.monotonic()
            if now - last_bar > 0.1 or i + 1 == n:
                last_bar = now
                filled = (i + 1) * 40 // max(n, 1)
                sys.stderr.write(f"\r{'#' * filled}{'-' * (40 - filled)} {i + 1}/{n} records")
                sys.stderr.flush()
        elif (i + 1) % step == 0 or i + 1 == n:
            say(f"progress: {i + 1}/{n} records")
    if tty:
        sys.stderr.write("\n")
    journal.sync()
    # Every record before the stop point is committed (the earlier ones by
    # the choice of `start`, the rest by this loop, which raises on any
    # failure), and records run in order, so none after it is.
    committed = stopped_at
    stats = journal.stats()
    say(
        f"records done: {t.done} this run, {committed}/{n} committed (resumed from record {start}, "
        f"{t.resumed_units} units resumed mid-way)"
    )
    say(f"messages sent: {t.sent} (re-sends: {t.resends})")
    say(
        f"model calls: {t.model_calls} made, {t.model_replayed} replayed from the journal; "
        f"tokens spent {t.tokens_spent}, saved {t.tokens_saved}"
    )
    say(
        f"journal: {stats['disk_bytes']} bytes on disk, {stats['compactions']} compactions, "
        f"{time.monotonic() - began:.1f}s"
    )
    say(
        f"summary: {committed}/{n} committed, {t.sent} sent, {t.resends} re-sends, "
        f"{t.retries} retries (transient model failures absorbed)"
    )
    os.close(sink_fd)
    journal.close()
    return bool(committed == n)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM / SIGINT: finish the unit in progress, then exit 0 / 130 within
    # SHUTDOWN_TIMEOUT; a second signal exits at once (the journal replays).
    try:
        shutdown = Shutdown.install(exit_at_deadline=True)
    except ValueError as e:
        say_err(f"{PROG}: error: {e}")
        return 2
    # Opt-in (Kubernetes Jobs): "drained, not finished" gets its own code;
    # the default stays 0 after SIGTERM whether or not the batch was done.
    shutdown.set_unfinished_exit_code(args.exit_code_unfinished)
    try:
        ok = run(args, shutdown)
    except (agentwal.Error, RuntimeError, OSError) as e:
        say_err(f"{PROG}: error: {e}")
        return 2
    if shutdown.triggered:
        return shutdown.exit_code if ok else shutdown.unfinished_exit_code
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
