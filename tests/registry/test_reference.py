"""Reference parsing: distribution's grammar, Docker Hub normalisation, errors naming the part."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.errors import InvalidReference, PermanentError
from registry.reference import (
    Reference,
    Repository,
    is_loopback_host,
    parse_reference,
    parse_repository,
    validate_digest,
    validate_tag,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8
OTHER_SHA256 = "sha256:" + "f" * 64


def error_of(text: str) -> str:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    return str(info.value)


# --- happy paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "path", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", None, None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app", "docker.io", "user/app", None, None),
        ("docker.io/alpine", "docker.io", "library/alpine", None, None),
        ("index.docker.io/alpine", "docker.io", "library/alpine", None, None),
        ("registry-1.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
        ("DOCKER.IO/alpine", "docker.io", "library/alpine", None, None),
        ("docker.io/library/alpine", "docker.io", "library/alpine", None, None),
        ("ghcr.io/org/team/app:latest", "ghcr.io", "org/team/app", "latest", None),
        ("Example.COM/app", "example.com", "app", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/app:1", "localhost:5000", "app", "1", None),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", None, None),
        ("registry.example.com:05000/app", "registry.example.com:5000", "app", None, None),
        ("[::1]:5000/app:dev", "[::1]:5000", "app", "dev", None),
        ("[::1]/app", "[::1]", "app", None, None),
        ("[FE80::1]:443/app", "[fe80::1]:443", "app", None, None),
        ("myhost:5000/app", "myhost:5000", "app", None, None),
        ("a.b/c.d/e_f/g__h/i-j/k---l", "a.b", "c.d/e_f/g__h/i-j/k---l", None, None),
        ("alpine@" + SHA256, "docker.io", "library/alpine", None, SHA256),
        ("alpine:3.19@" + SHA256, "docker.io", "library/alpine", "3.19", SHA256),
        ("quay.io/x/y@" + SHA512, "quay.io", "x/y", None, SHA512),
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),  # as distribution
        ("example.com", "docker.io", "library/example.com", None, None),
        ("a:_Tag.9-x", "docker.io", "library/a", "_Tag.9-x", None),
    ],
)
def test_parses_and_normalises(
    text: str, registry: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.path, ref.tag, ref.digest) == (registry, path, tag, digest)
    assert ref.repository == Repository(registry, path)
    assert parse_reference(str(ref)) == ref


def test_canonical_string() -> None:
    assert str(parse_reference("alpine")) == "docker.io/library/alpine"
    assert str(parse_reference("alpine:3@" + SHA256)) == f"docker.io/library/alpine:3@{SHA256}"
    assert str(parse_reference("[::1]:5000/app:x")) == "[::1]:5000/app:x"
    assert str(parse_reference("localhost:5000/app").repository) == "localhost:5000/app"


@pytest.mark.parametrize(
    ("text", "api_host", "hostname"),
    [
        ("alpine", "registry-1.docker.io", "docker.io"),
        ("index.docker.io/a/b", "registry-1.docker.io", "docker.io"),
        ("ghcr.io/a", "ghcr.io", "ghcr.io"),
        ("localhost:5000/a", "localhost:5000", "localhost"),
        ("127.0.0.1:5000/a", "127.0.0.1:5000", "127.0.0.1"),
        ("[::1]:5000/a", "[::1]:5000", "::1"),
        ("[fe80::1]/a", "[fe80::1]", "fe80::1"),
    ],
)
def test_api_host_and_hostname(text: str, api_host: str, hostname: str) -> None:
    repo = parse_reference(text).repository
    assert repo.api_host == api_host
    assert repo.hostname == hostname


def test_default_tag_applies_only_without_tag_or_digest() -> None:
    assert parse_reference("alpine").tag is None
    assert parse_reference("alpine", default_tag="latest").tag == "latest"
    assert parse_reference("alpine:3", default_tag="latest").tag == "3"
    pinned = parse_reference("alpine@" + SHA256, default_tag="latest")
    assert (pinned.tag, pinned.digest) == (None, SHA256)


def test_name_length_limit_counts_the_normalised_name() -> None:
    host = "r.io/"
    assert len(parse_reference(host + "a" * 250).repository.__str__()) == 255
    assert "too long" in error_of(host + "a" * 251)
    # "docker.io/library/" is part of the name, so a short form near the limit is too long.
    assert "too long" in error_of("a" * 240)


# --- the types -------------------------------------------------------------------------------


def test_reference_methods() -> None:
    ref = parse_reference("ghcr.io/org/app:v1")
    assert ref.identifier == "v1"
    pinned = ref.with_digest(SHA256)
    assert (pinned.tag, pinned.digest, pinned.identifier) == ("v1", SHA256, SHA256)
    assert str(pinned.pinned()) == f"ghcr.io/org/app@{SHA256}"
    assert pinned.with_tag(None) == pinned.pinned()
    assert pinned.with_tag("v2").tag == "v2"
    assert pinned.with_tag("v2").digest == SHA256
    assert pinned.with_digest(OTHER_SHA256).digest == OTHER_SHA256
    repo = ref.repository
    assert repo.tagged("v3") == Reference(repo, tag="v3")
    assert repo.digested(SHA512) == Reference(repo, digest=SHA512)


def test_identifier_and_pinned_refuse_what_is_missing() -> None:
    bare = parse_reference("ghcr.io/org/app")
    with pytest.raises(InvalidReference, match="neither tag nor digest"):
        _ = bare.identifier
    with pytest.raises(InvalidReference, match="not pinned by digest"):
        bare.with_tag("v1").pinned()


def test_constructors_validate() -> None:
    repo = Repository("ghcr.io", "a")
    with pytest.raises(InvalidReference, match="tag 'x y'"):
        repo.tagged("x y")
    with pytest.raises(InvalidReference, match="'md5'"):
        repo.digested("md5:" + "0" * 32)
    with pytest.raises(InvalidReference, match="'md5'"):
        parse_reference("ghcr.io/a:v1").with_digest("md5:" + "0" * 32)
    with pytest.raises(InvalidReference, match="tag '-v'"):
        Reference(repo, tag="-v")
    with pytest.raises(InvalidReference, match="must be lowercase"):
        Repository("ghcr.io", "Org/app")
    # A registry that parsing would read as a Docker Hub namespace cannot round-trip.
    with pytest.raises(InvalidReference, match="registry 'myhost'"):
        Repository("myhost", "app")


def test_repository_constructor_normalises() -> None:
    assert Repository("index.docker.io", "alpine") == Repository("docker.io", "library/alpine")
    assert Repository("Registry-1.Docker.IO", "u/a").registry == "docker.io"
    assert Repository("LOCALHOST:00080", "a").registry == "localhost:80"


def test_frozen_and_slotted() -> None:
    ref = parse_reference("alpine:3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "4"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.repository.path = "x"  # type: ignore[misc]
    assert not hasattr(ref, "__dict__")
    assert not hasattr(ref.repository, "__dict__")
    assert len({ref, parse_reference("docker.io/library/alpine:3")}) == 1


def test_parse_repository() -> None:
    assert parse_repository("alpine") == Repository("docker.io", "library/alpine")
    assert parse_repository("[::1]:5000/a/b") == Repository("[::1]:5000", "a/b")
    with pytest.raises(InvalidReference, match=r"cannot carry a tag \('3'\)"):
        parse_repository("alpine:3")
    with pytest.raises(InvalidReference, match="cannot carry a digest"):
        parse_repository("alpine@" + SHA256)
    with pytest.raises(InvalidReference, match="must be lowercase"):
        parse_repository("Alpine")


def test_validate_tag_and_digest() -> None:
    assert validate_tag("a" * 128) == "a" * 128
    assert validate_tag("_") == "_"
    assert validate_digest(SHA256) == SHA256
    assert validate_digest(SHA512) == SHA512
    with pytest.raises(InvalidReference, match="too long"):
        validate_tag("a" * 129)
    for bad in ["", ".x", "-x", "a/b", "a:b", "é"]:
        with pytest.raises(InvalidReference, match="tag"):
            validate_tag(bad)
    with pytest.raises(InvalidReference, match="wrong length for sha512"):
        validate_digest("sha512:" + "0" * 64)
    with pytest.raises(InvalidReference, match="algorithm 'sha1' is not supported"):
        validate_digest("sha1:" + "0" * 40)


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("LocalHost:5000", True),
        ("127.0.0.1", True),
        ("127.1.2.3:5000", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("docker.io", False),
        ("10.0.0.1:5000", False),
        ("[fe80::1]:5000", False),
        ("localhost.example.com", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_is_loopback_host(registry: str, loopback: bool) -> None:
    assert is_loopback_host(registry) is loopback


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["invalid reference ''", "empty reference"]),
        ("foo/Bar:x", ["'foo/Bar:x'", "repository must be lowercase", "'foo/Bar'"]),
        ("Alpine", ["'Alpine'", "must be lowercase"]),
        ("foo:x y", ["'foo:x y'", "tag 'x y' is invalid"]),
        ("foo:", ["tag is empty"]),
        ("foo:.x", ["tag '.x' is invalid"]),
        ("foo:" + "a" * 129, ["is too long (129 characters, at most 128)"]),
        ("foo@md5:" + "0" * 32, ["digest algorithm 'md5' is not supported"]),
        ("foo@sha256:abc", ["digest 'sha256:abc' has the wrong length for sha256"]),
        ("foo@sha512:" + "0" * 64, ["wrong length for sha512"]),
        ("foo@sha256:" + "A" * 64, ["must be lowercase"]),
        ("foo@sha256:" + "g" * 64, ["must be followed by hex digits"]),
        ("foo@", ["digest is empty"]),
        ("foo@sha256", ["expected algorithm:hex"]),
        ("a.io:99999/app", ["port '99999'", "registry 'a.io:99999'", "1 to 65535"]),
        ("a.io:0/app", ["port '0'"]),
        ("a.io:x/app", ["port 'x'"]),
        ("a.io:/app", ["port ''"]),
        ("a.io:1" + "0" * 5000 + "/app", ["port '1000"]),  # no ValueError from int()
        ("fe80::1/app", ["'fe80::1'", "IPv6 address must be written in brackets"]),
        ("[fe80::1%eth0]/app", ["IPv6 address '[fe80::1%eth0]'"]),
        ("[::1::2]/app", ["IPv6 address '[::1::2]'"]),
        ("[::1/app", ["'[' without ']'"]),
        ("[::1]", ["'[::1]' is a registry: a repository path must follow it"]),
        ("[::1]:5000", ["'[::1]:5000' is a registry"]),
        (f"a@{SHA256}@{SHA256}", ["more than one '@'"]),
        ("[::1]x/app", ["only ':port' may follow ']'"]),
        ("a..io/app", ["registry host 'a..io' is invalid"]),
        ("-a.io/app", ["registry host '-a.io' is invalid"]),
        (":5000/app", ["has no host"]),
        ("a.io/", ["repository path is empty"]),
        ("a.io/app/", ["component '' of repository path 'app/' is empty"]),
        ("a//b", ["component '' of repository path 'a//b' is empty"]),
        ("a.io/ap$p", ["component 'ap$p'"]),
        ("a.io/-app", ["component '-app'"]),
        ("a.io/a..b", ["component 'a..b'"]),
        ("a.io/a___b", ["component 'a___b'"]),
        ("a.io/app\n", ["component 'app\\n'"]),
        ("a" * 64, ["64-digit hex string is an image ID"]),
        ("https://ghcr.io/app", ["no scheme"]),
        ("@" + SHA256, ["name is empty"]),
        (":tag", ["name is empty"]),
        ("a" * 400, ["too long", "a...':"]),  # the input is shortened in the message
    ],
)
def test_errors_name_the_part(text: str, fragments: list[str]) -> None:
    message = error_of(text)
    assert message.startswith("invalid reference ")
    for fragment in fragments:
        assert fragment in message


def test_invalid_reference_is_permanent_and_a_value_error() -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference("Bad")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PermanentError)
    assert not info.value.transient


@pytest.mark.parametrize(
    "text",
    [
        "user:hunter2@ghcr.io/org/app",
        "user:hunter2@ghcr.io:443/org/app:v1",
        "user:hunter2@myhost:5000",  # what follows '@' looks like algorithm:hex
        "user:hun@ter2@ghcr.io/app",  # an '@' inside the password
        "hunter2@ghcr.io/app",  # a token as the user name
        "https://user:hunter2@ghcr.io/app",
        "user:hunter2 x@ghcr.io/app",  # would be an invalid tag if the name were checked first
    ],
)
def test_credentials_never_reach_the_message(text: str) -> None:
    message = error_of(text)
    assert "hunter2" not in message
    assert "hun" not in message
    assert "<redacted>@" in message


# --- properties ------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])

domain_components = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
ipv6_hosts = st.ip_addresses(v=6).map(str).filter(lambda a: "." not in a).map(lambda a: f"[{a}]")
hosts = st.one_of(
    st.lists(domain_components, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    ipv6_hosts,
    st.sampled_from(["localhost", "docker.io", "index.docker.io", "registry-1.docker.io",
                     "Docker.IO"]),
)
path_components = st.from_regex(
    r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,3}", fullmatch=True)
# Without a registry the first component must not contain '.', or it would read as a registry.
hub_first_components = st.from_regex(r"[a-z0-9]{1,5}(?:(?:_|__|-{1,3})[a-z0-9]{1,5}){0,3}",
                                     fullmatch=True)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)


@st.composite
def registries(draw: st.DrawFn) -> tuple[str, str]:
    """A registry as written, and as it should come out normalised."""
    host = draw(hosts)
    port = draw(st.none() | st.integers(1, 65535))
    zeros = draw(st.integers(0, 2))
    if port is None and "." not in host and not host.startswith("[") and host != "localhost":
        host += ".example"  # otherwise it is a Docker Hub namespace, not a registry
    written = host if port is None else f"{host}:{'0' * zeros}{port}"
    normal = host.lower() if port is None else f"{host.lower()}:{port}"
    if normal in {"docker.io", "index.docker.io", "registry-1.docker.io"}:
        normal = "docker.io"
    return written, normal


@st.composite
def references(draw: st.DrawFn) -> tuple[str, tuple[str, str, str | None, str | None]]:
    """A reference string built from valid parts, and the parts parsing must find."""
    registry = draw(st.none() | registries())
    first = draw(hub_first_components if registry is None else path_components)
    rest = draw(st.lists(path_components, max_size=3))
    path = "/".join([first, *rest])
    tag = draw(st.none() | tags)
    digest = draw(st.none() | digests)
    text = path if registry is None else f"{registry[0]}/{path}"
    text += (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest is not None else "")
    normal_registry = "docker.io" if registry is None else registry[1]
    if normal_registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return text, (normal_registry, path, tag, digest)


@PROPERTY_SETTINGS
@given(references())
def test_valid_parts_parse_back_to_themselves(
    case: tuple[str, tuple[str, str, str | None, str | None]],
) -> None:
    text, expected = case
    registry, path, _, _ = expected
    if len(registry) + 1 + len(path) > 255:
        with pytest.raises(InvalidReference, match="too long"):
            parse_reference(text)
        return
    ref = parse_reference(text)
    assert (ref.registry, ref.path, ref.tag, ref.digest) == expected
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)
    assert Reference(Repository(registry, path), ref.tag, ref.digest) == ref


def _mutate(text: str, data: st.DataObject) -> str:
    """``text`` with a few characters inserted, deleted or replaced: near misses of valid input."""
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        char = data.draw(st.sampled_from("aZ09:/.@_-[]% \n\x00é"))
        how = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "insert":
            text = text[:at] + char + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at] + char + text[at + 1:]
    return text


def _parse_or_refuse(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        assert str(exc).startswith("invalid reference ")
        return
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)


@PROPERTY_SETTINGS
@given(st.one_of(st.text(), st.text("abAZ09:/.@_-[]%", max_size=40)))
def test_arbitrary_text_parses_or_is_refused(text: str) -> None:
    _parse_or_refuse(text)


@PROPERTY_SETTINGS
@given(references(), st.data())
def test_near_misses_parse_or_are_refused(
    case: tuple[str, tuple[str, str, str | None, str | None]], data: st.DataObject,
) -> None:
    _parse_or_refuse(_mutate(case[0], data))


@PROPERTY_SETTINGS
@given(registries(), st.lists(path_components, min_size=1, max_size=3),
       st.text(st.characters(blacklist_characters="@"), max_size=10))
def test_credentials_are_redacted(
    registry: tuple[str, str], path: list[str], noise: str,
) -> None:
    # '=' cannot occur in a host or path, so the marker can only appear if the userinfo leaked.
    text = f"user:pa=ss{noise}@{registry[0]}/{'/'.join(path)}"
    message = error_of(text)
    assert "pa=ss" not in message
