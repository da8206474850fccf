"""Creating a release for a request or a webhook: the destinations it names, the caller's
grants, then exactly what ``fanout enqueue`` does (:func:`producer.api.enqueue`)."""

from __future__ import annotations

from collections.abc import Sequence

from producer import api
from producer.common import UsageError
from registry.envconfig import ConfigError
from registry.errors import InvalidReference
from workers.records import Release

from .auth import authorize
from .config import TokenGrant
from .errors import ApiError
from .state import ServiceState


def create_release(
    state: ServiceState, grant: TokenGrant | None, *, source: str, to: str | None = None,
    destinations: Sequence[str] = (), tags: Sequence[str] = (), optional: Sequence[str] = (),
    referrers: bool = True, trigger: str = "api",
) -> Release:
    """Enqueue one release and return it as the ledger has it; blocking (Redis, registries).

    ``grant`` None: the caller was authorized otherwise (a signed webhook, mapped by the
    config's own rules). Raises :class:`ApiError` (403, 422, 502, 503); nothing is enqueued
    then, but a broker that fails mid-release (the ledger records which destinations failed).
    """
    if to is not None and destinations:
        raise ApiError(422, "give either to (a destination set) or destinations, not both")
    config = state.config
    set_name = to if to is not None or destinations else config.fanout.default_set
    if set_name is None and not destinations:
        raise ApiError(422, "no destinations: give to (a destination set) or destinations; "
                            "the server's config has no default set")
    set_optional: frozenset[str] = frozenset()
    if set_name is not None:
        try:
            destinations = list(config.fanout.destination_set(set_name) or ())
        except ConfigError as exc:
            raise ApiError(422, f"to: {exc}") from None
        set_optional = config.fanout.optional_in(set_name)
    if source.strip() in ("", "-"):
        raise ApiError(422, "source: an image reference is required")
    if grant is not None:
        authorize(grant, config, source=source, set_name=set_name,
                  destinations=destinations, optional=optional)
    try:
        [release_id] = api.enqueue(
            source, destinations, tags=tags, optional=[*set_optional, *optional],
            referrers=referrers, env=state.env, ledger=state.ledger, pool=state.pool,
            trigger=trigger)
    except api.QueueUnreachable as exc:
        raise ApiError(503, str(exc)) from None
    except api.SourceUnavailable as exc:
        raise ApiError(502, str(exc)) from None
    except (UsageError, InvalidReference, ConfigError) as exc:
        raise ApiError(422, str(exc)) from None
    release = state.ledger.get(release_id)
    if release is None:  # pragma: no cover - written a moment ago; gone only if Redis lost it
        raise ApiError(503, f"release {release_id} was enqueued but cannot be read back")
    return release
