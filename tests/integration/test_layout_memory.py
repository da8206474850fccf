"""A layer over 500 MiB through an OCI archive with memory flat (issue 17: "a 1 GiB layer under
100 MB RSS"): registry → ``oci-archive:`` → registry, each step the real ``fanout`` command in a
process of its own, its peak RSS read from the kernel.

Both directions of the layout code a bundle uses too (``fanout export`` writes an archive
through the same transport, ``fanout import`` reads one), so the bundle commands are not
carried through it again here: the layer is the expensive part of the whole suite (written to
disk, pushed, hashed at every hop), and ``tests/integration/test_bundles.py`` covers them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import REPO_ROOT, fanout_env
from tests.support.images import get_manifest, make_layer, push_oci_image
from tests.support.registries import RegistryServer
from tests.support.registry_client import RepoClient

pytestmark = pytest.mark.timeout(240)

# Over the 500 MiB the issue names, and no more: copies of it cross the disk.
LAYER_BYTES = 520 * 1024 * 1024
# The bound for a 1 GiB layer (100 MB), in the KiB the kernel counts in.
RSS_LIMIT_KIB = 100_000 * 1000 // 1024
STEP_TIMEOUT_S = 120.0
TIME = "/usr/bin/time"  # GNU time (scripts/setup.sh installs it)


@dataclass(frozen=True)
class Step:
    code: int
    peak_rss_kib: int
    seconds: float
    stdout: str
    stderr: str


def _fanout_measured(args: list[str], env: Mapping[str, str], scratch: Path) -> Step:
    """Run ``fanout ARGS`` under GNU time, which reports the process's peak RSS (``%M``, KiB).

    Not pytest's own ``wait4``/``RUSAGE_CHILDREN``: a child started from pytest inherits its
    high-water mark through ``exec``, so ``ru_maxrss`` would report pytest's ~100 MB whatever
    fanout used. GNU time is a small process of its own, so the mark its child inherits is
    its own, a few MB."""
    peak = scratch / f"{args[0]}-{time.monotonic_ns()}.rss"
    started = time.monotonic()
    done = subprocess.run([TIME, "-f", "%M", "-o", str(peak), sys.executable, "-m",
                           "producer.cli", *args], env=dict(env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False)
    return Step(done.returncode, int(peak.read_text().split()[-1]),
                time.monotonic() - started, done.stdout, done.stderr)


def _check(step: Step, what: str) -> None:
    print(f"{what}: exit {step.code}, peak RSS {step.peak_rss_kib / 1024:.1f} MiB, "
          f"{step.seconds:.1f}s")
    assert step.code == 0, step.stderr + step.stdout
    assert step.peak_rss_kib < RSS_LIMIT_KIB, (
        f"{what}: peak RSS {step.peak_rss_kib} KiB over {RSS_LIMIT_KIB} KiB carrying a "
        f"{LAYER_BYTES >> 20} MiB layer")


def _blob_size(registry: RegistryServer, repo: str, digest: str) -> int | None:
    with RepoClient.at(registry, repo) as client:
        head = client.blob_head(digest)
    return int(head.headers["Content-Length"]) if head.status_code == 200 else None


def test_a_layer_over_500_mib_crosses_an_archive_both_ways_in_flat_memory(
    fresh_registry: Callable[..., RegistryServer], tmp_path: Path,
) -> None:
    # Registries of this test's own, under tmp_path: their storage goes with the test, not
    # with the session (the shared ones would hold the layer until every test has run).
    source, far = fresh_registry(), fresh_registry()
    work = tmp_path / "work"
    work.mkdir()
    try:
        layer = make_layer(LAYER_BYTES, compress=False, directory=work)
        image = push_oci_image(source, "big/app", "1.0", layers=0, base_layers=[layer])
        digest, size = layer.digest, layer.size
        del layer  # its temporary file goes with it
        env = fanout_env()
        archive = work / "app.tar"

        _check(_fanout_measured(["copy", f"{source.host}/big/app:1.0",
                                 f"oci-archive:{archive}"], env, work),
               "registry → oci-archive")
        assert archive.stat().st_size > size
        _check(_fanout_measured(["copy", f"oci-archive:{archive}:1.0", f"{far.host}/copied/app"],
                                env, work),
               "oci-archive → registry")
        assert get_manifest(far, "copied/app:1.0")[0] == image.manifest  # the same digest
        assert _blob_size(far, "copied/app", digest) == size
        archive.unlink()
    finally:
        # Over 1.5 GiB on disk by now: gone at once, not kept with pytest's last three runs.
        for server in (source, far):
            server.close()
            shutil.rmtree(server.root / "storage", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
