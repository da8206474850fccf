"""Copy benchmark: fanout against skopeo in the same run, on the same fresh image.

    .venv/bin/python bench/copy_bench.py [--layers 5] [--layer-mb 40] [--rounds 3]
    .venv/bin/python bench/copy_bench.py --memory-gb 1      # peak RSS of a 1 GiB single-layer copy

Every timed run copies into fresh, empty repositories (new names in fresh registries), so no run
benefits from another's blobs. Reports the median of ``--rounds`` and the ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
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

from bench.docs import byte_compile  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.registries import RegistryServer, start_registry  # noqa: E402

FANOUT = [sys.executable, "-m", "producer.cli"]
SKOPEO = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]


def timed(command: list[str] | str, *, shell: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=shell, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


SKOPEO_CACHES = (Path("/var/lib/containers/cache"),
                 Path.home() / ".local/share/containers/cache")


def forget_skopeo_cache() -> None:
    """skopeo remembers where it saw blobs and mounts from there; every run starts cold."""
    for cache in SKOPEO_CACHES:
        shutil.rmtree(cache, ignore_errors=True)


class Destinations:
    """Two fresh, empty registries per timed run (started and stopped outside the timing)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RegistryServer] = []

    def __enter__(self) -> tuple[RegistryServer, RegistryServer]:
        forget_skopeo_cache()
        name = secrets.token_hex(4)
        self.servers = [start_registry(self.tmp / f"{name}-{side}") for side in "ab"]
        return self.servers[0], self.servers[1]

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
            shutil.rmtree(server.root, ignore_errors=True)


def copy_benchmarks(args: argparse.Namespace, tmp: Path) -> list[str]:
    source = start_registry(tmp / "source")
    try:
        image = images.push_oci_image(
            source, "bench/app", "v1", layers=args.layers,
            layer_size=args.layer_mb * 1024 * 1024, compress=False)
        src = image.reference
        fresh = Destinations(tmp)

        def fanout_one() -> float:
            with fresh as (a, _):
                return timed([*FANOUT, "copy", src, f"{a.host}/bench/app"])

        def skopeo_one() -> float:
            with fresh as (a, _):
                return timed([*SKOPEO, f"docker://{src}", f"docker://{a.host}/bench/app:v1"])

        def fanout_three() -> float:
            with fresh as (a, b):
                return timed([*FANOUT, "copy", src, f"{a.host}/bench/one", f"{a.host}/bench/two",
                              f"{b.host}/bench/app"])

        def xargs_three() -> float:
            with fresh as (a, b):
                dests = f"{a.host}/bench/one:v1 {a.host}/bench/two:v1 {b.host}/bench/app:v1"
                # The working form of the recipe: -n1 (not -I{}), so each destination is one
                # argument.
                command = (f"printf '%s\\n' {dests} | xargs -n1 -P0 sh -c "
                           f"{shlex.quote(' '.join(SKOPEO) + f' docker://{src} docker://$0')}")
                return timed(command, shell=True)

        def loop_three() -> float:
            with fresh as (a, b):
                started = time.perf_counter()
                for dest in (f"{a.host}/bench/one", f"{a.host}/bench/two", f"{b.host}/bench/app"):
                    timed([*SKOPEO, f"docker://{src}", f"docker://{dest}:v1"])
                return time.perf_counter() - started

        runs = (("fanout, 1 destination", fanout_one), ("skopeo, 1 destination", skopeo_one),
                ("fanout, 3 destinations", fanout_three),
                ("xargs -P0 skopeo, 3 destinations", xargs_three),
                ("sequential skopeo loop, 3 destinations", loop_three))
        samples: dict[str, list[float]] = {name: [] for name, _ in runs}
        for _ in range(args.rounds):  # interleaved, so drift in the machine hits every tool alike
            for name, fn in runs:
                samples[name].append(fn())
        results = {name: statistics.median(values) for name, values in samples.items()}
    finally:
        source.close()
    size_mb = args.layers * args.layer_mb
    lines = [f"Image: {args.layers} layers x {args.layer_mb} MiB (uncompressed, random) = "
             f"{size_mb} MiB; median of {args.rounds} interleaved rounds; fresh loopback "
             f"registries per run (distribution {distribution_version()}), skopeo "
             f"{skopeo_version()} with its blob cache cleared, {os.cpu_count()} cores.", "",
             "| run | median s | all runs |", "| --- | --- | --- |"]
    lines += [f"| {name} | {results[name]:.2f} | {' '.join(f'{v:.2f}' for v in vals)} |"
              for name, vals in samples.items()]
    one = results["fanout, 1 destination"] / results["skopeo, 1 destination"]
    three = results["fanout, 3 destinations"] / results["xargs -P0 skopeo, 3 destinations"]
    loop = results["fanout, 3 destinations"] / results["sequential skopeo loop, 3 destinations"]
    lines += ["", f"- fanout / skopeo, 1 destination: **{one:.2f}x**",
              f"- fanout / xargs -P0 skopeo, 3 destinations: **{three:.2f}x**",
              f"- fanout / sequential skopeo loop, 3 destinations: **{loop:.2f}x**"]
    return lines


def memory_benchmark(args: argparse.Namespace, tmp: Path) -> list[str]:
    source = start_registry(tmp / "mem-source")
    dest = start_registry(tmp / "mem-dest")
    try:
        size = int(args.memory_gb * 1024**3)
        image = images.push_oci_image(source, "bench/big", "v1", layers=1, layer_size=size,
                                      compress=False)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        seconds = timed([*FANOUT, "copy", image.reference, f"{dest.host}/bench/big"])
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    finally:
        source.close()
        dest.close()
    note = "" if peak_kib > before else " (an earlier child peaked higher; re-run alone)"
    return [f"- 1 layer of {args.memory_gb:g} GiB: copied in {seconds:.1f}s, peak RSS of the "
            f"`fanout copy` process **{peak_kib / 1024:.0f} MB**{note}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-gb", type=float, default=0,
                        help="run only the memory benchmark with one layer of this size")
    args = parser.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        if args.memory_gb:
            lines = memory_benchmark(args, Path(tmp))
        else:
            lines = copy_benchmarks(args, Path(tmp))
    print("\n".join(lines))
    return 0


def skopeo_version() -> str:
    out = subprocess.run(["skopeo", "--version"], capture_output=True, text=True,
                         check=False).stdout.split()
    return out[-1] if out else "?"


def distribution_version() -> str:
    out = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True,
                         check=False).stdout.split()
    return out[-1] if out else "?"


if __name__ == "__main__":
    sys.exit(main())
