"""The Celery task's thin shell: outcome → return value or ``self.retry``; hard time limits."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import TimeLimitExceeded

from tests.workers.conftest import FakeClock
from workers import tasks
from workers.ledger import Ledger
from workers.runner import Failed, RetryLater, Succeeded

DIGEST = "sha256:" + "f" * 64
SOURCE = f"src.example/app@{DIGEST}"
KWARGS: dict[str, Any] = {"release_id": "rel-1", "source": SOURCE,
          "destination": "dst.example/app", "tags": ["v1"]}


class StubRunner:
    def __init__(self, outcome: Any, ledger: Ledger) -> None:
        self.outcome = outcome
        self.ledger = ledger
        self.calls: list[tuple[Any, Any, Any]] = []
        self.killed_calls: list[tuple[Any, Any, Any]] = []

    def run(self, args: Any, kwargs: Any, *, worker: str | None, owner: str) -> Any:
        self.calls.append((args, kwargs, owner))
        return self.outcome

    def killed(self, args: Any, kwargs: Any, *, owner: str, reason: str) -> Any:
        self.killed_calls.append((args, kwargs, owner))
        return self.outcome


@pytest.fixture
def ledger(redis_client: Any, clock: FakeClock) -> Ledger:
    return Ledger(redis_client, clock=clock)


def install(monkeypatch: pytest.MonkeyPatch, outcome: Any, ledger: Ledger) -> StubRunner:
    stub = StubRunner(outcome, ledger)
    monkeypatch.setattr(tasks, "runner", lambda: stub)
    return stub


class RetryCalled(Exception):
    pass


def test_retry_later_becomes_a_celery_retry_with_its_countdown(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
) -> None:
    install(monkeypatch, RetryLater(3.5, "refused"), ledger)
    seen: dict[str, Any] = {}

    def retry(**options: Any) -> RetryCalled:
        seen.update(options)
        return RetryCalled()

    monkeypatch.setattr(tasks.copy, "retry", retry)
    with pytest.raises(RetryCalled):
        tasks.copy.run(**KWARGS)
    assert seen == {"countdown": 3.5, "max_retries": None}


def test_success_and_failure_return_without_retrying(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
) -> None:
    stub = install(monkeypatch, Succeeded({"blobs_uploaded": 2}, 1.23456), ledger)
    assert tasks.copy.run(**KWARGS) == {"state": "succeeded", "seconds": 1.235,
                                        "blobs_uploaded": 2}
    assert stub.calls[0][1] == KWARGS
    install(monkeypatch, Failed("denied", "Denied"), ledger)
    assert tasks.copy.run(**KWARGS) == {"state": "failed", "error_type": "Denied",
                                        "error": "denied"}


def test_a_hard_time_limit_frees_the_lock_and_sends_the_task_again(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
) -> None:
    stub = install(monkeypatch, RetryLater(7.0, "killed"), ledger)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.copy, "apply_async", lambda **options: sent.append(options))
    tasks.copy.on_failure(RuntimeError("not a time limit"), "t1", (), KWARGS, None)
    assert stub.killed_calls == [] and sent == []
    tasks.copy.on_failure(TimeLimitExceeded(60), "t1", (), KWARGS, None)
    assert stub.killed_calls == [((), KWARGS, "t1")]
    assert sent == [{"args": (), "kwargs": KWARGS, "task_id": "t1", "countdown": 7.0,
                     "queue": "fanout"}]


def test_a_hard_time_limit_out_of_retries_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
) -> None:
    install(monkeypatch, Failed("killed (gave up after 9 attempts)", "Timeout"), ledger)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.copy, "apply_async", lambda **options: sent.append(options))
    tasks.copy.on_failure(TimeLimitExceeded(60), "t1", (), KWARGS, None)
    assert sent == []
