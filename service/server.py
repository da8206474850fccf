"""Running the app under uvicorn, with the limits a service facing CI runners and registries
needs: small headers, short keep-alives, a bounded number of connections, no access log of
its own (ours leaves out query strings, where a webhook's token may be)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import uvicorn

from .app import create_app
from .config import ServeConfig
from .slow_clients import header_timeout_protocol

# Connections beyond this are answered 503 at once rather than queued without bound.
MAX_CONNECTIONS = 512
KEEP_ALIVE_SECONDS = 5


def serve(config: ServeConfig, env: Mapping[str, str], *, host: str, port: int,
          request_timeout: float) -> None:
    """Serve until SIGINT/SIGTERM; finishes requests in flight for up to 10 s. A request's
    headers, then its body, each get ``request_timeout`` seconds to arrive."""
    logging.getLogger("fanout.serve").setLevel(logging.INFO)
    app = create_app(config, env, request_timeout=request_timeout)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info",
                http=header_timeout_protocol(request_timeout),
                proxy_headers=False, server_header=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=MAX_CONNECTIONS,
                timeout_graceful_shutdown=10, h11_max_incomplete_event_size=16 * 1024)
