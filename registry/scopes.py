"""Token scopes, stated by the caller with each request (Docker token spec, "scope").

The operation knows what it needs: a manifest read needs ``pull``, an upload ``pull,push``, a
mount also ``pull`` on the repository mounted from. So every request says it, through the
request extension :data:`SCOPES`, and the auth flow asks the token server for exactly that;
nothing is guessed back from a URL (an upload's ``Location`` need not even name the repository).
"""

from __future__ import annotations

import httpx

# The httpx request extension that carries a request's scopes to the auth flow.
SCOPES = "fanout.scopes"

Scopes = tuple[str, ...]


def pull(repository: str) -> Scopes:
    return (f"repository:{repository}:pull",)


def push(repository: str) -> Scopes:
    return (f"repository:{repository}:pull,push",)


def mount(repository: str, source: str) -> Scopes:
    """Push to ``repository`` and pull from ``source``: the push first, because some token
    servers (Docker Hub's, by several reports) grant only the first scope of a request."""
    if source == repository:
        return push(repository)
    return (*push(repository), *pull(source))


def delete(repository: str) -> Scopes:
    # distribution checks "delete" for DELETE; asking more than granted is harmless, as token
    # servers grant the intersection.
    return (f"repository:{repository}:pull,push,delete",)


def scopes_of(request: httpx.Request) -> Scopes:
    """The scopes a request was sent with; () for the ping and for requests built elsewhere."""
    found = request.extensions.get(SCOPES, ())
    return tuple(found) if isinstance(found, tuple | list) else ()


def scope_key(scopes: Scopes) -> Scopes:
    return tuple(sorted(set(scopes)))
