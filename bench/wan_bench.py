"""WAN benchmark: fanout against skopeo when every round trip costs tens of milliseconds.

    .venv/bin/python bench/wan_bench.py [--rounds 3] [--request-ms 50] [--connect-ms 150]
                                        [--fanout-env K=V ...] [--trace] [--no-write]

Four real registries (distribution, token auth, each with its own token server) — a source and
three destinations — each behind a latency proxy (``bench/latency_proxy.py``), and each token
server behind one too: every request waits ``--request-ms``, every new connection
``--connect-ms`` more; the registries' challenges point at the token servers' proxies. The source
holds an OCI index of 3 platforms (a shared base layer and a layer of its own each, 3 configs:
7 blobs, about 1.5 MB). Each case runs for both tools, interleaved over ``--rounds``, each round
into fresh destination repositories, with skopeo's blob-info cache cleared per case:

- fresh, 1 destination: ``fanout copy SRC DST:v1`` / ``skopeo copy --all --preserve-digests``
- no-op re-copy: the same tool copies again to a destination it has just filled (not timed)
- 3 destinations: ``fanout copy SRC D1 D2 D3`` / ``printf '%s\\n' D1 D2 D3 | xargs -P0 -I{}
  skopeo copy … {}`` (one destination per registry)

The source is named by digest, each destination by tag. Times include process start-up.

The floor: the critical path of an ideal client, in round trips (RT) and connection set-ups::

    fresh copy (1 or 3 destinations; the destinations go in parallel)
      1  ping /v2/ (source and destination at once: a 401 and its challenge)    + 1 connection
      2  token (source and destination tokens at once)                          + 1 connection
      3  GET the index from the source
      4  GET the 3 child manifests (at once)
      5  HEAD the 7 blobs at the destination (at once)
      6  POST an upload per blob (at once; the source blob GETs leave alongside)
      7  PUT each blob, streamed from its source GET (at once)
      8  PUT the 3 child manifests by digest (at once)
      9  PUT the index by digest
     10  PUT the tag
    no-op re-copy (the source is pinned by digest: nothing need be read there)
      1  ping, 2  token (+ 1 connection each), 3  HEAD DST:v1: the digest it names is the source's

Connections a client opens while waiting for something else (for parallel requests) are not on
the critical path. floor s = RT x request delay + connections x connection delay.

What each run spent is read from the proxies (``bench/wan_trace.py``): requests, new
connections, token requests, and the sequential chain — the heaviest run of requests each begun
after the previous was answered, i.e. the round trips the tool did not overlap. Results go to
docs/benchmarks.md, section "WAN" (``--no-write`` only prints).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.copy_bench import SKOPEO_CACHES, distribution_version, skopeo_version  # noqa: E402
from bench.docs import byte_compile, write_section  # noqa: E402
from bench.latency_proxy import (  # noqa: E402
    Hop,
    LatencyProxy,
    all_hops,
    reset_all,
    start_proxies,
    stop_all,
    tls_refused,
)
from bench.wan_trace import Cost, chain, chain_cost, describe, timeline  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.cli import fanout_env, write_docker_auths  # noqa: E402
from tests.support.oci import sha256  # noqa: E402
from tests.support.registries import RegistryServer, start_registry  # noqa: E402

SECTION = "## WAN: fanout against skopeo over a slow network"
DESTINATIONS = ("a", "b", "c")
LAYER_SIZE = 375_000  # 4 gzip'd layers of random bytes (base + one per platform): ~1.5 MB
RUN_TIMEOUT_S = 120
FLOORS = {"fresh": Cost(10, 2), "noop": Cost(3, 2), "three": Cost(10, 2)}
CASES = (("fresh", "fresh copy, 1 destination"), ("noop", "no-op re-copy, 1 destination"),
         ("three", "fresh copy, 3 destinations"))
TOOLS = ("fanout", "skopeo")


@dataclass
class Run:
    """One timed client run and what the proxies saw of it."""

    seconds: float
    hops: list[Hop] = field(repr=False)
    connections: int
    tls_refused: int
    chain: list[Hop] = field(repr=False)
    startup: float  # process start to its first request
    spawned: float  # time.monotonic() at the start, the origin of a trace

    @property
    def requests(self) -> int:
        return len(self.hops)

    @property
    def span(self) -> float:
        """From the first request's start to the last answer."""
        ends = [hop.end for hop in self.hops if hop.end is not None]
        return max(ends) - min(hop.start for hop in self.hops) if ends else 0.0

    @property
    def tokens(self) -> int:
        return sum(1 for hop in self.hops if hop.role.endswith("-token"))


@dataclass
class Network:
    """The registries, their proxies, the source image and how each tool is invoked."""

    registries: dict[str, RegistryServer]
    proxies: dict[str, LatencyProxy]
    source: str  # host/repo@digest, through the source's proxy
    digest: str
    password: str
    tmp: Path
    fanout_settings: dict[str, str]  # extra FANOUT_* environment, as --fanout-env gave it
    image_bytes: int  # blobs and manifests

    def host(self, role: str) -> str:
        return self.proxies[role].host

    def fanout(self, destinations: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "producer.cli", "copy", self.source, *destinations]

    def fanout_env(self) -> dict[str, str]:
        config = write_docker_auths(self.tmp / "docker", {
            self.host(role): ("fanout", self.password) for role in ("source", *DESTINATIONS)})
        return fanout_env(config, **self.fanout_settings)

    def skopeo(self, destination: str) -> list[str]:
        home = self.tmp / "skopeo-home"
        creds = f"fanout:{self.password}"
        return ["skopeo", "--policy", str(home / "policy.json"), "--registries.d", str(home),
                "copy", "--quiet", "--all", "--preserve-digests",
                f"--authfile={home / 'auth.json'}", "--src-tls-verify=false",
                "--dest-tls-verify=false", "--src-creds", creds, "--dest-creds", creds,
                f"docker://{self.source}", destination]

    def skopeo_env(self) -> dict[str, str]:
        """A throwaway HOME, an accept-anything policy: nothing from the machine leaks in."""
        home = self.tmp / "skopeo-home"
        home.mkdir(exist_ok=True)
        (home / "auth.json").write_text('{"auths": {}}')
        (home / "registries.conf").write_text("")
        (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "DOCKER_CONFIG": str(home / ".docker"),
                "REGISTRY_AUTH_FILE": str(home / "auth.json"),
                "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"), "TMPDIR": str(home)}

    def command(self, tool: str, repo: str, roles: Sequence[str]) -> tuple[list[str] | str,
                                                                           dict[str, str]]:
        """What a user of ``tool`` runs to copy the source to ``repo:v1`` on every role."""
        destinations = [f"{self.host(role)}/{repo}:v1" for role in roles]
        if tool == "fanout":
            return self.fanout(destinations), self.fanout_env()
        if len(destinations) == 1:
            return self.skopeo(f"docker://{destinations[0]}"), self.skopeo_env()
        lines = " ".join(shlex.quote(f"docker://{d}") for d in destinations)
        return (f"printf '%s\\n' {lines} | xargs -P0 -I{{}} {shlex.join(self.skopeo('{}'))}",
                self.skopeo_env())

    def check(self, repo: str, roles: Sequence[str]) -> None:
        """Every destination tag names the source's digest (read straight from the registry)."""
        for role in roles:
            raw, _ = images.get_manifest(self.registries[role], f"{repo}:v1")
            if sha256(raw) != self.digest:
                raise AssertionError(f"{role}/{repo}:v1 is {sha256(raw)}, not {self.digest}")


def run(net: Network, tool: str, repo: str, roles: Sequence[str], args: argparse.Namespace,
        *, timed: bool = True) -> Run:
    """Run ``tool`` once and read its cost off the proxies."""
    command, env = net.command(tool, repo, roles)
    reset_all(net.proxies)
    started = time.monotonic()
    subprocess.run(command, shell=isinstance(command, str), check=True, cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)
    seconds = time.monotonic() - started
    hops = all_hops(net.proxies)
    path = chain(hops, args.request_ms / 1000, args.connect_ms / 1000)
    first = min((hop.start for hop in hops), default=started)
    result = Run(seconds, hops, sum(1 for hop in hops if hop.first), tls_refused(net.proxies),
                 path, first - started, started)
    if timed:
        net.check(repo, roles)
    return result


def forget_skopeo_cache() -> None:
    """skopeo remembers where it saw blobs and mounts from there: each case starts cold."""
    for cache in SKOPEO_CACHES:
        shutil.rmtree(cache, ignore_errors=True)


def run_case(net: Network, case: str, tool: str, round_: int, args: argparse.Namespace) -> Run:
    """One case for one tool, into repositories of its own; a no-op is prepared untimed."""
    forget_skopeo_cache()
    repo = f"wan/{case}-{tool}-{round_}"
    roles = DESTINATIONS if case == "three" else DESTINATIONS[:1]
    if case == "noop":
        run(net, tool, repo, roles, args, timed=False)
        net.check(repo, roles)
    return run(net, tool, repo, roles, args)


def start_network(tmp: Path, args: argparse.Namespace) -> Network:
    password = secrets.token_urlsafe(16)
    registries: dict[str, RegistryServer] = {}
    try:
        for role in ("source", *DESTINATIONS):
            registries[role] = start_registry(tmp / role, auth="token", password=password,
                                              wait=False)
        for server in registries.values():
            server.wait_ready()
        image = images.push_oci_index(registries["source"], "wan/app", "v1",
                                      layer_size=LAYER_SIZE)
    except BaseException:
        for server in registries.values():
            server.close()
        raise
    upstreams: dict[str, str] = {}
    for role, server in registries.items():
        assert server.token_server is not None
        upstreams[role] = server.url
        upstreams[f"{role}-token"] = server.token_server.url
    proxies = start_proxies(upstreams, request_delay=args.request_ms / 1000,
                            connect_delay=args.connect_ms / 1000)
    source = f"{proxies['source'].host}/wan/app@{image.digest}"
    size = image.total_blob_bytes + image.size + sum(child.size for child in image.children)
    settings = dict(item.split("=", 1) for item in args.fanout_env)
    return Network(registries, proxies, source, image.digest, password, tmp, settings, size)


Runs = dict[str, dict[str, list[Run]]]  # case -> tool -> one per round


def benchmark(args: argparse.Namespace, tmp: Path) -> tuple[Runs, int]:
    """Every case for both tools, ``args.rounds`` times; and the image's size in bytes."""
    net = start_network(tmp, args)
    runs: Runs = {c: {t: [] for t in TOOLS} for c, _ in CASES}
    try:
        for round_ in range(args.rounds):
            # Interleaved, the first tool alternating, so drift in the machine hits both alike.
            tools = TOOLS if round_ % 2 == 0 else TOOLS[::-1]
            for case, _ in CASES:
                for tool in tools:
                    result = run_case(net, case, tool, round_, args)
                    runs[case][tool].append(result)
                    print(f"round {round_ + 1} {case:<5} {tool:<6} {result.seconds:6.2f} s  "
                          f"{result.requests:3d} requests  chain "
                          f"{chain_cost(result.chain)}", file=sys.stderr)
    finally:
        stop_all(net.proxies)
        for server in net.registries.values():
            server.close()
    return runs, net.image_bytes


def median_run(runs: Sequence[Run]) -> Run:
    """The run of median time (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


def med(runs: Sequence[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(r) for r in runs)


def report(runs: Runs, image_bytes: int, args: argparse.Namespace) -> list[str]:
    d, c = args.request_ms / 1000, args.connect_ms / 1000
    lines = [
        f"`.venv/bin/python bench/wan_bench.py --rounds {args.rounds} --request-ms "
        f"{args.request_ms:g} --connect-ms {args.connect_ms:g}"
        f"{''.join(f' --fanout-env {item}' for item in args.fanout_env)}`: four token-auth "
        f"registries (distribution {distribution_version()}) and their token servers, each "
        f"behind a latency proxy: {args.request_ms:g} ms per request, {args.connect_ms:g} ms "
        "more per new connection (keep-alive honoured). Image: an OCI index of 3 platforms, 7 "
        f"blobs, {image_bytes / 1e6:.2f} MB. Median of {args.rounds} interleaved rounds, fresh "
        f"destination repositories each round; skopeo {skopeo_version()} (`--all "
        "--preserve-digests`, blob-info cache cleared per case), fanout with "
        f"{', '.join(args.fanout_env) or 'its defaults (referrers on)'}; {os.cpu_count()} "
        "cores. Times include process start-up; the three-destination skopeo run is "
        "`printf '%s\\n' D1 D2 D3 | xargs -P0 -I{} skopeo copy … {}`. fanout's requests "
        "include the pings with which it opens connections to a registry while its first "
        "token is fetched (`FANOUT_PRECONNECT`, 3 by default).", "",
        "| case | fanout s | skopeo s | fanout / skopeo | requests (fanout / skopeo) "
        "| new connections (f / s) | token requests (f / s) | sequential chain, fanout "
        "(median run) | sequential chain, skopeo (median run) | floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case, name in CASES:
        f, s = runs[case]["fanout"], runs[case]["skopeo"]
        floor = FLOORS[case]
        fs, ss = med(f, lambda r: r.seconds), med(s, lambda r: r.seconds)
        fc, sc = chain_cost(median_run(f).chain), chain_cost(median_run(s).chain)

        def pair(value: Callable[[Run], float], f: list[Run] = f, s: list[Run] = s) -> str:
            return f"{med(f, value):g} / {med(s, value):g}"

        lines.append(
            f"| {name} | {fs:.2f} | {ss:.2f} | {fs / ss:.2f}x | {pair(lambda r: r.requests)} "
            f"| {pair(lambda r: r.connections)} | {pair(lambda r: r.tokens)} "
            f"| {fc} = {fc.seconds(d, c):.2f} s | {sc} = {sc.seconds(d, c):.2f} s "
            f"| {floor} = {floor.seconds(d, c):.2f} s |")
    lines += ["", "Where the time went, in the median run of each: start-up, from starting the "
              "process to its first request; requests, from the first request to the last "
              "answer; exit, from there to the process's end; the chain, the run's sequential "
              "requests in order (`+c`: it opened a connection), and what the proxies' delays "
              "make of them (the rest of the requests' span is the client's own time between "
              "them).", "",
              "| case | tool | s | start-up s | requests s | exit s | chain s | the chain |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for case, name in CASES:
        for tool in TOOLS:
            r = median_run(runs[case][tool])
            cost = chain_cost(r.chain)
            lines.append(f"| {name} | {tool} | {r.seconds:.2f} | {r.startup:.2f} | "
                         f"{r.span:.2f} | {r.seconds - r.startup - r.span:.2f} | "
                         f"{cost.seconds(d, c):.2f} | {describe(r.chain)} |")
    lines += ["", "The floor is an ideal client's critical path (the model is in "
              "`bench/wan_bench.py`'s docstring): ping, token, the index, its children at once, "
              "the blobs' HEADs at once, an upload's POST and its PUT streamed from the source's "
              "GET (every blob at once), the children's PUTs at once, the index's PUT, the tag's; "
              "for a no-op, ping, token and one HEAD of the destination's tag. skopeo's HTTPS "
              "attempts at a plain-HTTP registry (as fanout's) are refused at once and not "
              "charged: on a real network that connection would have been the TLS one."]
    return lines


def trace(runs: Runs, args: argparse.Namespace) -> list[str]:
    """Every request of each case's median run, for the engineer looking for round trips."""
    d, c = args.request_ms / 1000, args.connect_ms / 1000
    out: list[str] = []
    for case, name in CASES:
        for tool in TOOLS:
            r = median_run(runs[case][tool])
            out += ["", f"### {name}, {tool}: {r.seconds:.2f} s, {r.requests} requests, chain "
                    f"{chain_cost(r.chain)} = {chain_cost(r.chain).seconds(d, c):.2f} s, "
                    f"{r.tls_refused} TLS attempts refused",
                    "  start     end  conn     st  kind                  proxy     path"]
            out += timeline(r.hops, r.spawned)
            out += ["chain: " + describe(r.chain)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--request-ms", type=float, default=50.0,
                        help="delay of every request, each way included (default 50)")
    parser.add_argument("--connect-ms", type=float, default=150.0,
                        help="further delay of every new connection (default 150)")
    parser.add_argument("--fanout-env", action="append", default=[], metavar="K=V",
                        help="run fanout with this setting too, e.g. FANOUT_REFERRERS=0 or "
                             "FANOUT_BLOB_CONCURRENCY=8 (repeatable)")
    parser.add_argument("--trace", action="store_true",
                        help="print every request of each case's median run")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if any("=" not in item for item in args.fanout_env):
        parser.error("--fanout-env takes KEY=VALUE")
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="fanout-wan-") as tmp:
        runs, image_bytes = benchmark(args, Path(tmp))
    lines = report(runs, image_bytes, args)
    print("\n".join(lines))
    if args.trace:
        print("\n".join(trace(runs, args)))
    if not args.no_write:
        write_section(SECTION, "\n".join([SECTION, "", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
