"""The worker's long-lived event loop: one per process, surviving tasks, restarted after a fork,
and a stopped or interrupted copy unwinds before the task goes on."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from workers import loop as loop_module
from workers.loop import EngineLoop, Stopped


def test_runs_coroutines_on_one_loop_that_outlives_them() -> None:
    engine_loop = EngineLoop()

    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    first, second = engine_loop.run(which()), engine_loop.run(which())
    assert first is second and first.is_running()


def test_errors_come_back_as_they_were_raised() -> None:
    async def fails() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        EngineLoop().run(fails())


def test_a_new_process_gets_its_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    engine_loop = EngineLoop()
    parent = engine_loop.loop()
    # A prefork child: same memory, another pid, and none of the parent's threads.
    pid = os.getpid()
    monkeypatch.setattr(loop_module.os, "getpid", lambda: pid + 1)
    child = engine_loop.loop()
    assert child is not parent and child is engine_loop.loop()


def test_abort_cancels_and_waits_for_the_copy_to_unwind() -> None:
    unwound = threading.Event()

    async def long_copy() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # closing uploads takes a round trip
            unwound.set()

    abort = threading.Event()
    threading.Timer(0.1, abort.set).start()
    with pytest.raises(Stopped):
        EngineLoop().run(long_copy(), abort)
    assert unwound.is_set()


def test_an_exception_in_the_waiting_thread_stops_the_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's soft time limit is raised in the task's thread while it waits.
    unwound = threading.Event()

    async def long_copy() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            unwound.set()

    real_wait = loop_module.concurrent.futures.wait
    calls = []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise TimeoutError("soft time limit")
        return real_wait(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module.concurrent.futures, "wait", interrupted)
    with pytest.raises(TimeoutError, match="soft time limit"):
        EngineLoop().run(long_copy())
    assert unwound.is_set()


def test_a_copy_stopped_before_it_started_is_closed_not_leaked() -> None:
    engine_loop = EngineLoop()
    abort = threading.Event()
    abort.set()

    async def never() -> None:
        await asyncio.sleep(30)

    # Whether or not it got to start, the call ends promptly and the coroutine is done with.
    with pytest.raises(Stopped):
        engine_loop.run(never(), abort)
    assert engine_loop.run(asyncio.sleep(0, result=7)) == 7



def test_close_cancels_what_runs_and_stops_the_loop_and_its_thread() -> None:
    engine_loop = EngineLoop()
    first = engine_loop.loop()
    thread = engine_loop._thread
    started, cancelled = threading.Event(), threading.Event()

    async def lingers() -> None:  # a task left behind, like a connection's spare ping
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.run_coroutine_threadsafe(lingers(), first)
    assert started.wait(5)
    engine_loop.close()
    assert cancelled.is_set() and first.is_closed()
    assert thread is not None and not thread.is_alive()
    engine_loop.close()  # twice is harmless

    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert engine_loop.run(which()) is not first  # used again, it starts another
    engine_loop.close()
