"""What must hold after every fault scenario, checked by code that shares nothing with fanout's.

- ``assert_tags_complete``: every tag at a destination points to a manifest whose every child
  and blob is present and byte-identical to the source (``checks.assert_same_image``), then
  judged again by skopeo.
- ``assert_no_secret``: a credential appears nowhere — not in any key or value of any database of
  the broker's Redis (kombu keeps message bodies base64-encoded inside a JSON envelope, so
  base64 runs are decoded and searched too, three levels deep), nor in the texts given (logs,
  ``fanout status --json``, error messages). Failures name where, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis

from tests.support.checks import assert_same_image
from tests.support.registry_client import Auth, RepoClient

_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")
_DECODE_DEPTH = 3


# -- complete and identical ---------------------------------------------------------------------


def assert_tags_complete(
    registry_url: str, repo: str, source_registry_url: str, source_repo: str, *,
    tags: list[str] | None = None, auth: Auth = None, source_auth: Auth = None,
    skopeo: bool = True,
) -> dict[str, str]:
    """Every tag of ``repo`` is complete and identical to the source; return {tag: digest}.

    ``tags``: these at least must be there (without it, a repository with no tags fails).
    ``auth``/``source_auth``: (user, password), for Basic or token auth.
    """
    with RepoClient(registry_url, repo, auth) as dst, \
            RepoClient(source_registry_url, source_repo, source_auth) as src:
        present = dst.tag_list()
        assert present, f"{repo}: no tags at {registry_url}"
        missing = sorted(set(tags or ()) - set(present))
        assert not missing, f"{repo}: tags {missing} missing at {registry_url} (has {present})"
        return assert_same_image(src, dst, every_tag=True, skopeo=skopeo)


# -- no secret anywhere -------------------------------------------------------------------------


def assert_no_secret(secret: str, redis_url: str | None, *texts: str | bytes) -> None:
    """``secret`` is in no key or value of any database of ``redis_url``, nor in ``texts``
    (also base64-decoded). The failure lists where, with the secret masked."""
    assert len(secret) >= 8, "a short secret would match by chance"
    needle = secret.encode()
    places: list[str] = []
    if redis_url is not None:
        places += [where for where, data in redis_contents(redis_url) if contains(data, needle)]
    places += [f"text #{i}" for i, text in enumerate(texts)
               if contains(text.encode() if isinstance(text, str) else text, needle)]
    masked = [place.replace(secret, "***") for place in places]
    assert not places, f"the secret appears in {len(places)} place(s): {masked[:20]}"


def contains(data: bytes, needle: bytes, depth: int = _DECODE_DEPTH) -> bool:
    """``needle`` in ``data``, or in any base64 run of it decoded (``depth`` levels)."""
    if needle in data:
        return True
    if depth <= 0:
        return False
    return any(contains(decoded, needle, depth - 1) for decoded in _decoded_runs(data))


def _decoded_runs(data: bytes) -> Iterator[bytes]:
    for match in _BASE64_RUN.finditer(data):
        run = match.group().rstrip(b"=")
        # A secret encoded inside a longer run may start at any of four offsets of it.
        for start in range(4):
            piece = run[start:]
            piece += b"=" * (-len(piece) % 4)
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    yield decode(piece)
                except (binascii.Error, ValueError):
                    continue


def redis_contents(url: str) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) for every key name and every value of every type in every database."""
    parts = urlsplit(url)
    server = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                         password=parts.password)
    try:
        databases = sorted(int(name[2:]) for name in server.info("keyspace"))
    finally:
        server.close()
    for db in databases:
        client = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                             password=parts.password, db=db)
        try:
            for key in client.scan_iter(count=1000):
                where = f"db{db} {key[:80]!r}"
                yield f"{where} (key)", key
                for value in _values(client, key):
                    yield where, value
        finally:
            client.close()


def _values(client: redis.Redis[bytes], key: bytes) -> list[bytes]:
    answer = client.execute_command("TYPE", key)
    kind = answer.decode() if isinstance(answer, bytes) else str(answer)
    if kind == "string":
        value = client.get(key)
        return [value] if value is not None else []
    if kind == "hash":
        return [item for pair in client.hgetall(key).items() for item in pair]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [repr(entry).encode() for entry in client.xrange(key)]
    return []  # expired between SCAN and TYPE ("none")
