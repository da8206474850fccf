"""Who is calling, and what they may do.

A token is presented as ``Authorization: Bearer TOKEN``, as the password of HTTP Basic auth (a
browser's way; the user name is ignored) or, on webhook endpoints only, as ``?token=`` (Docker
Hub and Quay cannot set headers). It is hashed and compared with every configured hash in
constant time: neither a near miss nor the position of a match shows in the timing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from fnmatch import fnmatchcase

from starlette.requests import Request

from registry.errors import InvalidReference
from registry.reference import parse_reference

from .config import ServeConfig, TokenGrant
from .errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fanout", Basic realm="fanout"'}


def presented_token(request: Request, *, allow_query: bool = False) -> str | None:
    """The token the request carries, wherever it carries it; None if it carries none."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        return password or None
    if allow_query:
        return request.query_params.get("token") or None
    return None


def find_grant(token: str, config: ServeConfig) -> TokenGrant | None:
    """The grant whose hash is the token's; every hash is compared, each in constant time."""
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    found = None
    for grant in config.tokens:
        if hmac.compare_digest(digest, grant.sha256):
            found = grant
    return found


def authenticate(request: Request, config: ServeConfig, *, allow_query: bool = False,
                 ) -> TokenGrant:
    """The caller's grant; :class:`ApiError` 401 without a token or with an unknown one."""
    token = presented_token(request, allow_query=allow_query)
    if token is None:
        raise ApiError(401, "a token is required: Authorization: Bearer TOKEN", _CHALLENGE)
    grant = find_grant(token, config)
    if grant is None:
        raise ApiError(401, "the token is not valid", _CHALLENGE)
    return grant


def authorize(
    grant: TokenGrant, config: ServeConfig, *, source: str, set_name: str | None,
    destinations: Sequence[str] = (), optional: Sequence[str] = (),
) -> None:
    """Raise :class:`ApiError` 403 unless ``grant`` may copy ``source`` to the destinations.

    ``set_name`` is the set the destinations come from (None: they are written out, and each
    must then be a repository of one of the token's sets)."""
    try:
        repository = str(parse_reference(source.strip()).repository)
    except InvalidReference as exc:
        raise ApiError(422, f"source: {exc}") from None
    if not any(fnmatchcase(repository, pattern) for pattern in grant.sources):
        raise ApiError(403, f"token {grant.name!r} may not copy from {repository}")
    if set_name is not None and not grant.may_use_set(set_name):
        raise ApiError(403, f"token {grant.name!r} may not enqueue to set {set_name!r}")
    allowed = _granted_repositories(grant, config)
    for text in [*(destinations if set_name is None else ()), *optional]:
        try:
            target = str(parse_reference(text.strip()).repository)
        except InvalidReference as exc:
            raise ApiError(422, f"destination {text!r}: {exc}") from None
        if target not in allowed:
            raise ApiError(403, f"token {grant.name!r} may not enqueue to {target}: it is in "
                                "none of the token's sets")


def _granted_repositories(grant: TokenGrant, config: ServeConfig) -> set[str]:
    repositories: set[str] = set()
    for name, entries in config.fanout.destination_sets.items():
        if grant.may_use_set(name):
            for text in entries:
                try:
                    repositories.add(str(parse_reference(text).repository))
                except InvalidReference:
                    continue  # refused when the set is used; here it grants nothing
    return repositories
