"""workers.mirror_filter: which source tags a mirror keeps, and in what order."""

from __future__ import annotations

import pytest

from workers.mirror_filter import check_glob, check_range, matches, order, select, version_of
from workers.mirror_model import Mirror


def mirror(**filters: object) -> Mirror:
    return Mirror(name="m", source="src.io/app", destinations=("dst.io/app",),
                  **filters)  # type: ignore[arg-type]


# The leniency table of the module docstring, row by row.
@pytest.mark.parametrize(("tag", "version", "prerelease"), [
    ("1.25", "1.25", False),
    ("1", "1", False),
    ("v1.25.3", "1.25.3", False),
    ("V1.25", "1.25", False),
    ("01.02", "1.2", False),
    ("20240101", "20240101", False),
    ("1.25.3-1", "1.25.3.post1", False),
    ("1.25.3-r1", "1.25.3.post1", False),
    ("1.25.3.post2", "1.25.3.post2", False),
    ("1.25-rc1", "1.25rc1", True),
    ("1.25.3rc1", "1.25.3rc1", True),
    ("1.25.3-alpha", "1.25.3a0", True),
    ("1.25.3.beta1", "1.25.3b1", True),
    ("1.2.3c1", "1.2.3rc1", True),
    ("1.25.3-preview", "1.25.3rc0", True),
    ("1.25.3-dev", "1.25.3.dev0", True),
])
def test_tags_that_are_versions(tag: str, version: str, prerelease: bool) -> None:
    parsed = version_of(tag)
    assert parsed is not None
    assert str(parsed) == version
    assert parsed.is_prerelease is prerelease


@pytest.mark.parametrize("tag", ["1.25.3-alpine", "1.25.3-alpine3.19", "1.25.3-debian",
                                 "1.25.3-perl", "1.25.x", "1.25_1", "latest", "stable",
                                 "sha-abc123", "mainline-alpine", ""])
def test_tags_that_are_not_versions(tag: str) -> None:
    assert version_of(tag) is None


def test_versions_compare_as_numbers_part_by_part() -> None:
    assert order(["1.22.9", "1.22.10", "1.9", "1.10", "1.22"]) == [
        "1.22.10", "1.22.9", "1.22", "1.10", "1.9"]


def test_order_puts_versions_newest_first_then_the_rest_by_name() -> None:
    assert order(["stable", "1.2", "latest", "v1.3", "1.3", "alpine", "1.2"]) == [
        "v1.3", "1.3", "1.2", "alpine", "latest", "stable"]


def test_no_filters_keep_every_tag() -> None:
    assert select(mirror(), ["b", "a", "1.0"]) == ["1.0", "a", "b"]


def test_tags_globs_then_exclude() -> None:
    m = mirror(tags=("1.*", "stable"), exclude=("*-rc*", "*-perl"))
    tags = ["1.25.3", "1.25.3-perl", "1.26.0-rc1", "stable", "latest", "2.0", "v1.2",
            "stable-perl"]
    assert select(m, tags) == ["1.25.3", "stable"]


def test_globs_are_case_sensitive_and_match_the_whole_tag() -> None:
    m = mirror(tags=("v1.?", "[0-9]*"))
    assert select(m, ["v1.2", "V1.2", "v1.22", "1x", "x1"]) == ["v1.2", "1x"]


def test_exclude_alone() -> None:
    assert select(mirror(exclude=("*-alpine",)), ["1-alpine", "1", "x"]) == ["1", "x"]


def test_a_version_range_drops_what_is_not_a_version() -> None:
    m = mirror(versions=">=1.25, <2")
    tags = ["1.24.9", "1.25", "1.25.3", "v1.26.0", "2.0", "2.0.0-rc1", "stable",
            "1.25.3-alpine", "1.26.0-rc1", "1.25.3-r1"]
    assert select(m, tags) == ["v1.26.0", "1.25.3-r1", "1.25.3", "1.25"]


def test_a_range_that_names_a_prerelease_lets_prereleases_in() -> None:
    m = mirror(versions=">=1.26rc1")
    assert select(m, ["1.26rc1", "1.26.0-rc2", "1.25", "1.26", "1.27-dev"]) == [
        "1.27-dev", "1.26", "1.26.0-rc2", "1.26rc1"]


def test_a_wildcard_range() -> None:
    assert select(mirror(versions="==1.2.*"), ["1.2", "1.2.7", "1.20", "1.3"]) == ["1.2.7", "1.2"]


def test_newest_counts_in_version_order_with_two_digit_parts() -> None:
    m = mirror(newest=3)
    tags = ["1.22.9", "1.22.10", "1.9", "1.10", "latest", "1.23.0-rc1", "1.22.10-alpine"]
    # Not versions (latest, -alpine) and pre-releases never count towards newest.
    assert select(m, tags) == ["1.22.10", "1.22.9", "1.10"]


def test_newest_after_globs_exclude_and_range() -> None:
    m = mirror(tags=("1.*",), exclude=("1.27.*",), versions=">=1.25, <2", newest=2)
    tags = ["1.24.0", "1.25.0", "1.25.1", "1.26.0", "1.27.0", "1.27.1", "2.0.0", "stable"]
    assert select(m, tags) == ["1.26.0", "1.25.1"]


def test_newest_larger_than_what_passed() -> None:
    assert select(mirror(newest=10), ["1", "2"]) == ["2", "1"]


def test_a_non_version_tag_never_passes_versions_even_when_its_glob_does() -> None:
    # The example lists "stable" in tags next to a range: the range drops it.
    m = mirror(tags=("1.*", "stable"), versions=">=1.25, <2")
    assert select(m, ["stable", "1.25.0"]) == ["1.25.0"]


def test_matches_is_every_filter_but_newest() -> None:
    m = mirror(tags=("1.*",), exclude=("*-perl",), versions=">=1.25", newest=1)
    assert select(m, ["1.25", "1.26", "1.27"]) == ["1.27"]
    assert [matches(m, t) for t in ("1.25", "1.26", "1.27")] == [True, True, True]
    assert not matches(m, "1.24")  # outside the range
    assert not matches(m, "1.26-perl")  # excluded
    assert not matches(m, "2.0")  # outside the globs
    # newest alone still requires a (final) version: prune never touches "latest".
    assert not matches(mirror(newest=5), "latest")
    assert not matches(mirror(newest=5), "1.26rc1")
    assert matches(mirror(newest=5), "1.26")
    assert matches(mirror(), "latest")


def test_select_is_deterministic_and_drops_duplicates() -> None:
    tags = ["b", "1.0", "a", "1.0", "v1.0"]
    assert select(mirror(), tags) == select(mirror(), list(reversed(tags))) == [
        "v1.0", "1.0", "a", "b"]


def test_a_thousand_tags() -> None:
    tags = [f"1.{minor}.{patch}" for minor in range(40) for patch in range(25)]
    kept = select(mirror(versions=">=1.30", newest=5), tags)
    assert kept == ["1.39.24", "1.39.23", "1.39.22", "1.39.21", "1.39.20"]


@pytest.mark.parametrize("glob", ["*", "1.*", "v?.*", "[0-9]*", "[!a-z]*", "[]]x", "*-rc*",
                                  "1.2[.-]*", "latest"])
def test_good_globs(glob: str) -> None:
    assert check_glob(glob) == glob


@pytest.mark.parametrize(("glob", "why"), [
    ("", "empty"),
    ("1.[0-9", "never closed"),
    ("[", "never closed"),
    ("[!]", "never closed"),
    ("1.*]", "closes no"),
    ("^1\\.2$", "characters no tag has"),
    ("1.2+build", "characters no tag has"),
    ("app:1.*", "characters no tag has"),
    ("a/b", "characters no tag has"),
    (" 1.*", "characters no tag has"),
])
def test_bad_globs(glob: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_glob(glob)


@pytest.mark.parametrize("text", [">=1.25, <2", ">=1.25,<2", "==1.*", "~=1.25", "!=1.26.1",
                                  ">=v1.25", ">=1.26rc1"])
def test_good_ranges(text: str) -> None:
    check_range(text)


@pytest.mark.parametrize("text", ["1.25", ">=1.25; <2", ">=1.x", "~=1", "latest", " "])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="version range"):
        check_range(text)
