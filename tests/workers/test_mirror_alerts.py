"""A mirror failing for more than two of its intervals notifies once per outage, and its
recovery once; on-demand mirrors and dry runs never do. Against fakeredis and a fake send."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.workers.conftest import FakeClock
from workers.mirror_alerts import MirrorAlerts, overdue
from workers.mirror_model import Mirror, MirrorRun
from workers.mirror_runs import MirrorRuns, alerted_key
from workers.notifications import (
    EVENT,
    MIRROR_FAILING,
    MIRROR_RECOVERED,
    DeliveryLog,
    Notifier,
    NotifyJob,
    body_for,
)
from workers.notify_settings import NotifySettings, Target

HOOK = "https://hooks.example/services/T000/B000/very-secret-path"
HOUR = 3600.0
MIRROR = Mirror(name="nginx", source="docker.io/library/nginx",
                destinations=("harbor.example/mirror/nginx",), to="mirrors", every=HOUR)


class Sent(list[tuple[NotifyJob, str]]):
    def __call__(self, job: NotifyJob, queue: str) -> None:
        self.append((job, queue))

    @property
    def events(self) -> list[str]:
        return [job.event for job, _ in self]


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def runs(redis_client: Any) -> MirrorRuns:
    return MirrorRuns(redis_client)


@pytest.fixture
def alerts(runs: MirrorRuns, sent: Sent, clock: FakeClock) -> MirrorAlerts:
    return MirrorAlerts(runs, NotifySettings(targets=(Target(HOOK),)), sent, clock=clock)


def one_run(runs: MirrorRuns, alerts: MirrorAlerts, clock: FakeClock, *, ok: bool,
            mirror: Mirror = MIRROR, dry_run: bool = False) -> str | None:
    """What the sync does at the end of a run: record it, then ask for an alert."""
    run = MirrorRun(mirror=mirror.name, trigger="schedule", started_at=clock.now,
                    finished_at=clock.now + 30, ok=ok, dry_run=dry_run,
                    error=None if ok else "listing docker.io/library/nginx: 503")
    clock.advance(30)
    runs.record(run)
    return alerts.after_run(mirror, run)


def test_overdue_is_more_than_two_intervals_of_failure() -> None:
    assert not overdue(MIRROR, None, 10 * HOUR)
    assert not overdue(MIRROR, 0.0, 2 * HOUR)
    assert overdue(MIRROR, 0.0, 2 * HOUR + 1)
    assert not overdue(Mirror(name="manual", source="a/b", destinations=("c/d",)), 0.0, 1e9)


def test_fires_once_after_two_intervals_of_failure_not_before(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock) -> None:
    assert one_run(runs, alerts, clock, ok=True) is None
    clock.advance(HOUR)
    assert one_run(runs, alerts, clock, ok=False) is None  # the streak begins
    began = runs.failing_since("nginx")
    clock.advance(HOUR)
    assert one_run(runs, alerts, clock, ok=False) is None  # 1h30s: not yet
    clock.advance(HOUR - 90)
    # This one ends exactly two intervals after the streak began: not more than two.
    assert one_run(runs, alerts, clock, ok=False) is None
    clock.advance(60)
    assert one_run(runs, alerts, clock, ok=False) == MIRROR_FAILING
    for _ in range(3):
        clock.advance(HOUR)
        assert one_run(runs, alerts, clock, ok=False) is None  # once per outage
    assert sent.events == [MIRROR_FAILING]
    job, queue = sent[0]
    assert job.release_id == "mirror:nginx" and job.epoch == int(began or 0)
    assert job.document["failing_since"] == began
    assert job.document["error"] == "listing docker.io/library/nginx: 503"
    assert queue == "fanout"


def test_a_success_clears_the_outage_and_says_so(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock,
        redis_client: Any) -> None:
    for _ in range(4):
        one_run(runs, alerts, clock, ok=False)
        clock.advance(HOUR)
    assert sent.events == [MIRROR_FAILING]
    assert one_run(runs, alerts, clock, ok=True) == MIRROR_RECOVERED
    assert redis_client.get(alerted_key("nginx")) is None
    recovered = sent[1][0]
    assert recovered.epoch == sent[0][0].epoch and recovered.document["error"] is None
    # A second outage is a new one: it notifies again.
    for _ in range(4):
        clock.advance(HOUR)
        one_run(runs, alerts, clock, ok=False)
    assert sent.events == [MIRROR_FAILING, MIRROR_RECOVERED, MIRROR_FAILING]
    assert sent[2][0].epoch != sent[0][0].epoch


def test_a_success_without_an_alert_sends_nothing(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock) -> None:
    one_run(runs, alerts, clock, ok=False)
    clock.advance(HOUR)
    assert one_run(runs, alerts, clock, ok=True) is None
    assert sent == []


def test_an_on_demand_mirror_never_alerts(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock) -> None:
    manual = Mirror(name="manual", source="docker.io/library/nginx",
                    destinations=("harbor.example/mirror/nginx",))
    for _ in range(10):
        one_run(runs, alerts, clock, ok=False, mirror=manual)
        clock.advance(HOUR)
    assert sent == []


def test_dry_runs_neither_alert_nor_recover(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock) -> None:
    for _ in range(4):
        one_run(runs, alerts, clock, ok=False)
        clock.advance(HOUR)
    assert one_run(runs, alerts, clock, ok=True, dry_run=True) is None
    assert one_run(runs, alerts, clock, ok=False, dry_run=True) is None
    assert sent.events == [MIRROR_FAILING]


def test_without_notification_urls_nothing_is_sent_or_kept(
        runs: MirrorRuns, sent: Sent, clock: FakeClock, redis_client: Any) -> None:
    quiet = MirrorAlerts(runs, NotifySettings(), sent, clock=clock)
    for _ in range(4):
        one_run(runs, quiet, clock, ok=False)
        clock.advance(HOUR)
    assert sent == [] and redis_client.get(alerted_key("nginx")) is None


def test_a_broken_send_costs_the_alert_not_the_run(
        runs: MirrorRuns, clock: FakeClock) -> None:
    def broken(job: NotifyJob, queue: str) -> None:
        raise ConnectionError("broker down")

    alerts = MirrorAlerts(runs, NotifySettings(targets=(Target(HOOK),)), broken, clock=clock)
    for _ in range(4):
        one_run(runs, alerts, clock, ok=False)
        clock.advance(HOUR)


def test_the_alert_goes_out_as_a_signed_notification_without_secrets(
        runs: MirrorRuns, alerts: MirrorAlerts, sent: Sent, clock: FakeClock,
        redis_client: Any) -> None:
    for _ in range(4):
        one_run(runs, alerts, clock, ok=False)
        clock.advance(HOUR)
    job = sent[0][0]
    assert NotifyJob.parse((), job.to_kwargs()) == job
    requests: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    settings = NotifySettings(targets=(Target(HOOK),), secret="s3cret", format="slack")
    notifier = Notifier(settings, DeliveryLog(redis_client, retention=60),
                        transport=httpx.MockTransport(receiver))
    notifier.deliver(job)
    notifier.deliver(job)  # delivered once
    [request] = requests
    assert request.headers["x-fanout-event"] == MIRROR_FAILING
    assert request.headers["x-fanout-mirror"] == "nginx"
    assert "x-fanout-release" not in request.headers
    body = request.content.decode()
    assert "nginx" in json.loads(body)["text"]
    for secret in ("s3cret", "very-secret-path", HOOK):
        assert secret not in body
    assert "very-secret-path" not in json.dumps(job.to_kwargs())


def test_a_release_notification_reads_as_it_always_has() -> None:
    job = NotifyJob("rel-1", 0, "t", {"id": "rel-1"})
    assert "event" not in job.to_kwargs() and job.event == EVENT
    assert json.loads(body_for({"id": "rel-1"}, "json")) == {"id": "rel-1"}
    with pytest.raises(ValueError, match="malformed"):
        NotifyJob.parse((), {**job.to_kwargs(), "event": "bogus"})
