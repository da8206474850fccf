"""Which token scopes a registry request needs, derived from its method and path."""

from __future__ import annotations

import re

import httpx

# /v2/<name>/<endpoint>: greedy name, anchored end, so a repository named ".../blobs/..." still
# splits at the right place.
_REPO_PATH = re.compile(
    r"^/v2/(?P<name>[^:\s]+)/"
    r"(?:manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list|referrers/[^/]+)$"
)
_REPO_NAME = re.compile(r"^[^:\s/][^:\s]*$")

def scopes_for(request: httpx.Request) -> tuple[str, ...]:
    """The token scopes a registry request needs; empty for ``/v2/`` and unknown paths."""
    match = _REPO_PATH.match(request.url.path)
    if match is None:
        return ()
    name = match["name"]
    method = request.method.upper()
    if method in ("GET", "HEAD"):
        actions = "pull"
    elif method == "DELETE":
        # distribution checks "delete" for DELETE; asking more than granted is harmless, as
        # token servers grant the intersection.
        actions = "pull,push,delete"
    else:
        actions = "pull,push"
    scopes = [f"repository:{name}:{actions}"]
    source = request.url.params.get("from")
    if (method == "POST" and "mount" in request.url.params and source
            and source != name and _REPO_NAME.match(source)):
        scopes.append(f"repository:{source}:pull")
    return tuple(scopes)


def scope_key(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))
