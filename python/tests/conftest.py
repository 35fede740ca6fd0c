"""Shared fixtures of the agentwal pytest suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import agentwal


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    """A fresh journal directory path (not created yet)."""
    return tmp_path / "journal"


@pytest.fixture
def journal(jdir: Path):
    """An open journal, closed after the test."""
    j = agentwal.Journal(jdir)
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
