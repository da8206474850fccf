"""One event loop per worker process, on its own thread, that outlives tasks.

A task is synchronous (Celery calls it on its pool's thread); the copy is async. Running each
copy under its own ``asyncio.run`` would throw away, at every task, what the next one could use:
open connections, tokens, each host's probe. Here the loop, and what lives on it, stays for the
process; a task hands its coroutine over and waits for it.

The loop is started on first use and again after a fork (a prefork child inherits the parent's
memory but not its threads), so the main process, which never copies, never starts one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# How long a stopped copy (lease lost, soft time limit) gets to close its uploads, and to
# settle a tag its PUT may have moved back to an older release (workers/tag_order.py: a fresh
# lease, a HEAD, perhaps a restore), before the task goes on without it. A settle still under
# way then goes on on the loop, which outlives the task, and logs how it ended.
_CANCEL_GRACE = 10.0
# How often a waiting task looks at its abort flag.
_POLL = 0.1


class Stopped(Exception):
    """The copy was stopped from outside (its abort flag was set)."""


class EngineLoop:
    """A long-lived event loop on a daemon thread; :meth:`run` runs one coroutine on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        """This process's loop, started now if it has none yet."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="fanout-engine-loop",
                                          daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and its thread; the next :meth:`run`
        starts another. A worker never calls it (its loop ends with the process); a server
        that shuts down while its process goes on (fanout serve's app, a test) does."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            if loop is None or thread is None or self._pid != os.getpid():
                return  # never started here (a forked child does not own its parent's)
        # Stopped all the same if something does not unwind in time: it goes with the loop.
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(_CANCEL_GRACE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CANCEL_GRACE)
        if not thread.is_alive():
            loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T],
            abort: threading.Event | None = None) -> T:
        """The result of ``coroutine``, run on the loop.

        ``abort`` set from another thread cancels it and raises :class:`Stopped`. Anything
        raised in the waiting thread itself (Celery's soft time limit arrives as an exception
        there) cancels it too, and is raised once the copy has stopped.
        """
        started, finished = threading.Event(), threading.Event()

        async def tracked() -> T:
            started.set()
            try:
                return await coroutine
            finally:
                finished.set()

        loop = self.loop()
        future = asyncio.run_coroutine_threadsafe(tracked(), loop)
        try:
            while not future.done():
                concurrent.futures.wait([future], timeout=_POLL)
                if abort is not None and abort.is_set() and not future.done():
                    raise Stopped("the copy was stopped")
        except BaseException:
            future.cancel()  # schedules the task's cancellation on the loop
            # Callbacks run in order: once this one has, the task either never started or
            # has been told to stop. Wait for it to unwind (its uploads cancelled), so nothing
            # of it runs on beside whatever the task does next.
            barrier = threading.Event()
            loop.call_soon_threadsafe(barrier.set)
            barrier.wait(_CANCEL_GRACE)
            if started.is_set():
                finished.wait(_CANCEL_GRACE)
            else:
                coroutine.close()
            raise
        return future.result()


async def _cancel_others() -> None:
    """Cancel every other task of the running loop and wait for them to unwind."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
