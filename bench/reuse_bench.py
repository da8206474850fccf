"""What a worker keeps from one task to the next: the same release sent twice through the queue.

    .venv/bin/python bench/reuse_bench.py [--workers 2] [--concurrency 2] [--request-ms 20]
                                          [--releases 3] [--no-write]

Four token-auth registries (a source, three destinations), each with its own token server, every
one behind a latency proxy (``bench/latency_proxy.py``: ``--request-ms`` per request, as much
again per new connection). ``--workers`` celery workers of ``--concurrency`` processes each copy
one release of a 3-platform index to the three destinations, then the same release again
``--releases - 1`` times (no-ops). For each release: its wall time from enqueue to done, and the
requests, new connections and token requests the proxies saw from the workers (the producer's
own source check goes around the proxies). Results go to docs/benchmarks.md, section "Reuse
across tasks" (``--no-write`` only prints).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import publish  # noqa: E402
from bench.latency_proxy import all_hops, reset_all, token_network  # noqa: E402
from producer import api  # noqa: E402
from tests.integration.test_worker_reuse import Around  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.cli import write_docker_auths  # noqa: E402
from tests.support.queue import (  # noqa: E402
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_worker,
)

SECTION = "## Reuse across tasks"
ROLES = ("source", "a", "b", "c")


@dataclass
class Release:
    seconds: float
    requests: int
    connections: int
    tokens: int


def measure(args: argparse.Namespace, tmp: Path) -> list[Release]:
    delay = args.request_ms / 1000
    workers: list[Process] = []
    redis_server: RedisServer | None = None
    with token_network(tmp, ROLES, request_delay=delay, connect_delay=delay) as network:
        registries, proxies, password = network.registries, network.proxies, network.password
        try:
            image = images.push_oci_index(registries["source"], "reuse/app", "v1")
            source = f"{proxies['source'].host}/reuse/app@{image.digest}"
            destinations = [f"{proxies[role].host}/reuse/app" for role in ("a", "b", "c")]
            docker = write_docker_auths(tmp / "docker", {proxies[role].host: ("fanout", password)
                                                         for role in ROLES})
            redis_server = RedisServer(tmp / "redis", persistent=False).start()
            env = queue_env(f"{redis_server.url}/0", docker)
            workers = [start_worker(f"reuse{i}", env, tmp, loglevel="INFO", pool="prefork",
                                    concurrency=args.concurrency, wait=False)
                       for i in range(args.workers)]
            for worker in workers:
                worker.wait_for_log(" ready.")
            ledger = ledger_for(env["FANOUT_BROKER_URL"])
            around = Around({proxies["source"].host: registries["source"].host})
            results = []
            for _ in range(args.releases):
                reset_all(proxies)
                started = time.perf_counter()
                [release_id] = api.enqueue(source, destinations, tags=["v1"], env=env,
                                           ledger=ledger, transport=around)
                release = api.wait(release_id, timeout=120, poll=0.02, ledger=ledger)
                seconds = time.perf_counter() - started
                if not release.ok:
                    raise SystemExit(f"release failed: {release.to_dict()}")
                hops = all_hops(proxies)
                results.append(Release(seconds, len(hops), sum(1 for h in hops if h.first),
                                       sum(1 for h in hops if h.role.endswith("-token"))))
            return results
        finally:
            for worker in workers:
                worker.stop()
            if redis_server is not None:
                redis_server.stop()


def report(results: list[Release], args: argparse.Namespace) -> str:
    lines = [
        SECTION, "",
        f"`.venv/bin/python bench/reuse_bench.py --workers {args.workers} --concurrency "
        f"{args.concurrency} --request-ms {args.request_ms} --releases {args.releases}`: one "
        f"release of a 3-platform index to three token-auth registries, sent {args.releases} "
        f"times through {args.workers} workers of {args.concurrency} processes; every registry "
        f"and token server behind a proxy adding {args.request_ms} ms per request and as much "
        "per new connection. Counted at the proxies, workers only.", "",
        "| release | seconds | requests | new connections | token requests |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for number, result in enumerate(results, 1):
        kind = "first" if number == 1 else "again (no-op)"
        lines.append(f"| {number}, {kind} | {result.seconds:.2f} | {result.requests} | "
                     f"{result.connections} | {result.tokens} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--request-ms", type=int, default=20)
    parser.add_argument("--releases", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-reuse-bench-") as name:
        text = report(measure(args, Path(name)), args)
    publish(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
