"""Mirrors: ``fanout sync`` against ``skopeo sync``, requests counted at proxies, in one run.

    .venv/bin/python bench/mirror_bench.py [--tags 150] [--images 5] [--workers 1]
                                           [--concurrency 2] [--no-write]

The source is a registry behind the paging proxy (Docker Hub's pages of 100 and ``Link``),
holding one repository of ``--tags`` tags over ``--images`` small random images (consecutive
tags share one). Each tool syncs it into a fresh registry of its own, behind a counting proxy,
in three scenarios run one after the other:

- first: the whole repository, to an empty destination;
- again: at once, nothing changed;
- moved: one source tag moved to a new image.

fanout: ``fanout sync bench --wait`` (a ``[[mirrors]]`` of fanout.toml) with ``--workers``
celery workers already running against a Redis of their own. skopeo: ``skopeo sync --all
--preserve-digests --src docker --dest docker SRC DEST_PREFIX`` with an empty home.

What counts for Docker Hub's pull limit is the source's GETs of manifests (a blob GET is not
counted by Docker Hub, but costs bandwidth; both are shown); HEADs and listings are free there
but are requests all the same. Times include each command's start-up. Results go to
docs/benchmarks.md, section "Mirrors: fanout sync against skopeo sync" (``--no-write`` only
prints).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.copy_bench import FANOUT, distribution_version, skopeo_version  # noqa: E402
from bench.docs import publish, redis_version  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.cli import fanout_env  # noqa: E402
from tests.support.queue import Process, RedisServer, start_worker  # noqa: E402
from tests.support.quirks import profiles  # noqa: E402
from tests.support.quirks.proxy import QuirkProxy  # noqa: E402
from tests.support.registries import RegistryServer, start_registry  # noqa: E402

SECTION = "## Mirrors: fanout sync against skopeo sync"
TOOLS = ("fanout", "skopeo")
SCENARIOS = {
    "first": "first sync, empty destination",
    "again": "second sync, nothing changed",
    "moved": "one source tag moved",
}
REPO = "bench/app"
DOCKER_HUB_PAGE = 100
COMMAND_TIMEOUT_S = 900
WRITES = ("PUT", "POST", "PATCH", "DELETE")
Tally = Counter[tuple[str, str]]


@dataclass(frozen=True)
class Sample:
    """One tool's sync: its wall time and the requests the source and its destination saw."""

    seconds: float
    source: Tally
    dest: Tally

    @property
    def manifest_gets(self) -> int:
        """Source manifest GETs: what Docker Hub counts against the pull limit."""
        return self.source[("GET", "manifests")]

    @property
    def blob_gets(self) -> int:
        return self.source[("GET", "blobs")]

    @property
    def source_heads(self) -> int:
        return sum(n for (method, _), n in self.source.items() if method == "HEAD")

    @property
    def listings(self) -> int:
        """Tag list pages, at the source and the destination."""
        return self.source[("GET", "tags")] + self.dest[("GET", "tags")]

    @property
    def dest_writes(self) -> int:
        """PUTs, POSTs and PATCHes at the destination (manifests, tags and uploads)."""
        return sum(n for (method, _), n in self.dest.items() if method in WRITES)

    @property
    def source_requests(self) -> int:
        return sum(self.source.values())

    @property
    def dest_requests(self) -> int:
        return sum(self.dest.values())

    @property
    def requests(self) -> int:
        return self.source_requests + self.dest_requests


Results = dict[str, dict[str, Sample]]


def tag_names(count: int) -> list[str]:
    return [f"1.{n}.0" for n in range(count)]


def fill_source(source: RegistryServer, tags: list[str], image_count: int) -> None:
    """``tags`` over ``image_count`` images, consecutive tags sharing one (pushed behind the
    proxy: filling the source is not part of any sync)."""
    per_image = -(-len(tags) // image_count)
    for start in range(0, len(tags), per_image):
        images.tag_image(source, REPO, tags[start:start + per_image])


def skopeo_sync_command(home: Path, source: str, dest_prefix: str) -> tuple[list[str],
                                                                            dict[str, str]]:
    """``skopeo sync`` with an empty auth file, registries.conf and home of its own, as
    tests/support/skopeo.py runs skopeo: nothing from the machine leaks in."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "auth.json").write_text('{"auths": {}}')
    (home / "registries.conf").write_text("")
    (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "DOCKER_CONFIG": str(home / ".docker"), "TMPDIR": str(home),
           "REGISTRY_AUTH_FILE": str(home / "auth.json"),
           "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf")}
    argv = ["skopeo", "--policy", str(home / "policy.json"), "--registries.d", str(home),
            "sync", "--all", "--preserve-digests", "--src", "docker", "--dest", "docker",
            "--src-tls-verify=false", "--dest-tls-verify=false",
            f"--authfile={home / 'auth.json'}", source, dest_prefix]
    return argv, env


def timed(argv: list[str], env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True,
                          check=False, timeout=COMMAND_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}… exited {done.returncode}:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def check_mirrored(source: RegistryServer, dests: Mapping[str, RegistryServer]) -> None:
    """Every tool's destination has every source tag on the source's digest (read behind the
    proxies, so the check is not counted)."""
    want = images.tag_digests(source, REPO)
    for tool, dest in dests.items():
        have = images.tag_digests(dest, REPO)
        if have != want:
            wrong = sorted(t for t in want if have.get(t) != want[t])
            raise AssertionError(f"{tool}: {len(wrong)} tags differ, e.g. {wrong[:5]}")


def benchmark(args: argparse.Namespace, tmp: Path) -> Results:
    """Start the source, both destinations, Redis and the workers (untimed), then run every
    scenario for both tools; the requests each sync sent, by proxy."""
    tags = tag_names(args.tags)
    source = start_registry(tmp / "source", wait=False)
    dests = {tool: start_registry(tmp / f"dest-{tool}", wait=False) for tool in TOOLS}
    redis_server = RedisServer(tmp / "redis", persistent=False)
    workers: list[Process] = []
    proxies: list[QuirkProxy] = []
    try:
        for server in (source, *dests.values()):
            server.wait_ready()
        redis_server.start()
        fill_source(source, tags, args.images)
        source_proxy = _for_skopeo(QuirkProxy(source.url, profiles.paging(DOCKER_HUB_PAGE)))
        dest_proxies = {tool: _for_skopeo(QuirkProxy(dests[tool].url, [])) for tool in TOOLS}
        proxies = [source_proxy, *dest_proxies.values()]

        docker = tmp / "docker"
        docker.mkdir()
        (docker / "config.json").write_text('{"auths": {}}')
        # The spool is per host: one of the bench's own, so no other worker's blobs help it.
        env = fanout_env(docker, FANOUT_BROKER_URL=redis_server.url,
                         FANOUT_SPOOL_DIR=str(tmp / "spool"))
        config = tmp / "fanout.toml"
        config.write_text(f'[[mirrors]]\nname = "bench"\nsource = "{source_proxy.host}/{REPO}"\n'
                          f'destinations = ["{dest_proxies["fanout"].host}/{REPO}"]\n')
        workers = [start_worker(f"mirror{i}", env, tmp, loglevel="INFO", pool="prefork",
                                concurrency=args.concurrency, wait=False)
                   for i in range(args.workers)]
        for worker in workers:
            worker.wait_for_log(" ready.")

        fanout = [*FANOUT, "sync", "bench", "--config", str(config), "--wait", "--poll", "0.05",
                  "--timeout", "600"]
        skopeo, skopeo_env = skopeo_sync_command(
            tmp / "skopeo-home", f"{source_proxy.host}/{REPO}",
            f"{dest_proxies['skopeo'].host}/{REPO.rpartition('/')[0]}")
        runs: dict[str, Callable[[], float]] = {"fanout": lambda: timed(fanout, env),
                                                "skopeo": lambda: timed(skopeo, skopeo_env)}
        results: Results = {}
        for scenario in SCENARIOS:
            if scenario == "moved":
                images.tag_image(source, REPO, tags[:1], layer_size=300)
            results[scenario] = {}
            for tool in TOOLS:
                source_proxy.reset_seen()
                dest_proxies[tool].reset_seen()
                seconds = runs[tool]()
                results[scenario][tool] = Sample(seconds, source_proxy.tally(),
                                                 dest_proxies[tool].tally())
            check_mirrored(source, dests)
        return results
    finally:
        for worker in workers:
            worker.stop()
        for proxy in proxies:
            proxy.stop()
        redis_server.stop()
        for server in (source, *dests.values()):
            server.close()


def ratio(fanout: float, skopeo: float) -> str:
    if skopeo == 0:
        return "—" if fanout == 0 else "∞"
    return f"{fanout / skopeo:.2f}x"


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        SECTION, "",
        f"`.venv/bin/python bench/mirror_bench.py --tags {args.tags} --images {args.images} "
        f"--workers {args.workers} --concurrency {args.concurrency}`: one repository of "
        f"{args.tags} tags over {args.images} small single-platform OCI images, at a registry "
        f"behind a proxy that pages tag lists as Docker Hub does ({DOCKER_HUB_PAGE} a page, "
        f"`Link`), mirrored by each tool into a fresh registry of its own behind a counting "
        f"proxy (distribution {distribution_version()}). fanout: `fanout sync bench --wait` "
        f"with {args.workers} `celery worker` of {args.concurrency} processes already running, "
        f"Redis {redis_version()}; skopeo {skopeo_version()}: `skopeo sync --all "
        f"--preserve-digests --src docker --dest docker`; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} "
        f"CPUs (load average {args.load:.1f} at the start: the machine is shared). One run; "
        f"times include start-up; after each scenario both destinations were checked to hold "
        f"every source tag on the source's digest.", "",
        "Requests as the proxies saw them. Manifest GETs at the source are what Docker Hub "
        "counts against its pull limit; HEADs and listings are not counted there.", "",
        "| scenario | tool | source manifest GETs | source blob GETs | source HEADs | "
        "listings (source + dest) | dest writes | source requests | dest requests | all requests | "
        "wall s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, title in SCENARIOS.items():
        for tool in TOOLS:
            s = results[scenario][tool]
            lines.append(f"| {title} | {tool} | {s.manifest_gets} | {s.blob_gets} | "
                         f"{s.source_heads} | {s.listings} | {s.dest_writes} | "
                         f"{s.source_requests} | {s.dest_requests} | {s.requests} | "
                         f"{s.seconds:.2f} |")
    lines += ["", "fanout / skopeo:", "",
              "| scenario | source manifest GETs | source blob GETs | all requests | wall time |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for scenario, title in SCENARIOS.items():
        f, s = results[scenario]["fanout"], results[scenario]["skopeo"]
        lines.append(f"| {title} | {ratio(f.manifest_gets, s.manifest_gets)} | "
                     f"{ratio(f.blob_gets, s.blob_gets)} | {ratio(f.requests, s.requests)} | "
                     f"{ratio(f.seconds, s.seconds)} |")
    gets = {tool: "/".join(str(results[scenario][tool].manifest_gets) for scenario in SCENARIOS)
            for tool in TOOLS}
    heads = results["again"]["fanout"].source_heads
    lines += [
        "",
        f"- Pull-limit cost of the three runs (source manifest GETs, first/again/moved): fanout "
        f"{gets['fanout']}, skopeo {gets['skopeo']}. fanout resolves each tag with a HEAD "
        f"({heads} on a run that changes nothing) and GETs a manifest only for a digest it "
        f"copies; skopeo sync GETs the manifest of every tag it syncs, on every run.",
        "- The images are a few KiB: times are requests, process start-up and (for fanout) the "
        "queue round trip, not bytes.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tags", type=int, default=150)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.load = os.getloadavg()[0]
    if not 1 <= args.images <= args.tags:
        parser.error("--images must be between 1 and --tags")
    return args


def _for_skopeo(proxy: QuirkProxy) -> QuirkProxy:
    """Started, resetting TLS handshakes at once: skopeo tries HTTPS first, then HTTP."""
    proxy.reset_tls = True
    return proxy.start()


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-mirror-bench-") as name:
        text = report(benchmark(args, Path(name)), args)
    publish(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
