"""Registry host names: Docker Hub's names in one place, ``host[:port]`` splitting, and which
hosts may be spoken to in plain HTTP.

A leaf module (it imports nothing of fanout's), so references, credentials and the per-host
client all agree on what a host is called.
"""

from __future__ import annotations

import ipaddress

DOCKER_HUB = "docker.io"
# Where Docker Hub serves the distribution API, and the key `docker login` writes its
# credentials under.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
# Names people write for Docker Hub; all mean the same repositories and the same credentials.
DOCKER_HUB_ALIASES = frozenset({
    DOCKER_HUB, "index.docker.io", DOCKER_HUB_API_HOST, "registry.hub.docker.com",
})


def canonical_host(registry: str) -> str:
    """``registry`` lower-cased, with every Docker Hub alias as ``docker.io``."""
    lowered = registry.lower()
    return DOCKER_HUB if lowered in DOCKER_HUB_ALIASES else lowered


def api_host(registry: str) -> str:
    """The host[:port] that serves the API for ``registry`` (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API_HOST if canonical_host(registry) == DOCKER_HUB else registry


def split_host_port(registry: str) -> tuple[str, str | None]:
    """``host[:port]`` into host (IPv6 brackets kept) and port text; no validation of either.

    Raises ValueError for a bracket that is not closed or something other than ``:port`` after it.
    """
    if registry.startswith("["):
        end = registry.find("]")
        if end < 0:
            raise ValueError("'[' without ']'")
        host, rest = registry[:end + 1], registry[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("only ':port' may follow ']'")
        return host, rest[1:]
    host, colon, port = registry.partition(":")
    return host, (port if colon else None)


def bare_hostname(registry: str) -> str:
    """The host alone, lower-cased: no port, no IPv6 brackets ("" when it cannot be split)."""
    try:
        host, _ = split_host_port(registry)
    except ValueError:
        return ""
    return (host[1:-1] if host.startswith("[") else host).lower()


def is_loopback_host(registry: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``[::1]``, with or without a port."""
    try:
        return ipaddress.ip_address(registry).is_loopback  # a bare "::1"
    except ValueError:
        pass
    host = bare_hostname(registry)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_plain_http(registry: str, insecure: frozenset[str]) -> bool:
    """Plain HTTP is allowed for loopback (as Docker and crane do) and for hosts the user listed
    (``host:port`` or the bare host)."""
    return (registry in insecure or is_loopback_host(registry)
            or bare_hostname(registry) in insecure)
