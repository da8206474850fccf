"""``bench/link_bench.py`` at a tiny size, so the bench cannot rot: the namespaces, shaped links,
registries, Redis, a worker, fanout and skopeo, every case, and the report (nothing is written to
docs/benchmarks.md). Needs root and ``ip netns``; it says so when they are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench import link_bench, netns

pytestmark = pytest.mark.timeout(240)


def test_the_link_bench_runs_every_case_on_a_shaped_network(tmp_path: Path) -> None:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"the link bench {reason}")
    for tool in ("docker-registry", "skopeo", "redis-server", "curl", "ss"):
        if shutil.which(tool) is None:
            pytest.skip(f"the link bench needs `{tool}`")
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout.split())
    # 2 MiB over 40 Mbit/s links: long enough for the cut to land mid-copy, short enough to run
    # in seconds.
    args = link_bench.parse_args(["--layers", "2", "--layer-mb", "1", "--link-mbit", "40",
                                  "--worker-mbit", "160", "--cap-mib", "1", "--cut-at", "0.5",
                                  "--rounds", "2", "--no-write"])
    results = link_bench.benchmark(args, tmp_path)

    runs = results.runs
    assert set(runs) == set(link_bench.CASES)
    # Two rounds of each compared case, the median kept with both rounds' times.
    for case in ("copy", "queue", "skopeo"):
        assert len(runs[case].rounds) == 2 and runs[case].seconds in runs[case].rounds
    # What the bench is there to show, counted on the source's link (framing included): fanout
    # and the queue read the source once, skopeo's recipe three times.
    for case in ("copy", "queue", "resumed"):
        assert 0.98 < runs[case].moved("src", "up") / results.size < 1.3, case
    assert 2.9 < runs["skopeo"].moved("src", "up") / results.size < 3.9
    assert runs["skopeo"].floor == pytest.approx(3 * runs["copy"].floor)
    assert runs["resumed"].cut_at is not None
    assert runs["resumed"].moved("d1", "down") >= results.size
    capped = runs["capped"]
    assert capped.samples or capped.note.startswith("not supported")

    text = link_bench.report(results, args)
    assert text.startswith(link_bench.SECTION)
    for title in link_bench.CASES.values():
        assert f"| {title} |" in text
    assert "Each round, in order" in text
    # Its namespaces (and the links in them) are gone.
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               check=True).stdout.split())
    assert not {name for name in after - before if name.startswith("lb")}
