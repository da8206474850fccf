"""``POST /v1/releases/{id}/verify``: is what the ledger says landed still there; with
``repair``, send what drifted again, as ``fanout verify --repair`` does.

Any valid token may verify (it reads, as ``GET`` does). A repair pushes again, so it needs the
grants a retry needs: the release's source and every destination that could be sent again.
Both refusals, and a repair of a release still under way, are made before any registry is
contacted. The server asks the registries with its own credentials (``DOCKER_CONFIG``, as for
pinning sources): a destination it may not read is reported ``unreachable``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from producer import api
from producer.verification import verify as run_verify
from producer.verify_plan import RepairRefused, Target, hold_back
from workers.release_document import release_document

from .auth import authenticate, authorize
from .errors import ApiError
from .releases import find
from .state import state_of

router = APIRouter(prefix="/v1/releases", tags=["releases"])


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repair: bool = Field(default=False, description="send the drifted destinations again "
                         "(needs the token's enqueue grants for the release)")


@router.post("/{release_id}/verify", summary="Check a release's destinations at the registries")
def verify(release_id: str, request: Request,
           body: VerifyRequest | None = None) -> dict[str, Any]:
    state = state_of(request)
    grant = authenticate(request, state.config)
    release = find(state, release_id)
    repair = body is not None and body.repair
    if repair:
        try:
            hold_back([Target(release, tuple(release.destinations))], named=True)
        except RepairRefused as exc:
            raise ApiError(409, str(exc)) from None
        # Repairing pushes again: the token must be one that could have enqueued it.
        landed = [name for name, record in release.destinations.items()
                  if record.state == "succeeded"]
        authorize(grant, state.config, source=release.source, set_name=None,
                  destinations=landed)
    try:
        report = run_verify([release_id], repair=repair, env=state.env, ledger=state.ledger,
                            insecure_registries=state.config.fanout.insecure_registries,
                            pool=state.pool)
    except RepairRefused as exc:  # it started again since it was read
        raise ApiError(409, str(exc)) from None
    except api.ReleaseNotFound as exc:  # expired since it was read
        raise ApiError(404, str(exc)) from None
    except api.QueueUnreachable as exc:
        raise ApiError(503, str(exc)) from None
    return {"id": release_id, **report.to_dict(),
            "release": release_document(find(state, release_id))}
