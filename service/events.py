"""``GET /v1/releases/{id}/events``: the release as server-sent events, until it is final.

The ledger is the only state, so the stream polls it (half a second, one HGETALL per
destination) and sends the document whenever it changed; several servers behind a load
balancer serve the same stream. A comment line every 15 s keeps proxies from closing a quiet
stream; a ledger outage longer than a minute ends it with ``event: error``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio
import redis
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from workers.release_document import release_document

from .auth import authenticate
from .releases import find
from .state import ServiceState, state_of

router = APIRouter(prefix="/v1/releases", tags=["releases"])

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
OUTAGE_SECONDS = 60.0


@router.get("/{release_id}/events", summary="Follow a release (server-sent events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(release_id: str, request: Request) -> StreamingResponse:
    state = state_of(request)
    authenticate(request, state.config)
    await anyio.to_thread.run_sync(find, state, release_id)  # 404 before the stream starts
    return StreamingResponse(_stream(state, release_id, request),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(state: ServiceState, release_id: str, request: Request) -> AsyncIterator[str]:
    last = None
    quiet_since = down_since = time.monotonic()
    down = False
    while not await request.is_disconnected():
        try:
            release = await anyio.to_thread.run_sync(state.ledger.get, release_id)
            down = False
        except (redis.RedisError, OSError) as exc:
            if not down:
                down, down_since = True, time.monotonic()
            if time.monotonic() - down_since > OUTAGE_SECONDS:
                yield _event("error", {"detail": f"the ledger is unreachable: "
                                                 f"{type(exc).__name__}"})
                return
            release = None
        if release is None and not down:
            yield _event("error", {"detail": f"release {release_id} expired from the ledger"})
            return
        if release is not None:
            document = release_document(release)
            text = json.dumps(document, sort_keys=True)
            if text != last:
                last, quiet_since = text, time.monotonic()
                yield f"event: release\ndata: {text}\n\n"
            if release.done:
                yield _event("end", {"id": release_id, "ok": release.ok})
                return
        if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await anyio.sleep(POLL_SECONDS)


def _event(kind: str, data: object) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
