"""workers.connections: URLs to Redis clients (Sentinel included), and passwords kept out of sight.

No server is contacted: redis-py connects lazily, so the clients are inspected as built. The
failover itself is proven against real processes in tests/integration/test_sentinel.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from registry.envconfig import ConfigError
from workers.app import celery_config
from workers.connections import (
    SentinelOptions,
    SentinelURL,
    broker_transport_options,
    error_text,
    is_redis_url,
    parse_sentinel_url,
    redact,
    redis_client,
    scrub,
)
from workers.holds import RedisHolds
from workers.settings import WorkerSettings

PW = "s3cr3t-pw"
SENTINEL_PW = "sentinel-only-pw"
THREE = f"sentinel://:{PW}@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("sentinel://s1", SentinelURL((("s1", 26379),))),
    ("sentinel://:pw@s1:5000/3", SentinelURL((("s1", 5000),), db=3, password="pw")),
    ("sentinel://fanout:p%40ss%3Bw@s1/1;sentinel://s2:1",
     SentinelURL((("s1", 26379), ("s2", 1)), db=1, username="fanout", password="p@ss;w")),
    # Later entries may repeat the first's credentials and db, as people copy them along.
    (f"sentinel://:{PW}@a:1/4;sentinel://:{PW}@b:2/4",
     SentinelURL((("a", 1), ("b", 2)), db=4, password=PW)),
])
def test_a_sentinel_url_names_its_sentinels_and_the_masters_db_and_password(
    url: str, expected: SentinelURL,
) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    (f"sentinel://:{PW}@s1:port", "port is not a number"),
    (f"sentinel://:{PW}@:1", "has no host"),
    (f"sentinel://:{PW}@s1/zero", "must be a number"),
    (f"sentinel://:{PW}@s1?master=m", "FANOUT_SENTINEL_MASTER"),
    (f"sentinel://:{PW}@s1;redis://s2", "every entry must be sentinel://"),
    (f"sentinel://s1;sentinel://:{PW}@s2", "on the first sentinel"),
    (f"sentinel://:{PW}@s1/1;sentinel://s2/2", "on the first sentinel"),
    # kombu reads the db from the first entry only: one given on another would be ignored.
    (f"sentinel://:{PW}@s1;sentinel://s2/2", "on the first sentinel"),
])
def test_a_malformed_sentinel_url_is_a_config_error_without_the_password(
    url: str, says: str,
) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        parse_sentinel_url(url, "FANOUT_BROKER_URL")
    assert "FANOUT_BROKER_URL=" in str(caught.value)
    assert PW not in str(caught.value)


def test_sentinel_counts_as_redis() -> None:
    assert all(is_redis_url(u) for u in ("redis://h", "rediss://h", "unix:///s", THREE))
    assert not is_redis_url("amqp://guest@rabbit//")


# -- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@h:6379/0", "redis://:**@h:6379/0"),
    ("rediss://user:pw@h/1", "rediss://user:**@h/1"),
    ("redis://pw-without-colon@h", "redis://**@h"),
    ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2&password=**"),
    (THREE, "sentinel://:**@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"),
    ("sentinel://:a@s1;sentinel://:a@s2", "sentinel://:**@s1;sentinel://:**@s2"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("not a url", "not a url"),
    ("sentinel://:p@w@s1:bad;;", "sentinel://:**@s1:bad;;"),  # malformed: still masked
])
def test_redact_masks_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_scrub_removes_passwords_a_driver_echoed_in_any_form() -> None:
    url = "sentinel://:p%40ss@s1:1;sentinel://s2:2"
    message = (f"cannot connect to {url}: AUTH p@ss failed; sentinel said {SENTINEL_PW}; "
               "and p%40ss again")
    clean = scrub(message, url, secrets=(SENTINEL_PW, None))
    assert "p@ss" not in clean and "p%40ss" not in clean and SENTINEL_PW not in clean
    assert "sentinel://:**@s1:1;sentinel://s2:2" in clean


def test_a_no_master_error_is_cut_to_its_first_clause() -> None:
    from redis.sentinel import MasterNotFoundError

    long = MasterNotFoundError("No master found for 'm' : <redis.client.Redis(<...>)> - x" * 20)
    assert error_text(long) == ("No master found for 'm' (no sentinel answered, or none knows "
                                "that name)")
    assert error_text(OSError("Connection refused")) == "Connection refused"


# -- clients ----------------------------------------------------------------------------------


def test_a_redis_url_gives_redis_pys_own_client_with_the_callers_options() -> None:
    client = redis_client("redis://:pw@h:6380/3", socket_timeout=7, decode_responses=True)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("h", 6380, 3,
                                                                                   "pw")
    assert kwargs["socket_timeout"] == 7 and kwargs["decode_responses"] is True
    assert not isinstance(client.connection_pool, SentinelConnectionPool)


def test_a_sentinel_url_gives_a_client_that_asks_the_sentinels_for_the_master() -> None:
    retry = Retry(ExponentialBackoff(cap=4.0, base=0.25), retries=9)
    client = redis_client(THREE, SentinelOptions("prod", SENTINEL_PW), decode_responses=True,
                          socket_connect_timeout=10, socket_timeout=30, retry=retry)

    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "prod" and pool.is_master
    kwargs = pool.connection_kwargs
    # The master's db and password, and the caller's options, for every connection it makes.
    assert (kwargs["db"], kwargs["password"], kwargs["username"]) == (2, PW, None)
    assert (kwargs["socket_timeout"], kwargs["decode_responses"]) == (30, True)
    assert kwargs["retry"].get_retries() == 9  # the caller's retry is what rides out a failover
    manager = pool.sentinel_manager
    addresses = [(s.connection_pool.connection_kwargs["host"],
                  s.connection_pool.connection_kwargs["port"]) for s in manager.sentinels]
    assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    for each in manager.sentinels:
        own = each.connection_pool.connection_kwargs
        # The sentinels' own password, never the master's; a dead sentinel is skipped at once.
        assert own["password"] == SENTINEL_PW
        assert (own["socket_connect_timeout"], own["socket_timeout"]) == (10, 30)
        assert own["retry"].get_retries() == 0
    assert PW not in repr(client) and SENTINEL_PW not in repr(client)


def test_sentinels_without_a_password_get_none() -> None:
    client = redis_client("sentinel://:master-pw@s1", SentinelOptions("m"))
    [only] = client.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert only.connection_pool.connection_kwargs.get("password") is None


def test_a_sentinel_url_without_a_master_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="FANOUT_SENTINEL_MASTER") as caught:
        redis_client(THREE)
    assert PW not in str(caught.value)


def test_the_hold_store_follows_the_settings_to_a_sentinel_master() -> None:
    settings = WorkerSettings.from_env({"FANOUT_BROKER_URL": THREE,
                                        "FANOUT_SENTINEL_MASTER": "prod"})
    holds = RedisHolds.from_settings(settings)
    pool: Any = holds._redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "prod"
    # Its own short timeouts and no retries, as for a plain Redis.
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    assert pool.connection_kwargs["retry"].get_retries() == 0


# -- settings and the broker ------------------------------------------------------------------


def test_settings_need_a_master_name_for_a_sentinel_broker_or_ledger() -> None:
    for env in ({"FANOUT_BROKER_URL": THREE},
                {"FANOUT_BROKER_URL": "amqp://rabbit//", "FANOUT_LEDGER_URL": THREE}):
        with pytest.raises(ConfigError, match="FANOUT_SENTINEL_MASTER") as caught:
            WorkerSettings.from_env(env)
        assert PW not in str(caught.value)
    with pytest.raises(ConfigError, match="FANOUT_LEDGER_URL"):
        WorkerSettings.from_env({"FANOUT_LEDGER_URL": "sentinel://s1:x",
                                 "FANOUT_SENTINEL_MASTER": "m"})


def test_the_ledger_follows_a_sentinel_broker_and_the_sentinel_password_is_not_shown() -> None:
    settings = WorkerSettings.from_env({"FANOUT_BROKER_URL": THREE,
                                        "FANOUT_SENTINEL_MASTER": " prod ",
                                        "FANOUT_SENTINEL_PASSWORD": SENTINEL_PW})
    assert settings.ledger_url == THREE
    assert settings.sentinel == SentinelOptions("prod", SENTINEL_PW)
    assert SENTINEL_PW not in repr(settings) and SENTINEL_PW not in repr(settings.sentinel)
    assert WorkerSettings.from_env({}).sentinel is None


def test_a_sentinel_broker_gets_kombus_master_name_and_sentinel_password() -> None:
    settings = WorkerSettings.from_env({"FANOUT_BROKER_URL": THREE,
                                        "FANOUT_SENTINEL_MASTER": "prod",
                                        "FANOUT_SENTINEL_PASSWORD": SENTINEL_PW})
    options = celery_config(settings)["broker_transport_options"]
    assert options["master_name"] == "prod"
    assert options["sentinel_kwargs"] == {"password": SENTINEL_PW}
    assert options["visibility_timeout"] == settings.visibility_timeout  # still there
    assert celery_config(settings)["broker_url"] == THREE  # kombu reads the master's password

    no_sentinel_password = WorkerSettings.from_env({"FANOUT_BROKER_URL": THREE,
                                                    "FANOUT_SENTINEL_MASTER": "prod"})
    assert "sentinel_kwargs" not in celery_config(no_sentinel_password)[
        "broker_transport_options"]
    plain = celery_config(WorkerSettings.from_env({}))["broker_transport_options"]
    assert "master_name" not in plain
    assert broker_transport_options("redis://h", SentinelOptions("m")) == {}


def test_kombu_reads_the_same_sentinels_and_master_password() -> None:
    from kombu import Connection

    connection = Connection(THREE, transport_options={"master_name": "prod"})
    assert connection.transport_cls == "sentinel"
    assert connection.password == PW
    assert [redact(a) for a in connection.alt] == redact(THREE).split(";")
    assert PW not in connection.as_uri()


def test_the_producer_redacts_a_sentinel_list_in_its_errors() -> None:
    from producer import api

    settings = WorkerSettings.from_env({
        "FANOUT_BROKER_URL": "sentinel://:hunter2@127.0.0.1:1;sentinel://127.0.0.1:2",
        "FANOUT_SENTINEL_MASTER": "m", "FANOUT_SENTINEL_PASSWORD": SENTINEL_PW})
    with pytest.raises(api.EnqueueError, match=r"ledger sentinel://:\*\*@127.0.0.1:1;") as caught:
        api.connect_ledger(settings)
    assert "No master found for 'm' (no sentinel answered" in str(caught.value)
    assert "hunter2" not in str(caught.value) and SENTINEL_PW not in str(caught.value)
