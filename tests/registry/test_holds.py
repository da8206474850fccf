"""The in-process hold store and the reading of ``ratelimit-remaining``."""

from __future__ import annotations

import httpx
import pytest

from registry.holds import HoldStore, MemoryHolds, ratelimit_exhausted

HOST = "registry.example:5000"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_hold_lasts_until_its_time_then_is_gone() -> None:
    clock = Clock()
    holds: HoldStore = MemoryHolds(clock)
    assert holds.until(HOST) == 0.0
    holds.hold(HOST, clock.now + 4)
    assert holds.until(HOST) == clock.now + 4
    assert holds.until("other.example") == 0.0  # per registry
    clock.now += 4
    assert holds.until(HOST) == 0.0


def test_a_shorter_hold_never_shortens_a_longer_one() -> None:
    clock = Clock()
    holds = MemoryHolds(clock)
    holds.hold(HOST, clock.now + 30)
    holds.hold(HOST, clock.now + 2)
    assert holds.until(HOST) == clock.now + 30
    holds.hold(HOST, clock.now + 60)
    assert holds.until(HOST) == clock.now + 60


@pytest.mark.parametrize("until", [float("inf"), float("nan"), float("-inf"), 0.0, -5.0])
def test_a_past_or_nonsense_hold_holds_nothing(until: float) -> None:
    clock = Clock()
    holds = MemoryHolds(clock)
    holds.hold(HOST, until)
    holds.hold(HOST, clock.now - 1)
    assert holds.until(HOST) == 0.0


@pytest.mark.parametrize("value", [
    "0", "0;w=21600", " 0 ; w=21600", "00", "0;w=21600;comment=\"anything, at all\"",
    "37;w=21600, 0;w=60",  # repeated header, joined: one of them is spent
])
def test_exhausted(value: str) -> None:
    assert ratelimit_exhausted({"ratelimit-remaining": value})
    assert ratelimit_exhausted(httpx.Headers({"RateLimit-Remaining": value}))


@pytest.mark.parametrize("value", [
    "37;w=21600", "1", "", " ", ";w=21600", "w=0", "-0", "+0", "0.0", "0x0", "0e0", "zero",
    "0 apples", "\u0660", "\uff10", "0\x00", "9" * 5000, "0" * 5000, "NaN",
])
def test_not_exhausted(value: str) -> None:
    assert not ratelimit_exhausted({"ratelimit-remaining": value})


def test_not_exhausted_without_the_header_or_with_another_limit() -> None:
    assert not ratelimit_exhausted({})
    assert not ratelimit_exhausted({"ratelimit-limit": "0;w=21600"})
    assert not ratelimit_exhausted(httpx.Headers({"x-ratelimit-remaining": "0"}))
    # Docker Hub also sends the limit; only the remainder counts.
    assert not ratelimit_exhausted(httpx.Headers({"RateLimit-Limit": "0",
                                                 "RateLimit-Remaining": "100;w=21600"}))
    # A header name given in another case, in a plain dict.
    assert ratelimit_exhausted({"RateLimit-Remaining": "0;w=21600"})
