"""What must hold after every fault scenario, checked by code that shares nothing with fanout's.

- ``assert_tags_complete``: every tag at a destination points to a manifest whose every child
  and blob is present and byte-identical to the source — walked with plain httpx (manifests
  compared byte for byte, blobs hashed as they stream), then judged again by skopeo.
- ``assert_no_secret``: a credential appears nowhere — not in any key or value of any database of
  the broker's Redis (kombu keeps message bodies base64-encoded inside a JSON envelope, so
  base64 runs are decoded and searched too, three levels deep), nor in the texts given (logs,
  ``fanout status --json``, error messages). Failures name where, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from tests.support.skopeo import assert_same_image, skopeo_digest

_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")
_DECODE_DEPTH = 3

Auth = tuple[str, str] | None


# -- complete and identical ---------------------------------------------------------------------


def assert_tags_complete(
    registry_url: str, repo: str, source_registry_url: str, source_repo: str, *,
    tags: list[str] | None = None, auth: Auth = None, source_auth: Auth = None,
    skopeo: bool = True,
) -> dict[str, str]:
    """Every tag of ``repo`` is complete and identical to the source; return {tag: digest}.

    ``tags``: these at least must be there (without it, a repository with no tags fails).
    ``auth``/``source_auth``: (user, password) for Basic auth (htpasswd registries).
    """
    found: dict[str, str] = {}
    with httpx.Client(base_url=registry_url, auth=auth, timeout=120) as dst, \
            httpx.Client(base_url=source_registry_url, auth=source_auth, timeout=120) as src:
        present = _tags(dst, repo)
        assert present, f"{repo}: no tags at {registry_url}"
        missing = sorted(set(tags or ()) - set(present))
        assert not missing, f"{repo}: tags {missing} missing at {registry_url} (has {present})"
        walked: set[str] = set()
        for tag in present:
            raw, media_type = _manifest(dst, repo, tag)
            digest = _sha256(raw)
            source_raw, source_type = _manifest(src, source_repo, digest)
            assert raw == source_raw, f"{repo}:{tag} ({digest}) differs from the source's bytes"
            assert media_type == source_type, f"{repo}:{tag}: {media_type} != {source_type}"
            _walk(dst, src, repo, source_repo, digest, raw, walked)
            found[tag] = digest
    if skopeo:
        _skopeo(registry_url, repo, source_registry_url, source_repo, found, auth, source_auth)
    return found


def _walk(dst: httpx.Client, src: httpx.Client, repo: str, source_repo: str, digest: str,
          raw: bytes, walked: set[str]) -> None:
    if digest in walked:
        return
    walked.add(digest)
    doc: dict[str, Any] = json.loads(raw)
    for child in doc.get("manifests") or []:
        child_raw, _ = _manifest(dst, repo, child["digest"])
        assert _sha256(child_raw) == child["digest"], f"{repo}@{child['digest']}: wrong bytes"
        assert len(child_raw) == child["size"], f"{repo}@{child['digest']}: wrong size"
        source_raw, _ = _manifest(src, source_repo, child["digest"])
        assert child_raw == source_raw, f"{repo}@{child['digest']} differs from the source"
        _walk(dst, src, repo, source_repo, child["digest"], child_raw, walked)
    blobs = [doc["config"]] if "config" in doc else []
    blobs += (doc.get("layers") or []) + (doc.get("blobs") or [])
    for blob in blobs:
        if blob["digest"] in walked:
            continue
        walked.add(blob["digest"])
        head = src.head(f"/v2/{source_repo}/blobs/{blob['digest']}")
        assert head.status_code == 200, f"source {source_repo} lacks {blob['digest']}"
        _assert_blob(dst, repo, blob["digest"], int(blob["size"]))


def _assert_blob(client: httpx.Client, repo: str, digest: str, size: int) -> None:
    path = f"/v2/{repo}/blobs/{digest}"
    head = client.head(path)
    assert head.status_code == 200, f"{repo}: blob {digest} missing ({head.status_code})"
    assert int(head.headers.get("Content-Length", size)) == size, f"{repo}: {digest} size"
    hasher = hashlib.sha256()
    length = 0
    with client.stream("GET", path, follow_redirects=True) as response:
        assert response.status_code == 200, f"{repo}: GET blob {digest} -> {response.status_code}"
        for piece in response.iter_bytes(1024 * 1024):
            hasher.update(piece)
            length += len(piece)
    assert f"sha256:{hasher.hexdigest()}" == digest, f"{repo}: blob {digest} has other bytes"
    assert length == size, f"{repo}: blob {digest} is {length} bytes, not {size}"


def _tags(client: httpx.Client, repo: str) -> list[str]:
    response = client.get(f"/v2/{repo}/tags/list")
    if response.status_code == 404:
        return []
    assert response.status_code == 200, f"{repo}: tags/list -> {response.status_code}"
    return sorted(response.json().get("tags") or [])


def _manifest(client: httpx.Client, repo: str, reference: str) -> tuple[bytes, str]:
    response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": _ACCEPT})
    assert response.status_code == 200, (
        f"{client.base_url} {repo}:{reference}: manifest -> {response.status_code}")
    return response.content, response.headers.get("Content-Type", "")


def _skopeo(registry_url: str, repo: str, source_registry_url: str, source_repo: str,
            found: dict[str, str], auth: Auth, source_auth: Auth) -> None:
    host, source_host = _host(registry_url), _host(source_registry_url)
    creds = ":".join(auth) if auth else None
    source_creds = ":".join(source_auth) if source_auth else None
    pulled: set[str] = set()
    for tag, digest in found.items():
        ref = f"{host}/{repo}:{tag}"
        if digest in pulled:  # one full pull per digest; the other tags by their digest
            assert skopeo_digest(ref, creds) == digest, f"skopeo: {repo}:{tag} is not {digest}"
            continue
        assert_same_image(f"{source_host}/{source_repo}@{digest}", ref, source_creds, creds)
        pulled.add(digest)


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
