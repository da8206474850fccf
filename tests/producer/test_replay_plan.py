"""``fanout replay``'s plan under the tag order rule: a tag goes with the release it had last."""

from __future__ import annotations

import time

import fakeredis

from producer.replay_plan import plan
from workers.ledger import Ledger

SRC = "src.example/acme/app"
OLD, NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _landed(ledger: Ledger, digest: str, tags: tuple[str, ...], **kwargs: object) -> str:
    release_id = ledger.create_release(f"{SRC}@{digest}", [("a.example/app", tags)],
                                       **kwargs)  # type: ignore[arg-type]
    ledger.mark_running(release_id, "a.example/app", worker="w1@host")
    ledger.mark_succeeded(release_id, "a.example/app", stats={}, seconds=0.1)
    return release_id


def test_a_shared_tag_goes_only_with_the_newest_release() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    since = time.time() - 60
    _landed(ledger, OLD, ("1.0", "latest"))
    _landed(ledger, NEW, ("1.1", "latest"))

    replays = {r.digest: r.tags for r in plan(ledger, since)}

    assert replays == {OLD: ("1.0",), NEW: ("1.1", "latest")}


def test_the_release_order_decides_not_the_clocks() -> None:
    # The newer release (order 9) was created on a host whose clock ran behind.
    now = [time.time()]
    ledger = Ledger(fakeredis.FakeRedis(), clock=lambda: now[0])
    _landed(ledger, OLD, ("latest",), order=5)
    now[0] -= 10
    _landed(ledger, NEW, ("latest",), order=9)

    replays = {r.digest: r.tags for r in plan(ledger, now[0] - 60)}

    assert replays == {OLD: (), NEW: ("latest",)}


def test_a_digest_released_again_later_takes_the_tag_back() -> None:
    # A rollback: OLD, then NEW, then OLD again as a new release.
    ledger = Ledger(fakeredis.FakeRedis())
    since = time.time() - 60
    first = _landed(ledger, OLD, ("latest",))
    _landed(ledger, NEW, ("latest",))
    again = _landed(ledger, OLD, ("latest",))

    replays = {r.digest: r for r in plan(ledger, since)}

    assert replays[OLD].tags == ("latest",) and replays[NEW].tags == ()
    assert replays[OLD].releases == (first, again)
