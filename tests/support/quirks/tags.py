"""Immutable tags: a registry that will not move a tag once it exists, and each one's answer.

``ImmutableTags`` asks the registry behind what an existing tag names (a ``HEAD``, so the rule
holds whoever wrote the tag, through the proxy or not) and refuses a manifest ``PUT`` under a
matching tag that names another digest, or any digest where the registry refuses even the same
bytes. A ``PUT`` by digest moves no tag and always goes through. The answers, and where each
comes from, are the factories below; ``registry/immutable.py`` is the classifier's side.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from .exchange import Behaviour, Exchange
from .replies import Reply, error_reply

# Every manifest type, so the registry behind answers with the stored manifest's own digest.
ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"))

Refusal = Callable[[str, str], Reply]


def ecr_refusal(repo: str, tag: str) -> Reply:
    """ECR with tag immutability on (AWS ECR user guide, image-tag-mutability: "the
    ImageTagAlreadyExistsException error is returned if you push an image with a tag that is
    already in the repository"). Its words on the registry API as clients print them:
    osscontainertools/kaniko#204 ("TAG_INVALID: The image tag '...' already exists in the '...'
    repository and cannot be overwritten because the tag is immutable."), moby/buildkit#3776.
    400 is distribution's status for ``TAG_INVALID`` (our inference: no capture shows it)."""
    return error_reply(400, "TAG_INVALID", (
        f"The image tag '{tag}' already exists in the '{repo}' repository and cannot be "
        "overwritten because the tag is immutable."))


def harbor_refusal(repo: str, tag: str) -> Reply:
    """Harbor 2.x, a tag matched by a tag immutability rule: goharbor/harbor
    src/server/middleware/immutable/pushmf.go answers ``ErrImmutable`` ("Failed to process
    request due to '%s:%s' configured as immutable.", error.go, naming the repository without its
    project) with ``PreconditionCode``, which src/server/error sends as 412 ``PRECONDITION``;
    goharbor/harbor#17332 shows it to a cosign push."""
    name = repo.split("/", 1)[-1]
    return error_reply(412, "PRECONDITION",
                       f"Failed to process request due to '{name}:{tag}' configured as immutable.")


def acr_refusal(repo: str, tag: str) -> Reply:
    """ACR, a tag (or its repository) locked with ``--write-enabled false``: Microsoft Learn,
    container-registry-image-lock and the push troubleshooting guide ("Error 1"); the code on a
    tag PUT as crane prints it. The status is the one Azure/azure-sdk-for-net#22827 shows with the
    same code and words (a locked tag's update): the PUT's own is not in the sources."""
    return error_reply(405, "REGISTRY_DISALLOWED_OPERATION", (
        "The operation is disallowed on this registry, repository or image. View troubleshooting "
        "steps at https://aka.ms/acr/faq/#why-does-my-pull-or-push-request-fail-with-disallowed-"
        "operation"), detail={})


def artifact_registry_refusal(repo: str, tag: str) -> Reply:
    """Artifact Registry with immutable image tags (docs/docker/names#versions: a push "with a
    tag that is already used by another image" is not permitted). No public record of the wire
    answer was found: the status, code and words are our guess, a refusal like its others
    (403 ``DENIED``) that says why."""
    return error_reply(403, "DENIED", (
        f"Cannot update tag {tag} of {repo}: the repository has immutable tags enabled"))


@dataclass
class Refused:
    """One tag PUT the rule refused."""

    repo: str
    tag: str
    current: str


class ImmutableTags(Behaviour):
    """Tags matching ``patterns`` (``fnmatch``) do not move once they exist.

    ``same_digest_too``: the bytes a tag already names are refused too (Harbor's pushmf.go
    refuses any PUT under an existing immutable tag; ACR's lock refuses every write; ECR users
    report the same, aws/containers-roadmap#2179); else only another digest is (Artifact
    Registry's documented rule). ``refused`` lists what was refused.
    """

    name = "immutable-tag"

    def __init__(self, refusal: Refusal, patterns: Sequence[str] = ("*",), *,
                 same_digest_too: bool = False) -> None:
        self.refusal = refusal
        self.patterns = tuple(patterns)
        self.same_digest_too = same_digest_too
        self._lock = threading.Lock()
        self.refused: list[Refused] = []

    def _tag_put(self, ex: Exchange) -> bool:
        tag = ex.ref or ""
        return (ex.method == "PUT" and ex.kind == "manifests" and bool(tag) and ":" not in tag
                and any(fnmatch.fnmatchcase(tag, p) for p in self.patterns))

    def wants_body(self, ex: Exchange) -> bool:
        return self._tag_put(ex)

    def on_request(self, ex: Exchange) -> Reply | None:
        if not self._tag_put(ex) or ex.repo is None or ex.ref is None:
            return None
        current = self._current(ex, ex.repo, ex.ref)
        if current is None:
            return None  # a new tag: creating one is never refused
        sent = "sha256:" + hashlib.sha256(ex.body or b"").hexdigest()
        if current == sent and not self.same_digest_too:
            return None
        with self._lock:
            self.refused.append(Refused(ex.repo, ex.ref, current))
        return self.refusal(ex.repo, ex.ref)

    @staticmethod
    def _current(ex: Exchange, repo: str, tag: str) -> str | None:
        response = httpx.head(f"{ex.proxy.upstream_url}/v2/{repo}/manifests/{tag}",
                              headers={"Accept": ACCEPT}, timeout=10)
        digest = response.headers.get("docker-content-digest")
        return str(digest) if response.status_code == 200 and digest else None
