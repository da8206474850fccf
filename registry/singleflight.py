"""One computation per key at a time, its result shared by everyone who asks.

The engine asks the same questions many times at once: the same source manifest for three
destinations, the same blob for two platforms, the same host's probe for forty requests. A
:class:`SingleFlight` runs the first asker's coroutine as a task and lets the others await it.
A failure is forgotten, so the next asker (or a retry) starts over; a success is kept when
``keep`` is set (a cache for the run), else forgotten once done (only deduplication).

Callers await the shared task through ``asyncio.shield``: one caller being cancelled does not
cancel work others still wait for. :meth:`cancel` stops whatever is still running, for a copy
that failed and must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """A map of key → shared task; see the module docstring."""

    def __init__(self, *, keep: bool = True) -> None:
        self._keep = keep
        self._tasks: dict[K, asyncio.Future[V]] = {}
        self._early: set[K] = set()  # started before anyone asked, and not asked yet

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """The result of ``work()`` for ``key``, run once however many callers ask at once."""
        task = self._tasks.get(key)
        if key in self._early and task is not None:
            # Asked early (start): its outcome, failure included, is this caller's to have;
            # running the work again would repeat a request that was refused once already.
            self._early.discard(key)
        else:
            task = self._task(key, work)
        return await asyncio.shield(task)

    def start(self, key: K, work: Callable[[], Awaitable[V]]) -> None:
        """Set ``work()`` for ``key`` going now, before anyone needs the answer, for a
        :meth:`do` later to find under way or done. Its failure is kept for the next
        :meth:`do`; nobody asking is no error. (With ``keep`` off, a success is forgotten
        once done, so this is only for kept results.)"""
        if key not in self._tasks:
            self._early.add(key)
        self._task(key, work)

    def _task(self, key: K, work: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        task = self._tasks.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._settle, key))
        return task

    def _settle(self, key: K, task: asyncio.Future[V]) -> None:
        cancelled = task.cancelled()
        failed = cancelled or task.exception() is not None
        if cancelled:
            self._early.discard(key)
        elif failed and key in self._early:
            return  # kept for the caller who asks next (see start)
        if (failed or not self._keep) and self._tasks.get(key) is task:
            del self._tasks[key]

    def seed(self, key: K, value: V) -> None:
        """Record a result learnt another way (a manifest fetched by tag, say)."""
        if key not in self._tasks and self._keep:
            future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
            future.set_result(value)
            self._tasks[key] = future

    def known(self, key: K) -> V | None:
        """The kept result for ``key`` if there is one already, without waiting."""
        task = self._tasks.get(key)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def join(self, key: K) -> V | None:
        """Wait for work under way for ``key`` and return its result; None when there is none
        under way, or it failed (its failure is its own caller's to report)."""
        task = self._tasks.get(key)
        if task is None or task.done():
            return self.known(key)
        try:
            return await asyncio.shield(task)
        except Exception:  # noqa: BLE001 - the owner reports it; we only waited
            return None

    def running(self, key: K) -> bool:
        """True while work for ``key`` is under way."""
        task = self._tasks.get(key)
        return task is not None and not task.done()

    async def cancel(self) -> None:
        """Cancel what is still running and wait until it has stopped."""
        pending = [task for task in self._tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
