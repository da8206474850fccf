"""What a behaviour sees of one request (:class:`Exchange`) and of the registry's answer
(:class:`Upstream`), the hooks it implements (:class:`Behaviour`), and the record the proxy keeps
of every request (:class:`Seen`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BufferedReader
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from tests.support.http_wire import Headers, body_pieces, get_header, is_chunked
from tests.support.loopback_proxy import Seen as _Seen

from .replies import Reply

if TYPE_CHECKING:
    from .proxy import QuirkProxy

# Request bodies a behaviour may look at whole (manifests): anything larger streams.
BUFFER_LIMIT = 16 * 1024 * 1024
API_PATH = re.compile(
    r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs/uploads|blobs|tags|referrers)(?:/(?P<ref>.*))?$")
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Seen(_Seen):
    """One request the proxy received (see ``loopback_proxy.Seen``). ``quirk`` names the
    behaviour that answered or changed the answer; ``length`` is the request's Content-Length.
    """

    length: int | None = None
    quirk: str | None = None

    def line(self, start: float = 0.0) -> str:
        query = f"?{_short_query(self.query)}" if self.query else ""
        size = f" ({self.length} B)" if self.length else ""
        auth = " +auth" if self.authorization else ""
        quirk = f" [{self.quirk}]" if self.quirk else ""
        return (f"{self.time - start:7.3f}s {self.method} {_short_path(self.path)}{query}{size}"
                f"{auth} -> {self.status}{quirk}")


class Behaviour:
    """One way a hosted registry differs. Subclasses override the hooks they need."""

    name = "behaviour"

    def wants_body(self, ex: Exchange) -> bool:
        """Buffer this request's body (at most 16 MiB) so ``on_request`` can read ``ex.body``."""
        return False

    def on_request(self, ex: Exchange) -> Reply | None:
        """Answer instead of the registry, or None to let the request go on."""
        return None

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        """Rewrite ``up`` in place (set ``up.changed_by``), replace it with a Reply, or None."""
        return None


@dataclass
class Upstream:
    """The registry's answer, before the client sees it."""

    status: int
    headers: Headers
    changed_by: str | None = None

    def header(self, name: str) -> str | None:
        return get_header(self.headers, name)

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))


@dataclass
class Exchange:
    """One request as the behaviours see it."""

    proxy: QuirkProxy
    method: str
    path: str
    query: str
    headers: Headers
    record: Seen
    stream: BufferedReader = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    forwarded: int = 0  # request body bytes passed to the registry
    throttle: float | None = None  # bytes per second for the request body, None: full speed
    notes: dict[str, Any] = field(default_factory=dict)
    _consumed: bool = False

    def __post_init__(self) -> None:
        match = API_PATH.match(self.path)
        self.repo: str | None = match["repo"] if match else None
        kind = match["kind"] if match else None
        self.kind: str | None = "uploads" if kind == "blobs/uploads" else kind
        self.ref: str | None = match["ref"] if match else None
        if self.path in ("/v2", "/v2/"):
            self.kind = "base"

    # -- reading the request ---------------------------------------------------------------------
    def header(self, name: str) -> str | None:
        return get_header(self.headers, name)

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)

    def param_all(self, name: str) -> list[str]:
        return [v for k, v in self.params if k == name]

    def set_params(self, params: list[tuple[str, str]]) -> None:
        """Change the query forwarded to the registry (the record keeps what the client sent)."""
        self.query = urlencode(params, safe=":/,")

    @property
    def length(self) -> int | None:
        return self.record.length

    @property
    def is_write(self) -> bool:
        return self.method in _WRITES

    @property
    def upload_id(self) -> str | None:
        return (self.ref or None) if self.kind == "uploads" else None

    @property
    def has_body(self) -> bool:
        return bool(self.length) or is_chunked(self.headers)

    def pieces(self) -> Iterator[bytes]:
        """The request body as it arrives; once only."""
        if self._consumed:
            return
        self._consumed = True
        if self.body is not None:
            yield self.body
            return
        yield from body_pieces(self.stream, self.headers, is_response=False)

    def read_body(self, limit: int = BUFFER_LIMIT) -> bytes:
        """The whole (small) body, kept in ``body`` for the forwarding that may follow."""
        if self.body is None:
            data = bytearray()
            for piece in self.pieces():
                data += piece
                if len(data) > limit:
                    raise ValueError(f"request body over {limit} bytes")
            self.body = bytes(data)
            self._consumed = False
        return self.body

    def drain(self) -> None:
        for _ in self.pieces():
            pass


def _short_path(path: str) -> str:
    # Digests and upload ids make log lines unreadable; 12 characters tell them apart.
    path = re.sub(r"(sha256[:-])([0-9a-f]{12})[0-9a-f]{52}", r"\1\2…", path)
    return re.sub(r"(/uploads/)([0-9a-f-]{8})[0-9a-f-]{28}", r"\1\2…", path)


def _short_query(query: str) -> str:
    query = re.sub(r"_state=[^&]*", "_state=…", query)
    return re.sub(r"(sha256%3A|sha256:)([0-9a-f]{12})[0-9a-f]{52}", r"\1\2…", query)
