"""A repository's tags: every one listed (``GET tags/list``, all pages), and where each points.

A listing is all or nothing. It feeds decisions such as pruning, where a short list would
delete tags that are still wanted, so anything short of the whole list raises::

    list_tags     NotFound        the repository is unknown there (404): the caller decides
                                  whether that means "no tags" (a destination) or an error
                  ProtocolError   not a tag list, a page that repeats, a Link to another host,
                                  more than ``max_pages`` pages
                  RegistryError   a page that failed after the request tier's retries
    resolve_tags  {tag: None}     the tag is absent (404)
                  RegistryError   a tag that could not be asked (after retries); the rest are
                                  cancelled

Every page and every HEAD is one request of the per-host layer, under its retries and holds:
a 429 with ``Retry-After`` on page 7 holds the host, is waited out, and the listing goes on.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from .client import RegistryClient
from .errors import NotFound, ProtocolError, UnexpectedStatus
from .fetch import listing_page, manifest_get, manifest_head
from .gather import all_of
from .retry import RetryPolicy, retry_async

# Asked of the registry per page; one that wants fewer answers with fewer and a ``Link``
# (Docker Hub pages at 100 whatever is asked).
TAGS_PAGE_SIZE = 1000
# nginx has over 1,000 tags; 1,000 pages of 100 is 100,000. Past that the registry is broken.
MAX_PAGES = 1000
# HEADs in flight per repository: a thousand tags take seconds, and no registry sees a burst.
RESOLVE_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class _Page:
    tags: list[str]
    next_url: str | None  # the ``Link: <...>; rel="next"`` target, resolved


async def list_tags(
    client: RegistryClient, repository: str, *, page_size: int | None = TAGS_PAGE_SIZE,
    retry: RetryPolicy | None = None, max_pages: int = MAX_PAGES,
) -> list[str]:
    """Every tag of ``repository``, in the registry's order, following every page.

    Pages follow the ``Link: <...>; rel="next"`` header (relative or absolute, on the same
    host); a registry that sends none but fills the ``n`` asked is asked again from
    ``last``. ``page_size`` None asks no ``n`` (the registry's own page size). ``retry``:
    each page's retries (default: the client's). Raises rather than returning a partial
    list: see the module's docstring.
    """
    policy = retry or client.retry_policy
    name = f"{client.registry}/{repository}"
    what = f"list tags of {name}"
    # The scheme (https, or http where allowed) is known once the host is probed; every
    # page's URL, and the check that pages stay on the host, need it.
    await retry_async(policy, client.probe, what=what)
    start = httpx.URL(client.url(f"/v2/{repository}/tags/list"))
    url = start.copy_merge_params({"n": str(page_size)}) if page_size else start
    tags: list[str] = []
    seen: set[str] = set()
    fetched: set[str] = set()
    number = 0
    while True:
        number += 1
        if number > max_pages:
            raise ProtocolError(f"{what}: more than {max_pages} pages; refusing to go on",
                                method="GET", url=url)
        if str(url) in fetched:
            raise ProtocolError(f"{what}: page {number} would fetch a page already fetched "
                                "(the registry's pages loop)", method="GET", url=url)
        fetched.add(str(url))
        try:
            page = await retry_async(
                policy, functools.partial(_get_page, client, repository, url, what),
                what=f"{what} (page {number})")
        except UnexpectedStatus as exc:
            # A registry whose page limit is below ours may refuse ``n`` outright (400):
            # ask again without it and let the registry pick the page size.
            if exc.status != 400 or number != 1 or "n" not in url.params:
                raise
            url = start
            continue
        new = [tag for tag in dict.fromkeys(page.tags) if tag not in seen]
        if page.tags and not new:
            raise ProtocolError(f"{what}: page {number} lists no tag not listed before "
                                "(the registry's pages loop)", method="GET", url=url)
        tags.extend(new)
        seen.update(new)
        following = _following(what, url, page, start)
        if following is None:
            return tags
        if not new:
            raise ProtocolError(f"{what}: page {number} is empty but names a next page",
                                method="GET", url=url)
        url = following


def _following(what: str, url: httpx.URL, page: _Page, start: httpx.URL) -> httpx.URL | None:
    """The next page's URL: the ``Link``'s, else ``last`` after a full page, else None."""
    if page.next_url is not None:
        following = httpx.URL(page.next_url)
        if (following.scheme, following.host, following.port) != (url.scheme, url.host,
                                                                     url.port):
            # Credentials go to the registry's own host only; a listing elsewhere is not its.
            raise ProtocolError(f"{what}: the next page is on another host "
                                f"({following.scheme}://{following.netloc.decode()})",
                                method="GET", url=url)
        return following
    asked = url.params.get("n", "")
    if asked.isdigit() and int(asked) > 0 and len(page.tags) == int(asked):
        # No Link, but a full page: the registry may expect ``last`` (the distribution
        # spec's n/last convention without the header). An empty answer ends the listing.
        return start.copy_merge_params({"n": asked, "last": page.tags[-1]})
    return None


async def _get_page(
    client: RegistryClient, repository: str, url: httpx.URL, what: str,
) -> _Page:
    body, _, next_url = await listing_page(client, repository, str(url), what=what)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what}: the answer is not JSON", method="GET", url=url) from None
    if not isinstance(document, dict) or "tags" not in document:
        raise ProtocolError(f"{what}: the answer is not a tag list (no \"tags\")",
                            method="GET", url=url)
    names = document["tags"]
    if names is None:
        return _Page([], next_url)  # distribution's answer for a repository without tags
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError(f"{what}: \"tags\" is not a list of strings", method="GET", url=url)
    return _Page(names, next_url)


async def resolve_tag(
    client: RegistryClient, repository: str, tag: str, *, retry: RetryPolicy | None = None,
) -> str | None:
    """The digest ``tag`` names in ``repository``, or None when it has no such tag (404).

    A HEAD, or a GET whose bytes are hashed when the registry leaves Docker-Content-Digest
    out of its HEAD. Other failures raise, after ``retry`` (default: the client's).
    """
    policy = retry or client.retry_policy
    what = f"check {client.registry}/{repository}:{tag}"
    info = await retry_async(policy, lambda: manifest_head(client, repository, tag), what=what)
    if info is None:
        return None
    if info.digest:
        return info.digest
    try:
        manifest = await retry_async(policy, lambda: manifest_get(client, repository, tag),
                                     what=what)
    except NotFound:
        return None  # deleted between the HEAD and the GET
    return manifest.digest


async def resolve_tags(
    client: RegistryClient, repository: str, tags: Iterable[str], *,
    concurrency: int = RESOLVE_CONCURRENCY, retry: RetryPolicy | None = None,
) -> dict[str, str | None]:
    """Where each tag points: tag -> digest, None for a tag that is absent.

    ``concurrency`` HEADs at a time. The first tag that cannot be asked (after ``retry``)
    raises its error and cancels the rest: a repository half compared is not compared.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    wanted = list(dict.fromkeys(tags))
    slots = asyncio.Semaphore(concurrency)

    async def one(tag: str) -> str | None:
        async with slots:
            return await resolve_tag(client, repository, tag, retry=retry)

    found = await all_of(one(tag) for tag in wanted)
    return dict(zip(wanted, found, strict=True))
