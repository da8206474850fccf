"""The machine's own Redis at 127.0.0.1:6379, for the few tests that need a real Redis but not
one of their own (a test that kills, fills, flushes or counts a whole Redis starts its own:
``tests.support.queue.RedisServer``).

Tests run in parallel, and other runs on the machine use the same server. So a test here uses the
database of its xdist worker, ``url()`` (gw0: 15, gw1: 14, ... down to 8, then round again; 15
outside xdist), keeps its keys under a prefix of its own, ``prefix()``, deletes them afterwards,
and never flushes a database nor counts keys it did not write.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis

from tests.support.xdist import worker_index

HOST = "127.0.0.1"
PORT = 6379


def db() -> int:
    """This xdist worker's database: 15 for gw0, 14 for gw1, ..., 8 for gw7, 15 for gw8."""
    return 15 - worker_index() % 8


def url() -> str:
    return f"redis://{HOST}:{PORT}/{db()}"


def prefix(name: str) -> str:
    """``fanout-test:<name>:<random>:``, a key prefix no other test or run uses."""
    return f"fanout-test:{name}:{secrets.token_hex(6)}:"


def client_or_skip(**kwargs: Any) -> redis.Redis[Any]:
    """A client of ``url()``; the test is skipped when the machine has no Redis."""
    client: redis.Redis[Any] = redis.Redis.from_url(url(), socket_connect_timeout=1, **kwargs)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        pytest.skip(f"no Redis at {HOST}:{PORT}")
    return client
