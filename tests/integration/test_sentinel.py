"""The broker and the ledger fail over (Redis Sentinel) in the middle of a release.

A primary, a replica and three sentinels (``tests/support/sentinel.py``), every one asking for
a password — the master's, and the sentinels' own; two real ``celery worker`` processes and
``fanout enqueue --wait`` reach them only through ``sentinel://`` URLs. Each destination sits
behind a fault proxy that holds every PUT a moment, so the primary is killed while two copies
are under way and the third waits in the queue. The sentinels promote the replica; the copies
under way finish, and their ledger writes (which can only land after the kill) reach the new
master through the ledger client's retries; the workers' broker connections find it too and
take the queued task; the waiting CLI skips the polls that fail and exits 0.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_docker_config
from tests.support.fault_proxy import Delay, FaultProxy, Rule
from tests.support.images import push_oci_image
from tests.support.invariants import assert_no_secret, assert_tags_complete
from tests.support.queue import ROOT, Process, overlapping, queue_env, start_worker, wait_until
from tests.support.registries import RegistrySet
from tests.support.sentinel import SentinelCluster
from workers.connections import redis_client
from workers.ledger import Ledger, Release
from workers.settings import WorkerSettings

MASTER_SECRET = f"master-{secrets.token_hex(12)}"
SENTINEL_SECRET = f"sentinel-{secrets.token_hex(12)}"
# Each PUT (blob upload, manifest, tag) waits this long at the proxy: a copy takes ~2 s.
PUT_DELAY = 0.7

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "redis", password=MASTER_SECRET,
                              sentinel_password=SENTINEL_SECRET).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slow(registries: RegistrySet) -> Iterator[list[FaultProxy]]:
    """Three slow destinations: proxies in front of the session's registries."""
    proxies = [FaultProxy(r.url).start()
               for r in (registries.dest1, registries.dest2, registries.dest1)]
    for proxy in proxies:
        proxy.add(Rule(Delay(PUT_DELAY), method="PUT"))
    yield proxies
    for proxy in proxies:
        proxy.stop()


class Fanout:
    """``fanout ARGS`` in the background, its output in files (readable while it runs)."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, *args: str) -> None:
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", *args],
                                         env=env, cwd=ROOT, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, text=True)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """Exit status, stdout and stderr; AssertionError (with its output) if it runs on."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"fanout still running after {timeout:g}s\n{self}") from None
        return code, self.out_path.read_text(), self.err_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __str__(self) -> str:
        return f"--- fanout\n{self.out_path.read_text()}\n{self.err_path.read_text()[-3000:]}"


def test_a_sentinel_failover_mid_release_loses_nothing(
    cluster: SentinelCluster, slow: list[FaultProxy], registries: RegistrySet,
    unique_repo: str, tmp_path: Path,
) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=2,
                           layer_size=256 * 1024)
    env = queue_env(cluster.url, write_docker_config(tmp_path / "docker", []),
                    FANOUT_SENTINEL_MASTER=cluster.master,
                    FANOUT_SENTINEL_PASSWORD=SENTINEL_SECRET,
                    # The lease outlasts the failover (~3 s here), so the copies under way carry
                    # on; a shorter one would stop them and hand them over, as it should.
                    FANOUT_LOCK_TTL="20", FANOUT_HEARTBEAT_INTERVAL="1")
    workers: list[Process] = []
    clis: list[Fanout] = []
    try:
        workers += [start_worker(name, env, tmp_path, wait=False) for name in ("f1", "f2")]
        for worker in workers:
            worker.wait_for_log(" ready.")

        def detail() -> str:
            return "\n".join([*(f"--- {w.name}\n{w.log()[-2500:]}" for w in workers),
                              *map(str, clis), cluster.logs()])

        targets = {f"{proxy.host}/{unique_repo}-{i}": proxy for i, proxy in enumerate(slow)}
        cli = Fanout(env, tmp_path, "enqueue", "enqueue", image.reference, *targets,
                     "--tag", "v1", "--wait", "--timeout", "60", "--json")
        clis.append(cli)

        # Two copies at their last step (the tag's PUT held at its proxy), the third queued
        # behind them: they end within a second of the kill, before any sentinel even calls
        # the primary down, so their ledger writes must wait for the new master.
        wait_until(lambda: sum(1 for p in slow if p.count("PUT", r"/manifests/v1$")) >= 2, 30,
                   "two copies under way", detail)
        killed_at = time.monotonic()
        cluster.kill_primary()
        cluster.wait_for_failover()
        switched = time.monotonic() - killed_at
        code, out, err = cli.wait(70)

        assert code == 0, detail()
        release = json.loads(out)
        states = {name: d["state"] for name, d in release["destinations"].items()}
        assert states == dict.fromkeys(targets, "succeeded"), (states, detail())
        assert cluster.master_port() == cluster.replica_port  # the replica took over

        ledger = Ledger(redis_client(cluster.url, WorkerSettings.from_env(env).sentinel))
        first = _release(ledger, release["id"])
        # The copies under way were answered after the primary died, so their ledger writes
        # came later still, and could only land on the new master: each in one attempt.
        carried_on = [n for n, p in targets.items()
                      if any(s.time + PUT_DELAY > killed_at for s in p.requests("PUT"))]
        assert len(carried_on) >= 2, (carried_on, switched)
        assert all((r.state, r.attempts) == ("succeeded", 1)
                   for r in first.destinations.values()), first.to_dict()

        # After the switch: a second release of the same image reaches the same destinations
        # (a no-op copy each) and never overlaps the first's copies.
        again = Fanout(env, tmp_path, "again", "enqueue", image.reference, *targets,
                       "--tag", "v1", "--wait", "--timeout", "30", "--json")
        clis.append(again)
        code, out2, err2 = again.wait(40)
        assert code == 0, detail()
        second = _release(ledger, json.loads(out2)["id"])
        for name in targets:
            records = [first.destinations[name], second.destinations[name]]
            assert not overlapping(records), records

        for i, registry in enumerate((registries.dest1, registries.dest2, registries.dest1)):
            assert_tags_complete(registry.url, f"{unique_repo}-{i}", registries.source.url,
                                 image.repository, tags=["v1"], skopeo=False)
        logs = [w.log() for w in workers]
        # The workers did lose the broker, and found it again through the sentinels.
        assert any("Connection to broker lost" in log for log in logs), detail()
        for secret in (MASTER_SECRET, SENTINEL_SECRET):
            assert_no_secret(secret, None, *logs, out, err, out2, err2)
    finally:
        for process in clis:
            process.stop()
        for worker in workers:
            worker.stop()


def _release(ledger: Ledger, release_id: str) -> Release:
    release = ledger.get(release_id)
    assert release is not None, release_id
    return release
