"""The one single-flight primitive: shared results, forgotten failures, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from registry.capabilities import MIN_CHUNK_FLOOR, Capabilities
from registry.singleflight import SingleFlight


def test_concurrent_callers_share_one_run_and_the_result_is_kept() -> None:
    runs: list[int] = []

    async def work() -> int:
        runs.append(1)
        await asyncio.sleep(0.01)
        return 42

    async def main() -> list[int]:
        flight: SingleFlight[str, int] = SingleFlight()
        first = await asyncio.gather(*(flight.do("k", work) for _ in range(5)))
        return [*first, await flight.do("k", work)]

    assert asyncio.run(main()) == [42] * 6
    assert len(runs) == 1


def test_a_failure_is_forgotten_and_the_next_caller_runs_again() -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        return "ok"

    async def main() -> str:
        flight: SingleFlight[str, str] = SingleFlight()
        with pytest.raises(RuntimeError):
            await flight.do("k", flaky)
        return await flight.do("k", flaky)

    assert asyncio.run(main()) == "ok"
    assert len(attempts) == 2


def test_one_caller_cancelled_does_not_cancel_the_others() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> str:
        flight: SingleFlight[str, str] = SingleFlight()
        impatient = asyncio.ensure_future(flight.do("k", slow))
        patient = asyncio.ensure_future(flight.do("k", slow))
        await asyncio.sleep(0.01)
        impatient.cancel()
        return await patient

    assert asyncio.run(main()) == "done"


def test_join_waits_without_starting_and_swallows_the_owners_failure() -> None:
    async def fails() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("owner's problem")

    async def main() -> tuple[str | None, str | None, bool]:
        flight: SingleFlight[str, str] = SingleFlight(keep=False)
        nothing = await flight.join("k")
        owner = asyncio.ensure_future(flight.do("k", fails))
        await asyncio.sleep(0)
        joined = await flight.join("k")
        with pytest.raises(RuntimeError):
            await owner
        return nothing, joined, flight.running("k")

    assert asyncio.run(main()) == (None, None, False)


def test_cancel_stops_work_under_way() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> bool:
        flight: SingleFlight[str, None] = SingleFlight()
        task = asyncio.ensure_future(flight.do("k", forever))
        await asyncio.sleep(0)
        await flight.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return flight.running("k")

    assert asyncio.run(main()) is False


def test_capabilities_only_narrow() -> None:
    caps = Capabilities()
    assert caps.chunk_size(8 << 20) == 8 << 20
    caps.learn_chunk_max(4 << 20)
    caps.learn_chunk_max(16 << 20)  # a later, looser answer does not widen it
    assert caps.chunk_max == 4 << 20
    caps.learn_chunk_min(1 << 20)
    caps.learn_chunk_min(512)
    assert caps.chunk_min == 1 << 20
    assert caps.chunk_size(8 << 20) == 4 << 20
    caps.learn_chunk_max(1)  # a hostile 416 cannot make us crawl
    assert caps.chunk_max == MIN_CHUNK_FLOOR
