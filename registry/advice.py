"""What to do about a refusal fanout cannot change: the registry's words plus the fix.

A destination that refuses for good (a repository that does not exist, a manifest it calls
invalid, a project it does not know) fails at once; the operator reads why in the ledger or the
CLI's output, so the message says what the registry said and what would make it work.
"""

from __future__ import annotations

from .errors import NotFound, RegistryError, TagImmutable, Unauthorized, UnexpectedStatus


def explain_refusal(exc: RegistryError, registry: str, repository: str) -> RegistryError:
    """``exc`` with advice added when it is a refusal with a known remedy; else ``exc``."""
    advice = _advice(exc, registry, repository)
    if advice is None:
        return exc
    # The registry's words often end a sentence already (ECR's, Harbor's).
    return exc.reworded(f"{exc.message.rstrip('.')}. {advice}")


def _advice(exc: RegistryError, registry: str, repository: str) -> str | None:
    where = f"{registry}/{repository}"
    if isinstance(exc, TagImmutable):
        return _immutable(exc, where, repository)
    if isinstance(exc, NotFound) and "NAME_UNKNOWN" in exc.codes:
        if ".ecr." in registry or ".amazonaws.com" in registry or "registry with id" in exc.message:
            return (f"ECR repository {repository} does not exist: create it, or set up a "
                    "repository creation template (create on push)")
        return f"repository {where} does not exist: create it (or its project) first"
    if isinstance(exc, UnexpectedStatus) and "MANIFEST_INVALID" in exc.codes:
        return ("the registry refuses this manifest, which fanout copies byte for byte (its "
                "digest pins it) and cannot convert: e.g. Quay takes no OCI index of Docker "
                "schema 2 manifests; publish the image in one format, or drop this destination")
    if isinstance(exc, Unauthorized) and "project" in exc.message.lower():
        return (f"the registry does not know the project of {where}, or the credentials may "
                "not push to it: create the project, or grant the robot account push")
    return None


def _immutable(exc: TagImmutable, where: str, repository: str) -> str:
    # fanout never works around the rule (no delete-and-retag): the tag stays where it is.
    names = (f"names another digest ({exc.current})" if exc.current
             else "cannot be moved to this release")
    lift = exc.answer.lift.format(image=f"{repository}:{exc.tag}")
    return (f"tag {exc.tag} at {where} is immutable and {names}; {exc.answer.registry} keeps "
            f"it there and fanout will not move it: release under a new tag, or {lift}")
