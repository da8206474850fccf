"""``fanout import --map``: longest prefix, whole path components, nothing unmapped."""

from __future__ import annotations

import pytest

from producer.bundle_map import UnmappedRepository, map_all, map_repository, parse_maps
from producer.common import UsageError


def test_the_longest_prefix_wins() -> None:
    maps = parse_maps(["ghcr.io/acme=registry.airgap/acme",
                       "ghcr.io/acme/tools=registry.airgap/ops/tools", "ghcr.io=mirror.lan/gh"])

    assert map_repository("ghcr.io/acme/app", maps) == "registry.airgap/acme/app"
    assert map_repository("ghcr.io/acme/tools/lint", maps) == "registry.airgap/ops/tools/lint"
    assert map_repository("ghcr.io/other/x", maps) == "mirror.lan/gh/other/x"


def test_prefixes_match_whole_path_components() -> None:
    maps = parse_maps(["ghcr.io/acme=registry.airgap/acme"])

    assert map_repository("ghcr.io/acme", maps) == "registry.airgap/acme"
    assert map_repository("ghcr.io/acmeco/app", maps) is None
    assert map_repository("ghcr.io/acme-app", maps) is None


def test_a_trailing_slash_is_the_same_prefix() -> None:
    maps = parse_maps(["ghcr.io/acme/=localhost:5000/acme/"])

    assert map_repository("ghcr.io/acme/app", maps) == "localhost:5000/acme/app"


def test_every_unmapped_repository_is_named_at_once() -> None:
    maps = parse_maps(["ghcr.io/acme=registry.airgap/acme"])

    with pytest.raises(UnmappedRepository) as caught:
        map_all(["ghcr.io/acme/app", "quay.io/x/y", "ghcr.io/acmeco/app"], maps)

    assert caught.value.repositories == ("quay.io/x/y", "ghcr.io/acmeco/app")
    assert "nothing was pushed" in str(caught.value)
    assert isinstance(caught.value, UsageError)  # exit 2


def test_map_all_gives_repositories() -> None:
    mapped = map_all(["ghcr.io/acme/app"], parse_maps(["ghcr.io/acme=registry.airgap:5000/a"]))

    assert str(mapped["ghcr.io/acme/app"]) == "registry.airgap:5000/a/app"


@pytest.mark.parametrize("text", ["ghcr.io/acme", "=registry.airgap", "ghcr.io/acme=",
                                  "ghcr.io/acme=a b", "ghcr.io/acme@sha256=x"])
def test_bad_syntax_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--map"):
        parse_maps([text])


def test_a_prefix_given_twice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_maps(["ghcr.io/acme=a.lan/x", "ghcr.io/acme/=b.lan/y"])


@pytest.mark.parametrize("target", ["Registry.Airgap/Acme", "registry.airgap/acme:1.0"])
def test_a_mapping_that_is_no_repository_is_a_usage_error(target: str) -> None:
    with pytest.raises(UsageError, match="not a repository"):
        map_all(["ghcr.io/acme/app"], parse_maps([f"ghcr.io/acme={target}"]))
