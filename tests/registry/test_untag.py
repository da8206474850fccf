"""registry.untag against an in-memory repository (httpx MockTransport): a tag deleted alone,
by tag or (where refused) by digest when no other tag names it; CannotUntag otherwise; what a
host refused remembered."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx
import pytest

from registry.capabilities import CapabilityStore
from registry.errors import CannotUntag, Denied
from registry.retry import RetryPolicy
from registry.session import Registries
from registry.untag import Untagged, probe_deletes, untag
from tests.support.fake_registry import error
from tests.support.fake_tags import TagRegistry

FAST = RetryPolicy(attempts=3, initial=0.001, maximum=0.01, max_elapsed=5)


def run_untag(reg: TagRegistry, *tags: str, capabilities: CapabilityStore | None = None,
              known: Mapping[str, str | None] | None = None) -> list[Untagged]:
    async def go() -> list[Untagged]:
        async with Registries(transport=httpx.MockTransport(reg.handle), retry=FAST,
                              capabilities=capabilities) as regs:
            client = regs.client(reg.host)
            return [await untag(client, reg.name, tag, known=known) for tag in tags]

    return asyncio.run(go())


def deletes(reg: TagRegistry) -> list[str]:
    return [r.url.path.rsplit("/", 1)[1] for r in reg.requests if r.method == "DELETE"]


def test_a_registry_that_deletes_by_tag_deletes_the_tag_alone() -> None:
    reg = TagRegistry(by_tag="ok")
    digest = reg.tag("old", "one")
    reg.tags["keep"] = digest
    caps = CapabilityStore()

    assert run_untag(reg, "old", capabilities=caps) == [Untagged("old", "tag")]

    assert reg.tags == {"keep": digest} and digest in reg.manifests
    assert deletes(reg) == ["old"] and reg.count("HEAD") == 0
    assert caps.get("reg.test").delete_by_tag is True


@pytest.mark.parametrize("by_tag", ["400", "405", "404"])
def test_refused_by_tag_the_digest_goes_when_the_tag_is_its_last(by_tag: str) -> None:
    reg = TagRegistry(by_tag=by_tag)
    old, other = reg.tag("old", "one"), reg.tag("other", "two")
    reg.tag("older", "three")
    caps = CapabilityStore()

    # distribution 2.8 answers 400 DIGEST_INVALID; some 405 UNSUPPORTED; some 404.
    done = run_untag(reg, "old", "older", capabilities=caps)

    assert done[0] == Untagged("old", "digest", old)
    assert reg.tags == {"other": other} and old not in reg.manifests
    # The host's refusal is remembered: the second untag does not ask by tag again.
    assert deletes(reg) == ["old", old, done[1].digest]
    assert caps.get("reg.test").delete_by_tag is False
    assert caps.get("reg.test").deletes is True


def test_a_digest_another_tag_names_is_not_deleted() -> None:
    reg = TagRegistry(by_tag="400")
    digest = reg.tag("old", "one")
    reg.tags["v1"] = reg.tags["v1.0"] = digest
    reg.tag("v2", "two")

    with pytest.raises(CannotUntag) as caught:
        run_untag(reg, "old")

    error_ = caught.value
    assert (error_.reason, error_.digest, error_.also_tagged) == ("shared-digest", digest,
                                                                  ("v1", "v1.0"))
    assert "refuses DELETE by tag" in str(error_) and "also tagged v1, v1.0" in str(error_)
    assert deletes(reg) == ["old"] and digest in reg.manifests and "old" in reg.tags
    # No map given: the repository was listed and every other tag HEADed.
    assert reg.count("GET", "/tags/list$") == 1 and reg.count("HEAD") == 4


def test_the_callers_map_spares_a_listing_and_a_stale_one_is_not_trusted() -> None:
    reg = TagRegistry(by_tag="400")
    one, two = reg.tag("old", "one"), reg.tag("v1", "two")

    # Fresh: the map says no other tag names old's digest.
    assert run_untag(reg, "old", known={"old": one, "v1": two})[0].how == "digest"
    assert reg.count("GET", "/tags/list$") == 0

    # Stale: the map says "new" names another digest; it has moved to v1's since.
    reg.requests.clear()
    reg.tags["new"] = two
    with pytest.raises(CannotUntag, match="also tagged v1"):
        run_untag(reg, "new", known={"new": one, "v1": "sha256:" + "0" * 64})
    assert reg.count("GET", "/tags/list$") == 1


def test_an_absent_tag_is_nothing_to_do() -> None:
    reg = TagRegistry(by_tag="404")
    reg.tag("v1", "one")

    assert run_untag(reg, "gone") == [Untagged("gone", "absent")]
    assert deletes(reg) == ["gone"]


def test_deletes_disabled_is_cannot_untag_and_remembered() -> None:
    reg = TagRegistry(deletes=False, by_tag="405")
    reg.tag("old", "one")
    caps = CapabilityStore()

    with pytest.raises(CannotUntag) as caught:
        run_untag(reg, "old", capabilities=caps)
    assert caught.value.reason == "deletes-disabled"
    assert "deletes are disabled at reg.test" in str(caught.value)
    assert caps.get("reg.test").deletes is False

    reg.requests.clear()
    with pytest.raises(CannotUntag, match="deletes are disabled"):
        run_untag(reg, "old", capabilities=caps)
    assert reg.requests == []  # known: nothing asked


def test_deletes_disabled_is_told_apart_from_a_shared_digest() -> None:
    reg = TagRegistry(deletes=False)
    digest = reg.tag("old", "one")
    reg.tags["v1"] = digest

    with pytest.raises(CannotUntag) as caught:
        run_untag(reg, "old", known={"old": digest, "v1": digest})

    assert caught.value.reason == "deletes-disabled"
    assert reg.tags == {"old": digest, "v1": digest}


def test_delete_refused_to_us_is_denied_not_cannot_untag() -> None:
    reg = TagRegistry()
    reg.tag("old", "one")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return error(403, "DENIED", "requested access to the resource is denied")
        return reg.handle(request)

    async def go() -> None:
        async with Registries(transport=httpx.MockTransport(handler), retry=FAST) as regs:
            await untag(regs.client("reg.test"), "app", "old")

    with pytest.raises(Denied):
        asyncio.run(go())


@pytest.mark.parametrize(("answer", "access"), [
    (error(404, "MANIFEST_UNKNOWN"), "allowed"),
    (error(404, "NAME_UNKNOWN"), "allowed"),
    (error(405, "UNSUPPORTED"), "disabled"),
    (error(403, "DENIED"), "denied"),
    (httpx.Response(401), "denied"),
])
def test_probe_deletes(answer: httpx.Response, access: str) -> None:
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        asked.append(request)
        return answer

    async def go() -> str:
        async with Registries(transport=httpx.MockTransport(handler), retry=FAST) as regs:
            return await probe_deletes(regs.client("reg.test"), "app")

    assert asyncio.run(go()) == access
    assert [r.method for r in asked] == ["DELETE"]
    assert asked[0].url.path.startswith("/v2/app/manifests/sha256:")
