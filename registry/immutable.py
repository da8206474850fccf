"""Each registry's refusal to move an immutable tag, so that the one classifier knows it.

ECR, Harbor, Artifact Registry and ACR can refuse a ``PUT`` of a manifest under a tag that
already exists. Their answers reuse codes that mean other things too (``TAG_INVALID`` is also
distribution's "manifest tag did not match URI", ``DENIED`` any refusal, a 412 or a 405 anything),
so a refusal counts as immutability only by its code *and* the words of its message, and only as
the answer to a ``PUT`` by tag: a ``PUT`` by digest moves no tag, so no registry refuses it for
this. A 401, 404, 408, 429 or 5xx is never it (those say who we are, what is missing, or "later").

- **ECR**: 400 ``TAG_INVALID`` "The image tag 'T' already exists in the 'R' repository and cannot
  be overwritten because the tag is immutable." (earlier: "... because the repository is
  immutable."). AWS's user guide, image-tag-mutability ("the ImageTagAlreadyExistsException error
  is returned if you push an image with a tag that is already in the repository"); the wire
  answer as clients print it: osscontainertools/kaniko#204 (go-containerregistry's
  ``TAG_INVALID: ...``), moby/buildkit#3776 and aws/containers-roadmap#862 (docker's
  ``tag invalid: ...``); 400 is distribution's status for ``TAG_INVALID``
  (registry/api/v2/errors.go).
- **Harbor 2.x**: 412 ``PRECONDITION`` "Failed to process request due to 'R:T' configured as
  immutable." goharbor/harbor src/server/middleware/immutable/{pushmf,error}.go
  (``PreconditionCode``, which src/server/error maps to 412); seen by cosign users in
  goharbor/harbor#17332. Harbor 1.10 (src/core/middlewares/immutable) sent the same words as 412
  ``DENIED``, and earlier "... due to 'R:T' is a immutable tag."
- **ACR** (a tag or its repository locked, ``writeEnabled: false``):
  ``REGISTRY_DISALLOWED_OPERATION`` "The operation is disallowed on this registry, repository
  or image. View troubleshooting steps at https://aka.ms/acr/faq/#why-does-my-pull-or-push-request-fail-with-disallowed-operation".
  Microsoft Learn, container-registry-image-lock and the ACR push troubleshooting guide
  ("Error 1"); the code as crane prints it for a tag PUT; 405 with these words for a locked
  tag's update in Azure/azure-sdk-for-net#22827. The same words answer a registry over its
  40 TiB storage limit; by the time a tag is written its manifest is stored by digest, so there
  they mean a lock, and the advice names both.
- **Artifact Registry**: documented behaviour only (docs/docker/names#versions; the API's
  ``DockerRepositoryConfig.immutable_tags``: "prevents all tags from being modified, moved or
  deleted"). No public record of its wire answer was found, so any refusal of a tag PUT whose
  message says the tag is immutable counts, whatever its code (as Quay's "tag is immutable and
  cannot be overwritten" and Mirantis MSR's "... is an immutable repository" would).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

# A manifest by tag: the distribution spec's tag grammar, which no digest matches (no ':').
_TAG_PUT = re.compile(r"^/v2/.+/manifests/(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
# What an immutability refusal can never be.
_NOT_A_REFUSAL = frozenset({401, 404, 408, 429})


@dataclass(frozen=True, slots=True)
class ImmutableAnswer:
    """One registry's refusal: whose it is, what it looks like, and how its rule is lifted."""

    registry: str
    codes: frozenset[str]  # empty: any code, or none
    words: re.Pattern[str]
    lift: str  # ``{image}`` is ``repository:tag``


ANSWERS: tuple[ImmutableAnswer, ...] = (
    ImmutableAnswer(
        "ECR", frozenset({"TAG_INVALID"}),
        re.compile(r"cannot be overwritten because the (tag|repository) is immutable", re.I),
        "set the repository's tag mutability to MUTABLE, or add the tag to its "
        "immutability exclusions"),
    ImmutableAnswer(
        "Harbor", frozenset({"PRECONDITION", "DENIED"}),
        re.compile(r"configured as immutable|is a immutable tag", re.I),
        "disable or narrow the project's tag immutability rule that matches it"),
    ImmutableAnswer(
        "ACR", frozenset({"REGISTRY_DISALLOWED_OPERATION"}),
        re.compile(r"operation is disallowed on this registry, repository or image", re.I),
        "unlock it (az acr repository update --image {image} --write-enabled true, and the "
        "same for its repository), or, if the registry is at its storage limit, free space"),
    # Artifact Registry, and any registry that says so in its own words.
    ImmutableAnswer(
        "the registry", frozenset(), re.compile(r"\bimmutable\b", re.I),
        "lift the registry's immutability rule for it (Artifact Registry: turn off the "
        "repository's immutable image tags)"),
)


def tag_of_put(method: str, path: str) -> str | None:
    """The tag a request writes: set only for a ``PUT`` of a manifest by tag."""
    if method != "PUT":
        return None
    match = _TAG_PUT.match(unquote(path))
    return match["tag"] if match else None


def immutable_answer(status: int, codes: Iterable[str],
                     messages: Iterable[str]) -> ImmutableAnswer | None:
    """Which registry's immutable-tag refusal this answer to a tag ``PUT`` is, if any."""
    if not 400 <= status < 500 or status in _NOT_A_REFUSAL:
        return None
    code_set, text = set(codes), " ".join(messages)
    for answer in ANSWERS:
        if answer.codes and not answer.codes & code_set:
            continue
        if answer.words.search(text):
            return answer
    return None
