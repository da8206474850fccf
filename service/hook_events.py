"""What a registry's webhook says was pushed: one parser per kind, payload in, pushes out.

Each parser takes the decoded JSON of one delivery and returns :class:`Events`: the pushes of
an image (a repository, its digest, its tag), and the events it skipped with the reason (a pull,
a blob, an npm package). A payload that is not what that registry sends raises
:class:`PayloadError` naming the field at fault, never anything else: the webhook answers 422,
not 500. Repositories come out canonical (``docker.io/library/x`` for ``x``), digests and tags
checked, so nothing downstream parses them again.

``registry`` is the host the pushed repositories are named under when ``[hooks.KIND] registry``
sets it; otherwise each kind's own: the ``Host`` the push was sent to (distribution), the host of
the resource URL (Harbor), ``ghcr.io`` (GitHub), ``docker.io`` (Docker Hub), the host of the
``docker_url`` (Quay). Docker Hub and Quay name no digest: their pushes carry the tag alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidReference
from registry.manifest import SUPPORTED_MEDIA_TYPES
from registry.reference import Repository, validate_digest, validate_tag

__all__ = ["PARSERS", "Events", "PayloadError", "Push", "Skipped", "parse"]

_QUOTE_MAX = 120


class PayloadError(ValueError):
    """The payload is not one this kind of registry sends; the message names the field."""


@dataclass(frozen=True, slots=True)
class Push:
    """An image pushed: ``registry/repository`` (canonical), by digest and/or with a tag."""

    registry: str
    repository: str
    digest: str | None
    tag: str | None

    @property
    def name(self) -> str:
        """``registry/repository``, what rules and grants match."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event in the payload that is no image push, and why it was passed over."""

    event: str
    reason: str


@dataclass(frozen=True, slots=True)
class Events:
    pushes: tuple[Push, ...] = ()
    skipped: tuple[Skipped, ...] = ()


# -- distribution -------------------------------------------------------------------------------


def parse_distribution(payload: object, registry: str | None = None) -> Events:
    """distribution's notification envelope: ``{"events": [...]}``, one event per manifest or
    blob pushed or pulled. Only manifest pushes count; the host is the event's
    ``request.host``, the one the client pushed to."""
    events = _list(_field(_object(payload, "the payload"), "events", "the payload"), "events")
    pushes: list[Push] = []
    other: dict[str, int] = {}
    for i, value in enumerate(events):
        where = f"events[{i}]"
        event = _object(value, where)
        action = _text(event.get("action"), f"{where}.action")
        target = _object(_field(event, "target", where), f"{where}.target")
        media_type = _text(target.get("mediaType"), f"{where}.target.mediaType", required=False)
        if action != "push" or media_type not in SUPPORTED_MEDIA_TYPES:
            # Blobs, pulls, deletions, and manifests fanout does not copy (schema 1).
            what = action if action != "push" else f"push of {media_type or 'a blob'}"
            other[what] = other.get(what, 0) + 1
            continue
        host = registry or _text(_object(_field(event, "request", where), f"{where}.request")
                                 .get("host"), f"{where}.request.host")
        repository = _text(target.get("repository"), f"{where}.target.repository")
        digest = _digest(target.get("digest"), f"{where}.target.digest")
        tag = _tag(target.get("tag"), f"{where}.target.tag")
        pushes.append(_push(host, repository, digest, tag, where))
    skipped = tuple(Skipped(f"{_quote(what)} ({count} event(s))", "not a push of an image manifest")
                    for what, count in sorted(other.items()))
    return Events(tuple(pushes), skipped)


# -- Harbor -------------------------------------------------------------------------------------


def parse_harbor(payload: object, registry: str | None = None) -> Events:
    """Harbor's ``PUSH_ARTIFACT`` (its default format) or ``harbor.artifact.pushed``
    (CloudEvents): one push per resource, the host taken from the resource URL."""
    body = _object(payload, "the payload")
    kind = _text(body.get("type"), "type")
    if kind not in ("PUSH_ARTIFACT", "harbor.artifact.pushed"):
        return Events(skipped=(Skipped(f"Harbor {_quote(kind)}", "not an artifact push"),))
    data_key = "event_data" if kind == "PUSH_ARTIFACT" else "data"
    data = _object(_field(body, data_key, "the payload"), data_key)
    repository = _text(_object(_field(data, "repository", data_key), f"{data_key}.repository")
                       .get("repo_full_name"), f"{data_key}.repository.repo_full_name")
    pushes = []
    for i, value in enumerate(_list(_field(data, "resources", data_key),
                                    f"{data_key}.resources")):
        where = f"{data_key}.resources[{i}]"
        resource = _object(value, where)
        digest = _digest(resource.get("digest"), f"{where}.digest")
        tag = _tag(resource.get("tag"), f"{where}.tag")
        host = registry or _host_of(_text(resource.get("resource_url"),
                                          f"{where}.resource_url"), f"{where}.resource_url")
        pushes.append(_push(host, repository, digest, tag, where))
    return Events(tuple(pushes))


# -- GitHub -------------------------------------------------------------------------------------

_GITHUB_CONTAINER_TYPES = frozenset({"container", "docker"})


def parse_github(payload: object, registry: str | None = None) -> Events:
    """GitHub's ``package`` (or older ``registry_package``) event, action ``published``, of a
    container package: ``ghcr.io/OWNER/NAME``, the version's digest and its tag if any."""
    body = _object(payload, "the payload")
    key = "package" if "package" in body else "registry_package"
    package = _object(_field(body, key, "the payload"), key)
    action = _text(body.get("action"), "action")
    if action != "published":
        return Events(skipped=(Skipped(f"GitHub package {_quote(action)}",
                                       "not a package published"),))
    package_type = _text(package.get("package_type"), f"{key}.package_type")
    if package_type.lower() not in _GITHUB_CONTAINER_TYPES:
        return Events(skipped=(Skipped(f"GitHub {_quote(package_type)} package",
                                       "not a container image"),))
    name = _text(package.get("name"), f"{key}.name")
    owner = _text(_object(_field(package, "owner", key), f"{key}.owner").get("login"),
                  f"{key}.owner.login")
    version = _object(_field(package, "package_version", key), f"{key}.package_version")
    where = f"{key}.package_version.container_metadata.tag"
    metadata = _object(_field(version, "container_metadata", f"{key}.package_version"),
                       f"{key}.package_version.container_metadata")
    tag_info = _object(_field(metadata, "tag", f"{key}.package_version.container_metadata"),
                       where)
    tag = _tag(tag_info.get("name"), f"{where}.name")
    digest = _github_digest(tag_info.get("digest"), version, key)
    # GitHub keeps the owner's and the package's case; the registry's repository is lowercase.
    return Events((_push(registry or "ghcr.io", f"{owner}/{name}".lower(), digest, tag, key),))


def _github_digest(value: object, version: Mapping[str, Any], key: str) -> str:
    """The tag's digest; GitHub also names the version by its digest, which some deliveries
    carry when the tag's is missing or cut short."""
    for candidate in (value, version.get("version"), version.get("name")):
        if isinstance(candidate, str):
            try:
                return validate_digest(candidate)
            except InvalidReference:
                continue
    raise PayloadError(f"{key}.package_version: no valid digest in container_metadata.tag.digest "
                       "or version")


# -- Docker Hub ---------------------------------------------------------------------------------


def parse_dockerhub(payload: object, registry: str | None = None) -> Events:
    """Docker Hub's push webhook: a repository and the tag pushed; no digest."""
    body = _object(payload, "the payload")
    repository = _text(_object(_field(body, "repository", "the payload"), "repository")
                       .get("repo_name"), "repository.repo_name")
    push_data = _object(_field(body, "push_data", "the payload"), "push_data")
    tag = _tag(push_data.get("tag"), "push_data.tag")
    if tag is None:
        raise PayloadError("push_data.tag: missing (Docker Hub names the tag it pushed)")
    return Events((_push(registry or "docker.io", repository, None, tag, "repository"),))


# -- Quay ---------------------------------------------------------------------------------------


def parse_quay(payload: object, registry: str | None = None) -> Events:
    """Quay's repository push notification: the repository and its updated tags; no digest.
    ``updated_tags`` is a list, or in older deliveries a map of tag to image id."""
    body = _object(payload, "the payload")
    repository = _text(body.get("repository"), "repository")
    host = registry
    if host is None:
        docker_url = _text(body.get("docker_url"), "docker_url", required=False)
        host = _host_of(docker_url, "docker_url") if docker_url else "quay.io"
    updated = _field(body, "updated_tags", "the payload")
    names = list(updated) if isinstance(updated, Mapping) else _list(updated, "updated_tags")
    pushes = []
    for i, name in enumerate(names):
        tag = _tag(name, f"updated_tags[{i}]")
        if tag is None:
            raise PayloadError(f"updated_tags[{i}]: an empty tag")
        pushes.append(_push(host, repository, None, tag, "repository"))
    if not pushes:
        return Events(skipped=(Skipped(f"Quay push to {_quote(repository)}",
                                       "no tag was updated"),))
    return Events(tuple(pushes))


Parser = Callable[[object, str | None], Events]
PARSERS: Mapping[str, Parser] = {
    "distribution": parse_distribution,
    "harbor": parse_harbor,
    "github": parse_github,
    "dockerhub": parse_dockerhub,
    "quay": parse_quay,
}


def parse(kind: str, payload: object, registry: str | None = None) -> Events:
    """The pushes in ``payload``, a delivery of webhook ``kind`` (a key of :data:`PARSERS`)."""
    return PARSERS[kind](payload, registry)


# -- checking fields ----------------------------------------------------------------------------


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= _QUOTE_MAX else text[:_QUOTE_MAX] + "…")


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where}: expected an object, got {_json_type(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PayloadError(f"{where}: expected an array, got {_json_type(value)}")
    return value


def _field(value: Mapping[str, Any], key: str, where: str) -> object:
    if key not in value:
        raise PayloadError(f"{where}: {key} is missing")
    return value[key]


def _text(value: object, where: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        shown = "an empty string" if isinstance(value, str) else _json_type(value)
        raise PayloadError(f"{where}: expected a non-empty string, got {shown}")
    return value.strip()


def _digest(value: object, where: str) -> str:
    try:
        return validate_digest(_text(value, where))
    except ValueError as exc:
        raise PayloadError(f"{where}: {exc}") from None


def _tag(value: object, where: str) -> str | None:
    """A tag, or None when the field is absent or empty (a push by digest)."""
    text = _text(value, where, required=False)
    if not text:
        return None
    try:
        return validate_tag(text)
    except ValueError as exc:
        raise PayloadError(f"{where}: {exc}") from None


def _host_of(url: str, where: str) -> str:
    """The host of ``host/path[:tag]`` or ``https://host/path``."""
    host = url.partition("://")[2] if "://" in url else url
    host = host.partition("/")[0]
    if not host:
        raise PayloadError(f"{where}: no registry host in {_quote(url)}")
    return host


def _push(host: str, repository: str, digest: str | None, tag: str | None, where: str) -> Push:
    try:
        repo = Repository(host.strip(), repository.strip().strip("/"))
    except ValueError as exc:  # InvalidReference, or a host:port that does not split
        raise PayloadError(f"{where}: {exc}") from None
    return Push(repo.registry, repo.path, digest, tag)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
