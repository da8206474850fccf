"""Preflight of a destination: could a copy land there, and what is known of the registry.

Every step reports instead of raising, so one answer holds everything that is wrong::

    probe        GET /v2/ unauthenticated    reachable? https or http? which auth scheme?
    pull         HEAD a manifest no one has  404: may read; 401/403: may not
    repository   GET tags/list               200: exists; 404: not (yet)
    push         POST an upload, DELETE it   202: may push; nothing is written
    referrers    GET referrers/<empty>       an OCI index: the API is there
    learnt       client.capabilities         mounts, chunk limits, whole-blob uploads

A copy needs pull as well as push at the destination (it checks what is there before sending).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import scopes
from .errors import (
    ConnectionFailed,
    CredentialError,
    Denied,
    InvalidManifest,
    NotFound,
    ProtocolError,
    RateLimited,
    RegistryError,
    ServerError,
    Timeout,
    Unauthorized,
    UntrustedCertificate,
)
from .fetch import manifest_head, referrers_get
from .push import upload_cancel, upload_start
from .reference import Reference, Repository
from .untag import DeleteAccess, probe_deletes

if TYPE_CHECKING:
    from .capabilities import Capabilities
    from .client import RegistryClient
    from .session import Registries

# The digest of zero bytes: no manifest has it, and any digest will do to ask for referrers.
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# What ``credentials`` can say.
ANONYMOUS = "anonymous"  # none configured for the host
NOT_NEEDED = "not needed"  # configured, but the registry asks for none
ACCEPTED = "accepted"
REJECTED = "rejected"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DestinationCheck:
    """What ``fanout check`` found about one destination; ``None`` means not known."""

    destination: str
    registry: str
    repository: str
    ready: bool
    reachable: bool | None
    scheme: str | None
    auth: str | None  # "none", "basic", "bearer" or "other"
    token_realm: str | None  # the token server's host, for bearer auth
    credentials: str  # ANONYMOUS, NOT_NEEDED, ACCEPTED, REJECTED or UNKNOWN
    pull: bool | None
    push: bool | None
    repository_exists: bool | None
    mounts: bool | None
    referrers_api: bool | None
    whole_blob: bool | None  # False: the registry takes blobs only in chunks
    chunk_min: int | None
    chunk_max: int | None
    # May manifests be deleted (a mirror's prune)? Not needed to be ready.
    delete: bool | None = None
    delete_refusal: str | None = None  # "disabled" (at the registry) or "denied" (to us)
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``problems`` say what is wrong and what to do."""
        document = asdict(self)
        document["problems"] = list(self.problems)
        return document


@dataclass(slots=True)
class _Findings:
    """The answers so far, turned into a :class:`DestinationCheck` at the end."""

    repository: Repository
    tag: str | None
    configured: bool = False
    reachable: bool | None = None
    scheme: str | None = None
    auth: str | None = None
    realm: str | None = None
    pull: bool | None = None
    push: bool | None = None
    exists: bool | None = None
    referrers: bool | None = None
    delete: DeleteAccess | None = None
    chunk_min: int = 0
    pull_error: RegistryError | None = None
    push_error: RegistryError | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.repository.registry

    def credentials(self) -> str:
        if not self.configured:
            return ANONYMOUS
        if self.auth == "none":
            return NOT_NEEDED
        if self.pull or self.push:
            return ACCEPTED
        errors = (self.pull_error, self.push_error)
        if any(isinstance(e, Unauthorized) for e in errors):
            return REJECTED
        if any(isinstance(e, Denied | NotFound) for e in errors):
            return ACCEPTED  # the registry knew who we were, and said no to something else
        return UNKNOWN

    def result(self, capabilities: Capabilities | None = None) -> DestinationCheck:
        caps = capabilities
        chunk_min = max(self.chunk_min, caps.chunk_min if caps is not None else 0)
        referrers = self.referrers
        if referrers is None and caps is not None:
            referrers = caps.referrers_api
        return DestinationCheck(
            destination=str(self.repository) + (f":{self.tag}" if self.tag else ""),
            registry=self.host,
            repository=self.repository.path,
            ready=bool(self.reachable and self.push and not self.problems),
            reachable=self.reachable,
            scheme=self.scheme,
            auth=self.auth,
            token_realm=self.realm,
            credentials=self.credentials() if self.reachable else (
                UNKNOWN if self.configured else ANONYMOUS),
            pull=self.pull,
            push=self.push,
            repository_exists=self.exists,
            mounts=caps.mounts if caps is not None else None,
            referrers_api=referrers,
            whole_blob=caps.whole_blob if caps is not None else None,
            chunk_min=chunk_min or None,
            chunk_max=caps.chunk_max if caps is not None else None,
            delete=None if self.delete is None else self.delete == "allowed",
            delete_refusal=self.delete if self.delete not in (None, "allowed") else None,
            problems=tuple(self.problems),
        )


async def check_destination(
    registries: Registries, destination: Repository | Reference,
) -> DestinationCheck:
    """Check one destination; nothing is written (an upload is opened and cancelled)."""
    if isinstance(destination, Reference):
        found = _Findings(destination.repository, destination.tag)
    else:
        found = _Findings(destination, None)
    client = registries.client(found.host)
    failure: RegistryError | None = None
    try:
        probe = await client.probe()  # looks the credential up too
    except CredentialError as exc:
        found.problems.append(f"the credentials for {found.host} cannot be read: {exc}")
        return found.result(client.capabilities)
    except RegistryError as exc:
        failure = exc
    try:
        found.configured = await _has_credential(registries, found.host)
    except CredentialError as exc:  # only if the probe failed before the lookup did
        found.problems.append(f"the credentials for {found.host} cannot be read: {exc}")
    if failure is not None:
        found.reachable = failure.status is not None  # it answered, though not as a registry
        found.problems.append(_unreachable(found.host, failure))
        return found.result(client.capabilities)
    found.reachable, found.scheme, found.auth = True, probe.scheme, probe.auth
    found.realm = probe.realm_host
    if probe.auth == "other":
        found.problems.append(
            f"{found.host} asks for an authentication scheme fanout cannot answer "
            "(neither Basic nor Bearer)")

    await _check_pull(client, found)
    await _check_repository(client, found)
    if found.pull is False and found.exists and isinstance(found.pull_error, Denied):
        # Artifactory answers a HEAD of a manifest it lacks with 403; a tag list it answered
        # says reading is allowed after all.
        found.pull, found.pull_error = True, None
    await _check_push(client, found)
    await _check_delete(client, found)
    await _check_referrers(client, found)
    _explain_access(found)
    return found.result(client.capabilities)


async def check_destinations(
    registries: Registries, destinations: Sequence[Repository | Reference],
) -> list[DestinationCheck]:
    """Check every destination at once; the answers come back in the order given."""
    return list(await asyncio.gather(*(check_destination(registries, d) for d in destinations)))


# -- the steps ---------------------------------------------------------------------------------


async def _has_credential(registries: Registries, host: str) -> bool:
    if registries.credentials is None:
        return False
    # The probe has asked already (stores cache answers); off the loop all the same, as a
    # credential helper is a subprocess.
    credential = await asyncio.to_thread(registries.credentials.get, host)
    return credential is not None and not credential.anonymous


async def _check_pull(client: RegistryClient, found: _Findings) -> None:
    try:
        await manifest_head(client, found.repository.path, EMPTY_DIGEST)
    except (Unauthorized, Denied) as exc:
        found.pull, found.pull_error = False, exc
    except RegistryError as exc:
        found.pull_error = exc
        found.problems.append(f"reading {found.repository} failed: {exc}{_later(exc)}")
    else:
        found.pull = True  # a 404 for a manifest no one has: we may look


async def _check_repository(client: RegistryClient, found: _Findings) -> None:
    # One page is enough (n=1): we want the status, not the tags. tags_list would hide a 404.
    try:
        async with client.stream(
            "GET", f"/v2/{found.repository.path}/tags/list", params={"n": "1"},
            expected=(200,), what=f"list tags of {found.repository.path}",
            scopes=scopes.pull(found.repository.path),
        ):
            found.exists = True
    except NotFound:
        found.exists = False
    except RegistryError:
        pass  # not allowed to list, or a registry that refuses ``n``: left unknown


async def _check_push(client: RegistryClient, found: _Findings) -> None:
    try:
        session = await upload_start(client, found.repository.path)
    except NotFound as exc:
        # ECR and others do not create repositories on push: the upload is refused outright.
        found.push, found.push_error, found.exists = False, exc, False
        found.problems.append(_no_repository(found, exc))
        return
    except (Unauthorized, Denied) as exc:
        found.push, found.push_error = False, exc
        return
    except RegistryError as exc:
        found.push_error = exc
        found.problems.append(f"opening an upload to {found.repository} failed: {exc}"
                              f"{_later(exc)}")
        return
    await upload_cancel(client, session)
    found.push = True
    found.chunk_min = session.chunk_min


async def _check_delete(client: RegistryClient, found: _Findings) -> None:
    # A failure leaves it unknown: deletes matter to a mirror's prune, not to a copy.
    with contextlib.suppress(RegistryError):
        found.delete = await probe_deletes(client, found.repository.path)


async def _check_referrers(client: RegistryClient, found: _Findings) -> None:
    try:
        await referrers_get(client, found.repository.path, EMPTY_DIGEST)
    except NotFound as exc:
        # A route the registry does not have is "no"; an unknown repository tells nothing.
        if "NAME_UNKNOWN" not in exc.codes:
            found.referrers = False
    except (InvalidManifest, ProtocolError):
        found.referrers = False  # a 200 that is not an OCI index (an HTML page, say)
    except RegistryError:
        pass
    else:
        found.referrers = True


# -- what to tell people -----------------------------------------------------------------------


def _explain_access(found: _Findings) -> None:
    """One problem for refused access, saying whether to log in, fix or grant."""
    host, repo = found.host, found.repository
    login = f"run `docker login {host}`"
    if found.pull is False:
        error = found.pull_error
        if not found.configured:
            found.problems.append(f"{host} needs credentials to read {repo} and none are "
                                  f"configured: {login} (fanout reads the Docker config)")
        elif (isinstance(error, Unauthorized) and found.auth == "bearer"
              and _from_token_server(error, repo)):
            found.problems.append(f"the token server {found.realm or ''} refused the "
                                  f"credentials configured for {host}: check them with "
                                  f"`docker login {host}`")
        elif isinstance(error, Unauthorized):
            found.problems.append(f"{host} refused the credentials configured for it (wrong "
                                  f"username, password or token, or no access to {repo}): "
                                  f"check them with `docker login {host}`")
        else:
            found.problems.append(f"the credentials for {host} may not read {repo}: grant "
                                  "them pull (read) access; a copy checks what is there first")
        return
    if found.push is False and isinstance(found.push_error, Unauthorized | Denied):
        says = _registry_says(found.push_error)
        if found.configured:
            found.problems.append(f"the credentials for {host} may read {repo} but not push to "
                                  f"it{says}: grant them push (write) access, or create the "
                                  "project or repository if it does not exist")
        else:
            found.problems.append(f"{host} lets anyone read {repo} but pushing needs "
                                  f"credentials: {login} with an account that may push")


def _registry_says(error: RegistryError | None) -> str:
    """`` (the registry says: …)`` when the refusal carried words of the registry's own."""
    words = error.message.partition(": ")[2] if error is not None else ""
    return f" (the registry says: {words})" if words else ""


def _from_token_server(error: RegistryError, repository: Repository) -> bool:
    """Whether a 401 came from the token realm rather than the registry's own API."""
    path = urlsplit(error.url or "").path
    return not path.startswith(f"/v2/{repository.path}/")


def _no_repository(found: _Findings, exc: NotFound) -> str:
    says = exc.message.partition(": ")[2] or exc.message
    advice = "create it first"
    if ".dkr.ecr." in found.host:
        advice += f" (`aws ecr create-repository --repository-name {found.repository.path}`)"
    return (f"the repository does not exist and {found.host} does not create repositories "
            f"on push (the registry says: {says}): {advice}")


def _unreachable(host: str, exc: RegistryError) -> str:
    if isinstance(exc, UntrustedCertificate):
        return (f"the TLS certificate of {host} is not trusted: give its CA with "
                "--ca-bundle FILE (or FANOUT_CA_BUNDLE)")
    if isinstance(exc, ConnectionFailed | Timeout):
        text = f"cannot reach {host}: {exc}; check the host name, port and network"
        if any(word in str(exc).lower() for word in ("ssl", "tls", "wrong_version")):
            text += (f"; if it speaks plain HTTP, allow that with --insecure-registry {host} "
                     "(or FANOUT_INSECURE_REGISTRIES)")
        return text
    return f"{host} did not answer as a registry: {exc}{_later(exc)}"


def _later(exc: RegistryError) -> str:
    if isinstance(exc, RateLimited):
        after = f" (in {exc.retry_after:.0f}s)" if exc.retry_after else ""
        return f"; it is rate limiting: try again later{after}"
    if isinstance(exc, ServerError | ConnectionFailed | Timeout):
        return "; this may pass: try again later"
    return ""
