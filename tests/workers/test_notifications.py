"""Release-finished notifications without a worker: settings, the signed request, the Slack body,
retry classification and idempotency, against fakeredis and ``httpx.MockTransport``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from registry.envconfig import ConfigError
from registry.errors import Denied
from tests.support.cli import fanout_env, run_fanout
from tests.workers.conftest import FakeClock
from workers.job import CopyJob
from workers.ledger import Ledger
from workers.locks import DestinationLock
from workers.notifications import (
    EVENT,
    Delivered,
    DeliveryLog,
    Finals,
    GaveUp,
    Notifier,
    NotifyJob,
    RetryLater,
    Skipped,
    body_for,
    delivery_id,
    headers_for,
    sign,
)
from workers.notify_settings import NotifySettings, Target
from workers.policy import TaskRetryPolicy
from workers.release_document import release_document
from workers.runner import CopyRunner, Failed, Succeeded
from workers.slack import slack_message

DIGEST = "sha256:" + "e" * 64
SOURCE = f"src.example/app@{DIGEST}"
A, B = "a.example/app", "b.example/app"
HOOK = "https://hooks.example/services/T000/B000/very-secret-path"
SECRET = "It's a Secret to Everybody"


def settings(**change: Any) -> NotifySettings:
    base: dict[str, Any] = {"targets": (Target(HOOK),), "secret": SECRET, "max_retries": 2,
                            "backoff": 4.0, "backoff_max": 60.0}
    return NotifySettings(**{**base, **change})


def document(ok: bool = True) -> dict[str, Any]:
    return {"id": "rel-1", "source": SOURCE, "digest": DIGEST, "created_at": 1.0, "done": True,
            "ok": ok, "exit_code": 0 if ok else 1, "destinations": {
                A: {"destination": A, "state": "succeeded", "attempts": 1, "last_error": None,
                    "optional": False},
                B: {"destination": B, "state": "succeeded" if ok else "failed", "attempts": 3,
                    "last_error": None if ok else "push <denied> & refused", "optional": False},
            }}


class Receiver:
    """A MockTransport handler answering from a script; records every request."""

    def __init__(self, *answers: int | httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(answer)


@pytest.fixture
def deliveries(redis_client: Any) -> DeliveryLog:
    return DeliveryLog(redis_client, retention=3600)


def notifier(deliveries: DeliveryLog, receiver: Receiver, **change: Any) -> Notifier:
    return Notifier(settings(**change), deliveries, transport=httpx.MockTransport(receiver),
                    rand=lambda: 0.5)


def job(epoch: int = 0, **change: Any) -> NotifyJob:
    base: dict[str, Any] = {"release_id": "rel-1", "epoch": epoch,
                            "target": Target(HOOK).id, "document": document()}
    return NotifyJob(**{**base, **change})


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    read = NotifySettings.from_env({
        "FANOUT_NOTIFY_URL": f" {HOOK}, http://127.0.0.1:8080/x ,,{HOOK}",
        "FANOUT_NOTIFY_ON": "Failure", "FANOUT_NOTIFY_FORMAT": "slack",
        "FANOUT_NOTIFY_SECRET": " s3cret ", "FANOUT_NOTIFY_MAX_RETRIES": "3",
        "FANOUT_NOTIFY_BACKOFF": "1", "FANOUT_NOTIFY_BACKOFF_MAX": "20",
        "FANOUT_NOTIFY_TIMEOUT": "2"})
    assert [t.url for t in read.targets] == [HOOK, "http://127.0.0.1:8080/x"]  # each once
    assert (read.on, read.format, read.secret) == ("failure", "slack", " s3cret ")
    assert (read.max_retries, read.backoff, read.backoff_max, read.timeout) == (3, 1, 20, 2)
    # Neither the secret nor a URL's path (a Slack webhook's path is its credential) shows.
    assert "s3cret" not in repr(read) and "very-secret-path" not in repr(read)
    assert read.targets[0].shown == "https://hooks.example/…"
    default = NotifySettings.from_env({})
    assert (default.enabled, default.on, default.format, default.secret) == (
        False, "always", "json", None)


@pytest.mark.parametrize("value", [
    "ftp://user:hunter2@files.example/drop", "hooks.example/services/T0/hunter2",
    "https://ok.example/a,file:///etc/hunter2", "http://", "mailto:hunter2@example.com",
    "javascript:alert(1)",
])
def test_anything_but_an_http_url_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NotifySettings.from_env({"FANOUT_NOTIFY_URL": value})
    message = str(caught.value)
    assert message.startswith("FANOUT_NOTIFY_URL: entry ")
    assert "is not an http:// or https:// URL" in message
    assert "hunter2" not in message


def test_fanout_enqueue_refuses_a_bad_url_before_anything_else() -> None:
    env = fanout_env(FANOUT_NOTIFY_URL="ftp://user:hunter2@files.example/drop",
                     FANOUT_BROKER_URL="redis://127.0.0.1:1/0")
    done = run_fanout(["enqueue", SOURCE, A], env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "FANOUT_NOTIFY_URL: entry 1 (ftp://files.example/…) is not an http" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize(("env", "named"), [
    ({"FANOUT_NOTIFY_ON": "sometimes"}, "FANOUT_NOTIFY_ON"),
    ({"FANOUT_NOTIFY_FORMAT": "xml"}, "FANOUT_NOTIFY_FORMAT"),
    ({"FANOUT_NOTIFY_BACKOFF": "10", "FANOUT_NOTIFY_BACKOFF_MAX": "5"}, "FANOUT_NOTIFY_BACKOFF"),
    ({"FANOUT_NOTIFY_TIMEOUT": "0"}, "FANOUT_NOTIFY_TIMEOUT"),
    ({"FANOUT_NOTIFY_MAX_RETRIES": "many"}, "FANOUT_NOTIFY_MAX_RETRIES"),
])
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        NotifySettings.from_env(env)


def test_a_retry_countdown_must_stay_inside_the_visibility_timeout() -> None:
    env = {"FANOUT_NOTIFY_URL": HOOK, "FANOUT_NOTIFY_BACKOFF_MAX": "300"}
    with pytest.raises(ConfigError, match="FANOUT_VISIBILITY_TIMEOUT"):
        NotifySettings.from_env(env, visibility_timeout=200)
    assert NotifySettings.from_env(env, visibility_timeout=4200).enabled
    # Without URLs nothing is retried: nothing to check.
    NotifySettings.from_env({"FANOUT_NOTIFY_BACKOFF_MAX": "300"}, visibility_timeout=200)


def test_the_filter() -> None:
    assert settings(on="always").wants(True) and settings(on="always").wants(False)
    assert not settings(on="failure").wants(True) and settings(on="failure").wants(False)


# -- the request ------------------------------------------------------------------------------


def test_the_signature_is_githubs() -> None:
    # GitHub's documented test vector for X-Hub-Signature-256.
    assert sign(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_the_request_is_signed_over_the_exact_body(deliveries: DeliveryLog) -> None:
    receiver = Receiver(200)
    assert notifier(deliveries, receiver).deliver(job()) == Delivered()
    [request] = receiver.requests
    assert (request.method, str(request.url)) == ("POST", HOOK)
    body = request.content
    assert json.loads(body) == document()
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert request.headers["x-fanout-signature-256"] == f"sha256={expected}"
    assert request.headers["x-fanout-event"] == EVENT == "release.finished"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-fanout-delivery"] == delivery_id("rel-1", 0, Target(HOOK).id)
    assert SECRET.encode() not in body


def test_without_a_secret_nothing_is_signed_and_ids_differ_per_epoch_and_url() -> None:
    headers = headers_for(b"{}", release_id="r", epoch=0, target_id="t", secret=None)
    assert "X-Fanout-Signature-256" not in headers
    ids = {delivery_id("r", 0, "t"), delivery_id("r", 1, "t"), delivery_id("r", 0, "u")}
    assert len(ids) == 3 and delivery_id("r", 0, "t") == delivery_id("r", 0, "t")


def test_the_slack_body_summarises_the_release() -> None:
    message = slack_message(document(ok=False))
    assert message["text"] == (f"fanout: release rel-1 of {SOURCE} failed: 1 of 2 "
                               "destinations failed")
    text = "\n".join(json.dumps(b) for b in message["blocks"])
    assert SOURCE in text and "Release rel-1 failed" in text
    lines = message["blocks"][1]["text"]["text"].splitlines()
    assert lines[0] == f":white_check_mark: `{A}` succeeded"
    # Escaped: Slack would read <denied> as a link.
    assert lines[1] == f":x: `{B}` failed after 3 attempts: push &lt;denied&gt; &amp; refused"
    ok = slack_message(document(ok=True))
    assert ok["text"].endswith("succeeded: 2 of 2 destinations")
    assert json.loads(body_for(document(), "slack")) == ok


def test_the_slack_body_keeps_within_slacks_limits() -> None:
    big = document(ok=False)
    big["destinations"] = {
        f"r{i}.example/{'x' * 200}": {"destination": f"r{i}.example/{'x' * 200}",
                                      "state": "failed", "attempts": 9, "last_error": "<" * 500}
        for i in range(400)}
    message = slack_message(big)
    assert len(message["blocks"]) <= 50
    for block in message["blocks"]:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert "more destinations" in json.dumps(message["blocks"][-2])


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    500, 502, 503, 408,
    httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut"),
])
def test_a_receiver_that_fails_for_now_is_retried_with_backoff(
    deliveries: DeliveryLog, answer: int | Exception,
) -> None:
    receiver = Receiver(answer, answer, 200)
    send = notifier(deliveries, receiver)
    first = send.deliver(job(), retries=0)
    assert isinstance(first, RetryLater) and first.countdown == 2.0  # ceiling 4 s * rand 0.5
    assert first.reason.startswith("notification to https://hooks.example/…")
    assert "very-secret-path" not in first.reason
    second = send.deliver(job(), retries=1)
    assert isinstance(second, RetryLater) and second.countdown == 4.0  # doubling
    assert send.deliver(job(), retries=2) == Delivered()
    assert len(receiver.requests) == 3


def test_retry_after_is_honoured_as_a_floor_up_to_the_cap(deliveries: DeliveryLog) -> None:
    receiver = Receiver(httpx.Response(429, headers={"Retry-After": "17"}),
                        httpx.Response(429, headers={"Retry-After": "3600"}), 200)
    send = notifier(deliveries, receiver)
    assert send.deliver(job(), retries=0) == RetryLater(17.0, "notification to "
                                                        "https://hooks.example/… [HTTP 429]")
    later = send.deliver(job(), retries=1)
    assert isinstance(later, RetryLater) and later.countdown == 60.0  # FANOUT_NOTIFY_BACKOFF_MAX
    assert send.deliver(job(), retries=2) == Delivered()
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422, 301, 302])
def test_any_other_answer_is_permanent(deliveries: DeliveryLog, status: int) -> None:
    receiver = Receiver(status)
    send = notifier(deliveries, receiver)
    outcome = send.deliver(job(), retries=0)
    assert isinstance(outcome, GaveUp) and f"[HTTP {status}]" in outcome.reason
    assert "very-secret-path" not in outcome.reason
    # Given up is final: the message delivered again does not POST again.
    assert send.deliver(job(), retries=0) == Skipped("already failed")
    assert len(receiver.requests) == 1


def test_retries_are_bounded(deliveries: DeliveryLog) -> None:
    receiver = Receiver(503, 503, 503, 200)
    send = notifier(deliveries, receiver, max_retries=2)
    assert isinstance(send.deliver(job(), retries=0), RetryLater)
    assert isinstance(send.deliver(job(), retries=1), RetryLater)
    outcome = send.deliver(job(), retries=2)
    assert isinstance(outcome, GaveUp) and "gave up after 3 attempts" in outcome.reason
    assert len(receiver.requests) == 3


# -- idempotency ------------------------------------------------------------------------------


def test_a_delivered_notification_is_never_posted_again(
    deliveries: DeliveryLog, redis_client: Any,
) -> None:
    receiver = Receiver(200, 200)
    send = notifier(deliveries, receiver)
    assert send.deliver(job()) == Delivered()
    assert send.deliver(job()) == Skipped("already delivered")  # a redelivery
    assert len(receiver.requests) == 1
    key = deliveries.key(job())
    assert redis_client.get(key) == "delivered" and 0 < redis_client.ttl(key) <= 3600
    # Another epoch (the release final again after a retry) is another notification.
    assert send.deliver(job(epoch=1)) == Delivered()
    assert len(receiver.requests) == 2


def test_a_delivery_under_way_elsewhere_is_waited_for_not_doubled(
    deliveries: DeliveryLog,
) -> None:
    receiver = Receiver(200)
    send = notifier(deliveries, receiver)
    token = deliveries.claim(deliveries.key(job()), 60)
    assert token is not None
    outcome = send.deliver(job())
    assert isinstance(outcome, RetryLater) and not receiver.requests
    deliveries.release(deliveries.key(job()), "not-the-token")  # someone else's: kept
    assert isinstance(send.deliver(job()), RetryLater)
    deliveries.release(deliveries.key(job()), token)
    assert send.deliver(job()) == Delivered()


def test_a_url_this_worker_does_not_know_is_given_up(deliveries: DeliveryLog) -> None:
    receiver = Receiver()
    outcome = notifier(deliveries, receiver).deliver(job(target="0123456789abcdef"))
    assert isinstance(outcome, GaveUp) and not receiver.requests


def test_a_malformed_message_is_refused() -> None:
    good = job().to_kwargs()
    assert NotifyJob.parse((), good) == job()
    for args, kwargs in [((1,), good), ((), {**good, "url": HOOK}),
                         ((), {**good, "epoch": "1"}), ((), {**good, "document": []})]:
        with pytest.raises(ValueError, match=r"fanout\.notify"):
            NotifyJob.parse(args, kwargs)


# -- when a release becomes final -------------------------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.jobs: list[tuple[NotifyJob, str]] = []

    def __call__(self, job: NotifyJob, queue: str) -> None:
        self.jobs.append((job, queue))


def finals(ledger: Ledger, sent: Callable[[NotifyJob, str], None], **change: Any) -> Finals:
    targets = (Target(HOOK), Target("http://127.0.0.1:9/other"))
    return Finals(ledger, settings(targets=targets, **change), sent)


def test_one_notification_per_url_once_the_last_destination_ends(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger = Ledger(redis_client, clock=clock)
    release_id = ledger.create_release(SOURCE, [(A, ["v1"]), (B, ["v1"])])
    sent = Sent()
    hook = finals(ledger, sent)
    ledger.mark_running(release_id, A, worker="w1")
    ledger.mark_succeeded(release_id, A, stats={"bytes_transferred": 5}, seconds=1.0)
    hook.settle(release_id, A)
    assert sent.jobs == []  # B is still queued
    ledger.mark_failed(release_id, B, error="denied", error_type="Denied")
    hook.settle(release_id, B)
    hook.settle(release_id, B)  # a second worker, or a redelivery: the claim is taken
    assert [(j.target, q) for j, q in sent.jobs] == [
        (Target(HOOK).id, "fanout"), (Target("http://127.0.0.1:9/other").id, "fanout")]
    sent_job = sent.jobs[0][0]
    release = ledger.get(release_id)
    assert release is not None
    # The document is `fanout status --json`'s, history included.
    assert sent_job.document == release_document(release)
    assert sent_job.document["exit_code"] == 1 and sent_job.document["ok"] is False
    assert sent_job.document["destinations"][A]["history"]
    assert sent_job.epoch == 0
    assert "document" in sent_job.to_kwargs() and HOOK not in json.dumps(sent_job.to_kwargs())

    # A retry makes it final again: notified again, under the next epoch.
    ledger.reset_for_retry(release_id, [B])
    ledger.mark_succeeded(release_id, B, stats={}, seconds=1.0)
    hook.settle(release_id, B)
    assert [j.epoch for j, _ in sent.jobs] == [0, 0, 1, 1]
    assert sent.jobs[-1][0].document["ok"] is True


def test_failure_only_skips_a_release_that_is_ok(redis_client: Any, clock: FakeClock) -> None:
    ledger = Ledger(redis_client, clock=clock)
    ok_id = ledger.create_release(SOURCE, [(A, [])])
    bad_id = ledger.create_release(SOURCE, [(A, []), (B, [])], optional=[B])
    sent = Sent()
    hook = finals(ledger, sent, on="failure")
    ledger.mark_succeeded(ok_id, A, stats={}, seconds=1.0)
    hook.settle(ok_id, A)
    assert sent.jobs == []
    # An optional destination's failure does not make the release fail; a required one's does.
    ledger.mark_failed(bad_id, B, error="x", error_type="Denied")
    hook.settle(bad_id, B)
    assert sent.jobs == []
    ledger.mark_failed(bad_id, A, error="x", error_type="Denied")
    hook.settle(bad_id, A)
    assert len(sent.jobs) == 2


def test_a_broker_that_fails_costs_the_notification_not_the_copy(
    redis_client: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger(redis_client, clock=clock)
    release_id = ledger.create_release(SOURCE, [(A, [])])
    ledger.mark_succeeded(release_id, A, stats={}, seconds=1.0)

    def down(job: NotifyJob, queue: str) -> None:
        raise ConnectionError("broker down")

    with caplog.at_level(logging.ERROR, logger="fanout.notify"):
        finals(ledger, down).settle(release_id, A)  # does not raise
    assert "could not send the release-finished notification" in caplog.text


class Engine:
    def __init__(self, result: Any) -> None:
        self.result = result

    def copy(self, job: CopyJob, *, timeout: float | None, abort: Any = None,
             tag_gate: Any = None) -> dict[str, int]:
        if isinstance(self.result, BaseException):
            raise self.result
        return dict(self.result)


def test_the_runner_settles_after_every_final_transition(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger = Ledger(redis_client, clock=clock)
    calls: list[tuple[str, str]] = []

    def runner(result: Any) -> CopyRunner:
        return CopyRunner(ledger=ledger, locks=redis_client, engine=Engine(result),
                          policy=TaskRetryPolicy(), lock_ttl=60, clock=clock, monotonic=clock,
                          finished=lambda r, d: calls.append((r, d)))

    def kwargs(release_id: str, destination: str, **change: Any) -> dict[str, Any]:
        return {"release_id": release_id, "source": SOURCE, "destination": destination,
                "tags": [], **change}

    release_id = ledger.create_release(SOURCE, [(A, []), (B, [])])
    assert isinstance(runner({"bytes_transferred": 1}).run((), kwargs(release_id, A)),
                      Succeeded)
    assert isinstance(runner(Denied("no", status=403)).run((), kwargs(release_id, B)), Failed)
    assert calls == [(release_id, A), (release_id, B)]
    # A message no attempt could run (not pinned) fails its destination: settled too.
    other = ledger.create_release(SOURCE, [(A, [])])
    outcome = runner({}).run((), kwargs(other, A, source="src.example/app:v1"))
    assert isinstance(outcome, Failed) and outcome.error_type == "InvalidTask"
    assert calls[-1] == (other, A)
    # Another copy holding the lock past the retry window: LockHeld, settled too.
    third = ledger.create_release(SOURCE, [(A, [])])
    DestinationLock(redis_client, A, DIGEST, 60).acquire()
    clock.advance(TaskRetryPolicy().max_age + 120)
    outcome = runner({}).run((), kwargs(third, A))
    assert isinstance(outcome, Failed) and outcome.error_type == "LockHeld"
    assert calls[-1] == (third, A)
