"""One conditional write in Redis: a few commands applied only if a hash's fields are as read.

A ledger transition under ``WATCH`` costs a ``WATCH``, a read, a ``MULTI`` and an ``EXEC``
around its writes. When the caller already knows what the fields it decides on must hold (it
read them moments ago, or wrote them), one ``EVALSHA`` does the same: an ``HMGET`` of those
fields, and the writes only if each is as expected (a field missing counts as empty). Redis
runs a script whole, with nothing else between its commands, so the writes see exactly the
fields checked: what a ``WATCH`` that never fired would have allowed. When the check fails,
nothing is written and the caller runs its transition the long way.

Every command a script calls counts in ``INFO commandstats``; only the framing goes (issue 18:
two commands of each of a copy's three common transitions: its start, its success, its tag's
claim). ``delete_if`` is the one command with a condition of its own: a lock's
compare-and-delete.

fakeredis runs scripts with ``lupa`` (``fakeredis[lua]``, in the test dependencies). A Redis
that refuses scripts (an ACL, a proxy that does not pass them) is told apart from a failed
write: :class:`ScriptsRefused`, after which the caller keeps to its transitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

# KEYS[1]: the hash checked; ARGV: n, n field names, n expected values, then the commands:
# name, key index, argument count, arguments. Returns {applied, a delete_if deleted}.
_SCRIPT = """
local n = tonumber(ARGV[1])
if n > 0 then
  local names = {}
  for i = 1, n do names[i] = ARGV[1 + i] end
  local found = redis.call('HMGET', KEYS[1], unpack(names))
  for i = 1, n do
    if (found[i] or '') ~= ARGV[1 + n + i] then return {0, 0} end
  end
end
local at, deleted = 2 + 2 * n, 0
while at <= #ARGV do
  local name, key, count = ARGV[at], KEYS[tonumber(ARGV[at + 1])], tonumber(ARGV[at + 2])
  local args = {}
  for i = 1, count do args[i] = ARGV[at + 2 + i] end
  if name == 'DELIFEQ' then
    if redis.call('GET', key) == args[1] then
      redis.call('DEL', key)
      deleted = 1
    end
  else
    redis.call(name, key, unpack(args))
  end
  at = at + 3 + count
end
return {1, deleted}
"""
# Replies that mean "no scripts here", not "this write failed".
_REFUSALS = ("unknown command", "noperm", "disabled", "lupa")


class ScriptsRefused(Exception):
    """This Redis does not run scripts: use the transition under WATCH."""


class CheckedWrite:
    """Commands to apply if the hash ``key``'s fields are as ``expect`` says. The command
    methods take what a pipeline's do, so a :class:`TransitionObserver` can write into one."""

    def __init__(self, key: str, expect: Mapping[str, str]) -> None:
        self._keys = [key]
        self._expect = dict(expect)
        self._commands: list[str] = []

    def _add(self, name: str, key: str, *args: str | int | float) -> None:
        if key not in self._keys:
            self._keys.append(key)
        self._commands += [name, str(self._keys.index(key) + 1), str(len(args)),
                           *(a if isinstance(a, str) else repr(a) for a in args)]

    def hset(self, key: str, mapping: Mapping[str, str]) -> None:
        self._add("HSET", key, *(item for pair in mapping.items() for item in pair))

    def hincrby(self, key: str, field: str, amount: int = 1) -> None:
        self._add("HINCRBY", key, field, int(amount))

    def hincrbyfloat(self, key: str, field: str, amount: float = 1.0) -> None:
        self._add("HINCRBYFLOAT", key, field, float(amount))

    def zadd(self, key: str, member: str, score: float) -> None:
        self._add("ZADD", key, float(score), member)

    def zrem(self, key: str, member: str) -> None:
        self._add("ZREM", key, member)

    def pexpire(self, key: str, milliseconds: int) -> None:
        self._add("PEXPIRE", key, int(milliseconds))

    def delete_if(self, key: str, value: str) -> None:
        """Delete ``key`` if it holds ``value`` (a lock still ours)."""
        self._add("DELIFEQ", key, value)

    def apply(self, client: redis.Redis[Any]) -> tuple[bool, bool]:
        """Run it: (applied, a ``delete_if`` deleted). Raises :class:`ScriptsRefused`."""
        args = [str(len(self._expect)), *self._expect, *self._expect.values(),
                *self._commands]
        try:
            applied, deleted = _script(client)(keys=self._keys, args=args, client=client)
        except redis.ResponseError as exc:
            if any(word in str(exc).lower() for word in _REFUSALS):
                raise ScriptsRefused(str(exc)) from exc
            raise
        except ImportError as exc:  # fakeredis without lupa
            raise ScriptsRefused(str(exc)) from exc
        return bool(int(applied)), bool(int(deleted))


def _script(client: redis.Redis[Any]) -> Any:
    # redis-py's Script sends EVALSHA, and loads the script once when Redis does not know it
    # (making one costs a SHA-1 of the text, nothing in Redis).
    return client.register_script(_SCRIPT)
