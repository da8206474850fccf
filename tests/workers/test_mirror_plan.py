"""workers.mirror_plan: the filtered source against each destination, and prune's guards."""

from __future__ import annotations

from dataclasses import replace

from workers.mirror_model import DestinationPlan, Mirror, MirrorPlan, PlannedRelease
from workers.mirror_plan import DestinationState, plan, prune_limit

A, B, C = ("sha256:" + c * 64 for c in "abc")
DEST, OTHER = "dst.io/app", "other.io/app"
MIRROR = Mirror(name="m", source="src.io/app", destinations=(DEST,), tags=("1.*",),
                exclude=("*-perl",), newest=3)
PRUNING = replace(MIRROR, prune=True)


def one(mirror: Mirror, kept: dict[str, str], state: DestinationState,
        **options: bool) -> DestinationPlan:
    result = plan(mirror, kept, {DEST: state}, **options)
    assert result.mirror == mirror.name and result.source == mirror.source
    (only,) = result.destinations
    return only


def test_add_update_and_in_sync() -> None:
    kept = {"1.3": A, "1.2": B, "1.1": C}
    state = DestinationState(digests={"1.3": None, "1.2": A, "1.1": C})

    got = one(MIRROR, kept, state)

    assert got == DestinationPlan(DEST, add={"1.3": A}, update={"1.2": B}, in_sync=("1.1",))


def test_a_tag_with_no_digest_given_is_added() -> None:
    assert one(MIRROR, {"1.3": A}, DestinationState()).add == {"1.3": A}


def test_destinations_in_the_mirrors_order_and_a_missing_one_is_an_error() -> None:
    mirror = replace(MIRROR, destinations=(OTHER, DEST))
    result = plan(mirror, {"1.1": A}, {DEST: DestinationState(digests={"1.1": A})})
    assert [d.destination for d in result.destinations] == [OTHER, DEST]
    assert result.destinations[0].error is not None and not result.destinations[0].add
    assert result.destinations[1].in_sync == ("1.1",)


def test_a_destination_that_could_not_be_compared_is_left_alone() -> None:
    state = DestinationState(digests={"1.1": B}, tags=["1.0", "1.1"], error="listing: denied")
    got = one(PRUNING, {"1.1": A}, state)
    assert got == DestinationPlan(DEST, error="listing: denied")


def test_no_prune_unless_asked() -> None:
    got = one(MIRROR, {"1.3": A}, DestinationState(tags=["1.0", "1.1", "1.3"]))
    assert got.prune == () and got.prune_held is None and got.held_back == ()


def test_prune_what_left_the_filtered_source_and_only_the_mirrors_own_tags() -> None:
    kept = {"1.12": A, "1.11": A, "1.10": B}
    foreign = ["latest", "2.0", "1.5-perl", "stable", "1.13rc1"]
    state = DestinationState(digests={"1.12": A, "1.11": A},
                             tags=["1.12", "1.11", "1.0.7", "1.0.6", *foreign])

    got = one(replace(PRUNING, prune_limit=5), kept, state)

    # 1.0.6 and 1.0.7 fell out of newest 3: they go. 1.5-perl (excluded), latest, 2.0 (outside
    # the globs) and 1.13rc1 (a pre-release, never counted by newest) stay.
    assert got.prune == ("1.0.7", "1.0.6")
    assert got.prune_held is None and got.held_back == ()
    assert got.add == {"1.10": B} and got.update == {} and got.in_sync == ("1.12", "1.11")


def test_the_default_cap_is_a_tenth_of_the_mirrors_tags_there_at_least_one() -> None:
    assert prune_limit(PRUNING, 0) == 1
    assert prune_limit(PRUNING, 19) == 1
    assert prune_limit(PRUNING, 20) == 2
    assert prune_limit(PRUNING, 1000) == 100
    assert prune_limit(replace(PRUNING, prune_limit=7), 1000) == 7


def test_over_the_default_cap_nothing_is_pruned_and_the_plan_says_why() -> None:
    kept = {"1.22": A, "1.21": A, "1.20": A}
    # 20 tags of the mirror's there (and 30 that are not: they do not raise the cap), 17 gone.
    there = [f"1.{n}" for n in range(3, 23)] + [f"x{n}" for n in range(30)]

    got = one(PRUNING, kept, DestinationState(tags=there))

    assert got.prune == ()
    assert got.prune_held == "17 tags to prune, over the limit of 2; run with --prune-over-limit"
    assert got.held_back == tuple(f"1.{n}" for n in range(19, 2, -1))


def test_over_an_explicit_cap() -> None:
    got = one(replace(PRUNING, prune_limit=1), {"1.9": A},
              DestinationState(tags=["1.9", "1.8", "1.7"]))
    assert got.prune == () and got.held_back == ("1.8", "1.7")
    assert got.prune_held == "2 tags to prune, over the limit of 1; run with --prune-over-limit"


def test_at_the_cap_it_prunes() -> None:
    got = one(replace(PRUNING, prune_limit=2), {"1.9": A},
              DestinationState(tags=["1.9", "1.8", "1.7"]))
    assert got.prune == ("1.8", "1.7") and got.prune_held is None


def test_prune_over_limit_lifts_the_cap() -> None:
    there = [f"1.{n}" for n in range(3, 23)]
    got = one(PRUNING, {"1.22": A}, DestinationState(tags=there), prune_over_limit=True)
    assert got.prune == tuple(f"1.{n}" for n in range(21, 2, -1))
    assert got.prune_held is None and got.held_back == ()


def test_prune_over_limit_does_not_lift_the_other_guards() -> None:
    assert one(PRUNING, {}, DestinationState(tags=["1.1"]), prune_over_limit=True).prune == ()
    assert one(PRUNING, {"1.1": A}, DestinationState(), prune_over_limit=True).prune == ()
    errored = DestinationState(tags=["1.0"], error="boom")
    assert one(PRUNING, {"1.1": A}, errored, prune_over_limit=True).prune == ()


def test_an_empty_filtered_source_prunes_nothing() -> None:
    got = one(replace(PRUNING, prune_limit=100), {}, DestinationState(tags=["1.1", "1.2"]))
    assert got.prune == ()
    assert got.prune_held is not None and "filtered source is empty" in got.prune_held
    assert got.held_back == ("1.2", "1.1")
    assert got.add == {} and got.update == {} and got.in_sync == ()


def test_an_empty_filtered_source_says_so_even_with_nothing_there() -> None:
    got = one(PRUNING, {}, DestinationState(tags=[]))
    assert got.prune == () and "filtered source is empty" in (got.prune_held or "")


def test_a_destination_not_listed_prunes_nothing() -> None:
    got = one(PRUNING, {"1.1": A}, DestinationState(digests={"1.1": A}))
    assert got.prune == () and got.in_sync == ("1.1",)
    assert got.prune_held == "its tags were not listed: nothing pruned"


def test_nothing_to_prune_is_no_hold() -> None:
    got = one(PRUNING, {"1.1": A}, DestinationState(digests={"1.1": A}, tags=["1.1", "latest"]))
    assert got == DestinationPlan(DEST, in_sync=("1.1",))


def test_releases_one_per_digest_with_tags_per_destination() -> None:
    mirror = replace(MIRROR, destinations=(OTHER, DEST))
    kept = {"1.3": A, "1.2": A, "1.1": B}
    result = plan(mirror, kept, {
        DEST: DestinationState(digests={"1.3": None, "1.2": C, "1.1": B}),
        OTHER: DestinationState(digests={"1.3": A, "1.2": None, "1.1": None}),
    })

    assert result.releases() == [
        PlannedRelease(A, ((DEST, ("1.2", "1.3")), (OTHER, ("1.2",)))),
        PlannedRelease(B, ((OTHER, ("1.1",)),)),
    ]
    assert result.counts() == {"add": 3, "update": 1, "prune": 0, "in_sync": 2,
                               "held_back": 0, "errors": 0}


def test_no_releases_when_in_sync_or_errored() -> None:
    mirror = replace(MIRROR, destinations=(OTHER, DEST))
    result = plan(mirror, {"1.1": A}, {DEST: DestinationState(digests={"1.1": A}),
                                       OTHER: DestinationState(error="unreachable")})
    assert result.releases() == []
    assert result.counts()["errors"] == 1


def test_releases_are_the_same_whatever_order_things_came_in() -> None:
    first = MirrorPlan("m", "src.io/app", {}, (
        DestinationPlan(DEST, add={"b": A, "a": B}), DestinationPlan(OTHER, update={"a": B})))
    second = MirrorPlan("m", "src.io/app", {}, (
        DestinationPlan(OTHER, update={"a": B}), DestinationPlan(DEST, add={"a": B, "b": A})))
    assert first.releases() == second.releases() == [
        PlannedRelease(A, ((DEST, ("b",)),)),
        PlannedRelease(B, ((DEST, ("a",)), (OTHER, ("a",)))),
    ]
