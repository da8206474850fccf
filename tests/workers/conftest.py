"""Fakes for the workers' unit tests: an in-memory Redis and a clock that only moves when told."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
