"""CPU and wall time of one copy, fanout against skopeo: 5 gzip layers of 30 MiB on loopback.

    PYTHONPATH=. .venv/bin/python bench/copy_cpu.py [--rounds 5] [--layers 5] [--layer-mb 30]
    PYTHONPATH=. .venv/bin/python bench/copy_cpu.py --noop     # fanout's fixed cost alone

Each run copies into a fresh registry; user+system CPU is the copying process's own (its
children's rusage), not the registries'. Rounds are interleaved. ``--noop`` copies a tiny
image again to a destination that holds it: start-up, the probe, one HEAD, exit. Prints
only: the numbers and what they mean are in docs/benchmarks.md, "Copy: fanout against skopeo".
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.copy_bench import SKOPEO, forget_skopeo_cache  # noqa: E402
from bench.docs import byte_compile  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and the process's user+system CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as byte_compile left it
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=30)
    parser.add_argument("--noop", action="store_true")
    args = parser.parse_args()
    byte_compile()
    fanout = [sys.executable, "-m", "producer.cli", "copy"]
    samples: dict[str, list[tuple[float, float]]] = {"fanout": [], "skopeo": []}
    with tempfile.TemporaryDirectory(prefix="fanout-cpu-") as tmp:
        source = start_registry(Path(tmp) / "source")
        try:
            if args.noop:
                image = images.push_oci_image(source, "bench/app", "v1", layers=1,
                                              layer_size=1024)
                dest = start_registry(Path(tmp) / "dest")
                try:
                    target = f"{dest.host}/bench/app"
                    run([*fanout, image.reference, target])
                    samples["fanout"] = [run([*fanout, image.reference, target])
                                         for _ in range(args.rounds)]
                    del samples["skopeo"]
                finally:
                    dest.close()
            else:
                image = images.push_oci_image(source, "bench/app", "v1", layers=args.layers,
                                              layer_size=args.layer_mb * 1024 * 1024,
                                              compress=True)
                print(f"{image.total_blob_bytes / 1e6:.0f} MB of blobs")
                for i in range(args.rounds + 1):  # the first round warms caches, uncounted
                    for tool in samples:
                        dest = start_registry(Path(tmp) / f"{tool}-{i}")
                        try:
                            if tool == "fanout":
                                command = [*fanout, image.reference, f"{dest.host}/bench/app"]
                            else:
                                forget_skopeo_cache()
                                command = [*SKOPEO, f"docker://{image.reference}",
                                           f"docker://{dest.host}/bench/app:v1"]
                            timed = run(command)
                            if i:
                                samples[tool].append(timed)
                        finally:
                            dest.close()
        finally:
            source.close()
    print("load average (1, 5, 15 min) at the end: "
          + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    for tool, runs in samples.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{tool}: median {statistics.median(walls):.2f} s wall, "
              f"{statistics.median(cpus):.2f} s CPU; runs "
              + " ".join(f"{w:.2f}/{c:.2f}" for w, c in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
