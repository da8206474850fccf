"""Redis commands per destination copy, counted (``bench/redis_commands.py`` at a small size):
one release of 40 destinations through a real worker, ``CONFIG RESETSTAT`` before it and
``INFO commandstats`` after. Counts, not time, so a loaded machine changes nothing but the
broker's idle polls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import redis_commands

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]

# What a copy costs now: about 36 at 200 destinations (60 before this round, 97 before issue
# 18's work). Issue 18 asks for 40; where they go is in docs/benchmarks.md, "Redis commands per
# copy": Celery's delivery (~10), the tag order (~9), the ledger's start and success as one
# script each, the enqueue. At 40 destinations the release's first copies (uploads, the first
# reads of the blob locations and the release's order) weigh a little more per copy: 37.7 here
# on a quiet machine.
CEILING = 40


def test_a_copy_costs_few_redis_commands_and_no_hold_reads_per_request(tmp_path: Path) -> None:
    result = redis_commands.measure(40, tmp_path)
    # Hold reads go by the clock (one per registry per process each 0.25 s), not by the copy:
    # on a loaded machine copies take longer and read more of them (0.5 per copy on a quiet
    # one, 1.9 in a full suite's run). They are held to their own bound below.
    holds = result.by_kind["hold"]
    per_copy = (result.per_copy * result.destinations - holds) / result.destinations
    assert per_copy <= CEILING, redis_commands.report(result)
    # Holds are read at most once per registry per refresh, not before every request
    # (about ten requests per copy).
    assert holds / result.destinations < 2, result.by_kind
    # A blob-location record is one ZADD between upkeeps.
    assert result.commands["zremrangebyrank"] < result.destinations, result.commands
