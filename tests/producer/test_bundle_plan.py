"""``fanout export``'s plan: which releases of the ledger go into a bundle, with which tags."""

from __future__ import annotations

import time

import fakeredis
import pytest

from producer.bundle_plan import plan_bundle
from producer.common import UsageError
from workers.ledger import Ledger

APP, WEB = "src.example/acme/app", "src.example/acme/web"
OLD, NEW, OTHER = ("sha256:" + c * 64 for c in "123")


def _release(ledger: Ledger, source: str, tags: tuple[str, ...], *,
             to: str = "a.example/app", landed: bool = True) -> str:
    release_id = ledger.create_release(source, [(to, tags)])
    ledger.mark_running(release_id, to, worker="w1@host")
    if landed:
        ledger.mark_succeeded(release_id, to, stats={}, seconds=0.1)
    else:
        ledger.mark_failed(release_id, to, error="DENIED", error_type="permanent")
    return release_id


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis())


def test_every_landed_release_of_the_window_is_an_image_with_its_tags(ledger: Ledger) -> None:
    since = time.time() - 60
    first = _release(ledger, f"{APP}@{OLD}", ("1.0",))
    second = _release(ledger, f"{WEB}@{OTHER}", ())

    images = plan_bundle(ledger, since)

    assert [(i.repository, i.digest, i.tags) for i in images] == [
        (APP, OLD, (("1.0", first),)), (WEB, OTHER, ())]
    assert images[1].newest_release == second and images[1].source == f"{WEB}@{OTHER}"


def test_a_tag_released_twice_goes_with_the_newer_release(ledger: Ledger) -> None:
    since = time.time() - 60
    _release(ledger, f"{APP}@{OLD}", ("1.0", "latest"))
    newer = _release(ledger, f"{APP}@{NEW}", ("1.1", "latest"))

    images = {i.digest: dict(i.tags) for i in plan_bundle(ledger, since)}

    assert images == {OLD: {"1.0": images[OLD]["1.0"]}, NEW: {"1.1": newer, "latest": newer}}


def test_the_same_tag_in_two_repositories_is_two_tags(ledger: Ledger) -> None:
    since = time.time() - 60
    _release(ledger, f"{APP}@{OLD}", ("latest",))
    _release(ledger, f"{WEB}@{NEW}", ("latest",))

    images = {i.repository: [t for t, _ in i.tags] for i in plan_bundle(ledger, since)}

    assert images == {APP: ["latest"], WEB: ["latest"]}


def test_releases_that_never_landed_and_old_ones_are_left_out(ledger: Ledger) -> None:
    now = [time.time() - 3600]
    ledger = Ledger(fakeredis.FakeRedis(), clock=lambda: now[0])
    _release(ledger, f"{APP}@{OLD}", ("old",))  # an hour ago
    now[0] = time.time()
    _release(ledger, f"{APP}@{NEW}", ("failed",), landed=False)
    kept = _release(ledger, f"{WEB}@{OTHER}", ("ok",))

    images = plan_bundle(ledger, time.time() - 60)

    assert [(i.digest, i.tags) for i in images] == [(OTHER, (("ok", kept),))]


def test_a_digest_released_twice_is_one_image_on_behalf_of_both(ledger: Ledger) -> None:
    since = time.time() - 60
    first = _release(ledger, f"{APP}@{OLD}", ("1.0",))
    again = _release(ledger, f"{APP}@{OLD}", ("stable",))

    [image] = plan_bundle(ledger, since)

    assert image.releases == (first, again)
    assert image.tags == (("1.0", first), ("stable", again))


def test_to_keeps_releases_that_reached_one_of_the_set(ledger: Ledger) -> None:
    since = time.time() - 60
    _release(ledger, f"{APP}@{OLD}", ("1.0",), to="harbor.example/acme/app")
    _release(ledger, f"{APP}@{NEW}", ("1.1",), to="ghcr.io/acme/app")
    _release(ledger, f"{WEB}@{OTHER}", ("2.0",), to="ghcr.io/acme/web", landed=False)

    images = plan_bundle(ledger, since, destinations=["ghcr.io/acme/app:stable",
                                                      "ghcr.io/acme/web"])

    assert [i.digest for i in images] == [NEW]


def test_source_repo_keeps_that_repository_only(ledger: Ledger) -> None:
    since = time.time() - 60
    _release(ledger, f"{APP}@{OLD}", ("1.0",))
    _release(ledger, f"{WEB}@{OTHER}", ("2.0",))

    assert [i.repository for i in plan_bundle(ledger, since, source_repo=WEB)] == [WEB]
    with pytest.raises(UsageError, match="--source-repo"):
        plan_bundle(ledger, since, source_repo="Not A Repo")
