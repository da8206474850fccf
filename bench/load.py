"""Load: N releases x 3 destinations enqueued at once, two worker processes, local registries.

    .venv/bin/python bench/load.py [-n 200] [--no-write]

Starts its own redis-server (append-only, fsync always, as the fault tests run it), a source and
three destination registries on loopback ports, and two ``celery worker -P solo`` processes.
Release ``i`` goes to one of five shared repositories on one registry (shared by releases 2k
and 2k+1, which race for it) and to its own repository on the two others: the lock must let
exactly one task copy each shared (destination, digest), and never two at once. Checks
that every destination succeeded, then reports total time, throughput and each worker's peak
memory (``VmHWM``).
Results go to docs/benchmarks.md, section "Load: 200 releases x 3 destinations" (the rest of the
file is left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import publish, redis_version  # noqa: E402
from producer import api  # noqa: E402
from tests.support.images import push_oci_image  # noqa: E402
from tests.support.queue import (  # noqa: E402
    RedisServer,
    copies_by_destination,
    ledger_for,
    load_targets,
    overlapping,
    peak_rss_kib,
    queue_env,
    start_worker,
)
from tests.support.registries import start_registry  # noqa: E402
from workers.ledger import Release  # noqa: E402

SECTION = "## Load: 200 releases x 3 destinations"
LAYER_SIZE = 256 * 1024


@dataclass
class Result:
    releases: int
    enqueue_seconds: float
    total_seconds: float
    peaks_kib: dict[str, int]
    tasks_by_worker: dict[str, int]
    waited_for_lock: int

    @property
    def tasks(self) -> int:
        return self.releases * 3


def run(count: int, tmp: Path) -> Result:
    server = RedisServer(tmp / "redis").start()
    registries = [start_registry(tmp / name, wait=False)
                  for name in ("source", "dest1", "dest2", "dest3")]
    workers = []
    try:
        for registry in registries:
            registry.wait_ready()
        source, *dests = registries
        image = push_oci_image(source, "bench/load", "v1", layers=2, layer_size=LAYER_SIZE)
        (tmp / "docker").mkdir()
        (tmp / "docker" / "config.json").write_text('{"auths": {}}')
        env = queue_env(f"{server.url}/0", tmp / "docker")
        # The e2e settings shorten retries for tests; a load run uses the defaults, except
        # that a lock held by a racing copy is looked at again after 1 s, not 10 s.
        for name in ("FANOUT_RETRY_BACKOFF", "FANOUT_RETRY_BACKOFF_MAX", "FANOUT_TASK_MAX_RETRIES",
                     "FANOUT_TASK_TIME_LIMIT", "FANOUT_LOCK_TTL", "FANOUT_HEARTBEAT_INTERVAL",
                     "FANOUT_REAPER_INTERVAL", "FANOUT_VISIBILITY_TIMEOUT"):
            env.pop(name)
        env["FANOUT_LOCK_RETRY"] = "1"
        ledger = ledger_for(env["FANOUT_BROKER_URL"])
        hosts = [d.host for d in dests]  # the first holds the shared repositories

        started = time.perf_counter()
        ids = [api.enqueue(image.reference, load_targets(i, "bench/load", *hosts),
                           tags=["v1"], env=env, ledger=ledger)[0] for i in range(count)]
        enqueued = time.perf_counter() - started
        # Everything waits in the queue at once; then two workers are let loose on it.
        workers = [start_worker(name, env, tmp, loglevel="INFO", wait=False)
                   for name in ("load1", "load2")]
        started = time.perf_counter()
        for worker in workers:
            worker.wait_for_log(" ready.")
        pending = set(ids)
        while pending:
            pending = {i for i in pending if not api.status(i, ledger=ledger).done}
            time.sleep(0.05)
        total = time.perf_counter() - started
        peaks = {w.name: peak_rss_kib(w.pid) for w in workers}
        releases = [api.status(i, ledger=ledger) for i in ids]
        check(releases, count)
    finally:
        for worker in workers:
            worker.stop()
        for registry in registries:
            registry.close()
        server.stop()
    records = [rec for r in releases for rec in r.destinations.values()]
    by_worker: dict[str, int] = {}
    for record in records:
        name = (record.worker or "?").split("@")[0]
        by_worker[name] = by_worker.get(name, 0) + 1
    return Result(count, enqueued, total, peaks, by_worker,
                  sum(1 for rec in records if rec.error_type == "LockHeld"))


def check(releases: list[Release], count: int) -> None:
    """Every destination succeeded; each (destination, digest) copied once, never twice at once."""
    failed = [r.to_dict() for r in releases if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} releases not ok, e.g. {failed[0]}")
    copies = copies_by_destination(releases)
    if len(copies) != count * 2 + 5:
        raise SystemExit(f"{len(copies)} destinations, expected {count * 2 + 5}")
    for destination, records in copies.items():
        moved = [r for r in records if r.stats.get("manifests_copied", 0) > 0]
        if len(moved) != 1:
            raise SystemExit(f"{destination}: copied by {len(moved)} tasks, expected 1")
        if overlapping(records):
            raise SystemExit(f"{destination}: two copies ran at the same time")


def report(result: Result) -> str:
    peaks = ", ".join(f"{name} {kib / 1024:.0f} MiB" for name, kib in result.peaks_kib.items())
    shares = ", ".join(f"{name} {n}" for name, n in sorted(result.tasks_by_worker.items()))
    return "\n".join([
        SECTION, "",
        f"`bench/load.py -n {result.releases}`: {result.releases} releases x 3 destinations "
        f"({result.tasks} tasks) of a two-layer image ({LAYER_SIZE // 1024} KiB layers), "
        "enqueued at once with `producer.api.enqueue`, copied by two `celery worker -P solo` "
        "processes started once all of it is queued, between local registries. Each release "
        "goes to one of five shared repositories on one registry (releases 2k and 2k+1 side "
        "by side in the queue, so their tasks race for it) and to its own repository on the "
        "two others. Redis "
        f"{redis_version()} with `appendfsync always`, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| releases | tasks | enqueue s | total s | tasks/s | waited for the lock | "
        "tasks per worker | peak RSS per worker |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        f"| {result.releases} | {result.tasks} | {result.enqueue_seconds:.1f} | "
        f"{result.total_seconds:.1f} | {result.tasks / result.total_seconds:.1f} | "
        f"{result.waited_for_lock} | {shares} | {peaks} |",
        "",
        "Every destination succeeded; each shared (destination, digest) was copied by exactly "
        "one task, and no two tasks' copies of it overlapped in time (the ledger's start and "
        "finish of each). \"Waited for the lock\" counts destinations whose task found another "
        "copy of the same digest under way and came back later (then found it present: a "
        "no-op). \"Enqueue\" is the producer's time to pin and "
        "publish every release, one `enqueue` call each; \"total\" runs from starting the "
        "workers (start-up included) to the last destination done.",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="releases (default 200)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-load-") as name:
        result = run(args.n, Path(name))
    text = report(result)
    publish(SECTION, text, write=not args.no_write and args.n == 200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
