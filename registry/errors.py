"""One error tree for everything that talks to a registry.

::

    RegistryError                      status, codes, method, url (redacted)
    ├── TransientError                 may succeed on retry
    │   ├── ConnectionFailed           refused, reset, cut mid-body, TLS handshake
    │   ├── Timeout                    connect / read / write / pool timeout
    │   ├── RateLimited                429 or TOOMANYREQUESTS; carries retry_after
    │   ├── ServerError                5xx, 408, UNAVAILABLE
    │   └── TokenExpired               401 to a streamed upload whose token ran out on the way
    └── PermanentError                 will not succeed on retry
        ├── InvalidReference           also a ValueError; names the part that is wrong
        ├── CredentialError            a credential helper or config that cannot be used
        ├── UntrustedCertificate       TLS verification failed: a CA bundle is missing
        ├── Unauthorized               401 after a fresh token
        ├── Denied                     403 or DENIED
        ├── TagImmutable               a tag PUT refused: the tag is immutable there (immutable.py)
        ├── CannotUntag                a tag that cannot be deleted there (untag.py)
        ├── NotFound                   404, NAME_UNKNOWN, MANIFEST_UNKNOWN, BLOB_UNKNOWN
        │   └── BlobNotInLayout        an OCI layout or archive lacks a blob it names
        ├── DigestMismatch             bytes that do not hash to the digest asked for
        │   └── CorruptBlob            a layout's blob that is damaged or cut short
        ├── NotALayout                 a path that is not an OCI image layout or archive
        ├── SizeMismatch               bytes whose length is not the descriptor's size
        ├── InvalidManifest            malformed, too large, schema 1, unknown media type
        ├── ProtocolError              a response the distribution spec does not allow
        ├── UnexpectedStatus           any other 4xx
        └── InternalError              a bug of fanout's, reported per destination

``is_transient(exc)`` is the one classifier: the request-tier retry (tenacity) and the task-tier
retry (Celery) both ask it, so "what is worth retrying" is decided in exactly one place.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from .immutable import ImmutableAnswer, immutable_answer, tag_of_put

# Query parameters safe to show: the protocol's own. Anything else (a storage backend's signed
# URL, a token in a query string, an upload's opaque state) is masked: we cannot know it is safe.
_SAFE_QUERY_KEYS = frozenset(
    {"digest", "mount", "from", "n", "last", "artifactType", "scope", "service"})

_TRANSIENT_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})


def redact_url(url: str | httpx.URL | None) -> str | None:
    """Return ``url`` without user info and with every non-protocol query value masked."""
    if url is None:
        return None
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal lost its brackets in .hostname
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [(k, v if k in _SAFE_QUERY_KEYS else "REDACTED")
         for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe=":/,",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class RegistryError(Exception):
    """Base of every error fanout raises about a registry or an image."""

    transient: ClassVar[bool] = False
    # The ``Range`` header of the answer, where it had one: an upload's refusal says there
    # how much of it the registry holds.
    range: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: Iterable[str] = (),
        method: str | None = None,
        url: str | httpx.URL | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.codes = tuple(codes)
        self.method = method
        self.url = redact_url(url)
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        status = f" [HTTP {self.status}]" if self.status else ""
        return f"{self.message}{status}{where}"

    def reworded(self, message: str) -> Self:
        """The same error (class, codes, request, everything it carries) saying ``message``."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        Exception.__init__(copy, message)
        copy.message = message
        return copy

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary for results, the ledger and ``--json`` output."""
        return {
            "type": type(self).__name__,
            "transient": self.transient,
            "message": str(self),
            "status": self.status,
            "codes": list(self.codes),
        }


class TransientError(RegistryError):
    """May succeed if tried again later."""

    transient = True


class PermanentError(RegistryError):
    """Will not succeed however often it is tried."""

    transient = False


class ConnectionFailed(TransientError):
    pass


class Timeout(TransientError):
    pass


class RateLimited(TransientError):
    pass


class ServerError(TransientError):
    pass


class TokenExpired(TransientError):
    pass


class InvalidReference(PermanentError, ValueError):
    pass


class CredentialError(PermanentError):
    pass


class UntrustedCertificate(PermanentError):
    pass


class Unauthorized(PermanentError):
    pass


class Denied(PermanentError):
    pass


class TagImmutable(PermanentError):
    """The registry will not move ``tag``: a rule there keeps it on the digest it names.

    Not a :class:`Denied`: it says nothing about who we are, so it must not send the client
    looking for fresh credentials as a refusal of our identity does. ``answer`` is whose
    refusal it was (and how that registry's rule is lifted); ``current``, when known, the digest
    the tag names.
    """

    def __init__(self, message: str, *, tag: str, answer: ImmutableAnswer,
                 current: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.tag = tag
        self.answer = answer
        self.current = current


class CannotUntag(PermanentError):
    """``tag`` cannot be deleted at this registry without deleting more than it.

    ``reason`` is ``"deletes-disabled"`` (the registry deletes no manifest at all) or
    ``"shared-digest"`` (it refuses DELETE by tag, and deleting ``digest`` would also delete
    ``also_tagged``). Not a :class:`Denied`: it says nothing about who we are.
    """

    def __init__(self, message: str, *, tag: str, reason: str, digest: str | None = None,
                 also_tagged: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.tag = tag
        self.reason = reason
        self.digest = digest
        self.also_tagged = also_tagged


class NotFound(PermanentError):
    pass


class DigestMismatch(PermanentError):
    pass


class BlobNotInLayout(NotFound):
    """A blob (or manifest) that an OCI layout's manifests name but the layout lacks."""

    def __init__(self, message: str, *, digest: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.digest = digest


class CorruptBlob(DigestMismatch):
    """A layout's blob whose bytes do not hash to its digest, or that ends short."""

    def __init__(self, message: str, *, digest: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.digest = digest


class NotALayout(PermanentError):
    """A directory or file that is not an OCI image layout or archive (or not one we can
    use as asked: a source that does not exist, a REF that is not in its index.json)."""


class LayoutDiskError(PermanentError):
    """Reading or writing an OCI layout or archive failed on disk (no space left, a read-only
    file system, permissions): the same again would fail the same way, so it is not retried."""

    @classmethod
    def of(cls, label: str, doing: str, exc: OSError) -> LayoutDiskError:
        """``LABEL: cannot write: No space left on device (FILE)``."""
        reason = exc.strerror or exc.__class__.__name__
        return cls(f"{label}: cannot {doing}: {reason}"
                   + (f" ({exc.filename})" if exc.filename else ""))


class SizeMismatch(PermanentError):
    pass


class InvalidManifest(PermanentError):
    pass


class ProtocolError(PermanentError):
    pass


class UnexpectedStatus(PermanentError):
    pass


class InternalError(PermanentError):
    pass


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_items(body: bytes) -> tuple[list[str], list[str]]:
    """The distribution error codes and messages of an error body, if it has any."""
    try:
        doc = json.loads(body[:65536])
    except (ValueError, UnicodeDecodeError):
        return [], []
    errors = doc.get("errors") if isinstance(doc, Mapping) else None
    if not isinstance(errors, list):
        return [], []
    codes: list[str] = []
    messages: list[str] = []
    for item in errors:
        if isinstance(item, Mapping):
            code = item.get("code")
            if isinstance(code, str):
                codes.append(code.upper())
            if isinstance(item.get("message"), str):
                messages.append(str(item["message"]))
    return codes, messages


def error_from_response(response: httpx.Response, what: str = "") -> RegistryError:
    """Classify a failed response into the tree above; ``what`` says what we were doing.

    The body must already be read (the caller decides how much of it is worth reading).
    """
    status = response.status_code
    try:
        body = response.content
    except httpx.ResponseNotRead:
        body = b""
    codes, messages = _error_items(body)
    request = response.request
    summary = what or "registry request failed"
    if messages:
        summary = f"{summary}: {messages[0][:200]}"
    kwargs: dict[str, Any] = {
        "status": status, "codes": codes, "method": request.method, "url": request.url,
    }
    # Before the status decides: an immutable tag's refusal reuses 400, 403, 405 and 412.
    tag = tag_of_put(request.method, request.url.path)
    answer = immutable_answer(status, codes, messages) if tag else None
    if tag and answer:
        error: RegistryError = TagImmutable(summary, tag=tag, answer=answer, **kwargs)
    else:
        error = _classify(response, summary, codes, kwargs)
    error.range = response.headers.get("range")
    return error


def _classify(response: httpx.Response, summary: str, codes: list[str],
              kwargs: dict[str, Any]) -> RegistryError:
    status = response.status_code
    code_set = set(codes)
    if status == 429 or "TOOMANYREQUESTS" in code_set:
        after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimited(summary, retry_after=after, **kwargs)
    if status >= 500 or status == 408 or code_set & _TRANSIENT_CODES:
        return ServerError(summary, retry_after=parse_retry_after(
            response.headers.get("retry-after")), **kwargs)
    if status == 401:
        return Unauthorized(summary, **kwargs)
    if status == 403 or "DENIED" in code_set:
        return Denied(summary, **kwargs)
    if status == 404:
        return NotFound(summary, **kwargs)
    return UnexpectedStatus(summary, **kwargs)


def error_from_transport(exc: httpx.TransportError, what: str = "") -> RegistryError:
    """Wrap an httpx transport failure, keeping the redacted request it belongs to."""
    try:
        request: httpx.Request | None = exc.request
    except RuntimeError:  # httpx raises when the error was built without a request
        request = None
    method = request.method if request is not None else None
    url = request.url if request is not None else None
    summary = f"{what}: {type(exc).__name__}" if what else type(exc).__name__
    text = str(exc)
    if text:
        summary = f"{summary}: {text[:200]}"
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(summary, method=method, url=url)
    if is_certificate_error(exc):
        host = request.url.host if request is not None else "the registry"
        return UntrustedCertificate(
            f"{what or 'request'}: the TLS certificate of {host} is not trusted "
            "(give its CA with --ca-bundle or FANOUT_CA_BUNDLE)", method=method, url=url)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return ProtocolError(summary, method=method, url=url)
    return ConnectionFailed(summary, method=method, url=url)


def is_certificate_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a failed TLS certificate verification."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying: the single classifier both retry tiers use."""
    if isinstance(exc, RegistryError):
        return exc.transient
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    if is_certificate_error(exc):
        return False
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def retry_after_of(exc: BaseException) -> float | None:
    """The server-requested delay carried by ``exc``, if any."""
    return exc.retry_after if isinstance(exc, RegistryError) else None
