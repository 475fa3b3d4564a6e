"""Shared test fixtures: no test may leave a child process or a shared-memory segment.

The autouse fixture records the children of this process and the SerPyTor segments in
/dev/shm before each test and fails the test if new ones survive it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

SHM_DIR = Path("/dev/shm")
# every shared-memory segment SerPyTor creates starts with this prefix
SEGMENT_PREFIX = "spt"


def _segments() -> set[str]:
    if not SHM_DIR.is_dir():
        return set()
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SEGMENT_PREFIX)}


def _children() -> set[int]:
    # zombie children that are already reaped disappear from this list
    return {
        c.pid
        for c in psutil.Process().children(recursive=True)
        if c.status() != psutil.STATUS_ZOMBIE
    }


def _wait_until_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if psutil.pid_exists(pid) and _is_live(pid)}
        if alive:
            time.sleep(0.02)
    return alive


def _is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves child processes or /dev/shm segments behind."""
    children_before = _children()
    segments_before = _segments()
    yield
    leaked_children = _wait_until_gone(_children() - children_before, 5.0)
    for pid in leaked_children:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    # a long-lived server removes a job's segments when the job's end reaches it,
    # which may be just after the client's run returned
    leaked_segments = _segments() - segments_before
    deadline = time.monotonic() + 5.0
    while leaked_segments and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked_segments = _segments() - segments_before
    for name in leaked_segments:
        try:
            os.unlink(SHM_DIR / name)
        except FileNotFoundError:
            pass
    assert not leaked_children, f"test leaked child processes: {sorted(leaked_children)}"
    assert not leaked_segments, f"test leaked shared-memory segments: {sorted(leaked_segments)}"


@pytest.fixture
def in_checkout(monkeypatch):
    """Run from the checkout's root: pipelines written to tmp_path use modules of
    ``tests.*`` and ``examples.*``, which are found from there."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
