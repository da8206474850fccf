"""Real queue processes for fault and load tests: a restartable Redis, Celery workers, raw tasks.

``tests/integration/test_queue_e2e.py`` drives the happy paths with its own helpers; these are the
ones a fault test needs on top: a Redis with ``appendfsync always`` that can be killed and started
again on the same port and data, workers at ``-l debug`` whose logs are scanned for secrets, raw
task messages, and the numbers a load run reports (peak memory of a worker's process tree).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery

from tests.support.ports import free_port
from tests.support.registries import RegistryServer
from workers.app import celery_config
from workers.ledger import DestinationRecord, Ledger, Release
from workers.routing import DEFAULT_QUEUE
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0
# Fast task-tier retries, as in test_queue_e2e.py. The visibility timeout must exceed the longest
# countdown plus the time limit (workers/settings.py refuses less); it is low so that a message
# whose acknowledgement never came back is redelivered within the test.
FAST_ENV = {
    "FANOUT_RETRY_BACKOFF": "0.2",
    "FANOUT_RETRY_BACKOFF_MAX": "1",
    "FANOUT_LOCK_RETRY": "1",
    "FANOUT_TASK_MAX_RETRIES": "50",
    "FANOUT_TASK_TIME_LIMIT": "12",
    "FANOUT_LOCK_TTL": "4",
    "FANOUT_HEARTBEAT_INTERVAL": "0.5",
    "FANOUT_REAPER_INTERVAL": "0.5",
    "FANOUT_VISIBILITY_TIMEOUT": "14",
}
T = TypeVar("T")


@dataclass
class Process:
    """A child process with stdout and stderr in one log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        wait_until(lambda: text in self.log() or self._exited(), timeout,
                   f"{self.name}: {text!r} in its log", lambda: self.log()[-3000:])
        if text not in self.log():
            raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.running:
            self.signal(signal.SIGKILL)
            self.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def wait_until(check: Callable[[], T | None], timeout: float, what: str,
               detail: Callable[[], object] = lambda: "") -> T:
    """Poll ``check`` until it returns something true; AssertionError after ``timeout``.

    Between polls it sleeps 50 ms, or three times as long as the check took: a check that reads
    fifty releases does not keep a core busy that the workers it waits for could use."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        value = check()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s\n{detail()}")
        time.sleep(max(0.05, 3 * (now - began)))


class RedisServer:
    """``redis-server`` on a loopback port with every write fsynced to its append-only file,
    so it can be killed and started again on the same port without losing a message."""

    def __init__(self, root: Path, *, persistent: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.persistent = persistent
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                       else ["--appendonly", "no"])
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.root), "--save", "", *persistence]
        self.process = Process("redis", argv, self.root / "redis.log", dict(os.environ)).start()
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        process = self.process

        def ready() -> bool:
            assert process.running, process.log()
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            except redis.BusyLoadingError:  # replaying the append-only file
                return False

        wait_until(ready, 10, "redis-server answering PING")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing acknowledged is lost with ``appendfsync always``."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def queue_env(broker_url: str, docker_config: Path, **extra: str) -> dict[str, str]:
    """The workers' and producer's environment: fast retries, this broker, this Docker config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DOCKER_"))}
    env.update(FAST_ENV)
    env.update({"FANOUT_BROKER_URL": broker_url, "DOCKER_CONFIG": str(docker_config),
                "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def start_worker(name: str, env: Mapping[str, str], log_dir: Path, *,
                 loglevel: str = "DEBUG", pool: str = "solo", wait: bool = True,
                 concurrency: int | None = None) -> Process:
    """``celery -A workers.app worker`` as one host of its own (``-P solo``: one process)."""
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", f"--loglevel={loglevel}",
            "-P", pool, "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    process = Process(name, argv, log_dir / f"{name}.log", dict(env)).start()
    if wait:
        process.wait_for_log(" ready.")
    return process


def start_workers(names: Iterable[str], env: Mapping[str, str], log_dir: Path, *,
                  loglevel: str = "DEBUG") -> list[Process]:
    """One worker per name, started together and then waited for (two cores, interpreters
    booting at once); those started are stopped if one never gets ready."""
    started = [start_worker(name, env, log_dir, loglevel=loglevel, wait=False) for name in names]
    try:
        for worker in started:
            worker.wait_for_log(" ready.")
    except BaseException:
        for worker in started:
            worker.stop()
        raise
    return started


@contextlib.contextmanager
def running_workers(names: Iterable[str], env: Mapping[str, str], log_dir: Path, *,
                    loglevel: str = "DEBUG") -> Iterator[list[Process]]:
    """:func:`start_workers`, stopped when the block ends (a fixture's yield)."""
    started = start_workers(names, env, log_dir, loglevel=loglevel)
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def ledger_for(url: str) -> Ledger:
    return Ledger(redis.Redis.from_url(url))


def celery_client(env: Mapping[str, str]) -> Celery:
    """A Celery app configured as the workers are: for sending raw task messages."""
    client = Celery("fanout-test-client", set_as_current=False)
    client.conf.update(celery_config(WorkerSettings.from_env(env)))
    return client


def send_raw(client: Celery, *, task_id: str, args: Iterable[Any] = (),
             kwargs: Mapping[str, Any] | None = None) -> None:
    """Publish a ``fanout.copy`` message with exactly these arguments, checked by nobody."""
    client.send_task("fanout.copy", args=list(args), kwargs=dict(kwargs or {}),
                     task_id=task_id, queue=DEFAULT_QUEUE)


def messages_in_broker(url: str, queues: Iterable[str] = (DEFAULT_QUEUE,)) -> int:
    """Messages waiting in ``queues`` plus delivered, unacknowledged ones (kombu's keys)."""
    client = redis.Redis.from_url(url)
    try:
        return messages_waiting(url, queues) + int(client.hlen("unacked"))
    finally:
        client.close()


def messages_waiting(url: str, queues: Iterable[str] = (DEFAULT_QUEUE,)) -> int:
    """Messages waiting in ``queues``, not yet delivered to any worker."""
    client = redis.Redis.from_url(url)
    try:
        return sum(int(client.llen(q)) for q in queues)
    finally:
        client.close()


def upload_under_way(registry: RegistryServer) -> bool:
    """Bytes of an unfinished upload are on the registry's disk."""
    uploads = registry.root / "storage/docker/registry/v2/repositories"
    return any(data.stat().st_size > 0 for data in uploads.glob("**/_uploads/*/data"))


def peak_rss_kib(pid: int) -> int:
    """Peak resident memory (``VmHWM``) of ``pid`` plus its descendants, in KiB."""
    total = 0
    for each in [pid, *_descendants(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


# -- load -------------------------------------------------------------------------------------


def load_targets(i: int, repo: str, *hosts: str, shared: int = 5) -> list[str]:
    """Release ``i``'s destinations: its own repository on every host but the first, and one of
    ``shared`` repositories on the first. Releases ``2k`` and ``2k+1`` share theirs, last in one
    and first in the other, so their two tasks sit side by side in the queue and two workers
    take them at once: only the lock keeps them from copying it at the same time."""
    first, *others = hosts
    mine = [f"{h}/{repo}-{i}" for h in others]
    common = f"{first}/{repo}-shared-{(i // 2) % shared}"
    return [*mine, common] if i % 2 == 0 else [common, *mine]


def copies_by_destination(releases: Sequence[Release]) -> dict[str, list[DestinationRecord]]:
    """Every release's record of each destination, by destination."""
    found: dict[str, list[DestinationRecord]] = {}
    for release in releases:
        for name, record in release.destinations.items():
            found.setdefault(name, []).append(record)
    return found


def overlapping(records: Sequence[DestinationRecord]) -> bool:
    """Two records' copies ([started_at, finished_at] of their last attempt) overlap in time."""
    spans = sorted((r.started_at or 0.0, r.finished_at or 0.0) for r in records)
    latest_end = float("-inf")
    for start, end in spans:
        if start < latest_end:
            return True
        latest_end = max(latest_end, end)
    return False


@dataclass
class WorkerQueue:
    """A Redis of its own (broker and ledger) and one worker, with the environment the CLI
    shares: what a module of CLI tests (``fanout verify``, ``fanout sync``) runs against."""

    redis: RedisServer
    worker: Process
    env: dict[str, str]

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.redis.url)

    def fanout_json(self, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
        """``fanout ARGS --json`` as a user runs it: exit code, document, stderr."""
        import json

        from tests.support.cli import run_fanout

        done = run_fanout([*args, "--json"], self.env, timeout=timeout)
        try:
            document = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            raise AssertionError(f"not JSON: {done.stdout}\n{done.stderr}") from None
        return done.returncode, document, done.stderr


def start_worker_queue(tmp: Path, name: str) -> WorkerQueue:
    """Redis, an empty Docker config and one worker called ``name``, under ``tmp``; stop with
    :func:`stop_worker_queue`."""
    redis_server = RedisServer(tmp / "redis", persistent=False).start()
    docker = tmp / "docker"
    docker.mkdir()
    (docker / "config.json").write_text('{"auths": {}}')
    env = queue_env(redis_server.url, docker)
    try:
        worker = start_worker(name, env, tmp)
    except BaseException:
        redis_server.stop()
        raise
    return WorkerQueue(redis_server, worker, env)


def stop_worker_queue(queue: WorkerQueue) -> None:
    queue.worker.stop()
    queue.redis.stop()
