"""The spool: source bytes read per release, a worker's memory, and `fanout copy`'s time.

    .venv/bin/python bench/spool_bench.py [--layers 3] [--layer-mb 16] [--memory-gb 1]
                                          [--copy-layers 5] [--copy-layer-mb 40] [--rounds 3]
                                          [--baseline DIR] [--no-write]

Three measurements, on loopback registries (distribution) and a redis-server of its own:

- **reads**: one release of a ``--layers`` x ``--layer-mb`` image (uncompressed, random) to five
  registries, copied by one ``celery worker -P prefork -c 3`` host; the source sits behind a
  counting proxy (tests/support/fault_proxy.py, no faults). Source blob bytes served per
  release, with the spool and with ``FANOUT_SPOOL_BYTES=0``.
- **memory**: one layer of ``--memory-gb`` GiB to three registries at once by the same worker
  (source direct); the peak RSS (``VmHWM``) of each worker process, with the spool.
- **copy**: ``fanout copy`` of a ``--copy-layers`` x ``--copy-layer-mb`` image to one
  destination and to three registries, with and without the spool, median of ``--rounds``
  interleaved runs into fresh registries. ``--baseline DIR`` also times a checkout of the code
  before the spool (put ahead on PYTHONPATH), for the one-destination path.

Results go to docs/benchmarks.md, section "Spool: one read of the source per worker host".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import publish  # noqa: E402
from producer import api  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.images import PushedImage, push_oci_image  # noqa: E402
from tests.support.queue import (  # noqa: E402
    Process,
    RedisServer,
    _descendants,
    ledger_for,
    queue_env,
    start_worker,
)
from tests.support.registries import RegistryServer, start_registry  # noqa: E402

HEADING = "## Spool: one read of the source per worker host"
MIB = 1024 * 1024


def release(tmp: Path, image: PushedImage, source_host: str, destinations: list[RegistryServer],
            extra: dict[str, str], name: str) -> tuple[float, dict[int, int]]:
    """One release through a fresh prefork worker; its seconds and each process's peak RSS."""
    redis = RedisServer(tmp / f"redis-{name}", persistent=False).start()
    # The test kit's fast retries, but time enough for a copy of a large layer.
    env = queue_env(redis.url, tmp / "docker", FANOUT_TASK_TIME_LIMIT="900",
                    FANOUT_VISIBILITY_TIMEOUT="1800", **extra)
    worker = start_worker(name, env, tmp, pool="prefork", concurrency=3, loglevel="INFO",
                          wait=False)
    try:
        worker.wait_for_log(" ready.")
        ledger = ledger_for(redis.url)
        started = time.perf_counter()
        [release_id] = api.enqueue(f"{source_host}/{image.repository}@{image.digest}",
                                   [f"{d.host}/{name}/app" for d in destinations], tags=["v1"],
                                   env=env, ledger=ledger)
        while not (status := api.status(release_id, ledger=ledger)).done:
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        assert status.ok, status.to_dict()
        return seconds, _peaks(worker)
    finally:
        worker.stop()
        redis.stop()


def _peaks(worker: Process) -> dict[int, int]:
    """VmHWM of the worker and each child, in KiB, by pid."""
    found = {}
    for pid in [worker.pid, *_descendants(worker.pid)]:
        status = Path(f"/proc/{pid}/status").read_text()
        found[pid] = next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmHWM:"))
    return found


def reads(args: argparse.Namespace, tmp: Path) -> list[str]:
    source = start_registry(tmp / "reads-source")
    destinations = [start_registry(tmp / f"reads-dest-{n}") for n in range(5)]
    proxy = FaultProxy(source.url).start()
    try:
        image = push_oci_image(source, "bench/app", "v1", layers=args.layers,
                               layer_size=args.layer_mb * MIB, compress=False)
        rows = []
        for label, extra in (("spool", {"FANOUT_SPOOL_DIR": str(tmp / "spool-reads")}),
                             ("no spool", {"FANOUT_SPOOL_BYTES": "0"})):
            proxy.reset_seen()
            name = label.replace(" ", "")
            seconds, _ = release(tmp, image, proxy.host, destinations, extra, name)
            served = sum(s.sent for s in proxy.requests("GET", r"/blobs/sha256:", status=200))
            rows.append(f"| {label} | {image.total_blob_bytes / MIB:.1f} MiB | "
                        f"{served / MIB:.1f} MiB | **{served / image.total_blob_bytes:.2f}x** | "
                        f"{seconds:.2f} |")
    finally:
        proxy.stop()
        for server in (source, *destinations):
            server.close()
    return [f"One release of {args.layers} x {args.layer_mb} MiB (uncompressed, random) to five "
            "registries, one worker host (`celery worker -P prefork -c 3`), the source behind a "
            "counting proxy:", "",
            "| worker | image blob bytes | source blob bytes read | per release | release s |",
            "| --- | ---: | ---: | ---: | ---: |", *rows]


def memory(args: argparse.Namespace, tmp: Path) -> list[str]:
    source = start_registry(tmp / "mem-source")
    destinations = [start_registry(tmp / f"mem-dest-{n}") for n in range(3)]
    try:
        image = push_oci_image(source, "bench/big", "v1", layers=1,
                               layer_size=int(args.memory_gb * 1024**3), compress=False)
        seconds, peaks = release(tmp, image, source.host, destinations,
                                 {"FANOUT_SPOOL_DIR": str(tmp / "spool-mem"),
                                  "FANOUT_SPOOL_BYTES": f"{int(args.memory_gb * 2) + 1}G"},
                                 "memory")
    finally:
        for server in (source, *destinations):
            server.close()
    parent, *children = peaks.values()
    return [f"One layer of {args.memory_gb:g} GiB to three registries at once, the same worker "
            f"host with the spool: copied in {seconds:.1f} s; peak RSS of each worker child "
            f"(the three copies) **{', '.join(f'{c / 1024:.0f}' for c in children)} MB** "
            f"(the prefork parent {parent / 1024:.0f} MB)."]


def copies(args: argparse.Namespace, tmp: Path) -> list[str]:
    source = start_registry(tmp / "copy-source")
    try:
        image = push_oci_image(source, "bench/app", "v1", layers=args.copy_layers,
                               layer_size=args.copy_layer_mb * MIB, compress=False)
        runs: dict[str, Callable[[], float]] = {
            "1 destination": lambda: _copy(tmp, image, 1, {}),
            "3 registries, spool": lambda: _copy(tmp, image, 3, {}),
            "3 registries, no spool": lambda: _copy(tmp, image, 3, {"FANOUT_SPOOL_BYTES": "0"}),
        }
        if args.baseline:
            runs["1 destination, before the spool"] = lambda: _copy(
                tmp, image, 1, {}, pythonpath=str(args.baseline.resolve()))
            runs["3 registries, before the spool"] = lambda: _copy(
                tmp, image, 3, {}, pythonpath=str(args.baseline.resolve()))
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                samples[name].append(run())
    finally:
        source.close()
    return [f"`fanout copy` of {args.copy_layers} x {args.copy_layer_mb} MiB (uncompressed), "
            f"fresh registries per run, median of {args.rounds} interleaved rounds:", "",
            "| run | median s | all runs |", "| --- | ---: | --- |",
            *(f"| {name} | {statistics.median(values):.2f} | "
              f"{' '.join(f'{v:.2f}' for v in values)} |" for name, values in samples.items())]


def _copy(tmp: Path, image: PushedImage, count: int, extra: dict[str, str], *,
          pythonpath: str | None = None) -> float:
    servers = [start_registry(tmp / f"copy-{os.urandom(4).hex()}") for _ in range(count)]
    env = {**os.environ, **extra,
           "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, str(ROOT)]))}
    try:
        started = time.perf_counter()
        # Run from elsewhere: `-m` puts the working directory ahead of PYTHONPATH.
        subprocess.run([sys.executable, "-m", "producer.cli", "copy", image.reference,
                        *(f"{s.host}/bench/app" for s in servers)],
                       check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started
    finally:
        for server in servers:
            server.close()
            shutil.rmtree(server.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mb", type=int, default=16)
    parser.add_argument("--memory-gb", type=float, default=1.0, help="0 skips it")
    parser.add_argument("--copy-layers", type=int, default=5)
    parser.add_argument("--copy-layer-mb", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="0 skips the copy timings")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a checkout before the spool, timed for comparison")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-spool-bench-") as scratch:
        tmp = Path(scratch)
        sections = [reads(args, tmp)]
        if args.memory_gb:
            sections.append(memory(args, tmp))
        if args.rounds:
            sections.append(copies(args, tmp))
    text = "\n\n".join(
        [f"{HEADING}\n\n`.venv/bin/python bench/spool_bench.py`: loopback registries "
         f"(distribution), {os.cpu_count()} CPUs."] + ["\n".join(s) for s in sections])
    publish(HEADING, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
