"""The request body, bounded in size and in time, before any handler sees it.

A plain ASGI middleware: the body is read here, whole (at most ``max_bytes``, which is small:
requests and webhook payloads are a few KiB), then replayed to the app. A body over the bound
is answered 413 without reading the rest; one that does not arrive within ``read_timeout``
(a client sending a byte a second) is answered 408, so a slow client holds a connection for
seconds, not for ever.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20
READ_TIMEOUT = 10.0


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_length(scope)
            body = await asyncio.wait_for(self._read(receive), self.read_timeout)
        except _Refused as refused:
            await _answer(send, refused.status, refused.detail)
            return
        except TimeoutError:
            await _answer(send, 408, f"the request body did not arrive within "
                                     f"{self.read_timeout:g} s")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left to hear

        await self.app(scope, replay, send)

    def _check_length(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _Refused(400, "Content-Length is not a number") from None
                if length > self.max_bytes:
                    raise _Refused(413, f"the body is {length} bytes; at most "
                                        f"{self.max_bytes} are accepted")

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the client went away before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _Refused(413, f"the body is over {self.max_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
