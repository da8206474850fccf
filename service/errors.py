"""The service's one error: a status and a message for the client, rendered as
``{"detail": "..."}``. Everything a handler refuses is raised as one, so every refusal has the
same shape and none leaks a traceback, a token or a credential."""

from __future__ import annotations


class ApiError(Exception):
    """Answer ``status`` with ``detail``; ``headers`` such as ``WWW-Authenticate``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
