"""Frozen, typed settings the core takes as explicit objects (read at the edges, never here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .retry import REQUEST_RETRY, RetryPolicy

# Blob transfers in flight per destination. Each streams (memory stays flat whatever the
# number), and over a WAN every wave costs round trips: an image's blobs should go in one.
DEFAULT_BLOB_CONCURRENCY = 8
# Connections opened ahead of need, for a copy's first requests that leave together after the
# token (the root's GET and HEADs, the tags' HEADs, the referrers' questions): see
# TransportOptions.preconnect.
DEFAULT_PRECONNECT = 3


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """How to reach registries: which may use plain HTTP, TLS trust, timeouts, pool size."""

    # host[:port] names allowed to speak plain HTTP besides loopback (which always may).
    insecure_registries: frozenset[str] = frozenset()
    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    # A read that stalls this long is a dead connection; the retry tiers take it from there.
    read_timeout: float = 60.0
    # An upload from a repository of the same host holds a connection for its GET while its
    # PUT needs another: the pool stays 8x the blob concurrency, as it was (32 for 4).
    max_connections_per_host: int = 64
    # Pings sent to a token-auth host while its first token is fetched, each opening a
    # connection unless it finds one idle (registry/client.py: _warm_up). The edges (CLI,
    # workers) ask for DEFAULT_PRECONNECT; 0 opens none ahead of need.
    preconnect: int = 0
    # Seconds an idle connection is kept for reuse (httpx's default is 5).
    keepalive_expiry: float = 30.0
    # Force chunked (PATCH) uploads of this many bytes; None uploads each blob in one PUT
    # unless the registry asks for chunks.
    chunk_size: int | None = None
    user_agent: str = "fanout/0.1"


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """What one copy does and how hard it tries."""

    blob_concurrency: int = DEFAULT_BLOB_CONCURRENCY
    referrers: bool = True
    # Keep only referrers of these artifact types; empty keeps all.
    referrer_types: tuple[str, ...] = field(default_factory=tuple)
    retry: RetryPolicy = REQUEST_RETRY

    def __post_init__(self) -> None:
        if self.blob_concurrency < 1:
            raise ValueError(f"blob_concurrency must be at least 1, not {self.blob_concurrency}")
