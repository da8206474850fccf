"""The ASGI app: routers, the one error shape, the body limits, an access log without secrets.

``create_app`` is what ``fanout serve`` runs under uvicorn and what tests drive in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import PackageNotFoundError, version

import anyio
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.broker import queue_settings
from producer.pool import RegistryPool
from workers import connections
from workers.ledger import Ledger

from . import events, hooks, mirrors, page, releases, verify
from .config import ServeConfig
from .errors import ApiError
from .limits import READ_TIMEOUT, BodyLimits
from .state import ServiceState

log = logging.getLogger("fanout.serve")


def create_app(config: ServeConfig, env: Mapping[str, str], *, ledger: Ledger | None = None,
               request_timeout: float = READ_TIMEOUT) -> FastAPI:
    """The service over ``config``; the ledger from ``env`` (FANOUT_LEDGER_URL, …) by default."""
    if ledger is None:
        settings = queue_settings(env)
        # Not pinged here: a server started before Redis says so at /healthz, then recovers.
        client = connections.redis_client(settings.ledger_url, settings.sentinel,
                                          socket_connect_timeout=5.0, socket_timeout=30.0)
        ledger = Ledger(client, retention=settings.retention)
    # One pool of registry clients for the app's lifetime, as a worker keeps one per process:
    # each request that pins a source would otherwise pay a TLS context, a probe and a token.
    pool = RegistryPool(env, insecure=config.fanout.insecure_registries)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Blocking (it waits for the pool's loop and thread to stop): off the server's loop.
        await anyio.to_thread.run_sync(pool.close)

    # No /docs or /redoc: they load their JavaScript from a CDN, which an air-gapped site has
    # not got; /openapi.json is the document, for any viewer.
    app = FastAPI(title="fanout", version=_version(), docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Enqueue and follow releases: one image, pinned by digest, copied "
                              "to many registries by fanout's workers.")
    app.state.fanout = ServiceState(config, env, ledger, ledger.client, pool)
    app.include_router(releases.router)
    app.include_router(verify.router)
    app.include_router(events.router)
    app.include_router(hooks.router)
    app.include_router(mirrors.router)
    app.include_router(page.router)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(redis.RedisError, _ledger_down)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_api_route("/healthz", _healthz, methods=["GET"], tags=["health"],
                      summary="Is the ledger reachable", response_model=None)
    app.add_middleware(BodyLimits, read_timeout=request_timeout)
    app.add_middleware(AccessLog)
    return app


async def _healthz(request: Request) -> JSONResponse:
    state: ServiceState = request.app.state.fanout
    try:
        await anyio.to_thread.run_sync(state.redis.ping)
    except (redis.RedisError, OSError) as exc:
        return JSONResponse({"status": "unavailable",
                             "detail": f"the ledger is unreachable: {type(exc).__name__}"},
                            status_code=503)
    return JSONResponse({"status": "ok"})


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors) or _unparsed(exc):
        return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    # One line naming every field at fault: `body.source: Field required`. Never the input
    # itself: it could be a credential pasted in the wrong field.
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
             for e in errors]
    return JSONResponse({"detail": "; ".join(parts)}, status_code=422)


def _unparsed(exc: RequestValidationError) -> bool:
    """A body sent without a JSON content type reaches validation as raw bytes: JSON or not,
    it is judged as JSON is (what is not JSON is a 400, whatever the header said)."""
    body = exc.body
    if not isinstance(body, bytes | str):
        return False
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _ledger_down(request: Request, exc: redis.RedisError) -> JSONResponse:
    # Whatever the handler was doing, Redis (the ledger, the dedup window) failed under it:
    # try again later. Not the driver's words: they may name the URL.
    log.warning("%s %s: the ledger is unreachable: %s", request.method, request.url.path,
                type(exc).__name__)
    return JSONResponse({"detail": f"the ledger is unreachable ({type(exc).__name__}); "
                                   "nothing was changed, try again"}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error (logged by the server)"}, status_code=500)


class AccessLog:
    """A line per request: method, path, status, time. Never the query string (a webhook's
    ``?token=``) nor any header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s -> %d (%.0f ms)", client[0], scope["method"], scope["path"],
                     status, (time.monotonic() - started) * 1000)


def _version() -> str:
    try:
        return version("fanout")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without install
        return "0"
