"""Running a group of coroutines as one: all succeed, or the first failure cancels the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from .errors import RegistryError

T = TypeVar("T")


async def run_all(work: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; on the first failure cancel the rest and raise one error, a permanent one
    when there is one (retrying cannot fix the whole), else the first."""
    await all_of(work)


async def all_of(work: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """:func:`run_all`, with the results, in the order of ``work``."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in work]
    except ExceptionGroup as failures:
        errors = _leaves(failures)
        permanent = [e for e in errors if isinstance(e, RegistryError) and not e.transient]
        raise (permanent or errors)[0] from None
    return [task.result() for task in tasks]


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
