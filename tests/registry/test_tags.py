"""registry.tags against an in-memory repository (httpx MockTransport): every page followed, a
listing that is not whole raises (never a short list), and tags resolved to digests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from registry.client import RegistryClient
from registry.errors import NotFound, ProtocolError, ServerError
from registry.retry import RetryPolicy
from registry.session import Registries
from registry.tags import list_tags, resolve_tags
from tests.support.fake_registry import error
from tests.support.fake_tags import TagRegistry

T = TypeVar("T")
FAST = RetryPolicy(attempts=3, initial=0.001, maximum=0.01, max_elapsed=5)
Handler = Callable[[httpx.Request], httpx.Response]


def run(handler: Handler, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Registries(transport=httpx.MockTransport(handler), retry=FAST) as regs:
            return await call(regs.client("reg.test"))

    return asyncio.run(go())


def listing(handler: Handler, **kwargs: Any) -> list[str]:
    return run(handler, lambda client: list_tags(client, "app", **kwargs))


def many(count: int, **kwargs: Any) -> TagRegistry:
    reg = TagRegistry(**kwargs)
    for i in range(count):
        reg.tags[f"v{i:03d}"] = "sha256:" + "a" * 64
    return reg


@pytest.mark.parametrize("link", ["relative", "absolute", "none"])
def test_every_page_is_followed(link: str) -> None:
    reg = many(250, page=100, link=link)

    # "none": the n/last convention: a page as full as ``n`` asked asks again from ``last``;
    # the third page, short, ends it.
    assert listing(reg.handle, page_size=100) == sorted(reg.tags)
    assert reg.count("GET", "/tags/list$") == 3
    second = [r for r in reg.requests if r.url.path.endswith("/tags/list")][1]
    assert (second.url.params["last"], second.url.params["n"]) == ("v099", "100")


def test_a_full_last_page_without_link_asks_once_more_and_an_empty_answer_ends_it() -> None:
    reg = many(200, page=100, link="none")

    assert listing(reg.handle, page_size=100) == sorted(reg.tags)
    assert reg.count("GET", "/tags/list$") == 3


def test_page_size_none_asks_no_n() -> None:
    reg = many(5)

    assert listing(reg.handle, page_size=None) == sorted(reg.tags)
    assert "n" not in reg.requests[-1].url.params


def test_a_registry_refusing_n_is_asked_without_it() -> None:
    reg = many(3)

    def strict(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("n"):
            return error(400, "PAGINATION_NUMBER_INVALID")
        return reg.handle(request)

    assert listing(strict) == sorted(reg.tags)


def test_tags_null_is_no_tags() -> None:
    def empty(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tags/list"):
            return httpx.Response(200, json={"name": "app", "tags": None})
        return httpx.Response(200, json={})

    assert listing(empty) == []


@pytest.mark.parametrize(("body", "says"), [
    (b"<html>sign in</html>", "not JSON"),
    (b'{"name": "app"}', "not a tag list"),
    (b'["v1"]', "not a tag list"),
    (b'{"tags": "v1"}', "not a list of strings"),
    (b'{"tags": [1, 2]}', "not a list of strings"),
])
def test_a_malformed_answer_is_an_error(body: bytes, says: str) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tags/list"):
            return httpx.Response(200, content=body)
        return httpx.Response(200, json={})

    with pytest.raises(ProtocolError, match=says):
        listing(broken)


def test_an_unknown_repository_raises_not_found_naming_it() -> None:
    reg = TagRegistry(exists=False)

    with pytest.raises(NotFound) as caught:
        listing(reg.handle)

    assert "NAME_UNKNOWN" in caught.value.codes
    assert "reg.test/app" in str(caught.value)


def test_a_page_that_keeps_failing_raises_and_never_returns_what_came_before() -> None:
    reg = many(250, page=100)

    refused: list[httpx.Request] = []

    def third_page_down(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("last") == "v199":
            refused.append(request)
            return error(503, "UNAVAILABLE")
        return reg.handle(request)

    with pytest.raises(ServerError):
        listing(third_page_down, page_size=100)
    assert reg.count("GET", "/tags/list$") == 2 and len(refused) == FAST.attempts


def test_a_429_on_a_middle_page_is_waited_out_and_the_listing_goes_on() -> None:
    reg = many(250, page=100)
    asked: list[float] = []

    def third_page_limited(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("last") == "v199":
            asked.append(time.monotonic())
            if len(asked) == 1:
                return httpx.Response(429, headers={"Retry-After": "0.3"}, json={
                    "errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]})
        return reg.handle(request)

    assert listing(third_page_limited, page_size=100) == sorted(reg.tags)
    assert reg.count("GET", "/tags/list$") == 3 and len(asked) == 2  # the third page twice
    # The Retry-After, not the policy's millisecond backoff, decided the wait.
    assert asked[1] - asked[0] >= 0.29


@pytest.mark.parametrize("where", ["same", "earlier"])
def test_a_link_back_to_a_page_already_fetched_is_an_error(where: str) -> None:
    reg = many(250, page=100)

    def looping(request: httpx.Request) -> httpx.Response:
        response = reg.handle(request)
        if request.url.params.get("last") == "v099":
            target = str(request.url) if where == "same" else "/v2/app/tags/list?n=1000"
            response.headers["Link"] = f'<{target}>; rel="next"'
        return response

    with pytest.raises(ProtocolError, match="loop"):
        listing(looping)
    assert reg.count("GET", "/tags/list$") == 2


def test_a_page_adding_no_new_tag_is_an_error() -> None:
    reg = many(250, page=100)

    def ignoring_last(request: httpx.Request) -> httpx.Response:
        # A registry that ignores ``last`` serves the first page again under a new URL.
        response = reg.handle(httpx.Request(request.method,
                                            request.url.copy_remove_param("last")))
        if "/tags/list" in request.url.path:
            page = int(request.url.params.get("page", "1"))
            response.headers["Link"] = f'</v2/app/tags/list?n=100&page={page + 1}>; rel="next"'
        return response

    with pytest.raises(ProtocolError, match="no tag not listed before"):
        listing(ignoring_last)


def test_a_link_to_another_host_is_refused() -> None:
    reg = many(250, page=100)

    def elsewhere(request: httpx.Request) -> httpx.Response:
        response = reg.handle(request)
        if "/tags/list" in request.url.path:
            response.headers["Link"] = '<https://evil.test/v2/app/tags/list?last=v099>; rel="next"'
        return response

    with pytest.raises(ProtocolError, match="another host"):
        listing(elsewhere)
    assert all(r.url.host == "reg.test" for r in reg.requests)


def test_pages_without_end_stop_at_the_cap() -> None:
    served = {"n": 0}

    def endless(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/tags/list"):
            return httpx.Response(200, json={})
        served["n"] += 1
        return httpx.Response(200, json={"name": "app", "tags": [f"t{served['n']}"]},
                              headers={"Link": f'</v2/app/tags/list?page={served["n"]}>; '
                                               'rel="next"'})

    with pytest.raises(ProtocolError, match="more than 5 pages"):
        listing(endless, max_pages=5)
    assert served["n"] == 5


# -- resolve_tags -------------------------------------------------------------------------------


def test_resolve_tags_says_where_each_points_and_none_for_an_absent_one() -> None:
    reg = TagRegistry()
    one, two = reg.tag("v1", "one"), reg.tag("v2", "two")
    reg.tags["latest"] = two

    found = run(reg.handle, lambda c: resolve_tags(c, "app", ["v1", "v2", "latest", "gone",
                                                              "v1"]))

    assert found == {"v1": one, "v2": two, "latest": two, "gone": None}
    assert reg.count("HEAD") == 4 and reg.count("GET", "/manifests/") == 0


def test_resolve_tags_hashes_the_bytes_when_head_names_no_digest() -> None:
    reg = TagRegistry(head_digest=False)
    one = reg.tag("v1", "one")

    assert run(reg.handle, lambda c: resolve_tags(c, "app", ["v1"])) == {"v1": one}
    assert reg.count("GET", "/manifests/v1$") == 1


def test_resolve_tags_raises_when_a_tag_cannot_be_asked() -> None:
    reg = TagRegistry()
    reg.tag("v1", "one")
    reg.tag("v2", "two")

    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/manifests/v2"):
            return httpx.Response(500)
        return reg.handle(request)

    with pytest.raises(ServerError):
        run(broken, lambda c: resolve_tags(c, "app", ["v1", "v2"]))


def test_resolve_tags_keeps_to_its_concurrency() -> None:
    reg = many(40)
    for tag in reg.tags:
        reg.tag(tag, tag)
    in_flight = {"now": 0, "most": 0}

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
            await asyncio.sleep(0.005)
            in_flight["now"] -= 1
            return reg.handle(request)

    async def go() -> dict[str, str | None]:
        async with Registries(transport=Slow(), retry=FAST) as regs:
            return await resolve_tags(regs.client("reg.test"), "app", list(reg.tags),
                                      concurrency=4)

    found = asyncio.run(go())
    assert found == reg.tags
    assert 1 < in_flight["most"] <= 4
