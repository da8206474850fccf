from __future__ import annotations

import pytest

from registry.envconfig import ConfigError
from workers.settings import WorkerSettings


def test_defaults() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.ledger_url == settings.broker_url
    assert (settings.max_retries, settings.max_age, settings.time_limit) == (8, 3600, 3600)
    assert settings.soft_time_limit == 3540
    assert settings.retention == 7 * 86400
    assert settings.route_by_registry is False
    # A lease renewed while the copy runs: a dead worker's lock lapses in seconds.
    assert (settings.lock_ttl, settings.heartbeat_interval, settings.reaper_interval) == (20, 5, 5)
    assert settings.visibility_timeout > settings.retry_backoff_max + settings.time_limit


def test_ledger_follows_a_redis_broker_but_not_amqp() -> None:
    redis_env = WorkerSettings.from_env({"FANOUT_BROKER_URL": "redis://:pw@cache:6380/3"})
    assert redis_env.ledger_url == "redis://:pw@cache:6380/3"
    amqp = WorkerSettings.from_env({"FANOUT_BROKER_URL": "amqp://guest@rabbit//"})
    assert amqp.ledger_url == "redis://localhost:6379/0"
    explicit = WorkerSettings.from_env({"FANOUT_BROKER_URL": "amqp://rabbit//",
                                        "FANOUT_LEDGER_URL": "redis://ledger/1"})
    assert explicit.ledger_url == "redis://ledger/1"


def test_short_limits_for_tests_derive_the_rest() -> None:
    settings = WorkerSettings.from_env({
        "FANOUT_TASK_TIME_LIMIT": "20", "FANOUT_RETRY_BACKOFF": "0.1",
        "FANOUT_RETRY_BACKOFF_MAX": "1", "FANOUT_ROUTE_BY_REGISTRY": "1",
        "FANOUT_TASK_MAX_RETRIES": "0",
    })
    assert settings.soft_time_limit == 18
    assert settings.lock_ttl == 20
    assert settings.visibility_timeout == 10 + 20 + 300
    assert settings.route_by_registry is True
    assert settings.max_retries == 0


@pytest.mark.parametrize(("env", "named"), [
    ({"FANOUT_TASK_MAX_RETRIES": "many"}, "FANOUT_TASK_MAX_RETRIES"),
    ({"FANOUT_TASK_TIME_LIMIT": "0"}, "FANOUT_TASK_TIME_LIMIT"),
    ({"FANOUT_RETENTION": "nan"}, "FANOUT_RETENTION"),
    ({"FANOUT_ROUTE_BY_REGISTRY": "maybe"}, "FANOUT_ROUTE_BY_REGISTRY"),
    ({"FANOUT_LOCK_TTL": "10", "FANOUT_HEARTBEAT_INTERVAL": "5"}, "FANOUT_LOCK_TTL"),
    ({"FANOUT_REAPER_INTERVAL": "0"}, "FANOUT_REAPER_INTERVAL"),
    ({"FANOUT_TASK_TIME_LIMIT": "100", "FANOUT_TASK_SOFT_TIME_LIMIT": "101"},
     "FANOUT_TASK_SOFT_TIME_LIMIT"),
    ({"FANOUT_VISIBILITY_TIMEOUT": "3600"}, "FANOUT_VISIBILITY_TIMEOUT"),
    ({"FANOUT_RETRY_BACKOFF": "60", "FANOUT_RETRY_BACKOFF_MAX": "30"}, "FANOUT_RETRY_BACKOFF"),
])
def test_bad_values_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        WorkerSettings.from_env(env)
