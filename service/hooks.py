"""``POST /v1/hooks/{kind}``: a registry announces a push, and a matching push becomes a release.

The steps, each refusing before anything is enqueued: the kind (404), the sender (401: the
signature or the token), the body (400 not JSON, 422 not this registry's payload), the rules
(a push matching none is answered as ignored), the token's grants (403 if any matched release
is outside them), pinning the tags Docker Hub and Quay name without a digest, the
deduplication window; then one release per (set, repository, digest), with its tags.

Answers 202 ``{"releases": [ids], "deduplicated": [...], "ignored": [...]}`` when a release
was enqueued, 200 with the same shape when none was: a registry that hears an error redelivers,
and a push that matches no rule is no error.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .auth import authorize
from .config import HOOK_KINDS, TokenGrant
from .dedup import Window
from .enqueueing import create_release
from .errors import ApiError
from .hook_auth import authenticate_hook
from .hook_events import Events, PayloadError, Skipped, parse
from .hook_pinning import pin
from .rules import Planned, group, match
from .state import ServiceState, state_of

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])

_GITHUB_PACKAGE_EVENTS = ("package", "registry_package")


@router.post(
    "/{kind}", summary="A registry's push notification",
    description="`kind`: " + ", ".join(HOOK_KINDS) + ". A push matching a [[rules]] entry "
                "becomes one release per destination set. See docs/api.md, Webhooks.",
    responses={200: {"description": "nothing enqueued (ignored or deduplicated)"},
               202: {"description": "releases enqueued"}},
)
async def receive(kind: str, request: Request) -> JSONResponse:
    if kind not in HOOK_KINDS:
        raise ApiError(404, f"no webhook kind {kind[:64]!r} (known: {', '.join(HOOK_KINDS)})")
    state = state_of(request)
    body = await request.body()
    # Registries, Redis and the broker are blocking calls: a worker thread, as FastAPI runs a
    # plain `def` endpoint.
    return await anyio.to_thread.run_sync(
        functools.partial(_handle, state, kind, request, body))


def _handle(state: ServiceState, kind: str, request: Request, body: bytes) -> JSONResponse:
    grant = authenticate_hook(kind, request, body, state)
    payload = _json(body)
    github_event = request.headers.get("X-GitHub-Event")
    if kind == "github" and github_event and github_event not in _GITHUB_PACKAGE_EVENTS:
        return _answer([], [], [Skipped(f"GitHub {github_event[:64]!r} event",
                                        "not a package event (a ping: the hook works)")])
    try:
        events = parse(kind, payload, state.config.hook(kind).registry)
    except PayloadError as exc:
        raise ApiError(422, f"not a {kind} push payload: {exc}") from None
    return _release(state, grant, events, kind)


def _release(state: ServiceState, grant: TokenGrant | None, events: Events,
             kind: str) -> JSONResponse:
    config = state.config
    matched, skipped = match(events.pushes, config.rules)
    ignored = [*events.skipped, *skipped]
    if grant is not None:
        # Every release this delivery would make must be the token's to make, or none is made.
        for to, push in matched:
            authorize(grant, config, source=str(push), set_name=to)
    pinned = pin([push for _, push in matched], state.pool)
    planned = group((to, push) for (to, _), push in zip(matched, pinned, strict=True))
    window = Window(state.redis, config.dedup_seconds)
    released: list[str] = []
    deduplicated: list[dict[str, Any]] = []
    for plan in planned:
        try:
            release_id, fresh = _enqueue(state, grant, window, plan, kind)
        except ApiError as exc:
            if not released:
                raise
            # The registry redelivers the whole payload: what was enqueued is deduplicated then.
            raise ApiError(exc.status, f"{exc.detail} (enqueued before this: "
                                       f"{', '.join(released)})", exc.headers) from None
        if release_id is not None:
            released.append(release_id)
        if len(fresh) < len(plan.tags):
            deduplicated.append(_describe(plan, [t for t in plan.tags if t not in fresh]))
    return _answer(released, deduplicated, ignored)


def _enqueue(state: ServiceState, grant: TokenGrant | None, window: Window,
             plan: Planned, kind: str) -> tuple[str | None, list[str]]:
    """The release of ``plan``'s tags new within the window (None: none was new), and those
    tags; a release that fails to enqueue gives its claims back."""
    fresh = _claim(window, plan)
    if not fresh:
        return None, fresh
    try:
        release = create_release(state, grant, source=plan.source, to=plan.to, tags=fresh,
                                 trigger=f"hook:{kind}")
    except Exception:
        _give_back(window, plan, fresh)
        raise
    return release.id, fresh


def _claim(window: Window, plan: Planned) -> list[str]:
    """The tags of ``plan`` not seen within the window, now claimed; none if Redis fails."""
    claimed: list[str] = []
    try:
        for tag in plan.tags:
            if window.claim(plan.to, plan.repository, plan.digest, tag):
                claimed.append(tag)
    except (redis.RedisError, OSError) as exc:
        _give_back(window, plan, claimed)
        raise ApiError(503, f"the ledger is unreachable ({type(exc).__name__}); "
                            f"{plan.source} was not enqueued") from None
    return claimed


def _give_back(window: Window, plan: Planned, tags: list[str]) -> None:
    try:
        for tag in tags:
            window.give_back(plan.to, plan.repository, plan.digest, tag)
    except (redis.RedisError, OSError):
        pass  # the claim expires with the window; a redelivery after it is enqueued


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None


def _describe(plan: Planned, tags: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {"source": plan.source, "to": plan.to, "tags": list(tags)}


def _answer(released: list[str], deduplicated: list[dict[str, Any]],
            ignored: list[Skipped]) -> JSONResponse:
    return JSONResponse(
        {"releases": released, "deduplicated": deduplicated,
         "ignored": [{"event": s.event, "reason": s.reason} for s in ignored]},
        status_code=202 if released else 200)
