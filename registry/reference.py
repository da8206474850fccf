"""Image references: ``[registry/]path[:tag][@digest]``, parsed, checked and normalised.

The grammar is distribution's (github.com/distribution/reference, ``regexp.go`` and
``normalize.go``)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ registry "/" ] path                 at most 255 characters, normalised
    registry         := host [ ":" port ]
    host             := domain-name | "[" IPv6address "]"
    domain-name      := domain-component [ "." domain-component ]*
    domain-component := /[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]/
    path             := path-component [ "/" path-component ]*
    path-component   := /[a-z0-9]+/ [ separator /[a-z0-9]+/ ]*
    separator        := /[._]|__|-+/
    tag              := /[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}/
    digest           := algorithm ":" hex             sha256 (64 hex) or sha512 (128 hex), lowercase

The first component is a registry only if it contains ``.`` or ``:`` or is ``localhost``; otherwise
the name is on Docker Hub (``alpine`` is ``docker.io/library/alpine``). A ``Repository`` is always
held in that canonical form, so ``parse_reference(str(ref)) == ref`` for every reference.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NoReturn

from registry.errors import InvalidReference
from registry.hosts import (
    DOCKER_HUB,
    DOCKER_HUB_API_HOST,
    api_host,
    canonical_host,
    is_loopback_host,
    split_host_port,
)

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "Reference",
    "Repository",
    "is_loopback_host",
    "parse_reference",
    "parse_repository",
    "validate_digest",
    "validate_tag",
]

_OFFICIAL_PREFIX = "library/"

NAME_MAX_LENGTH = 255
TAG_MAX_LENGTH = 128
# go-digest's registered algorithms and their hex lengths; anything else we cannot verify.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}

# ASCII classes written out: Python's \w and \d also match non-ASCII letters and digits.
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*")
_IPV6_CHARS = re.compile(r"[0-9a-fA-F:]+")
_PORT = re.compile(r"[0-9]+")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*")
_HEX = re.compile(r"[0-9a-fA-F]+")
# A bare image ID; distribution refuses it as a name so it is never mistaken for library/<hex>.
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")

_QUOTE_MAX = 300


class _Bad(Exception):
    """A reason some part is wrong; the public entry points add what the whole input was."""


def _quote(text: str) -> str:
    """``text`` fit for an error message: shortened, and without anything that may be a password.

    ``user:secret@host/app`` is how credentials look in a URL, and ``name:tag@digest`` how a
    reference looks: unless what follows the last ``@`` is a well-formed digest, hide what precedes.
    """
    at = text.rfind("@")
    if at >= 0 and (text.count("@") > 1 or not _is_digest(text[at + 1:])):
        text = "<redacted>" + text[at:]
    if len(text) > _QUOTE_MAX:
        text = text[:_QUOTE_MAX] + "..."
    return repr(text)


def _is_digest(text: str) -> bool:
    try:
        _check_digest(text)
    except _Bad:
        return False
    return True


def _invalid(kind: str, text: str, bad: _Bad) -> NoReturn:
    raise InvalidReference(f"invalid {kind} {_quote(text)}: {bad}") from None


# --- the parts -------------------------------------------------------------------------------


def _check_tag(tag: str) -> str:
    if not tag:
        raise _Bad("tag is empty")
    if len(tag) > TAG_MAX_LENGTH:
        raise _Bad(f"tag {_quote(tag)} is too long "
                   f"({len(tag)} characters, at most {TAG_MAX_LENGTH})")
    if not _TAG.fullmatch(tag):
        raise _Bad(f"tag {_quote(tag)} is invalid: letters, digits, '_', '.' and '-' only, "
                   "not starting with '.' or '-'")
    return tag


def _check_digest(digest: str) -> str:
    if not digest:
        raise _Bad("digest is empty")
    algorithm, colon, hex_part = digest.partition(":")
    if not colon or not _ALGORITHM.fullmatch(algorithm):
        raise _Bad(f"digest {_quote(digest)} is invalid: expected algorithm:hex, "
                   "such as sha256:<64 hex digits>")
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise _Bad(f"digest algorithm {_quote(algorithm)} is not supported "
                   "(only sha256 and sha512)")
    if not _HEX.fullmatch(hex_part):
        raise _Bad(f"digest {_quote(digest)} is invalid: "
                   f"{algorithm} must be followed by hex digits")
    if hex_part != hex_part.lower():
        raise _Bad(f"digest {_quote(digest)} is invalid: hex digits must be lowercase")
    if len(hex_part) != expected:
        raise _Bad(f"digest {_quote(digest)} has the wrong length for {algorithm} "
                   f"({len(hex_part)} hex digits, expected {expected})")
    return digest


def _split_host_port(registry: str) -> tuple[str, str | None]:
    try:
        return split_host_port(registry)
    except ValueError as exc:
        raise _Bad(f"registry {_quote(registry)} is invalid: {exc}") from None


def _check_registry(registry: str) -> str:
    """Validate ``host[:port]`` and return it normalised: lowercase, port without leading zeros."""
    host, port = _split_host_port(registry)
    if port is not None and ":" in port:
        raise _Bad(f"registry {_quote(registry)} is invalid: "
                   "an IPv6 address must be written in brackets, as [::1]:5000")
    if host.startswith("["):
        inner = host[1:-1]
        if not _IPV6_CHARS.fullmatch(inner):
            raise _Bad(f"IPv6 address {_quote(host)} in registry {_quote(registry)} is invalid")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise _Bad(f"IPv6 address {_quote(host)} in registry {_quote(registry)} "
                       "is invalid") from None
        # Lowercased, not compressed: as in distribution, the written form is the registry's name.
        host = host.lower()
    elif not host:
        raise _Bad(f"registry {_quote(registry)} has no host")
    elif not _DOMAIN.fullmatch(host):
        raise _Bad(f"registry host {_quote(host)} is invalid: letters, digits and '-' "
                   "in components separated by '.'")
    else:
        host = host.lower()  # safe: the grammar has just confirmed it is ASCII
    if port is None:
        return host
    # The length check first: int() refuses strings of more than 4300 digits with a ValueError.
    if not _PORT.fullmatch(port) or len(port.lstrip("0")) > 5 or not 0 < int(port) <= 65535:
        raise _Bad(f"port {_quote(port)} in registry {_quote(registry)} is invalid: "
                   "expected a number from 1 to 65535")
    return f"{host}:{int(port)}"


def _looks_like_registry(component: str) -> bool:
    """distribution's rule for whether ``component/...`` names a registry or a Docker Hub user."""
    return "." in component or ":" in component or component == "localhost"


def _check_path(path: str) -> str:
    if not path:
        raise _Bad("repository path is empty")
    if any("A" <= c <= "Z" for c in path):
        raise _Bad(f"repository must be lowercase ({_quote(path)})")
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            shown = "is empty" if not component else "is invalid"
            raise _Bad(f"component {_quote(component)} of repository path {_quote(path)} {shown}: "
                       "lowercase letters and digits, separated by '.', '_', '__' or '-'")
    return path


def _canonical(registry: str, path: str) -> tuple[str, str]:
    registry = _check_registry(registry)
    if not _looks_like_registry(registry):
        raise _Bad(f"registry {_quote(registry)} would read as a Docker Hub namespace: "
                   "a registry needs a '.' or a ':port', or is localhost")
    registry = canonical_host(registry)
    path = _check_path(path)
    if registry == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    length = len(registry) + 1 + len(path)
    if length > NAME_MAX_LENGTH:
        raise _Bad(f"name is too long ({length} characters, at most {NAME_MAX_LENGTH})")
    return registry, path


# --- the types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository on a registry; constructing one validates it and normalises it (Docker Hub)."""

    registry: str
    path: str

    def __post_init__(self) -> None:
        try:
            registry, path = _canonical(self.registry, self.path)
        except _Bad as bad:
            _invalid("repository", f"{self.registry}/{self.path}", bad)
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "path", path)

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the distribution API for this registry."""
        return api_host(self.registry)

    @property
    def hostname(self) -> str:
        """The host alone: no port, no IPv6 brackets."""
        host, _ = _split_host_port(self.registry)
        return host[1:-1] if host.startswith("[") else host

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}"

    def tagged(self, tag: str) -> Reference:
        """This repository with ``tag``; raises ``InvalidReference`` for a bad tag."""
        return Reference(self, tag=tag)

    def digested(self, digest: str) -> Reference:
        """This repository pinned to ``digest``; raises ``InvalidReference`` for a bad digest."""
        return Reference(self, digest=digest)


@dataclass(frozen=True, slots=True)
class Reference:
    """A repository with an optional tag and an optional digest; the digest wins when both exist."""

    repository: Repository
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        try:
            if self.tag is not None:
                _check_tag(self.tag)
            if self.digest is not None:
                _check_digest(self.digest)
        except _Bad as bad:
            _invalid("reference", self._text(), bad)

    @property
    def registry(self) -> str:
        return self.repository.registry

    @property
    def path(self) -> str:
        return self.repository.path

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        if self.tag is not None:
            return self.tag
        raise InvalidReference(
            f"invalid reference {_quote(str(self))}: it has neither tag nor digest")

    def _text(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.repository}{tag}{digest}"

    def __str__(self) -> str:
        return self._text()

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to ``digest``, keeping its tag."""
        return Reference(self.repository, tag=self.tag, digest=digest)

    def with_tag(self, tag: str | None) -> Reference:
        """The same reference with ``tag`` (``None`` drops it), keeping its digest."""
        return Reference(self.repository, tag=tag, digest=self.digest)

    def pinned(self) -> Reference:
        """``repository@digest`` alone; raises ``InvalidReference`` when there is no digest."""
        if self.digest is None:
            raise InvalidReference(
                f"invalid reference {_quote(str(self))}: it is not pinned by digest")
        return Reference(self.repository, digest=self.digest)


# --- parsing ---------------------------------------------------------------------------------


def _split(text: str) -> tuple[str, str, str | None, str | None]:
    """``text`` into (registry, path, tag, digest), parts checked except registry and path."""
    if not text:
        raise _Bad("empty reference")
    if "://" in text:
        raise _Bad("a reference has no scheme: write host/path, without http:// or https://")
    name, at, digest = text.partition("@")
    if at:
        if "@" in digest:
            raise _Bad("more than one '@' (a reference never holds credentials)")
        _check_digest(digest)
    if name.startswith("[") and "/" not in name:
        raise _Bad(f"{_quote(name)} is a registry: a repository path must follow it")
    tag: str | None = None
    colon = name.rfind(":")
    # A ':' with a '/' after it belongs to a port, not to a tag.
    if colon >= 0 and "/" not in name[colon + 1:]:
        name, tag = name[:colon], _check_tag(name[colon + 1:])
    if not name:
        raise _Bad("name is empty")
    if _IMAGE_ID.fullmatch(name):
        raise _Bad("a 64-digit hex string is an image ID, not a repository name")
    first, slash, rest = name.partition("/")
    if slash and _looks_like_registry(first):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    return registry, path, tag, (digest if at else None)


def parse_reference(text: str, *, default_tag: str | None = None) -> Reference:
    """Parse ``[registry/]path[:tag][@digest]``; with neither tag nor digest, use ``default_tag``.

    ``default_tag=None`` leaves both unset.
    """
    try:
        registry, path, tag, digest = _split(text)
        # Normalised here, not by Repository, so that an error quotes what the caller wrote.
        repository = Repository(*_canonical(registry, path))
    except _Bad as bad:
        _invalid("reference", text, bad)
    if tag is None and digest is None:
        tag = default_tag
    return Reference(repository, tag=tag, digest=digest)


def repository_of(text: str) -> str | None:
    """The canonical repository a reference names (its tag or digest aside); None when
    ``text`` is not a reference: a name read from the ledger that can match nothing."""
    try:
        return str(parse_reference(text).repository)
    except InvalidReference:
        return None


def parse_repository(text: str) -> Repository:
    """Parse ``[registry/]path``; a tag or a digest is an error."""
    try:
        registry, path, tag, digest = _split(text)
        if digest is not None:
            raise _Bad(f"a repository cannot carry a digest ({_quote(digest)})")
        if tag is not None:
            raise _Bad(f"a repository cannot carry a tag ({_quote(tag)})")
        return Repository(*_canonical(registry, path))
    except _Bad as bad:
        _invalid("repository", text, bad)


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag; raise ``InvalidReference`` naming the problem."""
    try:
        return _check_tag(tag)
    except _Bad as bad:
        _invalid("tag", tag, bad)


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a supported, well-formed digest; raise ``InvalidReference``."""
    try:
        return _check_digest(digest)
    except _Bad as bad:
        _invalid("digest", digest, bad)
