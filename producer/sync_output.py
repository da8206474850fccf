"""How a mirror sync looks: ``fanout sync --dry-run`` text for people, ``--json`` for machines.

Pure functions of :class:`MirrorPlan` (and, after a run, its :class:`MirrorRun`). The text, per
mirror, then per destination, says what would be (or was) done, with counts and tag names; a
long list shows its first ``names`` tags and how many more::

    mirror nginx: docker.io/library/nginx, 6 tags kept
      harbor.internal:8443/mirror/nginx
        add 2: 1.27.1, 1.27.0
        update 1: 1.26.2
        prune held: 7 tags to prune, over the limit of 2; run with --prune-over-limit
        held back 7: 1.24.0, 1.23.4, 1.23.3, … and 4 more
        in sync 3: 1.26.1, 1.26.0, 1.25.5
      quay.io/acme/nginx
        error: listing tags: 403 DENIED
      2 releases; add 2, update 1, prune 0, in sync 3, held back 7, errors 1

The JSON document (``sync_json``), a stable schema; lists are in the plan's order (versions
newest first), ``kept`` maps tag to digest in that order too::

    {"mirrors": [{
        "name": str, "source": str, "kept": {tag: digest},
        "destinations": [{"destination": str, "add": {tag: digest}, "update": {tag: digest},
                          "prune": [tag], "held_back": [tag], "prune_held": str | null,
                          "in_sync": [tag], "error": str | null}],
        "releases": [{"digest": str, "targets": [{"destination": str, "tags": [tag]}]}],
        "counts": {"add", "update", "prune", "in_sync", "held_back", "errors": int},
        "run": MirrorRun.to_json() | null}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from workers.mirror_model import DestinationPlan, MirrorPlan, MirrorRun

NAMES_SHOWN = 10  # tag names listed per line before "… and N more"


def tag_list(tags: Sequence[str], names: int = NAMES_SHOWN) -> str:
    """``a, b, c`` — the first ``names`` of ``tags``, then how many more."""
    shown = ", ".join(tags[:names])
    rest = len(tags) - names
    return f"{shown}, … and {rest} more" if rest > 0 else shown


def plan_text(plan: MirrorPlan, run: MirrorRun | None = None, *,
              names: int = NAMES_SHOWN) -> str:
    """One mirror's plan (and what its run did) as lines for people."""
    lines = [f"mirror {plan.mirror}: {plan.source}, {_count(len(plan.kept), 'tag')} kept"]
    for destination in plan.destinations:
        lines.append(f"  {destination.destination}")
        lines.extend(f"    {line}" for line in _destination_lines(destination, names))
    counts = plan.counts()
    lines.append(f"  {_count(len(plan.releases()), 'release')}; "
                 + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items()))
    if run is not None:
        lines.extend(f"  {line}" for line in _run_lines(run, names))
    return "\n".join(lines)


def sync_text(plans: Sequence[MirrorPlan], runs: Mapping[str, MirrorRun] | None = None, *,
              names: int = NAMES_SHOWN) -> str:
    """Every mirror's plan, a blank line between them; ``runs`` by mirror name."""
    runs = runs or {}
    return "\n\n".join(plan_text(plan, runs.get(plan.mirror), names=names) for plan in plans)


def plan_json(plan: MirrorPlan, run: MirrorRun | None = None) -> dict[str, Any]:
    """One mirror's entry of the ``--json`` document (the schema above)."""
    return {
        "name": plan.mirror,
        "source": plan.source,
        "kept": dict(plan.kept),
        "destinations": [_destination_json(d) for d in plan.destinations],
        "releases": [{"digest": release.digest,
                      "targets": [{"destination": where, "tags": list(tags)}
                                  for where, tags in release.targets]}
                     for release in plan.releases()],
        "counts": plan.counts(),
        "run": run.to_json() if run is not None else None,
    }


def sync_json(plans: Sequence[MirrorPlan],
              runs: Mapping[str, MirrorRun] | None = None) -> dict[str, Any]:
    """The ``--json`` document: ``{"mirrors": [...]}``, ``runs`` by mirror name."""
    runs = runs or {}
    return {"mirrors": [plan_json(plan, runs.get(plan.mirror)) for plan in plans]}


def sync_json_text(plans: Sequence[MirrorPlan],
                   runs: Mapping[str, MirrorRun] | None = None) -> str:
    return json.dumps(sync_json(plans, runs), indent=2)


def _destination_json(plan: DestinationPlan) -> dict[str, Any]:
    return {"destination": plan.destination, "add": dict(plan.add), "update": dict(plan.update),
            "prune": list(plan.prune), "held_back": list(plan.held_back),
            "prune_held": plan.prune_held, "in_sync": list(plan.in_sync), "error": plan.error}


def _destination_lines(plan: DestinationPlan, names: int) -> list[str]:
    if plan.error is not None:
        return [f"error: {plan.error}"]
    lines = [f"{label} {len(tags)}: {tag_list(tags, names)}"
             for label, tags in (("add", list(plan.add)), ("update", list(plan.update)),
                                 ("prune", list(plan.prune))) if tags]
    if plan.prune_held is not None:
        lines.append(f"prune held: {plan.prune_held}")
    if plan.held_back:
        lines.append(f"held back {len(plan.held_back)}: {tag_list(plan.held_back, names)}")
    if plan.in_sync:
        lines.append(f"in sync {len(plan.in_sync)}: {tag_list(plan.in_sync, names)}")
    return lines or ["nothing to do"]


def _run_lines(run: MirrorRun, names: int) -> list[str]:
    if run.dry_run:
        return ["dry run: nothing was sent or pruned"]
    if not run.ok:
        return [f"failed: {run.error or 'unknown error'}"]
    lines = [f"enqueued {_count(len(run.releases), 'release')}"
             + (f": {tag_list(list(run.releases), names)}" if run.releases else "")]
    lines.extend(f"pruned {len(tags)} at {where}: {tag_list(list(tags), names)}"
                 for where, tags in run.pruned.items() if tags)
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
