"""Tag listings and tag deletes as hosted registries answer them, for mirrors.

- :class:`PagedTags`: ``tags/list`` in pages of at most N (Docker Hub: 100), with Docker Hub's
  ``Link: </v2/<name>/tags/list?last=<tag>&n=<N>>; rel="next"`` (or an absolute one, or none:
  the n/last convention alone), honouring ``n`` and ``last``. The registry behind is asked for
  the whole list once per page, so tags added meanwhile show as they would.
- :class:`DeleteByTag`: DELETE by tag as OCI 1.1 has it (the tag goes, the manifest and its
  other tags stay), which distribution 2.8 behind does not do: done in its storage directly,
  as distribution's own ``tagStore.Untag`` does (the tag's directory removed).
- :class:`DeleteByTagRefused`: DELETE by tag refused (405 UNSUPPORTED, as some hosted
  registries do; distribution 2.8 itself answers 400 DIGEST_INVALID).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from urllib.parse import urlencode

import httpx

from .exchange import Behaviour, Exchange
from .replies import Reply, error_reply, json_reply

DOCKER_HUB_PAGE = 100


class PagedTags(Behaviour):
    """Pages of at most ``page`` tags. ``link``: ``"relative"`` (Docker Hub), ``"absolute"``
    (the proxy's URL) or ``"none"``. ``pages`` counts the listing pages answered."""

    name = "paged-tags"

    def __init__(self, page: int = DOCKER_HUB_PAGE, *, link: str = "relative") -> None:
        if link not in ("relative", "absolute", "none"):
            raise ValueError(f"link must be relative, absolute or none, not {link!r}")
        self.page = page
        self.link = link
        self._lock = threading.Lock()
        self.pages = 0

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method != "GET" or ex.kind != "tags" or ex.ref != "list" or ex.repo is None:
            return None
        whole = httpx.get(f"{ex.proxy.upstream_url}/v2/{ex.repo}/tags/list", timeout=30)
        if whole.status_code != 200:
            return Reply(whole.status_code,
                         {"Content-Type": whole.headers.get("content-type", "text/plain")},
                         whole.content)
        tags = sorted(whole.json().get("tags") or [])
        last = ex.param("last")
        if last:
            tags = [t for t in tags if t > last]
        asked = ex.param("n")
        size = min(int(asked), self.page) if asked and asked.isdigit() and int(asked) else \
            self.page
        shown, more = tags[:size], len(tags) > size
        headers = {}
        if more and self.link != "none":
            target = f"/v2/{ex.repo}/tags/list?{urlencode({'last': shown[-1], 'n': size})}"
            if self.link == "absolute":
                target = ex.proxy.url + target
            headers["Link"] = f'<{target}>; rel="next"'
        with self._lock:
            self.pages += 1
        return json_reply(200, {"name": ex.repo, "tags": shown}, headers=headers)


class DeleteByTag(Behaviour):
    """``DELETE /v2/<name>/manifests/<tag>`` removes the tag alone (OCI 1.1), in the storage of
    the (filesystem) registry behind at ``root``; 404 MANIFEST_UNKNOWN for a tag it lacks."""

    name = "delete-by-tag"

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method != "DELETE" or ex.kind != "manifests" or not ex.ref or ":" in ex.ref:
            return None
        assert ex.repo is not None
        where = (self.root / "storage" / "docker" / "registry" / "v2" / "repositories" / ex.repo
                 / "_manifests" / "tags" / ex.ref)
        if not where.is_dir():
            return error_reply(404, "MANIFEST_UNKNOWN", "manifest unknown")
        shutil.rmtree(where)
        return Reply(202, {"Content-Length": "0"})


class DeleteByTagRefused(Behaviour):
    """``DELETE /v2/<name>/manifests/<tag>`` refused with ``status`` and ``code``; DELETE by
    digest goes to the registry behind."""

    name = "delete-by-tag-refused"

    def __init__(self, status: int = 405, code: str = "UNSUPPORTED",
                 message: str = "The operation is unsupported.") -> None:
        self.status, self.code, self.message = status, code, message

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method != "DELETE" or ex.kind != "manifests" or not ex.ref or ":" in ex.ref:
            return None
        return error_reply(self.status, self.code, self.message)
