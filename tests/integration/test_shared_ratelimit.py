"""A rate limit one worker hears holds that registry for every worker (``workers/holds.py``).

Three ``celery worker`` processes on a Redis of their own copy three releases at once to one
registry behind a fault proxy. The registry's first manifest or blob request is answered 429
with ``Retry-After: 4``, and every one for the next 4 s is answered 429 without it (as a
registry that names its window once). Without a shared hold each worker learns of the limit
only by being refused, and backs off on its own schedule (0.5 s, 1 s, 2 s...), so the registry
keeps hearing from them all through the window; with it, once the first 429 is recorded in
Redis nobody sends there until the window has passed. Judged by the proxy's own timestamps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import api
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import FaultProxy, Rule, Seen, TooManyRequests
from tests.support.images import push_oci_image
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    running_workers,
    wait_until,
)
from tests.support.registries import RegistrySet
from tests.support.skopeo import assert_skopeo_same
from workers.ledger import Release

WORKERS = 3
WINDOW_S = 4.0
MANIFEST_OR_BLOB = r"^/v2/.+/(manifests|blobs)/"
# Requests already on their way when the first 429 was answered could not have known of it.
IN_FLIGHT_S = 0.5

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[dict[str, str],
                                                                         list[Process]]]:
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    with running_workers((f"rl{i}" for i in range(WORKERS)), env, tmp_path,
                         loglevel="INFO") as started:
        yield env, started


def _relative(seen: list[Seen], origin: float) -> list[str]:
    return [f"{s.time - origin:+.2f}s {s.method} {s.path.rsplit('/', 2)[-2]} {s.status}"
            for s in seen]


def test_a_429_one_worker_hears_holds_the_registry_for_every_worker(
    workers: tuple[dict[str, str], list[Process]], registries: RegistrySet, unique_repo: str,
) -> None:
    env, processes = workers
    image = push_oci_image(registries.source, unique_repo, "v1", layers=2)
    ledger = ledger_for(env["FANOUT_BROKER_URL"])

    def detail() -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-2500:]}" for w in processes)

    with FaultProxy(registries.dest1.url) as proxy:
        limit = proxy.add(Rule(TooManyRequests(retry_after=f"{WINDOW_S:g}"),
                               path=MANIFEST_OR_BLOB, window=WINDOW_S))
        destinations = [f"{proxy.host}/{unique_repo}-{i}" for i in range(WORKERS)]
        ids = [api.enqueue(image.reference, [d], tags=["v1"], referrers=False, env=env,
                           ledger=ledger)[0] for d in destinations]

        def done() -> list[Release] | None:
            releases = [api.status(i, ledger=ledger) for i in ids]
            return releases if all(r.done for r in releases) else None

        releases = wait_until(done, 90, "every release done", detail)
        seen = proxy.requests(path=MANIFEST_OR_BLOB)

    assert all(r.ok for r in releases), [r.to_dict() for r in releases]
    records = [r.destinations[d] for r, d in zip(releases, destinations, strict=True)]
    # One copy per worker, at the same time: otherwise nothing here is shared.
    assert len({(r.worker or "").split("@")[0] for r in records}) == WORKERS, records
    assert limit.opened is not None, "the registry was never asked anything"
    opened, closes = limit.opened, limit.opened + WINDOW_S
    [told] = [s for s in seen if s.time == opened]  # the first answer, the one naming the window
    assert told.status == 429
    timeline = "\n".join(_relative(seen, opened))
    held = [s for s in seen if opened <= s.time < closes]
    # Each worker may have had a request on its way before the first 429 was recorded.
    assert len(held) <= 3 + WORKERS, f"{len(held)} requests in the window:\n{timeline}"
    # After those, silence until the window had passed: nobody came back on its own backoff.
    heard_of_it = (told.done or told.time) + IN_FLIGHT_S
    early = [s for s in seen if heard_of_it <= s.time < closes]
    assert not early, f"sent during the hold, after the first 429:\n{timeline}"
    after = [s for s in seen if s.time >= closes]
    assert after and all(s.status != 429 for s in after), timeline
    for i in range(WORKERS):
        assert_skopeo_same(image.reference, f"{registries.dest1.host}/{unique_repo}-{i}:v1")
