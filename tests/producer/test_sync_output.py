"""producer.sync_output: fanout sync's --dry-run text and --json document."""

from __future__ import annotations

import json

from producer.sync_output import (
    plan_json,
    plan_text,
    sync_json,
    sync_json_text,
    sync_text,
    tag_list,
)
from workers.mirror_model import DestinationPlan, MirrorPlan, MirrorRun

A, B = ("sha256:" + c * 64 for c in "ab")
HARBOR, QUAY = "harbor.internal:8443/mirror/nginx", "quay.io/acme/nginx"
PLAN = MirrorPlan(
    mirror="nginx", source="docker.io/library/nginx",
    kept={"1.27.1": A, "1.27.0": A, "1.26.2": B, "1.26.1": A},
    destinations=(
        DestinationPlan(HARBOR, add={"1.27.1": A, "1.27.0": A}, update={"1.26.2": B},
                        in_sync=("1.26.1",),
                        prune_held="3 tags to prune, over the limit of 1; run with "
                                   "--prune-over-limit",
                        held_back=("1.24.0", "1.23.4", "1.23.3")),
        DestinationPlan(QUAY, error="listing tags: 403 DENIED"),
    ),
)


def test_the_dry_run_text() -> None:
    assert plan_text(PLAN, names=2) == "\n".join([
        "mirror nginx: docker.io/library/nginx, 4 tags kept",
        f"  {HARBOR}",
        "    add 2: 1.27.1, 1.27.0",
        "    update 1: 1.26.2",
        "    prune held: 3 tags to prune, over the limit of 1; run with --prune-over-limit",
        "    held back 3: 1.24.0, 1.23.4, … and 1 more",
        "    in sync 1: 1.26.1",
        f"  {QUAY}",
        "    error: listing tags: 403 DENIED",
        "  2 releases; add 2, update 1, prune 0, in sync 1, held back 3, errors 1",
    ])


def test_prune_and_nothing_to_do() -> None:
    plan = MirrorPlan("m", "src.io/app", {"1": A}, (
        DestinationPlan("a.io/app", in_sync=("1",), prune=("0.9", "0.8")),
        DestinationPlan("b.io/app"),
    ))
    lines = plan_text(plan).splitlines()
    assert lines[0] == "mirror m: src.io/app, 1 tag kept"
    assert lines[2:4] == ["    prune 2: 0.9, 0.8", "    in sync 1: 1"]
    assert lines[5] == "    nothing to do"
    assert lines[6].startswith("  0 releases; add 0, update 0, prune 2, in sync 1")


def test_a_thousand_tags_are_cut_short() -> None:
    tags = {f"1.0.{n}": A for n in range(1000)}
    plan = MirrorPlan("m", "src.io/app", tags, (DestinationPlan("a.io/app", add=tags),))
    text = plan_text(plan)
    add_line = text.splitlines()[2]
    assert add_line.startswith("    add 1000: 1.0.0, 1.0.1, ")
    assert add_line.endswith(", 1.0.9, … and 990 more")
    assert len(text) < 500
    assert tag_list(["a", "b"], 2) == "a, b" and tag_list([], 2) == ""


def test_what_a_run_did() -> None:
    done = MirrorRun("nginx", "cli", 1.0, 2.0, ok=True, releases=("r1", "r2"),
                     pruned={HARBOR: ("1.20",), QUAY: ()})
    assert plan_text(PLAN, done).splitlines()[-2:] == [
        "  enqueued 2 releases: r1, r2", f"  pruned 1 at {HARBOR}: 1.20"]
    failed = MirrorRun("nginx", "cli", 1.0, 2.0, ok=False, error="source: 404 NAME_UNKNOWN")
    assert plan_text(PLAN, failed).splitlines()[-1] == "  failed: source: 404 NAME_UNKNOWN"
    dry = MirrorRun("nginx", "cli", 1.0, 2.0, ok=True, dry_run=True)
    assert plan_text(PLAN, dry).splitlines()[-1] == "  dry run: nothing was sent or pruned"
    nothing = MirrorRun("nginx", "schedule", 1.0, 2.0, ok=True)
    assert plan_text(PLAN, nothing).splitlines()[-1] == "  enqueued 0 releases"


def test_several_mirrors_with_their_runs() -> None:
    other = MirrorPlan("alpine", "docker.io/library/alpine", {}, ())
    run = MirrorRun("alpine", "cli", 1.0, 2.0, ok=True, dry_run=True)
    text = sync_text([PLAN, other], {"alpine": run})
    assert "\n\nmirror alpine: docker.io/library/alpine, 0 tags kept\n" in text
    assert text.endswith("  dry run: nothing was sent or pruned")
    assert "dry run" not in text.split("\n\n")[0]


def test_the_json_document() -> None:
    document = sync_json([PLAN])
    assert list(document) == ["mirrors"]
    (entry,) = document["mirrors"]
    assert list(entry) == ["name", "source", "kept", "destinations", "releases", "counts", "run"]
    assert entry["name"] == "nginx" and entry["source"] == "docker.io/library/nginx"
    assert list(entry["kept"].items()) == list(PLAN.kept.items())  # in the plan's order
    assert entry["destinations"][0] == {
        "destination": HARBOR, "add": {"1.27.1": A, "1.27.0": A}, "update": {"1.26.2": B},
        "prune": [], "held_back": ["1.24.0", "1.23.4", "1.23.3"],
        "prune_held": "3 tags to prune, over the limit of 1; run with --prune-over-limit",
        "in_sync": ["1.26.1"], "error": None}
    assert entry["destinations"][1]["error"] == "listing tags: 403 DENIED"
    assert entry["releases"] == [
        {"digest": A, "targets": [{"destination": HARBOR, "tags": ["1.27.0", "1.27.1"]}]},
        {"digest": B, "targets": [{"destination": HARBOR, "tags": ["1.26.2"]}]}]
    assert entry["counts"] == PLAN.counts()
    assert entry["run"] is None


def test_the_json_carries_the_run_and_reads_back() -> None:
    run = MirrorRun("nginx", "api", 1.0, 2.0, ok=True, releases=("r1",))
    entry = plan_json(PLAN, run)
    assert MirrorRun.from_json(entry["run"]) == run
    assert json.loads(sync_json_text([PLAN], {"nginx": run})) == {"mirrors": [entry]}
