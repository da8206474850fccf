"""Redis commands per destination copy: one release of N destinations through a real worker.

    PYTHONPATH=. .venv/bin/python bench/redis_commands.py [-n 200] [--no-write]

Starts a redis-server of its own (broker and ledger), two loopback registries and one
``celery worker`` (``-P solo``, the workers' default settings), pushes a two-layer image,
resets Redis's statistics (``CONFIG RESETSTAT``), enqueues one release of N destinations (N
repositories of one registry) with ``producer.api.enqueue``, waits until it is done and reads
``INFO commandstats``. ``MONITOR`` beside it sorts the commands by the key they touch, so the
table says where they go. Counts, not times: the machine's load changes nothing but the few
idle polls of the broker.
Results go to docs/benchmarks.md, section "Redis commands per copy".
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import publish, redis_version  # noqa: E402
from producer import api  # noqa: E402
from tests.support.cli import write_docker_config  # noqa: E402
from tests.support.images import push_oci_image  # noqa: E402
from tests.support.queue import RedisServer, ledger_for, start_worker, wait_until  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402
from workers.metrics import ATTEMPTS_KEY  # noqa: E402

SECTION = "## Redis commands per copy"
# Keys by what they are for, first match wins; the rest is the broker's (kombu's lists,
# bindings, unacked hashes) or keyless (PING, INFO, CLIENT, MULTI/EXEC).
_KINDS = [
    ("hold", re.compile(r"^fanout:hold:")),
    ("lock", re.compile(r"^fanout:lock:")),
    ("heartbeat / lost workers", re.compile(r"^fanout:(heartbeat|worker|alive|lost)")),
    ("location", re.compile(r"^fanout:(loc|blob|mount)")),
    ("tag order", re.compile(r"^fanout:(tag|order)")),
    ("spool", re.compile(r"^fanout:spool")),
    ("ledger", re.compile(r"^fanout:")),
    ("broker", re.compile(r"^(_kombu|unacked|celery|fanout$|fanout\.|[a-z0-9_.-]+$)")),
]


@dataclass
class Measured:
    destinations: int
    seconds: float
    commands: Counter[str]
    by_kind: Counter[str] = field(default_factory=Counter)
    by_key_prefix: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    @property
    def per_copy(self) -> float:
        return self.total / self.destinations


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--destinations", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def commandstats(client: redis.Redis[Any]) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def _kind(key: str) -> str:
    return next((kind for kind, pattern in _KINDS if pattern.search(key)), "other")


class Monitor(threading.Thread):
    """``MONITOR`` in a thread: each command's name and first key, counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._client = redis.Redis.from_url(url)
        self._halt = threading.Event()
        self.seen: Counter[tuple[str, str]] = Counter()
        self.log: list[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with self._client.monitor() as monitor:
            self.ready.set()
            for event in monitor.listen():
                if self._halt.is_set():
                    return
                words = shlex.split(event["command"]) if event["command"] else [""]
                name = words[0].lower()
                key = words[1] if len(words) > 1 else ""
                if name in ("eval", "evalsha"):  # script, key count, keys: its first key
                    key = words[3] if len(words) > 3 and words[2] != "0" else ""
                self.seen[(name, key)] += 1
                self.log.append(f"{event.get('client_port', '')} {event['command'][:160]}")

    def stop(self, url: str) -> None:
        self._halt.set()
        redis.Redis.from_url(url).ping()  # one more event, so listen() returns
        self.join(5)


def measure(destinations: int, tmp: Path) -> Measured:
    """One release of ``destinations`` copies through one worker; Redis's commands counted."""
    server = RedisServer(tmp / "redis", persistent=False).start()
    source = start_registry(tmp / "source", wait=False)
    dest = start_registry(tmp / "dest", wait=False)
    worker = None
    try:
        source.wait_ready()
        dest.wait_ready()
        url = f"{server.url}/0"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DOCKER_"))}
        env.update({"FANOUT_BROKER_URL": url, "PYTHONPATH": str(ROOT),
                    "DOCKER_CONFIG": str(write_docker_config(tmp / "docker", []))})
        image = push_oci_image(source, "bench/app", "v1", layers=2, layer_size=64 * 1024)
        worker = start_worker("rc", env, tmp, loglevel="INFO")
        client: redis.Redis[Any] = redis.Redis.from_url(url)
        ledger = ledger_for(url)
        monitor = Monitor(url)
        monitor.start()
        monitor.ready.wait(5)
        client.config_resetstat()
        started = time.monotonic()
        [release] = api.enqueue(image.reference,
                                [f"{dest.host}/bench/app-{i}" for i in range(destinations)],
                                tags=["v1"], referrers=False, env=env, ledger=ledger)

        # Done is read from MONITOR, not by polling the ledger: polls would be counted.
        def done() -> bool:
            return monitor.seen[("hincrby", ATTEMPTS_KEY)] >= destinations

        wait_until(done, 60 + destinations, "every copy recorded", worker.log)
        seconds = time.monotonic() - started
        time.sleep(1.0)  # the last task's acknowledgement
        stats = commandstats(client)
        monitor.stop(url)
        if os.environ.get("BENCH_MONITOR_LOG"):
            Path(os.environ["BENCH_MONITOR_LOG"]).write_text("\n".join(monitor.log))
        assert api.status(release, ledger=ledger).ok, worker.log()[-3000:]
        # Our own reads (the status polls, INFO) are not the copy's.
        result = Measured(destinations, seconds, stats)
        for (name, key), count in monitor.seen.items():
            result.by_kind[_kind(key) if key else f"({name})"] += count
            result.by_key_prefix[f"{name} {re.sub(r'[0-9a-f-]{8,}.*$', '…', key)[:60]}"] += count
        return result
    finally:
        if worker is not None:
            worker.stop()
        source.close()
        dest.close()
        server.stop()


def report(result: Measured) -> str:
    rows = "\n".join(f"| {name} | {count} | {count / result.destinations:.1f} |"
                     for name, count in result.commands.most_common())
    kinds = "\n".join(f"| {name} | {count} | {count / result.destinations:.1f} |"
                      for name, count in result.by_kind.most_common())
    intro = (
        f"`PYTHONPATH=. .venv/bin/python bench/redis_commands.py -n {result.destinations}`: "
        f"one release of {result.destinations} destinations (repositories of one loopback "
        "registry, a two-layer image) enqueued with `producer.api.enqueue` and copied by one "
        "`celery worker -P solo` with the workers' default settings; `CONFIG RESETSTAT` "
        "before the enqueue, `INFO commandstats` once the release is done (its end is read "
        "from `MONITOR`, not by polling the ledger). "
        f"Redis {redis_version()}, CPython {sys.version.split()[0]}.")
    total = (f"**{result.per_copy:.1f} commands per destination copy** ({result.total} in "
             f"all, {result.seconds:.1f} s).")
    return f"""{SECTION}

{intro}

{total}

| command | calls | per copy |
| --- | ---: | ---: |
{rows}

By key (from `MONITOR`):

| what | commands | per copy |
| --- | ---: | ---: |
{kinds}
"""


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-rc-") as tmp:
        result = measure(args.destinations, Path(tmp))
    text = report(result)
    for line, count in result.by_key_prefix.most_common(40):
        print(f"{count:7d}  {line}", file=sys.stderr)
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
