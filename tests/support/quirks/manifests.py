"""Repository, manifest and listing rules of hosted registries, and their rate limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .exchange import Behaviour, Exchange, Upstream
from .replies import Reply, error_reply

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
MiB = 1024 * 1024


class RepositoriesExist(Behaviour):
    """Only ``existing`` repositories exist; anything else is 404 NAME_UNKNOWN (ECR: a push does
    not create a repository).

    The message is ECR's, as users report it (actions/starter-workflows#2647,
    aws-actions/amazon-ecr-login#166): "The repository with name 'x' does not exist in the
    registry with id '123456789012'"; regclient#869: "pushing to a non-existent repository
    doesn't automatically create that repository like other registries".
    """

    name = "repository-missing"

    def __init__(self, existing: Iterable[str], registry_id: str = "123456789012") -> None:
        self.existing = set(existing)
        self.registry_id = registry_id

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.repo is None or ex.repo in self.existing:
            return None
        return error_reply(404, "NAME_UNKNOWN", (
            f"The repository with name '{ex.repo}' does not exist in the registry with id "
            f"'{self.registry_id}'"))


class HarborProjects(Behaviour):
    """Repositories live in projects (the first path component); only ``projects`` exist.

    A push to a missing project is answered as an authentication error, not a 404: Harbor's token
    service grants no access to a project it cannot find (goharbor/harbor#14291 "handle project
    not found when creating token"), and the push fails "unauthorized: authentication required"
    (goharbor/harbor#966, "pushing an image to non-existing project give a wrong error"). We say
    which project in the message, as a helpful Harbor would; reads get 404 NAME_UNKNOWN.
    """

    name = "harbor-project"

    def __init__(self, projects: Iterable[str], *, challenge_realm_path: str = "/service/token",
                 service: str = "harbor-registry") -> None:
        self.projects = set(projects)
        self.realm_path = challenge_realm_path
        self.service = service

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.repo is None:
            return None
        project = ex.repo.split("/", 1)[0]
        if project in self.projects:
            return None
        if not ex.is_write:
            return error_reply(404, "NAME_UNKNOWN", f"repository {ex.repo} not found")
        challenge = (f'Bearer realm="{ex.proxy.url}{self.realm_path}",service="{self.service}",'
                     f'scope="repository:{ex.repo}:pull,push",error="insufficient_scope"')
        return error_reply(401, "UNAUTHORIZED", f"project {project} not found",
                           headers={"WWW-Authenticate": challenge})


class ManifestSizeLimit(Behaviour):
    """A manifest PUT over ``limit`` bytes is refused (ACR: "Maximum manifest size (MiB): 4",
    Azure Container Registry service tiers, docs.azure.cn container-registry-skus). The error
    body is our guess."""

    name = "manifest-size"

    def __init__(self, limit: int = 4 * MiB) -> None:
        self.limit = limit

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method == "PUT" and ex.kind == "manifests" and (ex.length or 0) > self.limit:
            return error_reply(400, "MANIFEST_INVALID", f"manifest is {ex.length} bytes, over "
                               f"the {self.limit} byte limit")
        return None


class IndexOfDockerManifestsRefused(Behaviour):
    """An OCI index whose children are Docker schema 2 manifests is refused, 400
    MANIFEST_INVALID (Quay before PROJQUAY-4826).

    openshift/oc-mirror#253, pushing to Quay: "MANIFEST_INVALID: manifest invalid;
    map[message:failed to parse manifest: manifest data does not match schema:
    'application/vnd.docker.distribution.manifest.v2+json' is not one of [...]"; the fix,
    quay/quay#1959 "Accept schema 2 images as OCI index children", was still open.
    """

    name = "oci-index-of-docker"

    def wants_body(self, ex: Exchange) -> bool:
        return ex.method == "PUT" and ex.kind == "manifests"

    def on_request(self, ex: Exchange) -> Reply | None:
        if not self.wants_body(ex) or ex.body is None:
            return None
        try:
            doc = json.loads(ex.body)
        except ValueError:
            return None
        content_type = (ex.header("content-type") or "").split(";")[0].strip()
        if not isinstance(doc, dict) or OCI_INDEX not in (content_type, doc.get("mediaType")):
            return None
        for child in doc.get("manifests") or []:
            if isinstance(child, dict) and child.get("mediaType") in DOCKER_TYPES:
                return error_reply(400, "MANIFEST_INVALID", "manifest invalid", detail={
                    "message": "failed to parse manifest: manifest data does not match schema: "
                               f"'{child['mediaType']}' is not one of "
                               "['application/vnd.oci.image.manifest.v1+json', "
                               f"'{OCI_INDEX}']"})
        return None


class HeadMissingManifestForbidden(Behaviour):
    """HEAD of a manifest the repository lacks is answered 403, not 404 (Artifactory).

    go-containerregistry pkg/v1/remote/pusher.go, manifestExists: "some registries will return a
    403 instead of a 404 in certain situations. E.g. https://jfrog.atlassian.net/browse/RTFACT-13797".
    """

    name = "head-403"

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        if ex.method == "HEAD" and ex.kind == "manifests" and up.status == 404:
            return Reply(403, {"Content-Type": "application/json"})
        return None


class TagsPageLimit(Behaviour):
    """``GET tags/list?n=`` over ``maximum`` is refused with 400 (ECR).

    go-containerregistry pkg/v1/remote/options.go: "ECR returns an error if n > 1000"
    (google/go-containerregistry#1091). The body imitates an AWS validation error.
    """

    name = "tags-n-limit"

    def __init__(self, maximum: int = 1000) -> None:
        self.maximum = maximum

    def on_request(self, ex: Exchange) -> Reply | None:
        n = ex.param("n")
        if ex.kind == "tags" and n is not None and n.isdigit() and int(n) > self.maximum:
            return error_reply(400, "INVALID_REQUEST", (
                f"1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy "
                f"constraint: Member must have value less than or equal to {self.maximum}"))
        return None


@dataclass
class Limited:
    """One request the rate limit answered 429."""

    time: float
    method: str
    path: str
    retry_after: float | None


class RateLimit(Behaviour):
    """429 for the next K matching requests, with or without ``Retry-After``; scripted::

        limit = proxy.behaviour(RateLimit)
        limit.script(2, retry_after=1)      # the next two manifest requests get 429
        limit.script(1, retry_after=1, skip=2)  # the third from now gets 429, once

    ``limited`` lists what was answered 429.
    """

    name = "rate-limit"

    def __init__(self, *, methods: tuple[str, ...] = ("GET", "HEAD"), kinds: tuple[str, ...] = (
            "manifests",), code: str = "TOOMANYREQUESTS",
                 message: str = "too many requests", html: bool = False) -> None:
        self.methods = methods
        self.kinds = kinds
        self.code = code
        self.message = message
        self.html = html
        self._lock = threading.Lock()
        self._left = 0
        self._skip = 0
        self._retry_after: float | None = None
        self.limited: list[Limited] = []

    def script(self, count: int, *, retry_after: float | None = None, skip: int = 0) -> None:
        """Answer 429 to ``count`` matching requests after letting ``skip`` of them by."""
        with self._lock:
            self._left, self._retry_after, self._skip = count, retry_after, skip

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method not in self.methods or ex.kind not in self.kinds:
            return None
        with self._lock:
            if self._left <= 0:
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            self._left -= 1
            after = self._retry_after
            self.limited.append(Limited(time.monotonic(), ex.method, ex.path, after))
        headers = self.extra_headers(limited=True)
        if after is not None:
            headers["Retry-After"] = f"{after:g}"
        if self.html:
            # nginx's own page: what a 429 from a front proxy looks like.
            body = b"<html><head><title>429 Too Many Requests</title></head><body></body></html>"
            return Reply(429, {"Content-Type": "text/html", **headers}, body)
        return error_reply(429, self.code, self.message, headers=headers)

    def extra_headers(self, *, limited: bool) -> dict[str, str]:
        return {}


class DockerHubRateLimit(RateLimit):
    """Docker Hub's pull limit: ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining:
    N;w=21600`` on manifest GET and HEAD (a GET counts as a pull), and scripted 429s.

    docs.docker.com "Docker Hub usage and limits" (check with ``curl --head .../manifests/latest
    | grep ratelimit``; a capture in gist jeversol/369009aa shows ``ratelimit-limit:
    100;w=21600``, ``ratelimit-remaining: 0;w=21600``, ``docker-ratelimit-source``). The 429
    message is the one Docker Hub sends.
    """

    name = "dockerhub-rate-limit"

    def __init__(self, limit: int = 100, window: int = 21600) -> None:
        super().__init__(message=(
            "You have reached your pull rate limit. You may increase the limit by "
            "authenticating and upgrading: https://www.docker.com/increase-rate-limit"))
        self.limit = limit
        self.window = window
        self.remaining = limit

    def extra_headers(self, *, limited: bool) -> dict[str, str]:
        remaining = 0 if limited else self.remaining
        return {"ratelimit-limit": f"{self.limit};w={self.window}",
                "ratelimit-remaining": f"{remaining};w={self.window}",
                "docker-ratelimit-source": "127.0.0.1"}

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        if ex.kind != "manifests" or ex.method not in ("GET", "HEAD") or up.status != 200:
            return None
        with self._lock:
            if ex.method == "GET":
                self.remaining = max(self.remaining - 1, 0)
            headers = self.extra_headers(limited=False)
        for name, value in headers.items():
            up.set_header(name, value)
        return None
