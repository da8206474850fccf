"""One release to 10 destinations: through the queue (2 worker hosts) against the same copy
inline, and against skopeo, in one run.

    .venv/bin/python bench/release_bench.py [--rounds 3] [--layers 3] [--layer-mb 4]
                                            [--workers 2] [--concurrency 2] [--no-write]

The source holds a single-platform image of ``--layers`` random, uncompressed layers. Each round
starts five fresh destination registries (untimed) and copies to two repositories on each, ten
destinations in all, three ways, interleaved:

- inline: ``fanout copy SRC D1 … D10`` (one process);
- queue: ``fanout enqueue SRC D1 … D10 --wait`` with ``--workers`` celery workers already
  running (``--concurrency`` processes each, as hosts that are up before a release comes);
- skopeo: ``printf '%s\\n' D1 … D10 | xargs -n1 -P0 skopeo copy …`` (the shell loop people
  write), its blob-info cache cleared.

Times include each command's start-up. The target: the queue within 1.3x of inline. Results go to
docs/benchmarks.md, section "A release to 10 destinations" (``--no-write`` only prints).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.copy_bench import (  # noqa: E402
    FANOUT,
    SKOPEO,
    distribution_version,
    forget_skopeo_cache,
    skopeo_version,
)
from bench.docs import publish, redis_version  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.queue import Process, start_worker  # noqa: E402
from tests.support.registries import RegistryServer, start_registry  # noqa: E402

SECTION = "## A release to 10 destinations"
REGISTRIES = 5
REPOS = ("one", "two")
TOOLS = ("inline", "queue", "skopeo")


def timed(command: list[str] | str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=isinstance(command, str), check=True, cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


class Round:
    """Five fresh, empty registries for one timed run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RegistryServer] = []

    def __enter__(self) -> list[str]:
        forget_skopeo_cache()
        name = secrets.token_hex(4)
        self.servers = [start_registry(self.tmp / f"{name}-{i}", wait=False)
                        for i in range(REGISTRIES)]
        for server in self.servers:
            server.wait_ready()
        return [f"{server.host}/bench/{repo}" for server in self.servers for repo in REPOS]

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
            shutil.rmtree(server.root, ignore_errors=True)


def benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    source = start_registry(tmp / "source")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DOCKER_"))}
    env.update({"PYTHONPATH": str(ROOT), "DOCKER_CONFIG": str(tmp / "docker"),
                "FANOUT_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    workers: list[Process] = []
    try:
        image = images.push_oci_image(source, "bench/app", "v1", layers=args.layers,
                                      layer_size=args.layer_mb * 1024 * 1024, compress=False)
        workers = [start_worker(f"bench{i}", env, tmp, loglevel="INFO", pool="prefork",
                                concurrency=args.concurrency, wait=False)
                   for i in range(args.workers)]
        for worker in workers:
            worker.wait_for_log(" ready.")
        src = image.reference
        fresh = Round(tmp)

        def inline() -> float:
            with fresh as destinations:
                return timed([*FANOUT, "copy", src, *destinations], env)

        def queue() -> float:
            with fresh as destinations:
                return timed([*FANOUT, "enqueue", src, *destinations, "--wait", "--poll",
                              "0.05", "--timeout", "300"], env)

        def skopeo() -> float:
            with fresh as destinations:
                lines = " ".join(f"{d}:v1" for d in destinations)
                copy = " ".join(SKOPEO) + f" docker://{src} docker://$0"
                return timed(f"printf '%s\\n' {lines} | xargs -n1 -P0 sh -c {shlex.quote(copy)}",
                             env)

        samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        runs = {"inline": inline, "queue": queue, "skopeo": skopeo}
        for _ in range(args.rounds):  # interleaved: drift in the machine hits every tool alike
            for tool in TOOLS:
                samples[tool].append(runs[tool]())
        return samples
    finally:
        for worker in workers:
            worker.stop()
        source.close()
        redis_server.terminate()
        redis_server.wait()


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> str:
    med = {tool: statistics.median(values) for tool, values in samples.items()}
    size = args.layers * args.layer_mb
    lines = [
        SECTION, "",
        f"`.venv/bin/python bench/release_bench.py --rounds {args.rounds} --layers {args.layers} "
        f"--layer-mb {args.layer_mb} --workers {args.workers} --concurrency {args.concurrency}`: "
        f"one image ({args.layers} layers x {args.layer_mb} MiB = {size} MiB, uncompressed) to "
        f"ten destinations, two repositories on each of five fresh registries per run "
        f"(distribution {distribution_version()}); {args.workers} `celery worker` processes of "
        f"{args.concurrency} each, running before the release comes; Redis {redis_version()}; "
        f"skopeo {skopeo_version()} with its blob cache cleared; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} "
        f"CPUs. Median of {args.rounds} interleaved rounds; times include start-up.", "",
        "| run | median s | all runs |", "| --- | ---: | --- |",
        f"| `fanout copy SRC D1 … D10` (inline) | {med['inline']:.2f} | "
        f"{' '.join(f'{v:.2f}' for v in samples['inline'])} |",
        f"| `fanout enqueue SRC D1 … D10 --wait` (queue) | {med['queue']:.2f} | "
        f"{' '.join(f'{v:.2f}' for v in samples['queue'])} |",
        f"| `xargs -n1 -P0 skopeo copy` | {med['skopeo']:.2f} | "
        f"{' '.join(f'{v:.2f}' for v in samples['skopeo'])} |", "",
        f"- queue / inline: **{med['queue'] / med['inline']:.2f}x** (target: at most 1.3x)",
        f"- inline / skopeo: **{med['inline'] / med['skopeo']:.2f}x**",
        f"- queue / skopeo: **{med['queue'] / med['skopeo']:.2f}x**", "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mb", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-release-bench-") as name:
        tmp = Path(name)
        (tmp / "docker").mkdir()
        (tmp / "docker" / "config.json").write_text('{"auths": {}}')
        text = report(benchmark(args, tmp), args)
    publish(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
