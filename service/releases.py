"""``/v1/releases``: enqueue a release, read one or the newest, retry what failed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from producer import api
from producer.retry_plan import RetryRefused, pick
from workers.records import Release
from workers.release_document import release_document

from .auth import authenticate, authorize
from .enqueueing import create_release
from .errors import ApiError
from .state import ServiceState, state_of

router = APIRouter(prefix="/v1/releases", tags=["releases"])

_Ref = Annotated[str, Field(min_length=1, max_length=1024)]


class ReleaseRequest(BaseModel):
    """A release to enqueue: the image, and where it goes."""

    model_config = ConfigDict(extra="forbid")

    source: _Ref = Field(description="image reference, by tag or digest")
    to: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="a destination set of the server's fanout.toml")
    destinations: list[_Ref] = Field(
        default_factory=list, max_length=256,
        description="repositories, optionally with a tag; instead of `to`")
    tags: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=64, description="tags every destination gets")
    optional: list[_Ref] = Field(default_factory=list, max_length=256,
                                 description="destinations copied too, but free to fail")
    referrers: bool = Field(default=True,
                            description="copy signatures, SBOMs and attestations")


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destinations: list[_Ref] = Field(
        default_factory=list, max_length=256,
        description="only these (failed or succeeded, not under way); none: every failed one")


@router.post("", status_code=201, summary="Enqueue a release")
def create(body: ReleaseRequest, request: Request, response: Response) -> dict[str, Any]:
    state = state_of(request)
    grant = authenticate(request, state.config)
    release = create_release(state, grant, source=body.source, to=body.to,
                             destinations=body.destinations, tags=body.tags,
                             optional=body.optional, referrers=body.referrers)
    response.headers["Location"] = f"/v1/releases/{release.id}"
    return release_document(release)


@router.get("", summary="The newest releases")
def recent(request: Request,
           limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict[str, list[dict[str, Any]]]:
    state = state_of(request)
    authenticate(request, state.config)
    releases = state.ledger.recent_releases(limit)
    return {"releases": [release_document(r) for r in releases]}


@router.get("/{release_id}", summary="One release")
def one(release_id: str, request: Request) -> dict[str, Any]:
    state = state_of(request)
    authenticate(request, state.config)
    return release_document(find(state, release_id))


@router.post("/{release_id}/retry", summary="Send a release's failed destinations again")
def retry(release_id: str, request: Request,
          body: RetryRequest | None = None) -> dict[str, Any]:
    state = state_of(request)
    grant = authenticate(request, state.config)
    release = find(state, release_id)
    try:
        names = pick(release, body.destinations if body else ())
    except RetryRefused as exc:
        raise ApiError(409, str(exc)) from None
    # Retrying pushes again: the token must be one that could have enqueued it.
    authorize(grant, state.config, source=release.source, set_name=None, destinations=names)
    if not names:
        return {"sent": [], "release": release_document(release)}
    try:
        sent = api.retry(release_id, names, env=state.env, ledger=state.ledger)
    except api.QueueUnreachable as exc:
        raise ApiError(503, str(exc)) from None
    except RetryRefused as exc:  # it changed since it was read: started again elsewhere
        raise ApiError(409, str(exc)) from None
    return {"sent": sent, "release": release_document(find(state, release_id))}


def find(state: ServiceState, release_id: str) -> Release:
    release = state.ledger.get(release_id) if len(release_id) <= 128 else None
    if release is None:
        raise ApiError(404, f"no release {release_id!r} (unknown id, or older than the "
                            "retention period)")
    return release
