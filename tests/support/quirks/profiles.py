"""Hosted registries as lists of behaviours. Each factory returns a fresh :class:`Profile`;
a test builds its own with ``Profile("mine", [BearerAuth(...), PatchAnswers(201)])``.

- ``ecr``: Basic (user AWS); missing repositories 404 NAME_UNKNOWN; mounts declined; PATCH
  201; chunks of at least 5 MiB; ``tags/list?n=`` at most 1000; referrers API.
- ``ghcr``: Bearer even for anonymous pulls; a PATCH over 4 MiB 416; no referrers API.
- ``artifact_registry``: Bearer, 401 without a challenge except on ``/v2/``; no PATCH; the
  referrers URL is an HTML sign-in page.
- ``docker_hub``: Bearer granting the first scope only; ratelimit headers; scripted 429s with or
  without Retry-After; no referrers API.
- ``quay``: Bearer; Content-Range ``start-end`` at the upload's offset; a mount needs ``from``;
  an OCI index of Docker manifests refused; scripted 429s without Retry-After.
- ``harbor``: Bearer, token realm GET only (optionally handing out refresh tokens); a missing
  project 401; referrers API answering ``application/json``.
- ``acr``: Bearer; ``Content-Range: bytes ...`` refused; manifests over 4 MiB refused;
  referrers API.
- ``gitlab``: Bearer tokens that die in seconds (said to live 60 s), optionally slow uploads;
  no referrers API.
- ``artifactory``: Bearer; HEAD of a missing manifest 403; mounts declined.
- ``distribution3``: Content-Range checked against the offset and the length.
- ``chunk_only``: whole-blob uploads refused.
- ``paging``: not a hosted registry but a mirror's view of one: tag listings paged as Docker
  Hub pages them, 429s on listings, DELETE by tag done or refused (``listing.py``).

ECR, Harbor, Artifact Registry and ACR take ``immutable_tags``: tag patterns that do not move
once they exist, refused with that registry's answer (``tags.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .auth import BasicAuth, BearerAuth
from .exchange import Behaviour
from .listing import DOCKER_HUB_PAGE, DeleteByTag, DeleteByTagRefused, PagedTags
from .manifests import (
    DockerHubRateLimit,
    HarborProjects,
    HeadMissingManifestForbidden,
    IndexOfDockerManifestsRefused,
    ManifestSizeLimit,
    RateLimit,
    RepositoriesExist,
    TagsPageLimit,
)
from .referrers import NoReferrersAPI, ReferrersAPI, ReferrersSignInPage
from .tags import (
    ImmutableTags,
    Refusal,
    acr_refusal,
    artifact_registry_refusal,
    ecr_refusal,
    harbor_refusal,
)
from .uploads import (
    AcrContentRange,
    ChunkMaximum,
    ChunkMinimum,
    Distribution3ContentRange,
    MountDeclined,
    MountNeedsFrom,
    NoChunkedUploads,
    PatchAnswers,
    QuayContentRange,
    Throttle,
    WholeBlobRefused,
)

B = TypeVar("B", bound=Behaviour)
MiB = 1024 * 1024


@dataclass
class Profile:
    """A registry's behaviours in order, the credentials a client should use, and whether
    referrers are found through its referrers API (else through tags)."""

    name: str
    behaviours: list[Behaviour]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    referrers_api: bool = False

    def find(self, kind: type[B]) -> B:
        for item in self.behaviours:
            if isinstance(item, kind):
                return item
        raise LookupError(f"profile {self.name} has no {kind.__name__}")

    def with_behaviours(self, *extra: Behaviour, first: bool = False) -> Profile:
        """The same profile with ``extra`` behaviours appended (or put first)."""
        items = [*extra, *self.behaviours] if first else [*self.behaviours, *extra]
        return Profile(self.name, items, self.username, self.password, self.referrers_api)


def _password(password: str | None) -> str:
    return password or secrets.token_urlsafe(18)


def _immutable(patterns: Sequence[str], refusal: Refusal, *,
               same_digest_too: bool) -> list[Behaviour]:
    return [ImmutableTags(refusal, patterns, same_digest_too=same_digest_too)] if patterns else []


def ecr(existing: Iterable[str] | None = None, *, password: str | None = None,
        immutable_tags: Sequence[str] = ()) -> Profile:
    """Amazon ECR. ``existing``: the repositories that exist (None: every one);
    ``immutable_tags``: tag mutability IMMUTABLE (``("*",)``), or with exclusions."""
    password = _password(password)
    items: list[Behaviour] = [BasicAuth({"AWS": password}, service="ecr.amazonaws.com")]
    if existing is not None:
        items.append(RepositoriesExist(existing))
    items += _immutable(immutable_tags, ecr_refusal, same_digest_too=True)
    items += [TagsPageLimit(1000), MountDeclined(), ChunkMinimum(5 * MiB), PatchAnswers(201),
              ReferrersAPI()]
    return Profile("ecr", items, "AWS", password, referrers_api=True)


def ghcr(*, password: str | None = None) -> Profile:
    """GitHub Container Registry: a token even to pull a public image.

    richlander/container-registry-api ghcr.md: "GitHub Container Registry requires
    authentication for both public and private images ... You can access public images with a
    no-op token. However, you still need to ask for it, at repo scope" (ghcr.io/token?scope=...).
    """
    password = _password(password)
    auth = BearerAuth(realm_path="/token", service="ghcr.io", users={"fanout-bot": password},
                      anonymous_pull=True)
    return Profile("ghcr", [auth, ChunkMaximum(4 * MiB), NoReferrersAPI()], "fanout-bot",
                   password)


def artifact_registry(*, password: str | None = None, lifetime: float = 3600.0,
                      immutable_tags: Sequence[str] = ()) -> Profile:
    """Google Artifact Registry (and gcr.io, which it serves now); ``immutable_tags``: the
    repository's immutable image tags (``("*",)``: every tag, as the setting means)."""
    password = _password(password)
    auth = BearerAuth(realm_path="/v2/token", service="us-docker.pkg.dev",
                      users={"oauth2accesstoken": password}, challenge_everywhere=False,
                      lifetime=lifetime)
    return Profile("artifact-registry", [
        ReferrersSignInPage(), auth, NoChunkedUploads(),
        *_immutable(immutable_tags, artifact_registry_refusal, same_digest_too=False)],
        "oauth2accesstoken", password)


def docker_hub(*, password: str | None = None) -> Profile:
    """Docker Hub. Script 429s with ``profile.find(DockerHubRateLimit).script(k, ...)``."""
    password = _password(password)
    auth = BearerAuth(realm_path="/token", service="registry.docker.io",
                      users={"fanoutbot": password}, anonymous_pull=True, first_scope_only=True)
    return Profile("docker-hub", [auth, DockerHubRateLimit(), NoReferrersAPI()], "fanoutbot",
                   password)


def quay(*, password: str | None = None) -> Profile:
    """Quay.io. Script 429s (never with Retry-After) with ``profile.find(RateLimit).script(k)``;
    its 429 is an HTML page from the front proxy (our guess at the body)."""
    password = _password(password)
    auth = BearerAuth(realm_path="/v2/auth", service="quay.io", users={"acme+robot": password})
    return Profile("quay", [auth, RateLimit(html=True), MountNeedsFrom(), QuayContentRange(),
                            IndexOfDockerManifestsRefused()], "acme+robot", password)


def harbor(projects: Iterable[str] = ("acme",), *, refresh_tokens: bool = False,
           password: str | None = None, immutable_tags: Sequence[str] = ()) -> Profile:
    """Harbor 2.x with the given projects; ``immutable_tags``: the tags a tag immutability rule
    matches.

    ``refresh_tokens``: the realm answers ``offline_token=true`` with a refresh token, as
    distribution's token spec lets a token server do (we know of no Harbor that does). A client
    holding one asks for its next token with an OAuth2 POST, which this GET-only realm answers
    405: the path by which a client meets Harbor's 405 (containerd/containerd#8630).
    """
    password = _password(password)
    auth = BearerAuth(realm_path="/service/token", service="harbor-registry",
                      users={"robot$acme+ci": password}, token_methods=("GET",),
                      refresh_tokens=refresh_tokens)
    return Profile("harbor", [
        auth, HarborProjects(projects),
        *_immutable(immutable_tags, harbor_refusal, same_digest_too=True),
        ReferrersAPI(content_type="application/json")],
        "robot$acme+ci", password, referrers_api=True)


def acr(*, password: str | None = None, immutable_tags: Sequence[str] = ()) -> Profile:
    """Azure Container Registry; ``immutable_tags``: the tags locked with
    ``az acr repository update --image REPO:TAG --write-enabled false``."""
    password = _password(password)
    user = "00000000-0000-0000-0000-000000000000"  # what `az acr login --expose-token` uses
    auth = BearerAuth(realm_path="/oauth2/token", service="fanout.azurecr.io",
                      users={user: password})
    return Profile("acr", [
        auth, AcrContentRange(), ManifestSizeLimit(4 * MiB),
        *_immutable(immutable_tags, acr_refusal, same_digest_too=True), ReferrersAPI()],
        user, password, referrers_api=True)


def gitlab(*, lifetime: float = 2.0, upload_rate: float | None = None,
           password: str | None = None) -> Profile:
    """GitLab's container registry with tokens that live ``lifetime`` seconds; uploads go at
    ``upload_rate`` bytes/s when given, so a token can die while a blob is on its way.

    docs.gitlab.com "Authenticate with the container registry": "Tokens remain valid for 5
    minutes by default, and 15 minutes on GitLab.com"; pushes that outlive the token fail
    "unauthorized: authentication required" (gitlab-org/gitlab-ce#17890, #19867).
    """
    password = _password(password)
    auth = BearerAuth(realm_path="/jwt/auth", service="container_registry",
                      users={"gitlab-ci-token": password}, lifetime=lifetime)
    items: list[Behaviour] = [auth, NoReferrersAPI()]
    if upload_rate is not None:
        items.append(Throttle(upload_rate))
    return Profile("gitlab", items, "gitlab-ci-token", password)


def artifactory(*, password: str | None = None) -> Profile:
    """JFrog Artifactory."""
    password = _password(password)
    auth = BearerAuth(realm_path="/artifactory/api/docker/docker-local/v2/token",
                      service="artifactory", users={"deployer": password})
    return Profile("artifactory", [auth, HeadMissingManifestForbidden(), MountDeclined()],
                   "deployer", password)


def distribution3() -> Profile:
    """distribution v3 (anonymous), which checks Content-Range."""
    return Profile("distribution3", [Distribution3ContentRange()])


def paging(page: int = DOCKER_HUB_PAGE, *, link: str = "relative",
           delete_by_tag: Path | None = None, refuse_delete_by_tag: bool = False) -> Profile:
    """A registry for mirrors (anonymous): ``tags/list`` in pages of ``page`` with Docker
    Hub's ``Link`` (``link``: relative, absolute or none), and 429s on listings scripted with
    ``profile.find(RateLimit).script(1, retry_after=1, skip=2)`` (the third page, once).

    DELETE by tag: as the registry behind answers it (distribution 2.8: 400 DIGEST_INVALID),
    or done as OCI 1.1 has it given the storage ``delete_by_tag`` (the ``root`` of the registry
    behind), or refused 405 UNSUPPORTED with ``refuse_delete_by_tag``.
    """
    items: list[Behaviour] = [RateLimit(methods=("GET",), kinds=("tags",)),
                              PagedTags(page, link=link)]
    if refuse_delete_by_tag:
        items.append(DeleteByTagRefused())
    elif delete_by_tag is not None:
        items.append(DeleteByTag(delete_by_tag))
    return Profile("paging", items)


def chunk_only() -> Profile:
    """A registry that takes blobs in chunks only (anonymous)."""
    return Profile("chunk-only", [WholeBlobRefused()])


PROFILES: dict[str, Callable[..., Profile]] = {
    "ecr": ecr, "ghcr": ghcr, "artifact-registry": artifact_registry, "docker-hub": docker_hub,
    "quay": quay, "harbor": harbor, "acr": acr, "gitlab": gitlab, "artifactory": artifactory,
    "distribution3": distribution3, "chunk-only": chunk_only,
}

