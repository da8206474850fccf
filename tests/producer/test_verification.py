"""producer.verification: verdicts from a registry's answers and the tag owners, each distinct
reference asked once, refusals before any registry is contacted, repairs sent as retries.

A fake registry (httpx.MockTransport) that records every request, a fakeredis ledger, kombu's
in-memory broker; the real registries and workers are in tests/integration/test_verify.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import httpx
import pytest

from producer import api, verification
from producer.common import UsageError
from producer.verdicts import EXIT_DRIFT, EXIT_OK, EXIT_UNCHECKED, Report
from producer.verify_plan import RepairRefused
from registry.retry import NO_RETRY
from workers.ledger import Ledger
from workers.tag_order import TagOwner, TagOwners
from workers.verify_metrics import VERIFY_KEY

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
ODD = "sha256:" + "9" * 64
SOURCE = f"src.example/acme/app@{OLD}"
A = "a.example/acme/app"
B = "b.example/acme/app"
BROKER = "memory://"
_MANIFEST = re.compile(r"/v2/(.+)/manifests/([^/]+)")


class Registry:
    """Manifests by repository and reference; hosts in ``down`` refuse connections."""

    def __init__(self) -> None:
        self.refs: dict[str, dict[str, str]] = {}
        self.down: set[str] = set()
        self.requests: list[str] = []

    def put(self, repository: str, digest: str, *tags: str) -> None:
        refs = self.refs.setdefault(repository, {})
        refs[digest] = digest
        refs.update(dict.fromkeys(tags, digest))

    def heads(self) -> list[str]:
        return [r for r in self.requests if r.startswith("HEAD")]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.host}{request.url.path}")
        if request.url.host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v2/":
            return httpx.Response(200)
        found = _MANIFEST.fullmatch(request.url.path)
        digest = self.refs.get(f"{request.url.host}/{found[1]}", {}).get(found[2]) \
            if found else None
        if digest is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                         "message": "manifest unknown"}]})
        return httpx.Response(200, headers={
            "Docker-Content-Digest": digest, "Content-Length": "100",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json"})


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis())


def landed(ledger: Ledger, destinations: list[tuple[str, tuple[str, ...]]], *,
           digest: str = OLD, states: dict[str, str] | None = None) -> str:
    """A release whose destinations succeeded (or end in ``states``)."""
    release_id = ledger.create_release(f"src.example/acme/app@{digest}", destinations)
    for name, _ in destinations:
        state = (states or {}).get(name, "succeeded")
        if state == "queued":
            continue
        ledger.mark_running(release_id, name, worker="w1@host")
        if state == "succeeded":
            ledger.mark_succeeded(release_id, name, stats={}, seconds=0.1)
        elif state == "failed":
            ledger.mark_failed(release_id, name, error="denied", error_type="Denied")
    return release_id


def owns(ledger: Ledger, release_id: str, repository: str, tag: str, digest: str) -> None:
    owner = TagOwner(ledger.order_of(release_id), release_id, digest, 1.0)
    TagOwners(ledger.client, ttl=3600).claim(repository, tag, owner, None)


def run(registry: Registry, ledger: Ledger, *ids: str, **kwargs: Any) -> Report:
    kwargs.setdefault("env", {})
    return verification.verify(list(ids), ledger=ledger, broker_url=BROKER, retry=NO_RETRY,
                               transport=httpx.MockTransport(registry), **kwargs)


def states(report: Report) -> dict[tuple[str, str], str]:
    return {(v.release, v.destination): v.state for v in report.verdicts}


def drain(queue: str = "fanout") -> list[dict[str, Any]]:
    from workers.app import app

    found = []
    with app.connection_for_read(BROKER) as connection:
        while (message := connection.default_channel.basic_get(queue, no_ack=True)) is not None:
            found.append(json.loads(message.body)[1])
    return found


@pytest.fixture(autouse=True)
def empty_broker() -> Iterator[None]:
    drain()
    yield
    drain()


# -- verdicts -----------------------------------------------------------------------------------


def test_every_state_and_its_detail(registry: Registry, ledger: Ledger) -> None:
    old = landed(ledger, [(A, ("v1", "latest")), (B, ("v1",)),
                          ("c.example/acme/app", ("v1",)), ("d.example/acme/app", ("v1",))],
                 states={"d.example/acme/app": "failed"})
    new = landed(ledger, [(A, ("latest",))], digest=NEW)
    owns(ledger, old, A, "v1", OLD)
    owns(ledger, new, A, "latest", NEW)
    owns(ledger, old, B, "v1", OLD)
    registry.put(A, OLD, "v1")
    registry.put(A, NEW, "latest")           # taken by the newer release: superseded
    registry.put(B, OLD)
    registry.put(B, ODD, "v1")               # moved by hand
    registry.put("c.example/acme/app", NEW)  # OLD deleted there, and its tag with it

    report = run(registry, ledger, old, new)

    assert states(report) == {
        (old, A): "superseded", (old, B): "tag moved", (old, "c.example/acme/app"): "missing",
        (old, "d.example/acme/app"): "not landed", (new, A): "in place"}
    assert report.exit_code == EXIT_DRIFT
    by_name = {(v.release, v.destination): v for v in report.verdicts}
    assert by_name[(old, A)].detail == f"tag latest held by newer {new}"
    assert by_name[(old, B)].detail == f"tag v1 names {ODD}"
    assert by_name[(old, B)].tags[0].found == ODD
    assert by_name[(old, "c.example/acme/app")].detail.startswith(f"{OLD[:19]} is gone")
    assert by_name[(new, A)].detail == f"{NEW[:19]} tagged latest"
    document = report.to_dict()
    assert document["counts"] == {"in place": 1, "superseded": 1, "tag moved": 1, "missing": 1,
                                  "not landed": 1}
    assert document["destinations"][1]["tags"]["v1"] == {
        "state": "tag moved", "found": ODD, "holder": None, "error": None}


def test_all_in_place_or_superseded_exits_0(registry: Registry, ledger: Ledger) -> None:
    old = landed(ledger, [(A, ("latest",))])
    new = landed(ledger, [(A, ("latest",))], digest=NEW)
    owns(ledger, new, A, "latest", NEW)
    registry.put(A, OLD)
    registry.put(A, NEW, "latest")

    report = run(registry, ledger, old, new)

    assert states(report) == {(old, A): "superseded", (new, A): "in place"}
    assert report.exit_code == EXIT_OK


def test_an_older_owner_or_none_makes_a_moved_tag_drift(registry: Registry,
                                                        ledger: Ledger) -> None:
    older = landed(ledger, [(A, ("latest",))], digest=ODD)
    mine = landed(ledger, [(A, ("latest",)), (B, ("latest",))])
    owns(ledger, older, A, "latest", ODD)  # a rollback by hand is not a newer release
    registry.put(A, OLD)
    registry.put(A, ODD, "latest")
    registry.put(B, OLD)  # and a tag gone, with no owner at all

    report = run(registry, ledger, mine)

    assert states(report) == {(mine, A): "tag moved", (mine, B): "tag moved"}
    assert [v.detail for v in report.verdicts] == [f"tag latest names {ODD}",
                                                   "tag latest is gone"]


def test_a_tag_the_ledger_left_to_a_newer_release_is_superseded_without_an_owner_record(
    registry: Registry, ledger: Ledger,
) -> None:
    release_id = ledger.create_release(SOURCE, [(A, ("latest",))])
    ledger.mark_running(release_id, A, worker="w")
    ledger.mark_succeeded(release_id, A, stats={}, seconds=0.1, superseded={"latest": "rel-new"})
    registry.put(A, OLD)
    registry.put(A, NEW, "latest")

    report = run(registry, ledger, release_id)

    assert states(report) == {(release_id, A): "superseded"}
    assert report.verdicts[0].tags[0].holder == "rel-new"


def test_a_registry_that_is_down_is_unreachable_and_asked_once(registry: Registry,
                                                               ledger: Ledger) -> None:
    ids = [landed(ledger, [(A, ("v1",)), (B, (f"t{i}",))]) for i in range(5)]
    registry.put(A, OLD, "v1")
    registry.down.add("b.example")

    report = run(registry, ledger, *ids)

    assert {v.destination: v.state for v in report.verdicts} == {A: "in place",
                                                                 B: "unreachable"}
    assert report.exit_code == EXIT_UNCHECKED
    assert "connection refused" in report.verdicts[1].detail.lower()
    # The first failure marks the host down: nothing more is sent there.
    assert len([r for r in registry.requests if "b.example" in r]) == 1


def test_drift_wins_over_unreachable_for_the_exit_code(registry: Registry,
                                                       ledger: Ledger) -> None:
    release_id = landed(ledger, [(A, ("v1",)), (B, ("v1",))])
    registry.put(A, OLD)  # tag gone
    registry.down.add("b.example")

    assert run(registry, ledger, release_id).exit_code == EXIT_DRIFT


# -- cost ---------------------------------------------------------------------------------------


def test_each_distinct_reference_is_asked_once(registry: Registry, ledger: Ledger) -> None:
    # Fifty releases of one digest to the same two destinations, sharing a tag.
    ids = [landed(ledger, [(A, ("latest", f"b{i}")), (B, ("latest",))]) for i in range(50)]
    registry.put(A, OLD, "latest", *(f"b{i}" for i in range(50)))
    registry.put(B, OLD)  # a tag gone: its digest is HEADed, no tag proves it present

    report = run(registry, ledger, *ids)

    assert report.exit_code == EXIT_DRIFT
    heads = registry.heads()
    assert len(heads) == len(set(heads))
    # A: 51 tags, the digest proven present by them; B: its tag and its digest.
    assert len(heads) == 51 + 2
    assert f"HEAD a.example/v2/acme/app/manifests/{OLD}" not in heads
    assert f"HEAD b.example/v2/acme/app/manifests/{OLD}" in heads


# -- refusals contact nothing -------------------------------------------------------------------


class Untouchable(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a registry was contacted: {request.method} {request.url}")


@pytest.mark.parametrize("case", ["unknown", "duration", "running", "both", "neither"])
def test_bad_input_is_refused_before_any_registry(ledger: Ledger, case: str) -> None:
    done = landed(ledger, [(A, ("v1",))])
    running = landed(ledger, [(A, ("v1",)), (B, ("v1",))], states={B: "queued"})
    ids, kwargs, error = {
        "unknown": ([done, "rel-nope"], {}, "no release 'rel-nope'"),
        "duration": ([], {"since": "7 days"}, "bad duration"),
        "running": ([done, running], {"repair": True},
                    f"release {running} is still under way .*{B} is queued"),
        "both": ([done], {"since": "1h"}, "not both"),
        "neither": ([], {}, "nothing to verify"),
    }[case]

    with pytest.raises(UsageError, match=error) as raised:
        verification.verify(ids, ledger=ledger, env={}, broker_url=BROKER,
                            transport=Untouchable(), **kwargs)
    if case == "running":
        assert isinstance(raised.value, RepairRefused)
    assert drain() == []


# -- repair -------------------------------------------------------------------------------------


def test_repair_sends_the_drifted_destinations_as_retries(registry: Registry,
                                                          ledger: Ledger) -> None:
    release_id = landed(ledger, [(A, ("v1",)), (B, ("v1",)), ("c.example/acme/app", ("v1",))])
    registry.put(A, OLD, "v1")
    registry.put(B, ODD, "v1")  # tag moved, content gone
    registry.put("c.example/acme/app", OLD)
    registry.put("c.example/acme/app", ODD, "v1")
    order = ledger.order_of(release_id)

    report = run(registry, ledger, release_id, repair=True)

    assert report.repaired == {release_id: [B, "c.example/acme/app"]}
    sent = sorted(drain(), key=lambda task: task["destination"])
    assert [(t["destination"], t["generation"], t["order"], t["tags"]) for t in sent] == [
        (B, 1, order, ["v1"]), ("c.example/acme/app", 1, order, ["v1"])]
    record = ledger.record(release_id, B)
    assert record is not None and record.state == "queued" and record.round_base == 1
    assert [a.outcome for a in record.history] == ["succeeded"]  # history kept
    assert ledger.record(release_id, A).state == "succeeded"  # type: ignore[union-attr]


def test_since_holds_back_a_release_under_way_and_repairs_the_rest(registry: Registry,
                                                                   ledger: Ledger) -> None:
    busy = landed(ledger, [(A, ("v1",)), (B, ("v1",))], states={B: "queued"})
    idle = landed(ledger, [(A, ("v2",))])
    registry.put(A, OLD)  # both tags gone

    report = run(registry, ledger, since="1h", repair=True)

    assert states(report) == {(busy, A): "tag moved", (busy, B): "not landed",
                              (idle, A): "tag moved"}
    assert report.repaired == {idle: [A]}
    assert report.held == {busy: f"still under way ({B} is queued)"}
    assert [t["release_id"] for t in drain()] == [idle]
    assert report.exit_code_after_repair(EXIT_OK) == EXIT_DRIFT  # busy's drift stays


def test_since_narrowed_by_set_and_source_repository(registry: Registry, ledger: Ledger) -> None:
    mine = landed(ledger, [(A, ("v1",)), (B, ("v1",))])
    ledger.create_release(f"other.example/x@{OLD}", [(A, ("v1",))])
    registry.put(A, OLD, "v1")
    registry.put(B, OLD, "v1")

    report = run(registry, ledger, since="1h", only=[f"{A}:ignored"],
                 source_repo="src.example/acme/app")

    assert states(report) == {(mine, A): "in place"}


def test_findings_are_stored_per_registry_for_the_exporter(registry: Registry,
                                                           ledger: Ledger) -> None:
    release_id = landed(ledger, [(A, ("v1",)), (B, ("v1",))])
    registry.put(A, OLD, "v1")
    registry.put(B, OLD)

    report = run(registry, ledger, release_id, clock=lambda: 1000.0)

    stored = {k.decode(): v.decode() for k, v in ledger.client.hgetall(VERIFY_KEY).items()}
    assert stored == {"a.example drift": "0", "a.example unreachable": "0",
                      "a.example checked": "1", "a.example at": "1000.0",
                      "b.example drift": "1", "b.example unreachable": "0",
                      "b.example checked": "1", "b.example at": "1000.0"}
    assert report.checked_at == 1000.0


def test_the_api_exposes_verify() -> None:
    assert api.verify is verification.verify
