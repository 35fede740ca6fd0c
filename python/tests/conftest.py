"""Shared fixtures of the agentwal pytest suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import agentwal

#: Log limits for the journals of tests that do not depend on them. The
#: defaults (64 MiB segments, each zero-filled ahead, and a 16 MiB payload
#: limit) made the suite write gigabytes to /tmp: one journal per test.
SMALL = {"segment_size": 2 << 20, "max_record_bytes": 1 << 20, "max_payload_bytes": 512 << 10}

#: The same options as Python source, for the agents the tests run as
#: child processes: ``agentwal.Journal(path, **SMALL)``.
SMALL_SOURCE = f"SMALL = {SMALL!r}\n"


def open_journal(path, **opts) -> agentwal.Journal:
    """``agentwal.Journal(path)`` with the small log limits of :data:`SMALL`
    (``opts`` override them)."""
    return agentwal.Journal(path, **{**SMALL, **opts})


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    """A fresh journal directory path (not created yet)."""
    return tmp_path / "journal"


@pytest.fixture
def journal(jdir: Path):
    """An open journal, closed after the test."""
    j = open_journal(jdir)
    yield j
    j.close()


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 60):
    """Runs `code` in a fresh interpreter; returns the CompletedProcess."""
    import subprocess
    import tempfile

    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        # Not the source tree: `python -c` puts the cwd first on sys.path.
        cwd=tempfile.gettempdir(),
    )
