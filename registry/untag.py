"""Deleting a tag at a registry, and asking whether a registry deletes at all.

An untag reads as its steps::

    DELETE manifests/<tag>        OCI 1.1: the tag goes, the manifest and its other tags stay
      refused (400, 405, or 404 for a tag a HEAD finds):
    HEAD manifests/<tag>          the digest it names now (absent: nothing to do)
    other tags naming it?         yes: CannotUntag, nothing deleted
    DELETE manifests/<digest>     removes the manifest and every tag naming it: only when the
                                  tag is the digest's last

A registry with deletes disabled (distribution's ``storage.delete.enabled: false`` answers
every DELETE 405 UNSUPPORTED) raises CannotUntag. What a host refused is kept in its
:class:`~registry.capabilities.Capabilities`, so the next prune there neither asks again by tag
nor, where deletes are off, at all.

A race is left open: a tag made to name the digest between the check and the DELETE by digest
goes with it. The caller's ``known`` map should be fresh (a sync's own listing).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import scopes
from .client import RegistryClient
from .errors import CannotUntag, Denied, NotFound, RegistryError, Unauthorized
from .fetch import manifest_path
from .retry import RetryPolicy, retry_async
from .tags import list_tags, resolve_tag, resolve_tags

# What :func:`probe_deletes` can say.
DeleteAccess = Literal["allowed", "disabled", "denied"]


@dataclass(frozen=True, slots=True)
class Untagged:
    """How a tag went: ``"tag"`` (DELETE by tag), ``"digest"`` (DELETE by digest; the tag was
    the digest's last), or ``"absent"`` (it was not there)."""

    tag: str
    how: Literal["tag", "digest", "absent"]
    digest: str | None = None


async def untag(
    client: RegistryClient, repository: str, tag: str, *,
    known: Mapping[str, str | None] | None = None, retry: RetryPolicy | None = None,
) -> Untagged:
    """Delete ``tag`` from ``repository`` and nothing else.

    ``known``: every tag of the repository -> the digest it names, as the caller has just
    read it; without it (or if it disagrees with the tag's HEAD) the repository is listed
    and every tag HEADed before any DELETE by digest. Raises :class:`CannotUntag` when the
    tag cannot go alone (see the module's docstring); other registry errors as they come.
    """
    policy = retry or client.retry_policy
    caps = client.capabilities
    name = f"{client.registry}/{repository}"
    if caps.deletes is False:
        raise _disabled(client, tag)
    refusal: RegistryError | None = None
    if caps.delete_by_tag is not False:
        try:
            await retry_async(policy, lambda: _delete(client, repository, tag),
                              what=f"delete {name}:{tag}")
        except NotFound as exc:
            refusal = exc  # no such tag, or a registry that looks tags up as digests
        except (Unauthorized, Denied):
            raise
        except RegistryError as exc:
            if not _refuses_by_tag(exc):
                raise
            refusal = exc
        else:
            caps.delete_by_tag = True
            return Untagged(tag, "tag")

    digest = await resolve_tag(client, repository, tag, retry=policy)
    if digest is None:
        return Untagged(tag, "absent")
    if refusal is not None:
        caps.delete_by_tag = False  # refused, or a 404 for a tag that is there

    others = await _also_tagged(client, repository, tag, digest, known, policy)
    if others:
        if refusal is not None and _ambiguous(refusal) and (
                await probe_deletes(client, repository)) == "disabled":
            raise _disabled(client, tag, refusal)
        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more"
                                           if len(others) > 10 else "")
        raise CannotUntag(
            f"cannot untag {name}:{tag} here: {client.registry} refuses DELETE by tag and "
            f"digest {digest} is also tagged {shown} (deleting it would delete them too)",
            tag=tag, reason="shared-digest", digest=digest, also_tagged=tuple(others),
            **_request_of(refusal))

    try:
        await retry_async(policy, lambda: _delete(client, repository, digest),
                          what=f"delete {name}@{digest}")
    except NotFound:
        return Untagged(tag, "absent", digest)  # deleted meanwhile
    except (Unauthorized, Denied):
        raise
    except RegistryError as exc:
        if _deletes_disabled(exc):
            caps.deletes = False
            raise _disabled(client, tag, exc) from None
        raise
    caps.deletes = True
    return Untagged(tag, "digest", digest)


async def probe_deletes(client: RegistryClient, repository: str) -> DeleteAccess:
    """Whether manifests may be deleted in ``repository``, without deleting anything: a
    DELETE of a digest no manifest has (the hash of random bytes).

    404: ``"allowed"``; 405 or UNSUPPORTED: ``"disabled"`` (learnt for the host); 401/403:
    ``"denied"`` to these credentials. Anything else raises.
    """
    digest = "sha256:" + hashlib.sha256(secrets.token_bytes(32)).hexdigest()
    try:
        await _delete(client, repository, digest, what="check deletes (a digest no one has)")
    except NotFound:
        client.capabilities.deletes = True
        return "allowed"
    except (Unauthorized, Denied):
        return "denied"
    except RegistryError as exc:
        if not _deletes_disabled(exc):
            raise
        client.capabilities.deletes = False
        return "disabled"
    # Accepted: a registry that says yes to any DELETE. Deletes are allowed, at least.
    client.capabilities.deletes = True
    return "allowed"


async def _delete(client: RegistryClient, repository: str, reference: str, *,
                  what: str | None = None) -> None:
    await client.request(
        "DELETE", manifest_path(repository, reference), expected=(200, 202, 204),
        what=what or f"delete {client.registry}/{repository}"
                     f"{'@' if ':' in reference else ':'}{reference}",
        scopes=scopes.delete(repository))


async def _also_tagged(
    client: RegistryClient, repository: str, tag: str, digest: str,
    known: Mapping[str, str | None] | None, policy: RetryPolicy,
) -> list[str]:
    """The repository's other tags that name ``digest``, sorted."""
    if known is None or known.get(tag) != digest:
        # No map, or one the tag has moved on from since: ask the registry itself.
        tags = await list_tags(client, repository, retry=policy)
        known = await resolve_tags(client, repository, [t for t in tags if t != tag],
                                   retry=policy)
    return sorted(t for t, d in known.items() if d == digest and t != tag)


def _refuses_by_tag(exc: RegistryError) -> bool:
    """A DELETE by tag the registry will not do: distribution 2.8 answers 400 DIGEST_INVALID
    (it reads the tag as a digest), others 405 or UNSUPPORTED."""
    return exc.status in (400, 405) or "UNSUPPORTED" in exc.codes


def _deletes_disabled(exc: RegistryError) -> bool:
    return exc.status == 405 or "UNSUPPORTED" in exc.codes


def _ambiguous(refusal: RegistryError) -> bool:
    """A refusal by tag that may mean deletes are off altogether (distribution answers every
    DELETE so when they are)."""
    return _deletes_disabled(refusal)


def _disabled(client: RegistryClient, tag: str,
              cause: RegistryError | None = None) -> CannotUntag:
    return CannotUntag(
        f"cannot untag {tag}: deletes are disabled at {client.registry} (it answers DELETE "
        "with 405 UNSUPPORTED; distribution's storage.delete.enabled is false)",
        tag=tag, reason="deletes-disabled", **_request_of(cause))


def _request_of(error: RegistryError | None) -> dict[str, Any]:
    if error is None:
        return {}
    return {"status": error.status, "codes": error.codes, "method": error.method,
            "url": error.url}
