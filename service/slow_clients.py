"""A deadline on a request's headers, which uvicorn does not have.

uvicorn times out an idle keep-alive connection, but a client that sends a header line every
few seconds (slowloris) holds its connection, and a slot of ``limit_concurrency``, for ever.
This protocol gives every request's headers ``request_timeout`` seconds from their first byte
(or from the connection's opening); after that the connection gets a 408 and is closed. The
body has its own deadline (:mod:`service.limits`).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BODY = b'{"detail": "the request headers did not arrive in time"}'
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
              + _BODY)


def header_timeout_protocol(request_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with ``request_timeout`` seconds for each request's headers."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of a next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in: the body's deadline is the app's

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_TIMED_OUT)
                self.transport.close()

    return HeaderDeadline
