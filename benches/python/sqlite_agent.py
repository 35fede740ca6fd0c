"""The baseline of the Python benchmark: the demo agent's work (a model call
and one message per record) written the plain way, with Python's sqlite3 in
WAL mode and ``synchronous=FULL``, the model call's result and the send each
committed per record.

    python benches/python/sqlite_agent.py --db FILE --sink FILE [--records N] [--work-ms MS]

It is crash-safe in the same sense as ``python -m agentwal.demo``: the model
result is committed before the send, the send is committed after it, and a
re-run resumes at the first record without a committed send (a send in
flight at a kill is re-sent with the same key). The sink format is the
demo's: ``<key>\\t<payload>``, one ``write`` per line.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time



def fake_model(prompt: str) -> dict:
    """The demo's deterministic model (FNV-1a)."""
    h = 0xCBF29CE484222325
    for b in prompt.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return {"text": f"summary-{h & 0xFFFFFFFF:08x}", "tokens": 50 + h % 200}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--sink", required=True)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--work-ms", type=float, default=2)
    a = p.parse_args()
    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS model (record INTEGER PRIMARY KEY, text TEXT, tokens INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS sent (record INTEGER PRIMARY KEY, key TEXT)")
    fd = os.open(a.sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    row = db.execute("SELECT COALESCE(MAX(record) + 1, 0) FROM sent").fetchone()
    start = row[0]
    began = time.monotonic()
    spent = saved = 0
    for i in range(start, a.records):
        uid = f"record-{i:06d}"
        got = db.execute("SELECT text, tokens FROM model WHERE record = ?", (i,)).fetchone()
        if got is None:
            reply = fake_model(f"summarize record {i}")
            db.execute("BEGIN")
            db.execute("INSERT INTO model VALUES (?, ?, ?)", (i, reply["text"], reply["tokens"]))
            db.execute("COMMIT")
            spent += reply["tokens"]
        else:
            reply = {"text": got[0], "tokens": got[1]}
            saved += reply["tokens"]
        if a.work_ms > 0:
            time.sleep(a.work_ms / 1000)
        key = f"{uid}/send/1"
        os.write(fd, f"{key}\t{uid} {reply['text']}\n".encode())
        db.execute("BEGIN")
        db.execute("INSERT INTO sent VALUES (?, ?)", (i, key))
        db.execute("COMMIT")
    os.close(fd)
    db.close()
    print(f"sqlite_agent: {a.records - start} records, tokens spent {spent}, saved {saved}, {time.monotonic() - began:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
