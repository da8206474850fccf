"""Who sent a webhook.

GitHub signs each delivery: ``X-Hub-Signature-256: sha256=HMAC(secret, body)``, the secret set
on the hook and given to fanout in ``[hooks.github] secret_env``. A GitHub delivery is accepted
only signed with it; a server with no secret for GitHub refuses every GitHub delivery rather
than take unsigned ones. Its releases go where the config's rules say, on no token's grants.

Every other kind presents a fanout token: as a header where the registry can send one
(distribution's ``headers``, Harbor's auth header) or as ``?token=`` where it cannot (Docker
Hub, Quay). Its releases must then be within the token's grants.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from .auth import authenticate
from .config import TokenGrant
from .errors import ApiError
from .state import ServiceState

__all__ = ["SIGNATURE_HEADER", "authenticate_hook", "github_signature", "verify_github"]

SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_github(signature: str | None, body: bytes, secret: str | None) -> None:
    """Raise :class:`ApiError` unless ``signature`` is ``body`` signed with ``secret``."""
    if secret is None:
        raise ApiError(503, "GitHub hooks are not configured: set [hooks.github] secret_env in "
                            "the server's config and that variable in its environment "
                            "(unsigned deliveries are never accepted)")
    if not signature:
        raise ApiError(401, f"a GitHub delivery must be signed: {SIGNATURE_HEADER} is missing")
    expected = github_signature(secret, body).encode("ascii")
    # Starlette decodes headers as latin-1: encoding back gives the bytes that were sent, and
    # comparing bytes never raises on a non-ASCII header (comparing str would).
    if not hmac.compare_digest(expected, signature.strip().encode("latin-1")):
        raise ApiError(401, f"{SIGNATURE_HEADER} does not match the body and the hook's secret")


def authenticate_hook(kind: str, request: Request, body: bytes,
                      state: ServiceState) -> TokenGrant | None:
    """The token's grant, or None for a GitHub delivery whose signature was checked."""
    if kind == "github":
        verify_github(request.headers.get(SIGNATURE_HEADER), body,
                      state.config.hook("github").secret(state.env))
        return None
    return authenticate(request, state.config, allow_query=True)
