"""``/v1/mirrors``: each configured mirror with its last run, and a sync on demand.

Any valid token may read the mirrors (as releases). A sync enqueues releases, so it needs the
grants an enqueue needs: the mirror's source, and its set (``to``) or, for a mirror given by
``destinations``, each of them; a dry run too (it reads the registries with the server's
credentials). The sync runs in the request's worker thread with the server's long-lived
registry pool, and records its run as any other (``workers/mirror_runs.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from producer.broker import QueueUnreachable, queue_settings
from producer.pool import RegistryPool
from registry.session import Registries
from workers.mirror_model import Mirror, MirrorBusy, MirrorPlan
from workers.mirror_runs import MirrorRuns, MirrorState
from workers.mirror_sync import RunWithRegistries, sync_mirror
from workers.publishing import NotPublished

from .auth import authenticate, authorize
from .config import ServeConfig
from .errors import ApiError
from .state import state_of

router = APIRouter(prefix="/v1/mirrors", tags=["mirrors"])


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(default=False, description="plan only: write and enqueue nothing")
    prune_over_limit: bool = Field(default=False,
                                   description="prune even past the mirror's prune_limit")


@router.get("", summary="Every configured mirror and its last run")
def listing(request: Request) -> dict[str, list[dict[str, Any]]]:
    state = state_of(request)
    authenticate(request, state.config)
    mirrors = configured_mirrors(state.config)
    states = MirrorRuns(state.redis).states(m.name for m in mirrors)
    return {"mirrors": [mirror_document(m, states[m.name]) for m in mirrors]}


@router.post("/{name}/sync", summary="Run a mirror now")
def sync(name: str, request: Request, body: SyncRequest | None = None,
         dry_run: Annotated[bool, Query(description="as the body's dry_run")] = False,
         prune_over_limit: Annotated[bool, Query(description="as the body's")] = False,
         ) -> dict[str, Any]:
    state = state_of(request)
    grant = authenticate(request, state.config)
    mirror = find_mirror(state.config, name)
    authorize(grant, state.config, source=mirror.source, set_name=mirror.to,
              destinations=mirror.destinations)
    try:
        plan, run = sync_mirror(
            mirror, ledger=state.ledger, settings=queue_settings(state.env), env=state.env,
            trigger="api", dry_run=dry_run or (body is not None and body.dry_run),
            prune_over_limit=prune_over_limit or (body is not None and body.prune_over_limit),
            run=on_pool(state.pool))
    except MirrorBusy as exc:
        raise ApiError(409, f"mirror {mirror.name!r} is being synced already: {exc}") from None
    except (QueueUnreachable, NotPublished) as exc:
        raise ApiError(503, str(exc)) from None
    return {"plan": plan_json(plan), "run": run.to_json()}


def on_pool(pool: RegistryPool) -> RunWithRegistries:
    """The sync's way to run registry work on the server's pool (which takes coroutines)."""
    def run(work: Callable[[Registries], Awaitable[Any]]) -> Any:
        async def awaited(registries: Registries) -> Any:
            return await work(registries)

        return pool.run(awaited)

    return run


def configured_mirrors(config: ServeConfig) -> tuple[Mirror, ...]:
    """The mirrors of the server's fanout.toml, in the file's order."""
    # FanoutConfig.mirrors arrives with fanout.toml's [[mirrors]] (issue 16); none until then.
    mirrors: tuple[Mirror, ...] = getattr(config.fanout, "mirrors", ())
    return mirrors


def find_mirror(config: ServeConfig, name: str) -> Mirror:
    for mirror in configured_mirrors(config):
        if mirror.name == name:
            return mirror
    raise ApiError(404, f"no mirror {name[:100]!r} in the server's fanout.toml")


def mirror_document(mirror: Mirror, state: MirrorState) -> dict[str, Any]:
    """A mirror's definition, its last run (not dry), last success and failure streak."""
    return {**mirror.to_json(),
            "last_run": state.last.to_json() if state.last is not None else None,
            "last_success": state.last_success, "failing_since": state.failing_since}


def plan_json(plan: MirrorPlan) -> dict[str, Any]:
    """A sync's plan for machines: per destination, the tags to add, update, prune and those
    in sync; and the releases it makes. (``producer/sync_output.py`` will have the CLI's.)"""
    return {
        "mirror": plan.mirror, "source": plan.source, "kept": dict(plan.kept),
        "counts": plan.counts(),
        "destinations": [{"destination": d.destination, "add": dict(d.add),
                          "update": dict(d.update), "in_sync": list(d.in_sync),
                          "prune": list(d.prune), "prune_held": d.prune_held,
                          "held_back": list(d.held_back), "error": d.error}
                         for d in plan.destinations],
        "releases": [{"digest": r.digest,
                      "targets": [{"destination": where, "tags": list(tags)}
                                  for where, tags in r.targets]}
                     for r in plan.releases()],
    }
