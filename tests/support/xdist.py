"""Which pytest-xdist process this is, and a lock for what parallel tests must not share.

``scripts/test.sh`` runs the suite in several processes at once (``-n``); xdist names them
``gw0``, ``gw1``, ... in ``PYTEST_XDIST_WORKER`` and says how many in
``PYTEST_XDIST_WORKER_COUNT``. Outside xdist the process is worker 0 of 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def worker_index() -> int:
    """0 for ``gw0`` (and outside xdist), 1 for ``gw1``, and so on."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def worker_count() -> int:
    """How many xdist processes this run has (1 outside xdist)."""
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    return max(1, int(count)) if count.isdigit() else 1


@contextlib.contextmanager
def exclusive(resource: str) -> Iterator[None]:
    """Hold the machine-wide lock of ``resource`` (a fixed port, a global setting): tests of
    any process, of this run or another, that need the same resource run one at a time."""
    path = Path(tempfile.gettempdir()) / f"fanout-test-{resource}.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
