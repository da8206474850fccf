"""Queue overhead: N no-op copies through Redis and Celery workers vs the same copies in-process.

    .venv/bin/python bench/queue_overhead.py [-n 200] [--no-write]

Every destination already holds the digest, so a copy is the engine's fast path (ping, source
manifest, one HEAD at the destination, the tag check): what remains is the cost of the queue —
publishing, delivery, the ledger's transitions, the lock, task start-up. "in-process" runs the
same copies one after another in this process, as a worker process runs its tasks: on one
event loop and one pool of clients kept from copy to copy (``workers/engine.py``). Starts its
own redis-server and registries on loopback ports.
Results go to docs/benchmarks.md, section "Queue overhead" (the rest of the file is left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import publish, redis_version  # noqa: E402
from producer import api  # noqa: E402
from registry.copy import Copier  # noqa: E402
from registry.credentials import default_store  # noqa: E402
from registry.envconfig import transport_options_from_env  # noqa: E402
from registry.reference import parse_reference, parse_repository  # noqa: E402
from registry.session import Registries  # noqa: E402
from tests.support.images import push_oci_image  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402
from workers.ledger import Ledger  # noqa: E402

BIN = Path(sys.executable).parent
SECTION = "## Queue overhead"


@dataclass
class Run:
    name: str
    seconds: float
    count: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def copy_each(source: str, destinations: list[str], env: dict[str, str]) -> float:
    """Copy to each destination in turn, on one loop and one pool as a worker process does;
    the seconds the copies took (the pool's first contact with each host included)."""
    async def go() -> float:
        async with Registries(default_store(env), transport_options_from_env(env)) as regs:
            started = time.perf_counter()
            for destination in destinations:
                await Copier(regs).copy_image(parse_reference(source),
                                              parse_repository(destination))
            return time.perf_counter() - started
    return asyncio.run(go())


def in_process(source: str, destinations: list[str], env: dict[str, str]) -> Run:
    return Run("in-process, sequential", copy_each(source, destinations, env),
               len(destinations))


def through_queue(source: str, destinations: list[str], env: dict[str, str],
                  processes: int, tmp: Path) -> Run:
    url = env["FANOUT_BROKER_URL"]
    redis.Redis.from_url(url).flushdb()
    log = (tmp / f"worker-{processes}.log").open("wb")
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "workers.app", "worker", "--loglevel=WARNING",
         f"--concurrency={processes}", "-n", f"bench{processes}@%h", "--without-gossip",
         "--without-mingle"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        ledger = Ledger(redis.Redis.from_url(url))
        # Warm up: the pool's children import everything on their first task.
        [warm] = api.enqueue(source, destinations[:processes], env=env, ledger=ledger)
        api.wait(warm, timeout=60, poll=0.05, ledger=ledger)
        started = time.perf_counter()
        [release_id] = api.enqueue(source, destinations, env=env, ledger=ledger)
        release = api.wait(release_id, timeout=600, poll=0.02, ledger=ledger)
        seconds = time.perf_counter() - started
        if not release.ok:
            raise SystemExit(f"queue run failed: {release.to_dict()}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    return Run(f"queue, {processes} worker process{'es' if processes > 1 else ''}", seconds,
               len(destinations))


def report(runs: list[Run], count: int) -> str:
    base = runs[0]
    lines = [
        SECTION, "",
        f"`bench/queue_overhead.py -n {count}`: {count} no-op copies (every destination already "
        "holds the digest) of a single-platform image between two local registries; Redis "
        f"{redis_version()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs. Includes publishing, delivery, ledger writes and the lock.",
        "",
        "| run | seconds | tasks/s | per task | overhead per task vs in-process |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        per_task = run.seconds / run.count * 1000
        overhead = per_task - base.seconds / base.count * 1000
        lines.append(f"| {run.name} | {run.seconds:.2f} | {run.rate:.0f} | {per_task:.1f} ms | "
                     f"{'—' if run is base else f'{overhead:+.1f} ms'} |")
    lines += ["", "What the queue adds per task: publishing and delivery, the ledger's "
              "transitions, the lock and its heartbeat. The copy itself costs a worker what it "
              "costs in-process, since a worker process keeps its loop, connections and tokens "
              "from task to task. Two worker processes share two CPUs with Redis and both "
              "registries here, so the second process adds less than it would on its own "
              "host.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="copies per run (default 200)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as name:
        tmp = Path(name)
        port = free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", name], stdout=subprocess.DEVNULL)
        src = start_registry(tmp / "src")
        dst = start_registry(tmp / "dst")
        try:
            image = push_oci_image(src, "bench/app", "v1", layers=2)
            destinations = [f"{dst.host}/bench/app-{i}" for i in range(args.n)]
            env = {**os.environ, "FANOUT_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                   "DOCKER_CONFIG": str(tmp)}
            env.pop("FANOUT_LEDGER_URL", None)
            redis_client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis_client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            copy_each(image.reference, destinations, env)  # fill them: the runs are no-ops
            runs = [in_process(image.reference, destinations, env)]
            for processes in (1, 2):
                runs.append(through_queue(image.reference, destinations, env, processes, tmp))
        finally:
            src.close()
            dst.close()
            server.terminate()
            server.wait()
    text = report(runs, args.n)
    publish(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
