"""FANOUT_BANDWIDTH parsed into caps, the in-process bucket, and the hooks that pace bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from registry.bandwidth import BandwidthCaps, BandwidthError, parse_caps, parse_rate
from registry.envconfig import ConfigError, bandwidth_from_env
from registry.throttle import (
    MAX_CREDIT_S,
    MAX_GRANT,
    MIN_GRANT,
    LocalThrottle,
    ThrottledBody,
    grant_size,
    throttled,
)

MiB = 1024 * 1024


class Clock:
    """A monotonic clock that moves only when the throttle sleeps (or the test says)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rate"), [
    ("40MiB", 40 * MiB), ("10MB", 10 * MiB), ("500KiB", 500 * 1024), ("500k", 500 * 1024),
    ("1048576", MiB), ("1.5GiB", int(1.5 * 1024**3)), ("2MiB/s", 2 * MiB), ("100B", 100),
])
def test_rates_in_every_form(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


def test_the_issue_example_caps_uploads_per_host_and_source_downloads() -> None:
    caps = parse_caps("harbor.dr.example=40MiB,*.partner.example=10MiB source:docker.io=20MiB")
    assert caps.rate("harbor.dr.example", "upload") == 40 * MiB
    assert caps.rate("harbor.dr.example:5000", "upload") == 40 * MiB  # any port of the host
    assert caps.rate("a.partner.example", "upload") == 10 * MiB
    assert caps.rate("b.partner.example:443", "upload") == 10 * MiB
    assert caps.rate("partner.example", "upload") is None  # the glob wants a subdomain
    assert caps.rate("harbor.dr.example", "download") is None  # uploads only
    assert caps.rate("docker.io", "download") == 20 * MiB
    assert caps.rate("docker.io", "upload") is None
    assert caps.rate("ghcr.io", "upload") is None


def test_docker_hub_by_any_name_and_hosts_in_any_case() -> None:
    caps = parse_caps("source:index.docker.io=1MiB,Harbor.Example=2MiB")
    assert caps.rate("docker.io", "download") == MiB
    assert caps.rate("registry-1.docker.io", "download") == MiB
    assert caps.rate("HARBOR.example", "upload") == 2 * MiB


def test_an_exact_name_wins_over_a_glob_and_the_first_glob_over_later_ones() -> None:
    caps = parse_caps("*.example=1MiB,*.b.example=2MiB,a.b.example=3MiB")
    assert caps.rate("a.b.example", "upload") == 3 * MiB
    assert caps.rate("c.b.example", "upload") == MiB


def test_unset_or_blank_caps_nothing() -> None:
    assert not bandwidth_from_env({})
    assert not bandwidth_from_env({"FANOUT_BANDWIDTH": "  "})
    assert BandwidthCaps().rate("anything", "upload") is None


@pytest.mark.parametrize(("value", "named"), [
    ("harbor.example", "'harbor.example'"),
    ("harbor.example=fast", "'harbor.example=fast'"),
    ("harbor.example=0", "'harbor.example=0'"),
    ("ok.example=1MiB,bad.example=-5MiB", "'bad.example=-5MiB'"),
    ("=1MiB", "'=1MiB'"),
    ("source:=1MiB", "'source:=1MiB'"),
    ("a/b=1MiB", "'a/b=1MiB'"),
    ("a.example=1MiB,A.example=2MiB", "capped twice"),
])
def test_a_bad_entry_is_a_config_error_naming_it(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        bandwidth_from_env({"FANOUT_BANDWIDTH": value})
    assert "FANOUT_BANDWIDTH" in str(caught.value) and named in str(caught.value)
    with pytest.raises(BandwidthError):
        parse_caps(value)


# -- the in-process bucket -------------------------------------------------------------------

def test_grants_are_an_eighth_of_a_second_between_256_kib_and_1_mib() -> None:
    assert grant_size(100 * 1024) == MIN_GRANT
    assert grant_size(4 * MiB) == 512 * 1024
    assert grant_size(400 * MiB) == MAX_GRANT


def test_many_takes_keep_to_the_rate() -> None:
    clock = Clock()
    throttle = LocalThrottle(parse_caps("h.example=4MiB"), clock=clock, sleep=clock.sleep)
    start = clock.now

    async def main() -> None:
        for _ in range(100):
            await throttle.take("h.example", "upload", 512 * 1024)

    asyncio.run(main())
    # 50 MiB at 4 MiB/s: the last grant may start after 12.375 s (it is not waited out).
    assert clock.now - start == pytest.approx(50 / 4 - 0.125)
    assert throttle.waited[("upload", "h.example")] == pytest.approx(clock.now - start)


def test_an_idle_host_banks_no_more_than_the_credit() -> None:
    clock = Clock()
    throttle = LocalThrottle(parse_caps("h.example=1MiB"), clock=clock, sleep=clock.sleep)
    assert throttle.wait_for("h.example", "upload", MiB) == 0.0
    clock.now += 3600  # idle for an hour
    granted_at_once = 0
    while throttle.wait_for("h.example", "upload", 64 * 1024) == 0.0:
        granted_at_once += 64 * 1024
    assert granted_at_once <= MAX_CREDIT_S * MiB + 64 * 1024


def test_hosts_and_directions_have_buckets_of_their_own() -> None:
    clock = Clock()
    throttle = LocalThrottle(parse_caps("a.example=1MiB,source:a.example=1MiB,b.example=1MiB"),
                             clock=clock, sleep=clock.sleep)
    assert throttle.wait_for("a.example", "upload", MiB) == 0.0
    assert throttle.wait_for("a.example", "download", MiB) == 0.0
    assert throttle.wait_for("b.example", "upload", MiB) == 0.0
    assert throttle.wait_for("a.example", "upload", MiB) == pytest.approx(1.0)
    assert throttle.wait_for("c.example", "upload", 100 * MiB) == 0.0  # uncapped


# -- the hooks -------------------------------------------------------------------------------

async def _pieces(sizes: list[int]) -> AsyncIterator[bytes]:
    for size in sizes:
        yield b"x" * size


class Recorder:
    """A Throttle that records its takes and never waits."""

    def __init__(self, rate: int | None) -> None:
        self._rate = rate
        self.takes: list[tuple[str, str, int]] = []

    def rate(self, host: str, direction: str) -> int | None:
        return self._rate

    async def take(self, host: str, direction: str, nbytes: int) -> None:
        self.takes.append((host, direction, nbytes))


async def _drain(chunks: AsyncIterator[bytes]) -> int:
    return sum([len(c) async for c in chunks])


def test_a_blob_is_taken_in_grants_and_booked_to_the_byte() -> None:
    recorder = Recorder(4 * MiB)  # grants of 512 KiB
    size = 3 * MiB + 1000
    sizes = [64 * 1024] * (size // (64 * 1024)) + [size % (64 * 1024)]
    sent = asyncio.run(_drain(throttled(_pieces(sizes), recorder, "h", "upload", size)))
    assert sent == size
    grants = [n for _, _, n in recorder.takes]
    assert sum(grants) == size  # booked exactly: nothing lost to the last grant
    assert grants[:6] == [512 * 1024] * 6 and grants[6] == 1000
    assert {(h, d) for h, d, _ in recorder.takes} == {("h", "upload")}


def test_a_piece_bigger_than_a_grant_takes_what_it_needs() -> None:
    recorder = Recorder(4 * MiB)
    asyncio.run(_drain(throttled(_pieces([3 * MiB]), recorder, "h", "upload")))
    assert [n for _, _, n in recorder.takes] == [3 * MiB]


def test_uncapped_hosts_and_no_throttle_pass_straight_through() -> None:
    recorder = Recorder(None)
    assert asyncio.run(_drain(throttled(_pieces([10, 20]), recorder, "h", "upload"))) == 30
    assert recorder.takes == []
    assert asyncio.run(_drain(throttled(_pieces([10, 20]), None, "h", "upload"))) == 30


def test_the_hook_sleeps_as_the_cap_needs_on_a_fake_clock() -> None:
    clock = Clock()
    throttle = LocalThrottle(parse_caps("h.example=1MiB"), clock=clock, sleep=clock.sleep)
    start = clock.now
    size = 4 * MiB
    sent = asyncio.run(_drain(throttled(_pieces([64 * 1024] * 64), throttle, "h.example",
                                        "upload", size)))
    assert sent == size
    # 4 MiB at 1 MiB/s in grants of 256 KiB: the last grant starts 3.75 s in.
    assert clock.now - start == pytest.approx(3.75)
    assert len(clock.slept) == 15


class Response:
    def __init__(self, sizes: list[int]) -> None:
        self.headers = {"content-length": str(sum(sizes))}
        self._sizes = sizes

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return _pieces(self._sizes)


def test_a_source_body_is_read_under_the_download_cap() -> None:
    recorder = Recorder(MiB)
    body = ThrottledBody(Response([100_000] * 5 + [1]), recorder, "src.example")
    assert body.headers["content-length"] == "500001"
    assert asyncio.run(_drain(body.aiter_bytes())) == 500_001
    assert [n for _, _, n in recorder.takes] == [256 * 1024, 500_001 - 256 * 1024]
    assert {d for _, d, _ in recorder.takes} == {"download"}


def test_an_uncapped_stream_is_handed_back_as_it_is() -> None:
    chunks = _pieces([1])
    assert throttled(chunks, None, "h", "upload") is chunks
    assert throttled(chunks, Recorder(None), "h", "upload") is chunks
