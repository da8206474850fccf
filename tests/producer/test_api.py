"""producer.api: enqueue checks everything first, then records a release and sends its tasks.

A fake registry (httpx.MockTransport), a fakeredis ledger and kombu's in-memory broker: the
messages read back are the ones a worker would receive.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import fakeredis
import httpx
import pytest
import redis

from producer import api, waiting
from producer.common import UsageError
from registry.errors import InvalidReference
from workers.ledger import Ledger

MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:" + "0" * 64},
    "layers": [],
}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SRC = "src.example/acme/app"
BROKER = "memory://"


class FakeRegistry:
    """Serves one manifest at SRC, by tag ``v1`` and by digest; records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if request.url.path == "/v2/":
            return httpx.Response(200)
        if request.url.path in (f"/v2/acme/app/manifests/{DIGEST}", "/v2/acme/app/manifests/v1"):
            headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                       "Docker-Content-Digest": DIGEST, "Content-Length": str(len(MANIFEST))}
            return httpx.Response(200, headers=headers,
                                  content=b"" if request.method == "HEAD" else MANIFEST)
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                     "message": "manifest unknown"}]})


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis())


def drain(queue: str = "fanout") -> list[Any]:
    from workers.app import app

    found: list[Any] = []
    with app.connection_for_read(BROKER) as connection:
        channel = connection.default_channel
        while True:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                return found
            found.append(message)


def call(registry: FakeRegistry, ledger: Ledger, source: str | list[str],
         destinations: list[str], **kwargs: Any) -> list[str]:
    kwargs.setdefault("env", {})
    return api.enqueue(source, destinations, broker_url=BROKER, ledger=ledger,
                       transport=httpx.MockTransport(registry), **kwargs)


def test_tag_is_pinned_and_one_task_per_destination(registry: FakeRegistry,
                                                    ledger: Ledger) -> None:
    drain()
    [release_id] = call(registry, ledger, f"{SRC}:v1", ["a.example/app", "b.example/app:prod"],
                        tags=["1.2.3"])

    release = ledger.get(release_id)
    assert release is not None
    assert release.source == f"{SRC}@{DIGEST}" and release.digest == DIGEST
    assert {d: r.state for d, r in release.destinations.items()} == {
        "a.example/app": "queued", "b.example/app": "queued"}
    assert release.destinations["b.example/app"].tags == ("prod", "1.2.3")
    messages = drain()
    assert len(messages) == 2
    bodies = []
    for message in messages:
        assert message.content_type == "application/json"
        assert message.headers["task"] == "fanout.copy"
        args, kwargs, _ = json.loads(message.body)
        assert args == []
        assert message.headers["id"] == f"{release_id}:{kwargs['destination']}"
        bodies.append(kwargs)
    # Every task carries the release's place in the order, the one the ledger holds.
    assert release.order >= 1
    assert sorted(bodies, key=lambda b: b["destination"]) == [
        {"release_id": release_id, "source": f"{SRC}@{DIGEST}", "destination": "a.example/app",
         "tags": ["1.2.3"], "referrers": {"enabled": True, "types": []},
         "order": release.order},
        {"release_id": release_id, "source": f"{SRC}@{DIGEST}", "destination": "b.example/app",
         "tags": ["prod", "1.2.3"], "referrers": {"enabled": True, "types": []},
         "order": release.order},
    ]
    # one request pins the tag (after the ping); nothing else touches the registry
    assert [r for r in registry.requests if r != "GET /v2/"] == ["GET /v2/acme/app/manifests/v1"]


def test_each_source_is_its_own_release(registry: FakeRegistry, ledger: Ledger) -> None:
    drain()
    ids = call(registry, ledger, [f"{SRC}:v1", f"{SRC}@{DIGEST}"], ["a.example/app"],
               referrers=False, referrer_types=["x/y"])

    assert len(set(ids)) == 2
    kwargs = [json.loads(m.body)[1] for m in drain()]
    assert [k["release_id"] for k in kwargs] == ids
    assert kwargs[0]["tags"] == ["v1"] and kwargs[1]["tags"] == []
    assert kwargs[0]["referrers"] == {"enabled": False, "types": ["x/y"]}
    assert set(ledger.recent()) == set(ids)


def test_route_by_registry_picks_the_queue(registry: FakeRegistry, ledger: Ledger) -> None:
    drain()
    call(registry, ledger, f"{SRC}@{DIGEST}", ["a.example:5000/app"],
         env={"FANOUT_ROUTE_BY_REGISTRY": "1"})

    assert drain() == []
    [message] = drain("fanout.a.example_5000")
    assert json.loads(message.body)[1]["destination"] == "a.example:5000/app"


@pytest.mark.parametrize(
    ("source", "destinations", "error", "message"),
    [
        ("src.example/ACME", ["a.example/app"], InvalidReference, "reference"),
        (f"{SRC}:v1", ["a.example/app@" + DIGEST], api.EnqueueError, "has a digest"),
        (f"{SRC}:v1", [], api.EnqueueError, "no destinations"),
        (f"{SRC}:v1", ["a.example/app", "a.example/app:x"], api.EnqueueError, "given twice"),
        (f"{SRC}:nope", ["a.example/app"], api.EnqueueError, "no such image"),
        (f"{SRC}@sha256:{'1' * 64}", ["a.example/app"], api.EnqueueError, "no such image"),
    ],
)
def test_bad_input_enqueues_nothing(registry: FakeRegistry, ledger: Ledger, source: str,
                                    destinations: list[str], error: type[Exception],
                                    message: str) -> None:
    drain()
    with pytest.raises(error, match=message):
        call(registry, ledger, source, destinations)

    assert ledger.recent() == []
    assert drain() == []


def test_unreachable_broker_is_named_without_its_password(registry: FakeRegistry,
                                                          ledger: Ledger) -> None:
    url = "redis://:hunter2-secret@127.0.0.1:1/0"
    with pytest.raises(api.EnqueueError) as caught:
        api.enqueue(f"{SRC}:v1", ["a.example/app"], broker_url=url, env={}, ledger=ledger,
                    transport=httpx.MockTransport(registry))

    text = str(caught.value)
    assert "broker redis://:**@127.0.0.1:1/0 is unreachable" in text
    assert "hunter2" not in text and "hunter2" not in repr(caught.value)
    assert ledger.recent() == []


def test_unreachable_ledger_is_named_without_its_password() -> None:
    settings = api.queue_settings({"FANOUT_LEDGER_URL": "redis://u:hunter2@127.0.0.1:1/3"})

    with pytest.raises(api.EnqueueError, match=r"ledger redis://u:\*\*@127.0.0.1:1/3") as caught:
        api.connect_ledger(settings)
    assert "hunter2" not in str(caught.value)


def test_wait_polls_until_done_or_timeout(ledger: Ledger) -> None:
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ()),
                                                          ("b.example/app", ())])
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            ledger.mark_running(release_id, "a.example/app", worker="w1")
        elif len(slept) == 2:
            ledger.mark_succeeded(release_id, "a.example/app", stats={}, seconds=1.0)
            ledger.mark_running(release_id, "b.example/app", worker="w1")
            ledger.mark_failed(release_id, "b.example/app", error="denied", error_type="Denied")

    final = api.wait(release_id, timeout=None, poll=0.25, ledger=ledger, sleep=sleep)

    assert final.done and slept == [0.25, 0.25]
    assert api.exit_code([final]) == api.EXIT_FAILED


def test_wait_gives_up_at_the_timeout(ledger: Ledger) -> None:
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ())])

    final = api.wait(release_id, timeout=0.05, poll=0.01, ledger=ledger)

    assert not final.done and api.exit_code([final]) == api.EXIT_TIMEOUT


class _Failover:
    """A ledger whose first ``down`` reads fail as a Redis failing over does."""

    def __init__(self, ledger: Ledger, down: int) -> None:
        self.ledger = ledger
        self.down = down

    def get(self, release_id: str) -> Any:
        if self.down:
            self.down -= 1
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        return self.ledger.get(release_id)


def test_wait_rides_out_a_ledger_failover(ledger: Ledger) -> None:
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ())])
    ledger.mark_running(release_id, "a.example/app", worker="w1")
    ledger.mark_succeeded(release_id, "a.example/app", stats={}, seconds=1.0)
    slept: list[float] = []

    final = api.wait(release_id, timeout=None, poll=0.25, sleep=slept.append,
                     ledger=_Failover(ledger, down=3))  # type: ignore[arg-type]

    assert final.done and slept == [0.25, 0.25, 0.25]


def test_wait_gives_up_on_a_ledger_that_stays_down(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
) -> None:
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ())])
    monkeypatch.setattr(waiting, "OUTAGE", 0.05)

    with pytest.raises(api.EnqueueError, match="ledger is unreachable"):
        api.wait(release_id, timeout=None, poll=0.01,
                 ledger=_Failover(ledger, down=10**6))  # type: ignore[arg-type]
    monkeypatch.setattr(waiting, "OUTAGE", 60.0)
    with pytest.raises(api.EnqueueError, match="ledger is unreachable"):  # the --timeout ends it
        api.wait(release_id, timeout=0.05, poll=0.01,
                 ledger=_Failover(ledger, down=10**6))  # type: ignore[arg-type]


def test_exit_codes(ledger: Ledger) -> None:
    ok = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ())])
    ledger.mark_running(ok, "a.example/app", worker=None)
    ledger.mark_succeeded(ok, "a.example/app", stats={}, seconds=0.1)
    pending = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ())])
    done = api.status(ok, ledger=ledger)
    running = api.status(pending, ledger=ledger)

    assert api.exit_code([done]) == api.EXIT_OK
    assert api.exit_code([done, running]) == api.EXIT_TIMEOUT
    with pytest.raises(api.ReleaseNotFound, match="rel-nope"):
        api.status("rel-nope", ledger=ledger)


# -- optional destinations, retry, replay --------------------------------------------------------


def _bodies(queue: str = "fanout") -> list[tuple[str, dict[str, Any]]]:
    return [(m.headers["id"], json.loads(m.body)[1]) for m in drain(queue)]


def _fail(ledger: Ledger, release_id: str, destination: str, error: str = "denied") -> None:
    ledger.mark_running(release_id, destination, worker="w1@host")
    ledger.mark_failed(release_id, destination, error=error, error_type="Denied")


def _succeed(ledger: Ledger, release_id: str, destination: str) -> None:
    ledger.mark_running(release_id, destination, worker="w1@host")
    ledger.mark_succeeded(release_id, destination, stats={}, seconds=0.1)


def test_optional_destinations_are_recorded_and_each_task_kept(registry: FakeRegistry,
                                                               ledger: Ledger) -> None:
    drain()
    [release_id] = call(registry, ledger, f"{SRC}:v1", ["a.example/app", "b.example/app"],
                        optional=["b.example/app:extra", "c.example/app"])

    release = ledger.get(release_id)
    assert release is not None
    assert {d: r.optional for d, r in release.destinations.items()} == {
        "a.example/app": False, "b.example/app": True, "c.example/app": True}
    # an optional one already among the destinations gains its tag, not a second task
    assert release.destinations["b.example/app"].tags == ("v1", "extra")
    sent = {kwargs["destination"]: kwargs for _, kwargs in _bodies()}
    assert sorted(sent) == ["a.example/app", "b.example/app", "c.example/app"]
    for destination, kwargs in sent.items():
        assert ledger.task_of(release_id, destination) == kwargs


def test_retry_sends_the_failed_destinations_under_a_new_generation(
    registry: FakeRegistry, ledger: Ledger,
) -> None:
    drain()
    [release_id] = call(registry, ledger, f"{SRC}:v1", ["a.example/app", "b.example/app"],
                        referrers=False)
    first = dict(_bodies())
    _succeed(ledger, release_id, "a.example/app")
    _fail(ledger, release_id, "b.example/app")

    sent = api.retry(release_id, broker_url=BROKER, env={}, ledger=ledger)

    assert sent == ["b.example/app"]
    [(task_id, kwargs)] = _bodies()
    assert task_id == f"{release_id}:b.example/app:1"
    assert kwargs == {**first[f"{release_id}:b.example/app"], "generation": 1}
    record = ledger.record(release_id, "b.example/app")
    assert record is not None
    assert record.state == "queued" and record.generation == 1 and record.round_base == 1
    assert [a.outcome for a in record.history] == ["failed"]  # the failed attempt is kept
    release = api.status(release_id, ledger=ledger)
    assert not release.done and api.exit_code([release]) == api.EXIT_TIMEOUT


def test_retry_of_named_destinations(registry: FakeRegistry, ledger: Ledger) -> None:
    drain()
    [release_id] = call(registry, ledger, f"{SRC}:v1", ["a.example/app", "b.example/app"])
    drain()
    _succeed(ledger, release_id, "a.example/app")

    with pytest.raises(api.retry_plan.RetryRefused, match=r"b.example/app .* is queued"):
        api.retry(release_id, ["b.example/app"], broker_url=BROKER, env={}, ledger=ledger)
    with pytest.raises(api.retry_plan.RetryRefused,
                       match=r"'z.example/app' is not in release .*a.example/app, b.example"):
        api.retry(release_id, ["z.example/app"], broker_url=BROKER, env={}, ledger=ledger)
    with pytest.raises(api.ReleaseNotFound, match="rel-nope"):
        api.retry("rel-nope", broker_url=BROKER, env={}, ledger=ledger)
    assert _bodies() == []
    # nothing failed: nothing to send
    assert api.retry(release_id, broker_url=BROKER, env={}, ledger=ledger) == []

    # a succeeded destination may be copied again when named, by repository or with a tag
    assert api.retry(release_id, ["a.example/app:v1"], broker_url=BROKER, env={},
                     ledger=ledger) == ["a.example/app"]
    [(task_id, kwargs)] = _bodies()
    assert task_id.endswith(":1") and kwargs["destination"] == "a.example/app"


def test_retry_rebuilds_a_task_the_ledger_did_not_keep(ledger: Ledger) -> None:
    drain()
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ("v1",))])
    _fail(ledger, release_id, "a.example/app")

    api.retry(release_id, broker_url=BROKER, env={}, ledger=ledger)

    [(_, kwargs)] = _bodies()
    assert kwargs == {"release_id": release_id, "source": f"{SRC}@{DIGEST}",
                      "destination": "a.example/app", "tags": ["v1"],
                      "referrers": {"enabled": True, "types": []}, "generation": 1,
                      "order": ledger.order_of(release_id)}


def test_replay_sends_each_digest_once_with_every_tag(registry: FakeRegistry) -> None:
    drain()
    source = f"{SRC}@{DIGEST}"
    now = [time.time() - 3600]

    def tick() -> float:
        now[0] += 1.0
        return now[0]

    ledger = Ledger(fakeredis.FakeRedis(), clock=tick)
    old = ledger.create_release(source, [("a.example/app", ("v0",))])
    _succeed(ledger, old, "a.example/app")
    now[0] += 3600
    one = ledger.create_release(source, [("a.example/app", ("v1",)), ("b.example/app", ("x",))])
    _succeed(ledger, one, "a.example/app")
    _fail(ledger, one, "b.example/app")
    two = ledger.create_release(source, [("a.example/app", ("v1", "latest"))])
    _succeed(ledger, two, "a.example/app")
    never = ledger.create_release(source, [("a.example/app", ("broken",))])
    _fail(ledger, never, "a.example/app")
    other = ledger.create_release(f"other.example/app@{DIGEST}", [("a.example/app", ("o",))])
    _succeed(ledger, other, "a.example/app")

    ids = api.replay("30m", ["mirror.example/app"], source_repo=SRC, broker_url=BROKER,
                     env={}, ledger=ledger, transport=httpx.MockTransport(registry),
                     clock=lambda: now[0] + 60)

    [release_id] = ids
    release = ledger.get(release_id)
    assert release is not None and release.source == source
    assert release.destinations["mirror.example/app"].tags == ("v1", "x", "latest")
    [(_, kwargs)] = _bodies()
    assert kwargs["destination"] == "mirror.example/app" and kwargs["source"] == source
    # nothing within the window of that repository: nothing sent
    assert api.replay(30.0, ["mirror.example/app"], source_repo="nobody.example/app",
                      broker_url=BROKER, env={}, ledger=ledger,
                      clock=lambda: now[0] + 60) == []
    with pytest.raises(UsageError, match="bad duration '7 days'"):
        api.replay("7 days", ["mirror.example/app"], ledger=ledger, env={})


def test_wait_ends_when_the_required_destinations_are_final(ledger: Ledger) -> None:
    release_id = ledger.create_release(f"{SRC}@{DIGEST}", [("a.example/app", ()),
                                                          ("b.example/app", ())],
                                       optional=["b.example/app"])
    _succeed(ledger, release_id, "a.example/app")

    final = api.wait(release_id, timeout=1, poll=0.01, ledger=ledger)

    assert final.done and final.destinations["b.example/app"].state == "queued"
    assert api.exit_code([final]) == api.EXIT_OK
    _fail(ledger, release_id, "b.example/app")
    assert api.exit_code([api.status(release_id, ledger=ledger)]) == api.EXIT_OK
