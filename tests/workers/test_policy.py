from __future__ import annotations

import pytest

from workers.policy import TaskRetryPolicy
from workers.settings import WorkerSettings

POLICY = TaskRetryPolicy(max_retries=3, max_age=100, backoff=2, backoff_max=30,
                         busy_countdown=10)


@pytest.mark.parametrize(("attempts", "ceiling"), [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30),
                                                   (40, 30)])
def test_full_jitter_under_an_exponential_ceiling(attempts: int, ceiling: float) -> None:
    assert POLICY.countdown(attempts, rand=lambda: 0.0) == 0.0
    assert POLICY.countdown(attempts, rand=lambda: 0.5) == ceiling / 2
    assert POLICY.countdown(attempts, rand=lambda: 1.0) == ceiling


def test_retry_after_is_a_floor_but_never_past_the_maximum() -> None:
    assert POLICY.countdown(1, 7.0, rand=lambda: 0.5) == 7.0
    assert POLICY.countdown(5, 7.0, rand=lambda: 0.5) == 15.0
    assert POLICY.countdown(1, 3600.0, rand=lambda: 0.5) == 30.0


def test_busy_countdown_is_jittered_around_its_setting() -> None:
    assert POLICY.busy(rand=lambda: 0.0) == 5.0
    assert POLICY.busy(rand=lambda: 1.0) == 10.0


def test_gives_up_on_attempts_or_age() -> None:
    assert POLICY.gives_up(3, 50) is None
    assert "4 attempts" in (POLICY.gives_up(4, 50) or "")
    assert "100 s old" in (POLICY.gives_up(1, 100.5) or "")


def test_from_settings() -> None:
    settings = WorkerSettings.from_env({"FANOUT_TASK_MAX_RETRIES": "2",
                                        "FANOUT_RETRY_BACKOFF": "1",
                                        "FANOUT_RETRY_BACKOFF_MAX": "5",
                                        "FANOUT_LOCK_RETRY": "3"})
    assert TaskRetryPolicy.from_settings(settings) == TaskRetryPolicy(
        max_retries=2, max_age=3600, backoff=1, backoff_max=5, busy_countdown=3)
