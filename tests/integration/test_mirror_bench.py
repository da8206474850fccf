"""``bench/mirror_bench.py`` at a tiny size, so the bench cannot rot: every scenario runs for both
tools against real registries, proxies, Redis, a worker and skopeo, and the report is built
(nothing is written to docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import mirror_bench

pytestmark = pytest.mark.timeout(240)


def test_the_mirror_bench_runs_every_scenario_for_both_tools(tmp_path: Path) -> None:
    args = mirror_bench.parse_args(["--tags", "4", "--images", "2", "--no-write"])
    # The bench checks after every scenario that both destinations hold every source tag.
    results = mirror_bench.benchmark(args, tmp_path)

    assert set(results) == set(mirror_bench.SCENARIOS)
    fanout = {scenario: results[scenario]["fanout"] for scenario in results}
    # What the bench is there to show: one manifest GET per image, none when nothing changed.
    assert fanout["first"].manifest_gets == 2
    assert fanout["again"].manifest_gets == fanout["again"].blob_gets == 0
    assert fanout["again"].dest_writes == 0
    assert fanout["moved"].manifest_gets == 1
    for scenario in results:
        assert results[scenario]["skopeo"].requests > 0

    text = mirror_bench.report(results, args)
    assert text.startswith(mirror_bench.SECTION)
    for title in mirror_bench.SCENARIOS.values():
        assert text.count(f"| {title} |") == 3  # a row per tool, and one of ratios
