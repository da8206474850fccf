"""Rules: which pushes are releases, to which sets, grouped one release per digest and set."""

from __future__ import annotations

import pytest

from service.config import Rule
from service.hook_events import Push
from service.rules import Planned, group, match, matching_rules

INDEX = "sha256:" + "1" * 64
CHILD = "sha256:" + "a" * 64
OTHER = "sha256:" + "2" * 64

RULES = (
    Rule("registry.corp/acme/*", ("v*",), "release"),
    Rule("registry.corp/acme/app", (), "mirror"),
    Rule("docker.io/library/*", (), "hub"),
)


def push(tag: str | None, digest: str | None = INDEX, name: str = "registry.corp/acme/app",
         ) -> Push:
    registry, _, repository = name.partition("/")
    return Push(registry, repository, digest, tag)


@pytest.mark.parametrize(("the_push", "sets"), [
    (push("v1.2.0"), ["release", "mirror"]),
    (push("latest"), ["mirror"]),  # the tag pattern keeps it out of "release"
    (push("v1", name="registry.corp/acme/tools/cli"), ["release"]),  # '*' spans '/'
    (push("v1", name="registry.corp/other/app"), []),
    (push("v1", name="registry.corp:5000/acme/app"), []),  # another host:port
    (push("3.20", name="docker.io/library/alpine"), ["hub"]),
    (push(None), []),  # by digest: a platform of an index, not a release
])
def test_matching_rules(the_push: Push, sets: list[str]) -> None:
    assert [rule.to for rule in matching_rules(the_push, RULES)] == sets


def test_tag_patterns_are_case_sensitive() -> None:
    assert [r.to for r in matching_rules(push("V1"), RULES)] == ["mirror"]


def test_match_reports_why_a_push_is_ignored() -> None:
    matched, skipped = match([push(None, CHILD), push("v1"), push("v1", name="x.corp/a/b")],
                             RULES)
    assert matched == [("release", push("v1")), ("mirror", push("v1"))]
    assert [(s.event, "without a tag" in s.reason, "no [[rules]]" in s.reason)
            for s in skipped] == [
        (f"registry.corp/acme/app@{CHILD}", True, False),
        (f"x.corp/a/b:v1@{INDEX}", False, True),
    ]


def test_two_rules_to_one_set_match_once() -> None:
    rules = (Rule("registry.corp/acme/*", (), "release"),
             Rule("registry.corp/*/app", (), "release"))
    matched, _ = match([push("v1")], rules)
    assert matched == [("release", push("v1"))]


def test_a_multiplatform_push_is_one_release_per_set_with_every_tag() -> None:
    pushes = [push(None, CHILD), push(None), push("v1.2.0"), push("v1.2"), push("v1.2.0")]
    matched, _ = match(pushes, RULES)
    assert group(matched) == [
        Planned("release", "registry.corp/acme/app", INDEX, ("v1.2.0", "v1.2")),
        Planned("mirror", "registry.corp/acme/app", INDEX, ("v1.2.0", "v1.2")),
    ]


def test_two_digests_are_two_releases() -> None:
    matched, _ = match([push("v1"), push("v2", OTHER)], RULES[:1])
    planned = group(matched)
    assert [(p.source, p.tags) for p in planned] == [
        (f"registry.corp/acme/app@{INDEX}", ("v1",)),
        (f"registry.corp/acme/app@{OTHER}", ("v2",))]


def test_group_refuses_a_push_not_yet_pinned() -> None:
    with pytest.raises(ValueError, match="pinned"):
        group([("release", push("v1", None))])
