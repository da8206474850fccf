"""Blocking file I/O on a thread, for code on the event loop (the spool, OCI layouts): a
cancellation never leaves the thread running on a descriptor its caller then closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread; cancelled, it still waits for the thread, so that the
    descriptor it uses is never closed (and its number reused) under it, nor its directory
    removed. Cancelled again while it waits (a task group, then a single-flight, each cancel
    the same task), it waits on: the first cancellation is raised once the thread is done."""
    task = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise
