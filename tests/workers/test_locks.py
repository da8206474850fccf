from __future__ import annotations

from typing import Any

import pytest

from workers.locks import DestinationLock

DIGEST = "sha256:" + "a" * 64


def test_only_one_holder(redis_client: Any) -> None:
    first = DestinationLock(redis_client, "r.example/app", DIGEST, 60, owner="task-1")
    second = DestinationLock(redis_client, "r.example/app", DIGEST, 60, owner="task-2")
    assert first.acquire()
    assert not second.acquire()
    assert second.holder() == first.token
    assert first.token.startswith("task-1/")
    assert first.release()
    assert second.acquire()


def test_other_digest_or_destination_is_another_lock(redis_client: Any) -> None:
    assert DestinationLock(redis_client, "r.example/app", DIGEST, 60).acquire()
    assert DestinationLock(redis_client, "r.example/other", DIGEST, 60).acquire()
    assert DestinationLock(redis_client, "r.example/app", "sha256:" + "b" * 64, 60).acquire()


@pytest.mark.parametrize("spelling", [
    "index.docker.io/library/app", "docker.io/app", "registry-1.docker.io/library/app",
    "Docker.IO/library/app",
])
def test_one_repository_by_any_name_is_one_lock(redis_client: Any, spelling: str) -> None:
    assert DestinationLock(redis_client, "docker.io/library/app", DIGEST, 60).acquire()
    assert not DestinationLock(redis_client, spelling, DIGEST, 60).acquire()


def test_expiry_is_set_in_milliseconds(redis_client: Any) -> None:
    lock = DestinationLock(redis_client, "r.example/app", DIGEST, 90.5)
    assert lock.acquire()
    assert 90_000 < redis_client.pttl(lock.key) <= 90_500


def test_release_never_deletes_someone_elses_lock(redis_client: Any) -> None:
    stale = DestinationLock(redis_client, "r.example/app", DIGEST, 60)
    assert stale.acquire()
    redis_client.delete(stale.key)  # as if it had expired
    current = DestinationLock(redis_client, "r.example/app", DIGEST, 60)
    assert current.acquire()
    assert not stale.release()
    assert current.holder() == current.token
    assert current.release()
    assert current.holder() is None


def test_bytes_responses_work_too() -> None:
    import fakeredis

    client = fakeredis.FakeRedis()
    lock = DestinationLock(client, "r.example/app", DIGEST, 60)
    assert lock.acquire()
    assert lock.holder() == lock.token
    assert lock.release()


def test_ttl_must_be_positive(redis_client: Any) -> None:
    with pytest.raises(ValueError, match="positive"):
        DestinationLock(redis_client, "r.example/app", DIGEST, 0)
