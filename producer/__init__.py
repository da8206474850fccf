"""fanout's producer side: the ``fanout`` CLI and a Python API for CI tooling.

``producer.enqueue(...)``, ``status``, ``wait``, ``retry`` and ``replay`` are
:mod:`producer.api`'s, loaded on first use so ``fanout copy`` never pays for Celery's import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import enqueue, replay, retry, status, wait

__all__ = ["enqueue", "replay", "retry", "status", "wait"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
