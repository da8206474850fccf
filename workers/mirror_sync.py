"""One run of a mirror: list the source, filter, HEAD, compare with each destination, enqueue
only the differences, prune (guarded), and record the run. Being written (issue 16)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from registry.session import Registries

from .ledger import Ledger
from .mirror_model import Mirror, MirrorPlan, MirrorRun
from .settings import WorkerSettings

T = TypeVar("T")
# Runs a coroutine that needs registry clients: fanout serve's long-lived pool passes its own.
RunWithRegistries = Callable[[Callable[[Registries], Awaitable[Any]]], Any]


def sync_mirror(
    mirror: Mirror, *, ledger: Ledger, settings: WorkerSettings, env: Mapping[str, str],
    trigger: str, dry_run: bool = False, prune_over_limit: bool = False,
    run: RunWithRegistries | None = None,
) -> tuple[MirrorPlan, MirrorRun]:
    """Run ``mirror`` once; returns its plan and the run's record (also kept in Redis).

    Raises :class:`MirrorBusy` when another run of it holds its lease (nothing done, nothing
    recorded). A source that cannot be listed is a failed run (``MirrorRun.ok`` False,
    ``error`` set), recorded, not an exception.
    """
    raise NotImplementedError("issue 16: being written")
