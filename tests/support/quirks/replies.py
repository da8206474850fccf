"""The answers the quirk proxy gives itself, without asking the registry: :class:`Reply`, and
distribution-style error and JSON bodies. HTTP/1.1 framing is ``tests.support.http_wire``'s."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.support.http_wire import answer

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 307: "Temporary Redirect",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large",
           416: "Requested Range Not Satisfiable", 429: "Too Many Requests"}


def status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Quirk')}"


@dataclass
class Reply:
    """An answer the proxy gives itself, without asking the registry."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def encode(self, method: str) -> bytes:
        return answer(status_line(self.status), self.headers.items(), self.body,
                      head_only=method == "HEAD")


def error_reply(status: int, code: str, message: str, *, detail: object = None,
                headers: Mapping[str, str] | None = None) -> Reply:
    """A distribution-style error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    item: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        item["detail"] = detail
    return Reply(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                 json.dumps({"errors": [item]}).encode())


def json_reply(status: int, doc: object, content_type: str = "application/json",
               headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"Content-Type": content_type, **(headers or {})},
                 json.dumps(doc).encode())
