"""What every request handler reaches through the app: the configuration, the environment the
server was started with (credentials, broker), the ledger and its Redis connection, and the
registry clients sources are pinned with. Each lives as long as the app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from starlette.requests import Request

from producer.pool import RegistryPool
from workers.ledger import Ledger

from .config import ServeConfig


@dataclass(frozen=True)
class ServiceState:
    config: ServeConfig
    env: Mapping[str, str]
    ledger: Ledger
    # The ledger's own connection: the webhook deduplication window lives beside the releases.
    redis: redis.Redis[Any]
    # Connections, tokens and probes kept from one request to the next; closed at shutdown.
    pool: RegistryPool


def state_of(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.fanout
    return state
