"""The webhook parsers: each registry's real payload shape in, pushes out; anything else a
PayloadError naming the field, never another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.hook_events import PARSERS, PayloadError, Push, parse
from tests.service import hook_payloads as payloads
from tests.service.hook_payloads import AMD64, ARM64, INDEX, OCI_INDEX, distribution_event


def test_distribution_multiplatform_push_is_its_manifests_and_nothing_else() -> None:
    events = parse("distribution", payloads.distribution_multiplatform("v1.2.0"))
    host = "registry.corp:5000/acme/app"
    assert [str(p) for p in events.pushes] == [
        f"{host}@{AMD64}", f"{host}@{ARM64}", f"{host}@{INDEX}", f"{host}:v1.2.0@{INDEX}"]
    # The blob and the pull are reported, counted, not listed one by one.
    assert [s.event for s in events.skipped] == [
        "'pull' (1 event(s))", f"'push of {payloads.LAYER}' (1 event(s))"]


def test_distribution_host_comes_from_the_request_unless_configured() -> None:
    envelope = {"events": [distribution_event("push", OCI_INDEX, INDEX, tag="v1",
                                              host="Registry.Corp:05000")]}
    [push] = parse("distribution", envelope).pushes
    assert (push.registry, push.repository, push.digest, push.tag) == (
        "registry.corp:5000", "acme/app", INDEX, "v1")
    [push] = parse("distribution", envelope, "mirror.corp").pushes
    assert push.name == "mirror.corp/acme/app"


def test_distribution_schema1_and_other_manifests_are_skipped() -> None:
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    events = parse("distribution", {"events": [distribution_event("push", schema1, INDEX,
                                                                  tag="old")]})
    assert events.pushes == ()
    assert "manifest.v1+prettyjws" in events.skipped[0].event


def test_distribution_empty_envelope_is_no_push() -> None:
    assert parse("distribution", {"events": []}).pushes == ()


@pytest.mark.parametrize(("payload", "named"), [
    ([], "the payload: expected an object"),
    ({}, "the payload: events is missing"),
    ({"events": {}}, "events: expected an array"),
    ({"events": ["push"]}, "events[0]: expected an object"),
    ({"events": [{"action": "push"}]}, "events[0]: target is missing"),
])
def test_distribution_malformed_envelopes_name_the_field(payload: object, named: str) -> None:
    with pytest.raises(PayloadError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse("distribution", payload)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("digest", "sha256:short", "target.digest"),
    ("digest", None, "target.digest: expected a non-empty string, got null"),
    ("repository", "Acme/App", "must be lowercase"),
    ("repository", 7, "target.repository: expected a non-empty string, got a number"),
    ("tag", "-bad", "target.tag"),
])
def test_distribution_bad_target_fields_are_refused(field: str, value: object,
                                                    named: str) -> None:
    event = distribution_event("push", OCI_INDEX, INDEX, tag="v1")
    event["target"][field] = value
    with pytest.raises(PayloadError, match=named):
        parse("distribution", {"events": [event]})


def test_distribution_push_without_a_host_names_the_setting() -> None:
    event = distribution_event("push", OCI_INDEX, INDEX, tag="v1")
    del event["request"]["host"]
    with pytest.raises(PayloadError, match=r"events\[0\].request.host"):
        parse("distribution", {"events": [event]})
    assert parse("distribution", {"events": [event]}, "registry.corp").pushes


def test_harbor_push_artifact() -> None:
    [push] = parse("harbor", payloads.harbor_push("v1.2.0")).pushes
    assert push == Push("harbor.corp", "library/app", INDEX, "v1.2.0")


def test_harbor_cloudevents_format() -> None:
    [push] = parse("harbor", payloads.harbor_cloudevent("v1.2.0")).pushes
    assert push == Push("harbor.corp", "library/app", INDEX, "v1.2.0")


def test_harbor_push_by_digest_has_no_tag() -> None:
    [push] = parse("harbor", payloads.harbor_push(tag=None)).pushes
    assert (push.digest, push.tag) == (INDEX, None)


def test_harbor_other_events_are_skipped() -> None:
    payload = payloads.harbor_push()
    payload["type"] = "PULL_ARTIFACT"
    events = parse("harbor", payload)
    assert events.pushes == ()
    assert events.skipped[0].event == "Harbor 'PULL_ARTIFACT'"


def test_harbor_resource_without_url_names_the_field() -> None:
    payload = payloads.harbor_push()
    del payload["event_data"]["resources"][0]["resource_url"]
    with pytest.raises(PayloadError, match=r"event_data.resources\[0\].resource_url"):
        parse("harbor", payload)


@pytest.mark.parametrize("key", ["package", "registry_package"])
def test_github_package_published(key: str) -> None:
    [push] = parse("github", payloads.github_package("v1.2.0", key=key)).pushes
    assert push == Push("ghcr.io", "acme-corp/app", INDEX, "v1.2.0")


def test_github_untagged_version_has_no_tag() -> None:
    [push] = parse("github", payloads.github_package(tag="")).pushes
    assert (push.digest, push.tag) == (INDEX, None)


def test_github_takes_the_version_digest_when_the_tag_one_is_cut_short() -> None:
    # As in GitHub's own example delivery: container_metadata.tag.digest is not a full digest.
    payload = payloads.github_package()
    payload["package"]["package_version"]["container_metadata"]["tag"]["digest"] = \
        "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
    [push] = parse("github", payload).pushes
    assert push.digest == INDEX


def test_github_without_any_digest_is_refused() -> None:
    payload = payloads.github_package()
    version = payload["package"]["package_version"]
    version["container_metadata"]["tag"]["digest"] = version["version"] = version["name"] = "x"
    with pytest.raises(PayloadError, match="no valid digest"):
        parse("github", payload)


@pytest.mark.parametrize(("changes", "event"), [
    ({"action": "updated"}, "GitHub package 'updated'"),
    ({"package_type": "npm"}, "GitHub 'npm' package"),
])
def test_github_other_packages_and_actions_are_skipped(changes: dict[str, str],
                                                       event: str) -> None:
    payload = payloads.github_package(**changes)
    events = parse("github", payload)
    assert events.pushes == ()
    assert events.skipped[0].event == event


def test_github_configured_registry() -> None:
    [push] = parse("github", payloads.github_package(), "ghcr.corp.example").pushes
    assert push.name == "ghcr.corp.example/acme-corp/app"


def test_dockerhub_push_names_a_tag_and_no_digest() -> None:
    [push] = parse("dockerhub", payloads.dockerhub_push("v1.2.0")).pushes
    assert push == Push("docker.io", "acme/app", None, "v1.2.0")


def test_dockerhub_official_image_is_canonical() -> None:
    [push] = parse("dockerhub", payloads.dockerhub_push(repo_name="app")).pushes
    assert push.name == "docker.io/library/app"


def test_dockerhub_without_a_tag_is_refused() -> None:
    payload = payloads.dockerhub_push()
    del payload["push_data"]["tag"]
    with pytest.raises(PayloadError, match=r"push_data\.tag"):
        parse("dockerhub", payload)


def test_quay_push_is_one_push_per_updated_tag() -> None:
    events = parse("quay", payloads.quay_push(["v1.2.0", "latest"]))
    assert [str(p) for p in events.pushes] == ["quay.io/acme/app:v1.2.0",
                                               "quay.io/acme/app:latest"]


def test_quay_self_hosted_host_and_old_tag_map() -> None:
    payload = payloads.quay_push({"v1": "b750fe79269d2ec9a3c593ef05b4332b1d1a02a6"},
                                 host="quay.corp")
    [push] = parse("quay", payload).pushes
    assert (push.name, push.tag, push.digest) == ("quay.corp/acme/app", "v1", None)


def test_quay_push_without_tags_is_skipped() -> None:
    events = parse("quay", payloads.quay_push([]))
    assert events.pushes == () and events.skipped


# -- fuzz: whatever JSON arrives, a parser answers with pushes or its own error --------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)


def _mutations(payload: Any) -> st.SearchStrategy[Any]:
    """A real payload with one value somewhere replaced by arbitrary JSON."""
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, (*path, key))
        elif isinstance(value, list):
            for i, child in enumerate(value):
                walk(child, (*path, i))

    walk(payload, ())

    def replace(path: tuple[Any, ...], new: Any) -> Any:
        if not path:
            return new
        document = json.loads(json.dumps(payload))
        holder = document
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = new
        return document

    return st.builds(replace, st.sampled_from(paths), _json)


_REAL = {
    "distribution": payloads.distribution_multiplatform(),
    "harbor": payloads.harbor_push(),
    "github": payloads.github_package(),
    "dockerhub": payloads.dockerhub_push(),
    "quay": payloads.quay_push(),
}


def _parses_or_refuses(kind: str, payload: object) -> None:
    try:
        events = parse(kind, payload)
    except PayloadError as exc:
        assert str(exc)
        return
    for push in events.pushes:
        assert push.digest or push.tag


@pytest.mark.parametrize("kind", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(payload=_json)
def test_arbitrary_json_never_raises_anything_else(kind: str, payload: object) -> None:
    _parses_or_refuses(kind, payload)


@pytest.mark.parametrize("kind", sorted(PARSERS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_real_payload_with_any_field_broken_never_raises_anything_else(
    kind: str, data: st.DataObject,
) -> None:
    _parses_or_refuses(kind, data.draw(_mutations(_REAL[kind])))
