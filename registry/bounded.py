"""Response bodies with a size limit: ping and token answers are small, or hostile."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from .errors import ProtocolError

# Ping and token bodies are small JSON; anything bigger is a broken or hostile endpoint.
MAX_AUTH_BODY = 1 << 20


class BoundedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Fails once more than ``limit`` bytes have arrived."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, url: httpx.URL) -> None:
        self._inner = inner
        self._url = url

    def _too_big(self) -> ProtocolError:
        return ProtocolError(f"response from {self._url.host} exceeds {MAX_AUTH_BODY} bytes",
                             url=self._url)

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._inner, httpx.SyncByteStream)
        total = 0
        for chunk in self._inner:
            total += len(chunk)
            if total > MAX_AUTH_BODY:
                raise self._too_big()
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._inner, httpx.AsyncByteStream)
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > MAX_AUTH_BODY:
                raise self._too_big()
            yield chunk

    def close(self) -> None:
        if isinstance(self._inner, httpx.SyncByteStream):
            self._inner.close()

    async def aclose(self) -> None:
        if isinstance(self._inner, httpx.AsyncByteStream):
            await self._inner.aclose()


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of a streamed response's body; the rest is left unread.

    For bodies read only for what they say (error codes, a ping): a registry that streams
    without end gets no more of our memory than this.
    """
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def bound_body(response: httpx.Response) -> None:
    """Make reading ``response`` fail past MAX_AUTH_BODY bytes, early if it says so up front."""
    length = response.headers.get("content-length", "")
    bounded = BoundedStream(response.stream, response.request.url)
    if length.isdigit() and int(length) > MAX_AUTH_BODY:
        raise bounded._too_big()
    response.stream = bounded
