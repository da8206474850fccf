"""What a sync must do: the filtered source against what each destination holds.

Pure: the caller lists and HEADs (``registry/``), filters (:mod:`workers.mirror_filter`), and
hands the results in; :func:`plan` decides. Per destination, each kept tag is

- **add**: absent there (no digest given for it counts as absent: copying is idempotent, so the
  worst case is one HEAD);
- **update**: there, naming another digest;
- **in sync**: there, on the source's digest.

**Prune** (``prune = true`` only) deletes destination tags that are the mirror's own — they pass
:func:`workers.mirror_filter.matches`: globs, exclude, versions, but not the ``newest`` cut, so a
version that fell out of the newest N goes — and are no longer in the filtered source. A tag
outside the mirror's filters is never touched. Guards, each leaving ``prune`` empty and saying
why in ``prune_held``:

- the destination's tags were not listed (``tags=None``) or it could not be compared (``error``);
- the filtered source is empty (a filter or listing gone wrong would otherwise prune everything);
- more tags to prune than the cap: ``prune_limit``, else max(1, 10% of the mirror's tags at that
  destination, rounded down); ``prune_over_limit=True`` lifts it.

Held tags are in ``held_back`` when known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import mirror_filter
from .mirror_model import DestinationPlan, Mirror, MirrorPlan

DEFAULT_PRUNE_FRACTION = 0.10


@dataclass(frozen=True, slots=True)
class DestinationState:
    """What one destination holds, as the caller found it."""

    # Each kept tag -> the digest it names there; None (or left out): absent.
    digests: Mapping[str, str | None] = field(default_factory=dict)
    # Every tag of the repository there, for prune; None when not listed.
    tags: Sequence[str] | None = None
    error: str | None = None  # why it could not be compared; then it is left alone


def plan(mirror: Mirror, kept: Mapping[str, str],
         destinations: Mapping[str, DestinationState], *,
         prune_over_limit: bool = False) -> MirrorPlan:
    """The plan for ``mirror``: ``kept`` (filtered source tag -> digest) against each of its
    destinations, in the mirror's order. A destination missing from ``destinations`` is
    reported as an error and left alone."""
    plans = tuple(
        _destination(mirror, where, kept, destinations.get(where), prune_over_limit)
        for where in mirror.destinations)
    return MirrorPlan(mirror=mirror.name, source=mirror.source, kept=dict(kept),
                      destinations=plans)


def prune_limit(mirror: Mirror, ours: int) -> int:
    """The most tags one run may prune at a destination holding ``ours`` of the mirror's tags."""
    if mirror.prune_limit is not None:
        return mirror.prune_limit
    return max(1, int(ours * DEFAULT_PRUNE_FRACTION))


def _destination(mirror: Mirror, where: str, kept: Mapping[str, str],
                 state: DestinationState | None, prune_over_limit: bool) -> DestinationPlan:
    if state is None:
        return DestinationPlan(where, error="not compared: no listing of it was given")
    if state.error is not None:
        return DestinationPlan(where, error=state.error)
    add: dict[str, str] = {}
    update: dict[str, str] = {}
    in_sync: list[str] = []
    for tag, digest in kept.items():
        there = state.digests.get(tag)
        if there is None:
            add[tag] = digest
        elif there == digest:
            in_sync.append(tag)
        else:
            update[tag] = digest
    prune, held, held_back = _prune(mirror, kept, state.tags, prune_over_limit)
    return DestinationPlan(where, add=add, update=update, in_sync=tuple(in_sync), prune=prune,
                           prune_held=held, held_back=held_back)


def _prune(mirror: Mirror, kept: Mapping[str, str], tags: Sequence[str] | None,
           over_limit: bool) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """(tags to prune, why pruning is held, the tags held back)."""
    if not mirror.prune:
        return (), None, ()
    ours = mirror_filter.order(tag for tag in tags or () if mirror_filter.matches(mirror, tag))
    gone = tuple(tag for tag in ours if tag not in kept)
    if not kept:
        return (), ("the filtered source is empty: nothing pruned (check the mirror's filters "
                    "and the source)"), gone
    if tags is None:
        return (), "its tags were not listed: nothing pruned", ()
    if not gone:
        return (), None, ()
    limit = prune_limit(mirror, len(ours))
    if len(gone) > limit and not over_limit:
        return (), (f"{len(gone)} tags to prune, over the limit of {limit}; "
                    "run with --prune-over-limit"), gone
    return gone, None, ()
