"""At most one copy of a (destination, digest) at a time, across every worker and redelivery.

``SET key token NX PX ttl`` takes the lock; the random token proves ownership, so a copy whose
lock expired can never delete the lock a later copy holds. Release is compare-and-delete under
``WATCH`` (optimistic, atomic, and needs no Lua, so fakeredis runs it as is). The expiry must
outlive the task's hard time limit: a lock that expires while its copy still runs would let a
second copy start.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import redis

from registry.errors import InvalidReference
from registry.reference import parse_repository

KEY_PREFIX = "fanout:lock:"


def canonical_repository(destination: str) -> str:
    """``host/path`` as the engine names it; the text as given when it does not parse (a
    message that bad fails before any lock is taken)."""
    try:
        return str(parse_repository(destination))
    except InvalidReference:
        return destination


class Lease:
    """A non-blocking lock on one key, held for ``ttl`` unless renewed; the caller decides
    what to do if it is held."""

    def __init__(
        self, client: redis.Redis[Any], key: str, ttl: float, *, owner: str = "",
        token: str | None = None,
    ) -> None:
        """``token``: act on a lock another instance took (the heartbeat renews the copy's
        lock through a client of its own)."""
        if ttl <= 0:
            raise ValueError(f"lock ttl must be positive, not {ttl}")
        self._redis = client
        self.key = key
        self.ttl = ttl
        # The owner (e.g. the task id) is only for people reading the key; the random part
        # is what makes the token unique.
        self.token = token or (f"{owner}/{secrets.token_hex(8)}" if owner
                               else secrets.token_hex(8))
        self.held = False

    def acquire(self) -> bool:
        """Take the lock if free; True when this instance now holds it."""
        taken = self._redis.set(self.key, self.token, nx=True, px=max(1, int(self.ttl * 1000)))
        self.held = bool(taken)
        return self.held

    def renew(self) -> bool:
        """Push the expiry ``ttl`` out again if the lock is still ours; False when it expired
        or changed hands (the copy must then stop: another may have started)."""
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    if _text(pipe.get(self.key)) != self.token:
                        pipe.unwatch()
                        self.held = False
                        return False
                    pipe.multi()
                    pipe.pexpire(self.key, max(1, int(self.ttl * 1000)))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def release(self) -> bool:
        """Delete the lock if it is still ours; False when it had expired or changed hands."""
        return self._delete_if(lambda token: token == self.token)

    def release_for(self, owner: str) -> bool:
        """Delete the lock if ``owner`` (a task id) took it: for a copy killed from outside,
        whose own process can no longer release it."""
        return self._delete_if(lambda token: bool(owner) and token.startswith(f"{owner}/"))

    def _delete_if(self, ours: Callable[[str], bool]) -> bool:
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    token = _text(pipe.get(self.key))
                    if token is None or not ours(token):
                        pipe.unwatch()
                        self.held = False
                        return False
                    pipe.multi()
                    pipe.delete(self.key)
                    pipe.execute()
                    self.held = False
                    return True
                except redis.WatchError:
                    continue  # someone touched the key between GET and EXEC: look again

    def holder(self) -> str | None:
        """The token of whoever holds the lock now, if anyone."""
        return _text(self._redis.get(self.key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, held={self.held})"


class DestinationLock(Lease):
    """At most one copy of a (destination, digest) at a time."""

    def __init__(
        self, client: redis.Redis[Any], destination: str, digest: str, ttl: float,
        *, owner: str = "", token: str | None = None,
    ) -> None:
        # The canonical name: "Docker.io/x", "index.docker.io/library/x" and "docker.io/x"
        # are one repository, and two copies to it must not both think they hold the lock.
        super().__init__(client, f"{KEY_PREFIX}{canonical_repository(destination)}@{digest}",
                         ttl, owner=owner, token=token)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
