"""The proxy's own auth: Basic, or Bearer with a token endpoint on the proxy itself.

Tokens are opaque random strings with a lifetime; the proxy remembers what each one grants
(``repository:<name>:<actions>`` per repository), so a request whose token lacks a scope, or
whose token has expired, is answered 401 as a registry would. ``BearerAuth.grants`` records every
token issued: who asked, for what, what was granted.

Scopes needed per request follow distribution's token auth (docs/spec/auth/token.md and
registry/handlers/app.go): reads need ``pull``; uploads and manifest PUTs need ``pull,push``; a
mount also needs ``pull`` on the repository it mounts from; DELETE of a manifest or blob needs
``delete``.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .exchange import Behaviour, Exchange
from .replies import Reply, error_reply, json_reply

Need = tuple[str, str]  # (repository, action)


def basic_credentials(ex: Exchange) -> tuple[str, str] | None:
    header = ex.header("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def needed_scopes(ex: Exchange) -> list[Need]:
    """What a request to the API needs, as distribution's token auth asks it."""
    if ex.repo is None:
        return []
    if ex.method in ("GET", "HEAD"):
        return [(ex.repo, "pull")]
    if ex.method == "DELETE" and ex.kind in ("manifests", "blobs"):
        return [(ex.repo, "delete")]
    needs = [(ex.repo, "pull"), (ex.repo, "push")]
    source = ex.param("from")
    if ex.method == "POST" and ex.param("mount") and source:
        needs.append((source, "pull"))
    return needs


def scope_text(needs: list[Need]) -> str:
    by_repo: dict[str, list[str]] = {}
    for repo, action in needs:
        by_repo.setdefault(repo, []).append(action)
    return " ".join(f"repository:{repo}:{','.join(actions)}" for repo, actions in by_repo.items())


class BasicAuth(Behaviour):
    """Every API request carries ``Authorization: Basic`` for a known user, or gets 401.

    ECR: the registry takes Basic only, user ``AWS`` and the password ``aws ecr
    get-login-password`` prints (AWS ECR user guide, "Private registry authentication":
    ``docker login --username AWS --password-stdin``).
    """

    name = "basic"

    def __init__(self, users: Mapping[str, str], *, service: str = "registry") -> None:
        self.users = dict(users)
        self.service = service

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.kind is None:
            return None
        given = basic_credentials(ex)
        if given is not None and self.users.get(given[0]) == given[1]:
            return None
        return error_reply(401, "UNAUTHORIZED", "Not Authorized", headers={
            "WWW-Authenticate": f'Basic realm="{ex.proxy.url}/",service="{self.service}"'})


@dataclass(frozen=True)
class Grant:
    """A token the endpoint issued."""

    token: str
    user: str | None
    method: str
    requested: tuple[str, ...]  # the scope strings as the client sent them
    granted: Mapping[str, frozenset[str]]  # repository -> actions
    issued: float  # time.monotonic()
    expires: float

    def allows(self, needs: list[Need]) -> bool:
        return all(action in self.granted.get(repo, frozenset()) for repo, action in needs)


@dataclass(frozen=True)
class Rejection:
    """An API request answered 401: its token was ``missing``, ``expired`` or ``insufficient``."""

    time: float
    method: str
    path: str
    reason: str


class BearerAuth(Behaviour):
    """Docker token auth with the token endpoint served by the proxy at ``realm_path``.

    ``anonymous_pull`` grants pull to anyone who asks (GHCR, Docker Hub); ``users`` get what they
    ask for. ``lifetime`` is how long a token really lives; ``expires_in`` is what the endpoint
    says it lives (default: the lifetime, never under the spec's 60 s: "a token should never be
    returned with less than 60 seconds to live", distribution docs/spec/auth/token.md). A test
    that shrinks a registry's 5-minute token to 2 s keeps ``expires_in`` at 60, as the server
    would, so the token dies before the client expects it.

    ``first_scope_only``: only the first ``scope`` parameter is honoured (Docker Hub's token
    endpoint, docker/hub-feedback#2215: "Token endpoint regression with multiple scope
    parameters"). ``token_methods``: Harbor's realm takes GET only, a POST gets 405
    (containerd/containerd#8630: "Harbor is returning a 405 error for the POST request").
    ``challenge_everywhere=False``: only ``/v2/`` answers with ``WWW-Authenticate``; other paths
    answer 401 without it, and the challenge of ``/v2/`` has no ``service`` (Artifact Registry,
    apple/container#1026). ``refresh_tokens``: answer ``offline_token=true`` with a refresh token.

    ``grants`` lists every token issued; ``rejected`` every API request answered 401, and why.
    """

    name = "bearer"

    def __init__(
        self, *, realm_path: str = "/token", service: str = "registry.test",
        users: Mapping[str, str] | None = None, anonymous_pull: bool = False,
        lifetime: float = 300.0, expires_in: float | None = None, first_scope_only: bool = False,
        token_methods: tuple[str, ...] = ("GET", "POST"), challenge_everywhere: bool = True,
        refresh_tokens: bool = False, denied_message: str = "authentication required",
    ) -> None:
        self.realm_path = realm_path
        self.service = service
        self.users = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.lifetime = lifetime
        self.expires_in = expires_in if expires_in is not None else max(lifetime, 60.0)
        self.first_scope_only = first_scope_only
        self.token_methods = token_methods
        self.challenge_everywhere = challenge_everywhere
        self.refresh_tokens = refresh_tokens
        self.denied_message = denied_message
        self._lock = threading.Lock()
        self._tokens: dict[str, Grant] = {}
        self._refresh: dict[str, str] = {}
        self.grants: list[Grant] = []
        self.rejected: list[Rejection] = []

    # -- the registry side ----------------------------------------------------------------------
    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.path == self.realm_path:
            return self._token_endpoint(ex)
        if ex.kind is None:
            return None
        grant, expired = self._presented(ex)
        if ex.kind == "base":
            if grant is not None:
                return None
            return self._challenge(ex, [], expired=expired)
        needs = needed_scopes(ex)
        if grant is not None and grant.allows(needs):
            return None
        reason = "expired" if expired else "insufficient" if grant is not None else "missing"
        with self._lock:
            self.rejected.append(Rejection(time.monotonic(), ex.method, ex.path, reason))
        return self._challenge(ex, needs, expired=expired, insufficient=grant is not None)

    def challenge_header(self, ex: Exchange, needs: list[Need], *, error: str | None = None) -> str:
        realm = f"{ex.proxy.url}{self.realm_path}"
        if ex.kind == "base" and not self.challenge_everywhere:
            return f'Bearer realm="{realm}"'
        parts = [f'realm="{realm}"', f'service="{self.service}"']
        if needs:
            parts.append(f'scope="{scope_text(needs)}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def _challenge(self, ex: Exchange, needs: list[Need], *, expired: bool = False,
                   insufficient: bool = False) -> Reply:
        error = "invalid_token" if expired else "insufficient_scope" if insufficient else None
        if not self.challenge_everywhere and ex.kind != "base":
            # Artifact Registry's own words for an anonymous or stale request.
            return error_reply(401, "UNAUTHORIZED", (
                "Unauthenticated request. Unauthenticated requests do not have permission "
                '"artifactregistry.repositories.downloadArtifacts" on resource '
                f'"projects/fanout-test/locations/us/repositories/{(ex.repo or "").split("/")[0]}"'
                " (or it may not exist)"))
        detail = [{"Type": "repository", "Name": repo, "Action": action} for repo, action in needs]
        return error_reply(401, "UNAUTHORIZED", self.denied_message, detail=detail or None,
                           headers={"WWW-Authenticate": self.challenge_header(ex, needs,
                                                                              error=error)})

    def _presented(self, ex: Exchange) -> tuple[Grant | None, bool]:
        """The live grant of the request's bearer token, and whether a known one expired."""
        scheme, _, token = (ex.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None, False
        with self._lock:
            grant = self._tokens.get(token.strip())
        if grant is None:
            return None, False
        if time.monotonic() >= grant.expires:
            return None, True
        return grant, False

    # -- the token endpoint ---------------------------------------------------------------------
    def _token_endpoint(self, ex: Exchange) -> Reply:
        if ex.method not in self.token_methods:
            allowed = ",".join(self.token_methods)
            return error_reply(405, "METHOD_NOT_ALLOWED",
                               f"method {ex.method} is not allowed, but [{allowed}] are",
                               headers={"Allow": ", ".join(self.token_methods)})
        if ex.method == "POST":
            form = dict(parse_qsl(ex.read_body(64 * 1024).decode(errors="replace")))
            scopes = [s for s in form.get("scope", "").split(" ") if s]
            user = self._user_of_form(form)
            offline = False
        else:
            scopes = [s for param in ex.param_all("scope") for s in param.split(" ") if s]
            if self.first_scope_only:
                scopes = scopes[:1]
            user = None
            given = basic_credentials(ex)
            if given is not None:
                user = given[0] if self.users.get(given[0]) == given[1] else ""
            offline = ex.param("offline_token") == "true"
        if user == "":
            return error_reply(401, "UNAUTHORIZED", "authentication required")
        return self._issue(ex.method, user, scopes, offline=offline)

    def _user_of_form(self, form: Mapping[str, str]) -> str | None:
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            with self._lock:
                return self._refresh.get(form.get("refresh_token", ""), "")
        if grant_type == "password":
            name = form.get("username", "")
            return name if self.users.get(name) == form.get("password") else ""
        return ""

    def _issue(self, method: str, user: str | None, scopes: list[str], *, offline: bool) -> Reply:
        granted: dict[str, set[str]] = {}
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = set(actions.split(","))
            if "*" in wanted:
                wanted |= {"pull", "push", "delete"}
            if user is not None:
                allowed = wanted & {"pull", "push", "delete"}
            else:
                allowed = wanted & {"pull"} if self.anonymous_pull else set()
            granted.setdefault(name, set()).update(allowed)
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        grant = Grant(token, user, method, tuple(scopes),
                      {k: frozenset(v) for k, v in granted.items()}, now, now + self.lifetime)
        doc: dict[str, object] = {
            "token": token, "access_token": token, "expires_in": int(self.expires_in),
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with self._lock:
            self._tokens[token] = grant
            self.grants.append(grant)
            if self.refresh_tokens and user and offline:
                refresh = secrets.token_urlsafe(24)
                self._refresh[refresh] = user
                doc["refresh_token"] = refresh
        return json_reply(200, doc)
