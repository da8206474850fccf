"""Tests for registry.manifest: media types, digests, descriptors and parse_manifest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import manifest as m
from registry.errors import DigestMismatch, InvalidManifest, InvalidReference, PermanentError


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG_DIGEST = sha256(b"config")
LAYER1 = sha256(b"layer1")
LAYER2 = sha256(b"layer2")
CHILD_AMD64 = sha256(b"amd64")
CHILD_ARM64 = sha256(b"arm64")
SHA512_DIGEST = "sha512:" + hashlib.sha512(b"x").hexdigest()


def desc(media_type: str, digest: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def image_doc(media_type: str | None = m.OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": desc("application/vnd.oci.image.config.v1+json", CONFIG_DIGEST),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", LAYER1),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", LAYER2),
        ],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(extra)
    return doc


def index_doc(media_type: str | None = m.OCI_INDEX, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            desc(m.OCI_MANIFEST, CHILD_AMD64, platform={"architecture": "amd64", "os": "linux"}),
            desc(m.OCI_MANIFEST, CHILD_ARM64, platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(extra)
    return doc


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- constants -----------------------------------------------------------------------------------


def test_accept_header_lists_the_four_supported_types_and_not_schema1() -> None:
    listed = [part.strip() for part in m.ACCEPT_MANIFESTS.split(",")]
    assert sorted(listed) == sorted(
        [m.OCI_INDEX, m.DOCKER_MANIFEST_LIST, m.OCI_MANIFEST, m.DOCKER_MANIFEST])
    assert m.DOCKER_SCHEMA1 not in m.ACCEPT_MANIFESTS


def test_empty_descriptor_digest_is_the_digest_of_empty_object() -> None:
    assert m.compute_digest(b"{}") == m.OCI_EMPTY_DIGEST


def test_media_type_predicates() -> None:
    assert m.is_index_media_type(m.OCI_INDEX)
    assert m.is_index_media_type(m.DOCKER_MANIFEST_LIST)
    assert not m.is_index_media_type(m.OCI_MANIFEST)
    assert m.is_manifest_media_type(m.OCI_MANIFEST)
    assert m.is_manifest_media_type(m.DOCKER_MANIFEST)
    assert not m.is_manifest_media_type(m.DOCKER_MANIFEST_LIST)
    assert not m.is_manifest_media_type(m.DOCKER_SCHEMA1)
    assert not m.is_index_media_type(m.OCI_EMPTY)


# --- digests -------------------------------------------------------------------------------------


def test_compute_digest_sha256_and_sha512() -> None:
    assert m.compute_digest(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert m.compute_digest(b"abc", "sha512") == "sha512:" + hashlib.sha512(b"abc").hexdigest()


def test_compute_digest_refuses_other_algorithms() -> None:
    with pytest.raises(InvalidReference, match="md5"):
        m.compute_digest(b"abc", "md5")


@pytest.mark.parametrize(("digest", "algorithm"), [(LAYER1, "sha256"), (SHA512_DIGEST, "sha512")])
def test_digest_algorithm_accepts_sha256_and_sha512(digest: str, algorithm: str) -> None:
    assert m.digest_algorithm(digest) == algorithm


@pytest.mark.parametrize("digest", [
    "md5:" + hashlib.md5(b"x").hexdigest(),  # unsupported algorithm
    "sha256:" + "A" * 64,                    # uppercase hex is not allowed
    "sha256:" + "a" * 63,                    # too short
    "sha256:" + "a" * 65,                    # too long
    "sha512:" + "a" * 64,                    # sha256 length under sha512
    "a" * 64,                                # no algorithm
    "sha256:" + "g" * 64,                    # not hex
    "",
])
def test_digest_algorithm_refuses_malformed(digest: str) -> None:
    with pytest.raises(InvalidReference):
        m.digest_algorithm(digest)


def test_invalid_digest_is_also_a_value_error_and_bounded() -> None:
    with pytest.raises(ValueError, match="not a valid sha256") as info:
        m.digest_algorithm("sha256:" + "z" * 10_000)
    assert len(str(info.value)) < 200


def test_new_hasher_uses_the_digest_algorithm() -> None:
    hasher = m.new_hasher(SHA512_DIGEST)
    assert hasher.name == "sha512"
    hasher.update(b"x")
    assert f"{hasher.name}:{hasher.hexdigest()}" == SHA512_DIGEST
    assert m.new_hasher(LAYER1).name == "sha256"
    with pytest.raises(InvalidReference):
        m.new_hasher("md5:" + "0" * 32)


def test_verify_digest_passes_and_fails_naming_both() -> None:
    m.verify_digest(b"layer1", LAYER1, "blob")
    with pytest.raises(DigestMismatch) as info:
        m.verify_digest(b"layer2", LAYER1, "blob")
    text = str(info.value)
    assert text.startswith("blob:")
    assert LAYER1 in text
    assert LAYER2 in text


def test_verify_digest_uses_the_expected_algorithm() -> None:
    m.verify_digest(b"x", SHA512_DIGEST, "blob")
    with pytest.raises(DigestMismatch, match="sha512:"):
        m.verify_digest(b"y", SHA512_DIGEST, "blob")


# --- descriptors ---------------------------------------------------------------------------------


def test_descriptor_from_json_keeps_every_field() -> None:
    d = m.Descriptor.from_json(desc(
        "application/vnd.example+json", LAYER1, 42,
        platform={"architecture": "arm64", "os": "linux", "variant": "v8"},
        annotations={"org.opencontainers.image.title": "x"},
        artifactType="application/vnd.example.sig",
        urls=["https://example.invalid/layer"],
    ))
    assert d == m.Descriptor(
        media_type="application/vnd.example+json", digest=LAYER1, size=42,
        platform={"architecture": "arm64", "os": "linux", "variant": "v8"},
        annotations={"org.opencontainers.image.title": "x"},
        artifact_type="application/vnd.example.sig",
        urls=("https://example.invalid/layer",),
    )


def test_descriptor_optional_fields_default_to_none() -> None:
    d = m.Descriptor.from_json(desc("application/octet-stream", LAYER1, 0))
    assert (d.platform, d.annotations, d.artifact_type, d.urls) == (None, None, None, None)
    assert d.size == 0


def test_descriptor_accepts_sha512() -> None:
    assert m.Descriptor.from_json(desc("a/b", SHA512_DIGEST)).digest == SHA512_DIGEST


@pytest.mark.parametrize(("patch", "field"), [
    ({"size": -1}, "layers[0].size"),
    ({"size": 1.5}, "layers[0].size"),
    ({"size": True}, "layers[0].size"),
    ({"size": "10"}, "layers[0].size"),
    ({"size": None}, "layers[0].size"),
    ({"digest": "md5:" + hashlib.md5(b"x").hexdigest()}, "layers[0].digest"),
    ({"digest": "sha256:abc"}, "layers[0].digest"),
    ({"digest": 5}, "layers[0].digest"),
    ({"digest": None}, "layers[0].digest"),
    ({"mediaType": ""}, "layers[0].mediaType"),
    ({"mediaType": None}, "layers[0].mediaType"),
    ({"platform": "linux/amd64"}, "layers[0].platform"),
    ({"annotations": {"a": 1}}, "layers[0].annotations"),
    ({"annotations": ["a"]}, "layers[0].annotations"),
    ({"artifactType": 3}, "layers[0].artifactType"),
    ({"urls": "https://x"}, "layers[0].urls"),
    ({"urls": [1]}, "layers[0].urls"),
])
def test_descriptor_bad_field_is_named(patch: dict[str, Any], field: str) -> None:
    raw = desc("application/vnd.oci.image.layer.v1.tar", LAYER1)
    raw.update(patch)
    with pytest.raises(InvalidManifest, match=field.replace("[", r"\[").replace("]", r"\]")):
        m.Descriptor.from_json(raw, "layers[0]")


def test_descriptor_must_be_an_object() -> None:
    with pytest.raises(InvalidManifest, match="config must be an object"):
        m.Descriptor.from_json([LAYER1], "config")


def test_bad_descriptor_inside_a_manifest_names_its_position() -> None:
    doc = image_doc()
    doc["layers"][1]["size"] = -5
    with pytest.raises(InvalidManifest, match=r"layers\[1\]\.size"):
        m.parse_manifest(dump(doc), m.OCI_MANIFEST)


def test_md5_child_digest_refused_in_index() -> None:
    doc = index_doc()
    doc["manifests"][0]["digest"] = "md5:" + hashlib.md5(b"x").hexdigest()
    with pytest.raises(InvalidManifest, match=r"manifests\[0\]\.digest.*md5"):
        m.parse_manifest(dump(doc), m.OCI_INDEX)


# --- parse_manifest: each media type -------------------------------------------------------------


@pytest.mark.parametrize("media_type", [m.OCI_MANIFEST, m.DOCKER_MANIFEST])
def test_parse_image_manifest(media_type: str) -> None:
    raw = dump(image_doc(media_type))
    man = m.parse_manifest(raw, media_type)
    assert man.media_type == media_type
    assert not man.is_index
    assert man.raw is raw
    assert man.digest == sha256(raw)
    assert man.size == len(raw)
    assert man.config is not None and man.config.digest == CONFIG_DIGEST
    assert [d.digest for d in man.layers] == [LAYER1, LAYER2]
    assert [d.digest for d in man.blobs] == [CONFIG_DIGEST, LAYER1, LAYER2]
    assert man.children == ()
    assert man.subject is None and man.artifact_type is None and man.annotations is None


@pytest.mark.parametrize("media_type", [m.OCI_INDEX, m.DOCKER_MANIFEST_LIST])
def test_parse_index(media_type: str) -> None:
    raw = dump(index_doc(media_type, annotations={"k": "v"}))
    man = m.parse_manifest(raw, media_type)
    assert man.media_type == media_type
    assert man.is_index
    assert [c.digest for c in man.children] == [CHILD_AMD64, CHILD_ARM64]
    assert man.children[1].platform == {"architecture": "arm64", "os": "linux"}
    assert man.config is None and man.layers == () and man.blobs == ()
    assert man.annotations == {"k": "v"}


def test_descriptor_of_a_manifest_points_at_its_bytes() -> None:
    raw = dump(index_doc())
    man = m.parse_manifest(raw, m.OCI_INDEX)
    assert man.descriptor() == m.Descriptor(m.OCI_INDEX, sha256(raw), len(raw))


def test_raw_bytes_are_kept_exactly() -> None:
    # Key order, indentation and a trailing newline all change the digest; none may be lost.
    raw = (json.dumps(dict(reversed(list(image_doc().items()))), indent=3) + "\n").encode()
    man = m.parse_manifest(raw, m.OCI_MANIFEST)
    assert man.raw == raw
    assert man.digest == sha256(raw)
    assert man.digest != sha256(dump(image_doc()))


# --- media type resolution -----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    f"{m.DOCKER_MANIFEST}; charset=utf-8",
    m.DOCKER_MANIFEST.upper(),
    f" {m.DOCKER_MANIFEST} ",
])
def test_content_type_parameters_and_case_ignored(content_type: str) -> None:
    # No mediaType in the JSON, and inference would say OCI: only the header can say Docker.
    man = m.parse_manifest(dump(image_doc(None)), content_type)
    assert man.media_type == m.DOCKER_MANIFEST


def test_content_type_parameters_ignored_when_comparing_with_json() -> None:
    man = m.parse_manifest(dump(image_doc(m.OCI_MANIFEST)), f"{m.OCI_MANIFEST};charset=utf-8")
    assert man.media_type == m.OCI_MANIFEST


@pytest.mark.parametrize("content_type", [
    None, "", "application/json", "text/plain; charset=utf-8", "application/octet-stream",
])
def test_missing_or_generic_content_type_uses_json_field(content_type: str | None) -> None:
    man = m.parse_manifest(dump(image_doc(m.DOCKER_MANIFEST)), content_type)
    assert man.media_type == m.DOCKER_MANIFEST


def test_header_used_when_json_has_no_media_type() -> None:
    man = m.parse_manifest(dump(index_doc(None)), m.DOCKER_MANIFEST_LIST)
    assert man.media_type == m.DOCKER_MANIFEST_LIST


def test_header_and_json_disagree() -> None:
    with pytest.raises(InvalidManifest, match=r"served as .*oci\.image\.manifest.*docker"):
        m.parse_manifest(dump(image_doc(m.DOCKER_MANIFEST)), m.OCI_MANIFEST)


def test_header_says_index_but_document_is_an_image() -> None:
    with pytest.raises(InvalidManifest):
        m.parse_manifest(dump(image_doc(None)), m.OCI_INDEX)


def test_foreign_header_defers_to_json_field() -> None:
    man = m.parse_manifest(dump(image_doc(m.OCI_MANIFEST)), "application/x-whatever")
    assert man.media_type == m.OCI_MANIFEST


def test_foreign_header_without_json_field_is_named() -> None:
    with pytest.raises(InvalidManifest, match=r"application/vnd\.example\.future"):
        m.parse_manifest(dump(image_doc(None)), "application/vnd.example.future")


def test_unknown_json_media_type_is_named() -> None:
    with pytest.raises(InvalidManifest, match=r"application/vnd\.example\.thing"):
        m.parse_manifest(dump(image_doc("application/vnd.example.thing")), "application/json")


def test_json_media_type_must_be_a_string() -> None:
    with pytest.raises(InvalidManifest, match="mediaType must be a string"):
        m.parse_manifest(dump(image_doc(None, mediaType=7)), None)


def test_long_unknown_media_type_is_truncated_in_message() -> None:
    with pytest.raises(InvalidManifest) as info:
        m.parse_manifest(dump(image_doc("x" * 5000)), None)
    assert len(str(info.value)) < 200


def test_infers_oci_index_without_media_type() -> None:
    man = m.parse_manifest(dump(index_doc(None)), "application/json")
    assert man.media_type == m.OCI_INDEX
    assert man.is_index


def test_infers_oci_manifest_without_media_type() -> None:
    man = m.parse_manifest(dump(image_doc(None)), None)
    assert man.media_type == m.OCI_MANIFEST
    assert len(man.layers) == 2


def test_refuses_to_guess_when_both_shapes_present() -> None:
    doc = image_doc(None, manifests=index_doc()["manifests"])
    with pytest.raises(InvalidManifest, match="both index and image"):
        m.parse_manifest(dump(doc), None)


def test_refuses_to_guess_when_no_shape_present() -> None:
    with pytest.raises(InvalidManifest, match="no mediaType"):
        m.parse_manifest(dump({"schemaVersion": 2}), None)


# --- schema 1 ------------------------------------------------------------------------------------

SCHEMA1_DOC = {"schemaVersion": 1, "name": "library/x", "tag": "latest", "architecture": "amd64",
               "fsLayers": [{"blobSum": LAYER1}], "history": [{"v1Compatibility": "{}"}]}


@pytest.mark.parametrize("content_type", [
    m.DOCKER_SCHEMA1, m.DOCKER_SCHEMA1_SIGNED, "application/json", None,
])
def test_schema1_refused_with_a_clear_message(content_type: str | None) -> None:
    with pytest.raises(InvalidManifest, match="schema 1 manifests are not supported") as info:
        m.parse_manifest(dump(SCHEMA1_DOC), content_type)
    assert "newer build tool" in str(info.value)
    assert isinstance(info.value, PermanentError)


def test_schema1_refused_even_when_it_looks_like_schema2() -> None:
    with pytest.raises(InvalidManifest, match="schema 1"):
        m.parse_manifest(dump(image_doc(None)), m.DOCKER_SCHEMA1_SIGNED)


# --- size, JSON and digest checks ----------------------------------------------------------------


def test_over_size_refused_with_its_size() -> None:
    raw = b" " * (m.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(InvalidManifest, match=r"^manifest is 4194305 bytes, over the 4 MiB limit"):
        m.parse_manifest(raw, m.OCI_MANIFEST)


def test_exactly_the_limit_is_allowed() -> None:
    body = dump(image_doc())
    raw = body + b" " * (m.MAX_MANIFEST_BYTES - len(body))  # trailing whitespace is valid JSON
    assert len(raw) == m.MAX_MANIFEST_BYTES
    assert m.parse_manifest(raw, m.OCI_MANIFEST).size == m.MAX_MANIFEST_BYTES


def test_size_checked_before_digest() -> None:
    raw = b" " * (m.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(InvalidManifest, match="over the 4 MiB limit"):
        m.parse_manifest(raw, None, expected_digest=LAYER1)


def test_expected_digest_verified_before_json_is_parsed() -> None:
    with pytest.raises(DigestMismatch, match=LAYER1):
        m.parse_manifest(b"not json at all", m.OCI_MANIFEST, expected_digest=LAYER1)


def test_expected_digest_matching() -> None:
    raw = dump(image_doc())
    assert m.parse_manifest(raw, None, expected_digest=sha256(raw)).digest == sha256(raw)


def test_expected_digest_mismatch_names_expected_and_actual() -> None:
    raw = dump(image_doc())
    with pytest.raises(DigestMismatch) as info:
        m.parse_manifest(raw, None, expected_digest=LAYER2)
    assert LAYER2 in str(info.value)
    assert sha256(raw) in str(info.value)


def test_sha512_expected_digest_becomes_the_manifest_digest() -> None:
    raw = dump(image_doc())
    expected = "sha512:" + hashlib.sha512(raw).hexdigest()
    assert m.parse_manifest(raw, None, expected_digest=expected).digest == expected


def test_malformed_expected_digest() -> None:
    with pytest.raises(InvalidReference):
        m.parse_manifest(dump(image_doc()), None, expected_digest="sha256:nope")


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe\xfa", "not valid JSON"),
    (b'{"schemaVersion": NaN}', "not valid JSON"),
    (b'{"size": Infinity}', "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
    (b"[]", "must be a JSON object, not list"),
    (b'"manifest"', "must be a JSON object, not str"),
    (b"null", "must be a JSON object, not NoneType"),
])
def test_bad_json(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        m.parse_manifest(raw, m.OCI_MANIFEST)


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "content_type", "message"), [
    ({"schemaVersion": 2, "mediaType": m.OCI_INDEX}, None, "manifests must be a list"),
    (index_doc(manifests={"a": 1}), None, "manifests must be a list"),
    (index_doc(manifests=[LAYER1]), None, r"manifests\[0\] must be an object"),
    (image_doc(config=None), None, "needs a config descriptor"),
    ({"schemaVersion": 2, "mediaType": m.DOCKER_MANIFEST, "layers": []}, None, "needs a config"),
    (image_doc(layers=None), None, "layers must be a list"),
    ({"schemaVersion": 2, "mediaType": m.OCI_MANIFEST,
      "config": desc("a/b", CONFIG_DIGEST)}, None, "layers must be a list"),
    (image_doc(config="sha256:x"), None, "config must be an object"),
    (index_doc(layers=[]), None, "must not have config or layers"),
    (index_doc(config=desc("a/b", CONFIG_DIGEST)), None, "must not have config or layers"),
    (image_doc(manifests=[]), None, "must not have manifests"),
    (image_doc(schemaVersion=3), None, "schemaVersion must be 2"),
    (image_doc(schemaVersion="2"), None, "schemaVersion must be 2"),
    (image_doc(schemaVersion=2.0), None, "schemaVersion must be 2"),
    (image_doc(schemaVersion=True), None, "schemaVersion must be 2"),
    ({k: v for k, v in image_doc().items() if k != "schemaVersion"}, None,
     "schemaVersion must be 2"),
    (image_doc(subject="sha256:x"), None, "subject must be an object"),
    (image_doc(artifactType=["x"]), None, "manifest.artifactType must be a string"),
    (image_doc(annotations={"a": None}), None, "manifest.annotations"),
])
def test_structure_validation(doc: dict[str, Any], content_type: str | None, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        m.parse_manifest(dump(doc), content_type)


def test_empty_layers_allowed() -> None:
    assert m.parse_manifest(dump(image_doc(layers=[])), None).layers == ()


def test_blobs_deduplicated_in_order() -> None:
    layer = desc("application/vnd.oci.image.layer.v1.tar", LAYER1)
    config = desc(m.OCI_EMPTY, m.OCI_EMPTY_DIGEST, 2)
    doc = image_doc(config=config, layers=[
        layer, desc(m.OCI_EMPTY, m.OCI_EMPTY_DIGEST, 2), desc("x/y", LAYER2), layer])
    man = m.parse_manifest(dump(doc), None)
    assert len(man.layers) == 4
    assert [b.digest for b in man.blobs] == [m.OCI_EMPTY_DIGEST, LAYER1, LAYER2]


def test_oci_artifact_with_empty_config_subject_and_artifact_type() -> None:
    subject = desc(m.OCI_MANIFEST, CHILD_AMD64, 1234)
    doc = {
        "schemaVersion": 2,
        "mediaType": m.OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": desc(m.OCI_EMPTY, m.OCI_EMPTY_DIGEST, 2),
        "layers": [desc("application/vnd.dev.sigstore.bundle.v0.3+json", LAYER1, 77,
                        annotations={"dev.sigstore.bundle.predicateType": "x"})],
        "subject": subject,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    man = m.parse_manifest(dump(doc), m.OCI_MANIFEST)
    assert man.artifact_type == "application/vnd.dev.cosign.artifact.sig.v1+json"
    assert man.subject == m.Descriptor(m.OCI_MANIFEST, CHILD_AMD64, 1234)
    assert man.config == m.Descriptor(m.OCI_EMPTY, m.OCI_EMPTY_DIGEST, 2)
    assert man.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert [b.digest for b in man.blobs] == [m.OCI_EMPTY_DIGEST, LAYER1]
    assert man.layers[0].annotations == {"dev.sigstore.bundle.predicateType": "x"}


def test_index_with_subject_and_artifact_type() -> None:
    doc = index_doc(artifactType="application/vnd.example.sbom",
                    subject=desc(m.OCI_INDEX, LAYER2, 99))
    man = m.parse_manifest(dump(doc), None)
    assert man.subject is not None and man.subject.digest == LAYER2
    assert man.artifact_type == "application/vnd.example.sbom"


def test_self_referencing_index_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # No honest sha256 lets a document contain its own digest, so pretend the hash collided.
    monkeypatch.setattr(m, "compute_digest", lambda data, algorithm="sha256": CHILD_ARM64)
    with pytest.raises(InvalidManifest, match="index refers to itself"):
        m.parse_manifest(dump(index_doc()), m.OCI_INDEX)


def test_descriptor_and_manifest_are_frozen() -> None:
    man = m.parse_manifest(dump(image_doc()), None)
    with pytest.raises(AttributeError):
        man.digest = LAYER1  # type: ignore[misc]
    assert man.config is not None
    with pytest.raises(AttributeError):
        man.config.size = 1  # type: ignore[misc]


# --- property: nothing but InvalidManifest escapes for any JSON document -------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["mediaType", "schemaVersion", "config", "layers", "manifests", "digest",
                         "size", "subject", "annotations", "platform", "artifactType", "urls"]),
        inner, max_size=6),
    max_leaves=20,
)


_content_types = st.sampled_from([None, "application/json", *sorted(m.SUPPORTED_MEDIA_TYPES)])


def _parses_or_refuses(raw: bytes, content_type: str | None) -> None:
    try:
        man = m.parse_manifest(raw, content_type)
    except InvalidManifest:
        return
    assert man.raw == raw
    assert man.media_type in m.SUPPORTED_MEDIA_TYPES


@settings(max_examples=300, deadline=None)
@given(doc=_json, content_type=_content_types)
def test_arbitrary_documents_raise_only_invalid_manifest(doc: object,
                                                          content_type: str | None) -> None:
    _parses_or_refuses(dump(doc), content_type)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_invalid_manifest(raw: bytes) -> None:
    _parses_or_refuses(raw, None)
