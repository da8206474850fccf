"""The registry side of mirrors against real ``docker-registry`` (distribution 2.8), through the
paging quirk proxy: a listing of 250 tags in pages of 100, a 429 on a middle page ridden out,
tags resolved with HEADs only, untag by tag / by digest / refused, and ``fanout check``'s
DELETE column where deletes are enabled and where they are not.

What a test asserts about the repository it reads from the registry BEHIND the proxy, with the
tests' own client, never through fanout."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from registry.client import RegistryClient
from registry.errors import CannotUntag, NotFound
from registry.retry import RetryPolicy
from registry.session import Registries
from registry.tags import list_tags, resolve_tags
from registry.untag import Untagged, untag
from tests.support import images
from tests.support.cli import fanout_env, run_fanout
from tests.support.images import tag_image
from tests.support.quirks import profiles
from tests.support.quirks.manifests import RateLimit
from tests.support.quirks.proxy import QuirkProxy
from tests.support.registries import RegistryServer, RegistrySet

T = TypeVar("T")
# Blips retried at once; a Retry-After still decides its own wait.
FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, max_elapsed=20)
TAGS = [f"v{i:03d}" for i in range(250)]
WRITES = ("PUT", "POST", "PATCH", "DELETE")


def through(proxy: QuirkProxy, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Registries(retry=FAST) as regs:
            return await call(regs.client(proxy.host))

    return asyncio.run(go())


@pytest.fixture(scope="module")
def many_tags(registries: RegistrySet) -> tuple[RegistryServer, str, str]:
    """A repository at the session's source registry with one image under 250 tags."""
    repo = f"test/mirror-many-{secrets.token_hex(4)}"
    return registries.source, repo, tag_image(registries.source, repo, TAGS)


@pytest.fixture
def paging(many_tags: tuple[RegistryServer, str, str]) -> Iterator[QuirkProxy]:
    proxy = QuirkProxy(many_tags[0].url, profiles.paging(100)).start()
    yield proxy
    proxy.stop()


def test_250_tags_are_listed_in_pages_of_100_and_resolved_with_heads_only(
    many_tags: tuple[RegistryServer, str, str], paging: QuirkProxy,
) -> None:
    _, repo, digest = many_tags

    async def list_and_resolve(client: RegistryClient) -> tuple[list[str], dict[str, Any]]:
        listed = await list_tags(client, repo)
        return listed, await resolve_tags(client, repo, listed)

    listed, found = through(paging, list_and_resolve)

    assert listed == TAGS
    assert found == dict.fromkeys(TAGS, digest)
    tally = paging.tally()
    assert tally[("GET", "tags")] == 3, paging.log(path="tags")
    assert tally[("HEAD", "manifests")] == 250
    assert tally[("GET", "manifests")] == 0 and tally[("GET", "blobs")] == 0
    assert not [key for key in tally if key[0] in WRITES]


def test_a_429_on_the_third_page_is_ridden_out(
    many_tags: tuple[RegistryServer, str, str], paging: QuirkProxy,
) -> None:
    _, repo, _ = many_tags
    limit = paging.behaviour(RateLimit)
    limit.script(1, retry_after=1, skip=2)

    assert through(paging, lambda client: list_tags(client, repo)) == TAGS

    [limited] = limit.limited
    listings = paging.requests("GET", "/tags/list")
    assert [s.status for s in listings] == [200, 200, 429, 200], paging.log(path="tags")
    assert "last=v199" in listings[2].query and listings[3].query == listings[2].query
    # The Retry-After (1 s) was waited out before the page was asked again.
    assert listings[3].time - limited.time >= 0.95


def test_an_unknown_repository_raises_not_found(paging: QuirkProxy) -> None:
    with pytest.raises(NotFound):
        through(paging, lambda client: list_tags(client, "test/never-pushed"))


# -- untag --------------------------------------------------------------------------------------


def behind_tags(server: RegistryServer, repo: str) -> list[str]:
    return sorted(images.list_tags(server, repo))


def test_untag_by_tag_leaves_the_manifest_and_its_other_tags(
    fresh_registry: Callable[..., RegistryServer],
) -> None:
    behind = fresh_registry()
    proxy = QuirkProxy(behind.url, profiles.paging(delete_by_tag=behind.root)).start()
    try:
        digest = tag_image(behind, "app", ["old", "keep"])

        done = through(proxy, lambda client: untag(client, "app", "old"))

        assert done == Untagged("old", "tag")
        assert behind_tags(behind, "app") == ["keep"]
        assert images.manifest_exists(behind, f"app@{digest}")
        assert [s.path for s in proxy.requests("DELETE")] == ["/v2/app/manifests/old"]
    finally:
        proxy.stop()


@pytest.mark.parametrize("refusal", ["distribution", "405"])
def test_refused_by_tag_the_digest_goes_when_the_tag_is_its_last(
    fresh_registry: Callable[..., RegistryServer], refusal: str,
) -> None:
    behind = fresh_registry()
    # distribution 2.8 itself answers DELETE by tag 400 DIGEST_INVALID; the proxy, 405.
    profile = profiles.paging(refuse_delete_by_tag=refusal == "405")
    proxy = QuirkProxy(behind.url, profile).start()
    try:
        old = tag_image(behind, "app", ["old"], layer_size=300)
        kept = tag_image(behind, "app", ["keep"], layer_size=400)

        done = through(proxy, lambda client: untag(client, "app", "old"))

        assert done == Untagged("old", "digest", old)
        assert behind_tags(behind, "app") == ["keep"]
        assert not images.manifest_exists(behind, f"app@{old}")
        assert images.manifest_exists(behind, f"app@{kept}")
        deletes = [(s.path.rsplit("/", 1)[1], s.status) for s in proxy.requests("DELETE")]
        assert deletes == [("old", 400 if refusal == "distribution" else 405), (old, 202)]
    finally:
        proxy.stop()


def test_refused_by_tag_a_shared_digest_is_not_deleted(
    fresh_registry: Callable[..., RegistryServer],
) -> None:
    behind = fresh_registry()
    proxy = QuirkProxy(behind.url, profiles.paging(3)).start()
    try:
        digest = tag_image(behind, "app", ["old", "v1", "v2"])
        tag_image(behind, "app", ["other", "more", "most"], layer_size=300)

        with pytest.raises(CannotUntag) as caught:
            through(proxy, lambda client: untag(client, "app", "old"))

        assert (caught.value.reason, caught.value.digest) == ("shared-digest", digest)
        assert caught.value.also_tagged == ("v1", "v2")
        assert f"digest {digest} is also tagged v1, v2" in str(caught.value)
        assert behind_tags(behind, "app") == ["more", "most", "old", "other", "v1", "v2"]
        assert [s.path for s in proxy.requests("DELETE")] == ["/v2/app/manifests/old"]
        # Six tags in pages of 3, listed to the end: the second page, full and without a
        # Link, is followed by an empty one (the n/last convention).
        assert proxy.count("GET", "/tags/list") == 3
    finally:
        proxy.stop()


def test_deletes_disabled_is_cannot_untag(
    fresh_registry: Callable[..., RegistryServer],
) -> None:
    behind = fresh_registry(delete=False)
    proxy = QuirkProxy(behind.url, profiles.paging()).start()
    try:
        tag_image(behind, "app", ["old"])

        with pytest.raises(CannotUntag) as caught:
            through(proxy, lambda client: untag(client, "app", "old"))

        assert caught.value.reason == "deletes-disabled"
        assert f"deletes are disabled at {proxy.host}" in str(caught.value)
        assert behind_tags(behind, "app") == ["old"]
    finally:
        proxy.stop()


# -- fanout check -------------------------------------------------------------------------------


def test_check_says_whether_deletes_are_allowed(
    fresh_registry: Callable[..., RegistryServer], tmp_path: Path,
) -> None:
    enabled, disabled = fresh_registry(), fresh_registry(delete=False)
    digest = tag_image(enabled, "app", ["v1"])
    dests = [f"{enabled.host}/app", f"{disabled.host}/app"]
    env = fanout_env()

    out = run_fanout(["check", *dests, "--json"], env, timeout=120)

    assert out.returncode == 0, out.stdout + out.stderr
    rows = {row["registry"]: row for row in json.loads(out.stdout)}
    assert (rows[enabled.host]["delete"], rows[enabled.host]["delete_refusal"]) == (True, None)
    assert (rows[disabled.host]["delete"], rows[disabled.host]["delete_refusal"]) == (
        False, "disabled")
    assert images.manifest_exists(enabled, f"app@{digest}")  # nothing real was deleted

    table = run_fanout(["check", *dests], env, timeout=120)
    lines = table.stdout.splitlines()
    column = lines[0].split().index("DELETE")
    assert [line.split()[column] for line in lines[1:3]] == ["yes", "disabled"], table.stdout
