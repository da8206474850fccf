"""A client of ``fanout serve`` (docs/api.md): what ``enqueue``, ``status`` and ``retry`` use
with ``--server URL`` (or ``FANOUT_SERVER``), instead of the broker and the ledger.

::

    ServerError            a UsageError (exit 2); status (None: no answer) and the server's detail
    └── ServerUnreachable  refused, reset, timed out, TLS: no answer at all

The token comes from ``FANOUT_TOKEN`` and goes into the ``Authorization`` header, nowhere
else: not into a message, a repr or a log line (a flag would show it in process lists and CI
logs). Only the commands' ``run`` import this module: ``fanout --help`` never loads httpx.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from workers.records import DocumentError, Release

from .common import UsageError
from .waiting import wait_each, wait_for

SERVER_ENV = "FANOUT_SERVER"
TOKEN_ENV = "FANOUT_TOKEN"  # noqa: S105 (the variable's name, not a token)
# The service pins the source (its own retries: about 10 s at worst) before it answers a POST.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_log = logging.getLogger(__name__)


class ServerError(UsageError):
    """The server refused or failed a request; ``detail`` is its own words."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def transient(self) -> bool:
        """Worth asking again (while waiting): no answer, a timeout, an overloaded server."""
        return self.status in _TRANSIENT_STATUSES


class ServerUnreachable(ServerError):
    """No answer: the connection was refused, reset or timed out."""

    @property
    def transient(self) -> bool:
        return True


@dataclass(frozen=True)
class ServerSettings:
    """Where the server is and the token to show it; ``repr`` leaves the token out."""

    url: str
    token: str = field(repr=False)
    ca_bundle: str | None = None
    from_flag: bool = False


def server_settings(flag: str | None, env: Mapping[str, str]) -> ServerSettings | None:
    """The server of ``--server`` or ``FANOUT_SERVER``, with ``FANOUT_TOKEN``; None: neither
    is set, the command talks to the broker."""
    url = (flag or env.get(SERVER_ENV) or "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    where = "--server" if flag else SERVER_ENV
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{where}: expected an http:// or https:// URL, not {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # A token in the URL would be printed with it; FANOUT_TOKEN is the one place for it.
        raise UsageError(f"{where}: give the server's URL without user, password or query "
                         f"(the token goes in {TOKEN_ENV})")
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"{where} needs a token: set {TOKEN_ENV} in the environment")
    if not all("\x21" <= char <= "\x7e" for char in token):
        # An HTTP library refusing such a header value quotes it in its error.
        raise UsageError(f"{TOKEN_ENV} holds a space, a control or a non-ASCII character")
    return ServerSettings(url.rstrip("/"), token, env.get("FANOUT_CA_BUNDLE") or None,
                          from_flag=bool(flag))


def refuse_broker_flags(flags: Mapping[str, object]) -> None:
    """Flags of the direct path (``{"--broker": args.broker}``) given with a server: an error,
    rather than silently ignored."""
    given = [name for name, value in flags.items() if value]
    if given:
        raise UsageError(f"{', '.join(given)}: not with --server ({SERVER_ENV}); the server "
                         "uses its own configuration")


class _Secret:
    """A value that shows as ``***``: in a repr, a debugger, a traceback's locals."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "***"


class _Bearer(httpx.Auth):
    def __init__(self, token: _Secret) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.value}"
        yield request


class ServerClient:
    """Calls to the release endpoints; each answers JSON or raises :class:`ServerError`."""

    def __init__(self, settings: ServerSettings, *, transport: httpx.BaseTransport | None = None,
                 timeout: httpx.Timeout = TIMEOUT) -> None:
        self.url = settings.url
        self._token = _Secret(settings.token)
        self._http = httpx.Client(
            base_url=settings.url, auth=_Bearer(self._token), timeout=timeout,
            headers={"User-Agent": f"fanout/{_version()}", "Accept": "application/json"},
            verify=_tls(settings.ca_bundle), follow_redirects=False, transport=transport,
        )

    def __repr__(self) -> str:
        return f"ServerClient({self.url!r})"

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def create_release(self, body: Mapping[str, Any]) -> Release:
        """``POST /v1/releases``: the new release, as the server recorded it."""
        return _release(self._call("POST", "/v1/releases", body=body))

    def release(self, release_id: str) -> Release:
        return _release(self._call("GET", f"/v1/releases/{quote(release_id, safe='')}"))

    def recent(self, limit: int) -> list[Release]:
        """The newest ``limit`` releases, newest first."""
        answer = self._call("GET", "/v1/releases", params={"limit": limit})
        found = answer.get("releases") if isinstance(answer, dict) else None
        if not isinstance(found, list):
            raise ServerError(f"the server at {self.url} answered no list of releases")
        return [_release(doc) for doc in found]

    def retry(self, release_id: str, destinations: Sequence[str] = ()) -> tuple[list[str], Release]:
        """``POST /v1/releases/{id}/retry``: the destinations sent again, and the release."""
        body = {"destinations": list(destinations)} if destinations else {}
        answer = self._call("POST", f"/v1/releases/{quote(release_id, safe='')}/retry",
                            body=body)
        sent = answer.get("sent") if isinstance(answer, dict) else None
        if not isinstance(sent, list) or not all(isinstance(name, str) for name in sent):
            raise ServerError(f"the server at {self.url} answered no list of destinations sent")
        return sent, _release(answer.get("release"))

    def _call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.TimeoutException as exc:
            maybe = (" (it may have recorded the request: look with fanout status --server)"
                     if method == "POST" and not isinstance(exc, httpx.ConnectTimeout) else "")
            raise ServerUnreachable(self._clean(
                f"the server at {self.url} did not answer in time "
                f"({type(exc).__name__}){maybe}")) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(self._clean(
                f"cannot reach the server at {self.url}: {type(exc).__name__}: {exc}")) from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise ServerError(f"the server at {self.url} answered {method} {path} with "
                                  "something other than JSON", status=response.status_code
                                  ) from None
        detail = self._clean(_detail(response))
        verb = "failed" if response.status_code >= 500 else "refused"
        raise ServerError(f"the server {verb}: {detail} (HTTP {response.status_code})",
                          status=response.status_code, detail=detail)

    def _clean(self, text: str) -> str:
        # Nothing we build should hold the token; should a library or a proxy echo it, it
        # still goes no further.
        return text.replace(self._token.value, "***")


def wait(
    client: ServerClient, release_id: str, *, timeout: float | None, poll: float,
    on_poll: Callable[[Release], None] | None = None, sleep: Callable[[float], None] = time.sleep,
    outage: float | None = None,
) -> Release:
    """Poll ``GET /v1/releases/{id}`` until the release is done or ``timeout`` seconds pass;
    return it either way. Polls that get no answer, or a 5xx, are skipped for up to ``outage``
    seconds in a row."""

    def is_blip(exc: Exception) -> bool:
        if isinstance(exc, ServerError) and exc.transient:
            _log.info("waiting for %s: %s; asking again", release_id, exc)
            return True
        return False

    def gave_up(exc: Exception, seconds: float) -> Exception:
        assert isinstance(exc, ServerError)
        return ServerError(f"no answer from the server for {seconds:.0f} s while waiting for "
                           f"release {release_id}: {exc}", status=exc.status, detail=exc.detail)

    return wait_for(lambda: client.release(release_id), timeout=timeout, poll=poll,
                    is_blip=is_blip, gave_up=gave_up, on_poll=on_poll, sleep=sleep,
                    outage=outage)


def wait_all(
    client: ServerClient, ids: Sequence[str], *, timeout: float | None, poll: float,
    on_poll: Callable[[Release], None] | None = None,
) -> list[Release]:
    """Wait for each release in turn, under one shared deadline."""
    return wait_each(ids, lambda release_id, left: wait(
        client, release_id, timeout=left, poll=poll, on_poll=on_poll), timeout=timeout)


def _release(document: object) -> Release:
    try:
        return Release.from_document(document)
    except DocumentError as exc:
        raise ServerError(f"the server answered a release fanout cannot read: {exc}") from None


def _detail(response: httpx.Response) -> str:
    """The server's ``{"detail": ...}``: a string, or FastAPI's list of field errors; else
    the start of whatever a proxy in the way answered."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        return "; ".join(_field_error(item) for item in detail)
    text = " ".join(response.text.split())
    return (text[:200] + "…" if len(text) > 200 else text) or response.reason_phrase


def _field_error(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", item))


def _tls(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """Verification always on; a server behind a private CA is trusted by FANOUT_CA_BUNDLE."""
    if not ca_bundle:
        return True
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"FANOUT_CA_BUNDLE: cannot use {ca_bundle}: {exc}") from None


def _version() -> str:
    try:
        return metadata.version("fanout")
    except metadata.PackageNotFoundError:
        return "0+unknown"
