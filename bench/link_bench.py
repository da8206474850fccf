"""Shaped links: fanout, the queue and skopeo copying one image to 3 registries, against the floor.

    PYTHONPATH=$PWD .venv/bin/python bench/link_bench.py [--layers 4] [--layer-mb 50]
        [--link-mbit 200] [--worker-mbit 800] [--cap-mib 12] [--cut-at 0.8] [--cut-s 1]
        [--mtu 1500] [--rounds 1] [--no-write]

Needs root: it builds a network of namespaces (``bench/netns.py``): a switch, and a host of its own
for the source registry (``src``), each of 3 destination registries (``d1``..``d3``) and the
worker (``wk``), each on one link to the switch shaped by tbf in both directions. The registries
are at remote sites, each behind a link of ``--link-mbit``; the worker sits in a data centre on a
fatter one, ``--worker-mbit``. Registries are distribution (``docker-registry serve``) inside their
namespaces; Redis and every client run on the worker's host. The source holds one OCI image of
``--layers`` x ``--layer-mb`` MiB of random, uncompressed bytes (nothing compresses). Each case
copies it to fresh, empty registries, ``D = <host>/bench/app:v1``:

- fanout copy: ``fanout copy SRC D1 D2 D3``;
- queue: ``fanout enqueue SRC D1 D2 D3 --wait``, a worker (``celery -P prefork -c 3``, the spool
  on) already running;
- skopeo: ``printf '%s\\n' D1 D2 D3 | xargs -n1 -P0 -I{} skopeo copy --src-tls-verify=false
  --dest-tls-verify=false docker://SRC docker://{}``;
- resumed: ``fanout copy`` again, ``d1``'s link cut when ``--cut-at`` of the image has reached it
  (its connections reset at both ends, its port down for ``--cut-s``);
- capped: ``fanout copy`` with ``FANOUT_BANDWIDTH=<each destination>=--cap-mib MiB`` (run only if
  this checkout reads ``FANOUT_BANDWIDTH``).

**The floor.** A link carries each direction at its rate, independently (tbf shapes egress). A
copy's floor is the most any one link-direction must carry over its rate, S being the image's
bytes (blobs and manifest): for fanout (the source read once, spooled on the worker) the source
link carries S up, the worker's 1 S down and 3 S up, each destination's S down; for skopeo the
source link and the worker's downlink carry 3 S. With the defaults (worker 4x a registry's rate)
the bottleneck is the source's link (and each destination's, equally, for fanout): fanout's
floor is S / R, skopeo's 3 S / R. With ``--worker-mbit`` equal to ``--link-mbit`` it is the
worker's uplink, 3 S / R, for both. Framing (Ethernet, IP, TCP: about 4.5% at MTU 1500) counts
against the tool, not in the floor. Bytes are counted at the switch's ports.

Results go to docs/benchmarks.md, section "Shaped links" (``--no-write`` only prints).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.copy_bench import distribution_version, skopeo_version  # noqa: E402
from bench.docs import publish, redis_version  # noqa: E402
from bench.netns import MIB, Network, Sample, Sampler  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.cli import fanout_env  # noqa: E402
from tests.support.queue import Process, _descendants, queue_env  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402

SECTION = "## Shaped links: fanout, the queue and skopeo against the floor"
DESTS = ("d1", "d2", "d3")
REPO = "bench/app"
CASES = {
    "copy": "fanout copy",
    "queue": "fanout enqueue --wait (worker running)",
    "skopeo": "xargs -P0 skopeo copy",
    "resumed": "fanout copy, d1's link cut",
    "capped": "fanout copy, FANOUT_BANDWIDTH",
}
# (role, "up" | "down") -> how many times the image crosses it.
FANOUT_LOAD = {("src", "up"): 1, ("wk", "down"): 1, ("wk", "up"): 3,
               **{(d, "down"): 1 for d in DESTS}}
SKOPEO_LOAD = {("src", "up"): 3, ("wk", "down"): 3, ("wk", "up"): 3,
               **{(d, "down"): 1 for d in DESTS}}
FIRST_BYTE = 256 * 1024  # the source has sent this much more than manifests: blobs are moving
RUN_TIMEOUT_S = 900


@dataclass
class Run:
    """One case: its wall time and the switch's counters sampled through it."""

    case: str
    seconds: float
    started: float
    samples: list[Sample] = field(repr=False)
    floor: float
    bottleneck: str  # "src uplink", "wk uplink", "d1 downlink", ... (ties joined by commas)
    bottleneck_rate: float  # bytes per second
    cut_at: float | None = None  # seconds after the start, when the cut came
    note: str = ""
    cpu: float = 0.0  # user + system seconds of the command (and of the worker, for the queue)
    load: float = 0.0  # the machine's 1-minute load average as the case began
    rounds: list[float] = field(default_factory=list)  # every round's seconds (--rounds)

    def moved(self, role: str, direction: str) -> int:
        """Bytes ``role`` sent ("up") or received ("down") during the run."""
        index = 0 if direction == "up" else 1
        return (self.samples[-1].counters[role][index] - self.samples[0].counters[role][index])

    def first_byte(self) -> float:
        """Seconds from the start until the source's blobs were moving."""
        base = self.samples[0].counters["src"][0]
        return next((s.at - self.started for s in self.samples
                     if s.counters["src"][0] - base >= FIRST_BYTE), self.seconds)

    def source_done(self) -> float:
        """Seconds from the start until the source had sent all but the last 64 KiB."""
        final = self.samples[-1].counters["src"][0]
        return next((s.at - self.started for s in self.samples
                     if s.counters["src"][0] >= final - 64 * 1024), self.seconds)

    def last_byte(self) -> float:
        """Seconds from the start until the destinations had all but the last 64 KiB."""
        def received(sample: Sample) -> int:
            return sum(sample.counters[d][1] for d in DESTS)
        final = received(self.samples[-1])
        return next((s.at - self.started for s in self.samples
                     if received(s) >= final - 64 * 1024), self.seconds)


def floor_of(load: Mapping[tuple[str, str], int], size: int, net: Network,
             caps: dict[str, float] | None = None) -> tuple[float, str, float]:
    """The floor in seconds, which link-direction sets it, and at what rate (bytes/s)."""
    needs: dict[str, tuple[float, float]] = {}
    for (role, direction), times in load.items():
        rate = net.hosts[role].bytes_per_s
        if caps and direction == "down" and role in caps:
            rate = min(rate, caps[role])
        needs[f"{role} {direction}link"] = (times * size / rate, rate)
    best = max(seconds for seconds, _ in needs.values())
    # Ties are the rule (fanout: the source's uplink and every destination's downlink).
    tied = [where for where, (seconds, _) in needs.items() if seconds > best * (1 - 1e-9)]
    return best, ", ".join(tied), needs[tied[0]][1]


class Registry:
    """distribution on a host of the network, port 80, storage under ``storage``."""

    def __init__(self, net: Network, role: str, storage: Path, log_dir: Path) -> None:
        self.net, self.role, self.storage = net, role, storage
        log_dir.mkdir(parents=True, exist_ok=True)
        config = {"version": 0.1, "log": {"level": "warn"},
                  "storage": {"filesystem": {"rootdirectory": str(storage)},
                              "delete": {"enabled": True},
                              "maintenance": {"uploadpurging": {"enabled": False}}},
                  "http": {"addr": ":80", "secret": os.urandom(8).hex()}}
        path = log_dir / f"{role}-config.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        argv = net.exec(role, ["docker-registry", "serve", str(path)])
        self.process = Process(f"registry-{role}", argv, log_dir / f"{role}.log",
                               {k: v for k, v in os.environ.items()
                                if not k.startswith("REGISTRY_")}).start()

    @property
    def host(self) -> str:
        return self.net.address(self.role)

    def wait_ready(self) -> None:
        """``/v2/`` answers from the worker's host."""
        url = f"http://{self.host}/v2/"
        deadline = time.monotonic() + 20
        while subprocess.run(self.net.exec("wk", ["curl", "-sf", "-o", "/dev/null", url]),
                             check=False).returncode != 0:
            if not self.process.running or time.monotonic() > deadline:
                raise RuntimeError(f"registry on {self.role} not ready:\n{self.process.log()}")
            time.sleep(0.05)

    def tag_digest(self, tag: str = "v1") -> str | None:
        """The digest ``REPO:tag`` names, read from storage."""
        link = (self.storage / "docker/registry/v2/repositories" / REPO / "_manifests/tags"
                / tag / "current/link")
        return link.read_text().strip() if link.exists() else None

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Bench:
    """The network, its processes and the image; one ``case()`` after another."""

    args: argparse.Namespace
    tmp: Path
    net: Network
    source: Registry
    digest: str
    size: int
    dests: dict[str, Registry] = field(default_factory=dict)
    worker: Process | None = None
    redis: Process | None = None

    @property
    def src_ref(self) -> str:
        return f"{self.source.host}/{REPO}@{self.digest}"

    def dest_refs(self) -> list[str]:
        return [f"{self.net.address(d)}/{REPO}:v1" for d in DESTS]

    def settings(self) -> dict[str, str]:
        return {"FANOUT_INSECURE_REGISTRIES": ",".join(h.address
                                                       for h in self.net.hosts.values())}

    def fresh_destinations(self, case: str) -> None:
        """Empty registries for every case: nothing to mount or skip from an earlier one."""
        for registry in self.dests.values():
            registry.stop()
        self.dests = {d: Registry(self.net, d, self.tmp / case / d / "storage", self.tmp / case)
                      for d in DESTS}
        for registry in self.dests.values():
            registry.wait_ready()

    def forget_spooled(self) -> None:
        """Remove the worker's complete spool entries (it is idle between rounds), so that
        each round of the queue reads the source as the first did: the spool keeps a blob for
        minutes, and a later round would otherwise copy from the worker's disk."""
        for algorithm in (self.tmp / "spool-queue").glob("sha*"):
            for blob in algorithm.iterdir():
                if not blob.suffix:  # <hex>: complete; <hex>.lock and .partial stay alone
                    blob.unlink()

    def start_queue(self) -> dict[str, str]:
        """Redis and a prefork worker on the worker's host; the producer's environment."""
        logs = self.tmp / "queue"
        logs.mkdir(exist_ok=True)
        self.redis = Process("redis", self.net.exec("wk", [
            "redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(logs)]), logs / "redis.log",
            dict(os.environ)).start()
        self.redis.wait_for_log("Ready to accept connections")
        docker = self.tmp / "docker"
        # Fast retries for blips, but time for a large copy (as bench/spool_bench.py).
        env = queue_env("redis://127.0.0.1:6379/0", docker, FANOUT_TASK_TIME_LIMIT="900",
                        FANOUT_VISIBILITY_TIMEOUT="1800",
                        FANOUT_SPOOL_DIR=str(self.tmp / "spool-queue"), **self.settings())
        self.worker = Process("worker", self.net.exec("wk", [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--loglevel=INFO",
            "-P", "prefork", "-c", "3", "-n", "linkbench@%h", "--without-gossip",
            "--without-mingle"]), logs / "worker.log", env).start()
        self.worker.wait_for_log(" ready.", timeout=60)
        return env

    def case(self, case: str, argv: list[str], env: dict[str, str], *,
             load: Mapping[tuple[str, str], int], caps: dict[str, float] | None = None,
             on_sample: Callable[[Run], None] | None = None, round_no: int = 1) -> Run:
        """Run ``argv`` on the worker's host into fresh destinations; check what arrived."""
        label = case if round_no == 1 else f"{case}-{round_no}"
        self.fresh_destinations(label)
        floor, bottleneck, rate = floor_of(load, self.size, self.net, caps)
        worker_cpu = tree_cpu(self.worker.pid) if self.worker is not None else 0.0
        machine_load = os.getloadavg()[0]
        sampler = Sampler(self.net).start()
        started = time.monotonic()
        run = Run(case, 0.0, started, sampler.samples, floor, bottleneck, rate,
                  load=machine_load)
        log = self.tmp / f"{label}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(self.net.exec("wk", argv), env=env, cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                # wait4, not poll: the command's own CPU time (its waited-for children's
                # included), which the sampler's `ip` processes do not muddle.
                while not (reaped := os.wait4(proc.pid, os.WNOHANG))[0]:
                    if on_sample is not None:
                        on_sample(run)
                    if time.monotonic() - started > RUN_TIMEOUT_S:
                        raise RuntimeError(f"{case}: not done in {RUN_TIMEOUT_S} s")
                    time.sleep(0.02)
                proc.returncode = os.waitstatus_to_exitcode(reaped[1])
                run.cpu = reaped[2].ru_utime + reaped[2].ru_stime
            finally:
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
        run.seconds = time.monotonic() - started
        run.samples = sampler.stop()
        if self.worker is not None:
            run.cpu += tree_cpu(self.worker.pid) - worker_cpu
        if proc.returncode != 0:
            raise RuntimeError(f"{case} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        for d, registry in self.dests.items():
            found = registry.tag_digest()
            if found is None or (case != "skopeo" and found != self.digest):
                raise RuntimeError(f"{case}: {d} holds {found}, not {self.digest}")
        print(f"{case:<8} {run.seconds:6.2f} s  floor {floor:.2f} s  "
              f"({run.seconds / floor:.2f}x)", file=sys.stderr)
        return run


def tree_cpu(pid: int) -> float:
    """User + system seconds so far of ``pid`` and its descendants (a prefork worker)."""
    total = 0
    for each in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def caps_supported() -> bool:
    """Does this checkout read ``FANOUT_BANDWIDTH``? (It is issue 18's second part.)"""
    return any("FANOUT_BANDWIDTH" in path.read_text(errors="replace")
               for package in ("registry", "workers", "producer")
               for path in (ROOT / package).rglob("*.py"))


def fanout_copy(bench: Bench) -> list[str]:
    return [sys.executable, "-m", "producer.cli", "copy", bench.src_ref, *bench.dest_refs()]


def skopeo_recipe(bench: Bench) -> list[str]:
    home = bench.tmp / "skopeo-home"
    lines = " ".join(shlex.quote(f"docker://{d}") for d in bench.dest_refs())
    copy = ["skopeo", "--policy", str(home / "policy.json"), "copy",
            "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{bench.src_ref}",
            "{}"]
    return ["sh", "-c", f"printf '%s\\n' {lines} | xargs -n1 -P0 -I{{}} {shlex.join(copy)}"]


def skopeo_env(home: Path) -> dict[str, str]:
    """A throwaway HOME, no auth, an accept-anything policy, no blob-info cache from before."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "auth.json").write_text('{"auths": {}}')
    (home / "registries.conf").write_text("")
    (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "TMPDIR": str(home), "REGISTRY_AUTH_FILE": str(home / "auth.json"),
            "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf")}


def cutter(bench: Bench) -> Callable[[Run], None]:
    """Cut d1's link once, when ``--cut-at`` of the image has reached d1."""
    def check(run: Run) -> None:
        if run.cut_at is not None or len(run.samples) < 2:
            return
        received = run.samples[-1].counters["d1"][1] - run.samples[0].counters["d1"][1]
        if received >= bench.args.cut_at * bench.size:
            run.cut_at = time.monotonic() - run.started
            bench.net.cut("d1", peer="wk", seconds=bench.args.cut_s)
    return check


@dataclass
class Results:
    size: int  # S: the image's bytes, blobs and manifest
    runs: dict[str, Run]


def start(args: argparse.Namespace, tmp: Path, net: Network) -> Bench:
    """The source image, pushed on loopback and then served from the source's host."""
    loopback = start_registry(tmp / "source")
    try:
        image = images.push_oci_image(loopback, REPO, "v1", layers=args.layers,
                                      layer_size=int(args.layer_mb * MIB), compress=False)
    finally:
        loopback.close()
    source = Registry(net, "src", tmp / "source" / "storage", tmp / "logs")
    source.wait_ready()
    return Bench(args, tmp, net, source, image.digest,
                 image.total_blob_bytes + len(image.manifest))


def benchmark(args: argparse.Namespace, tmp: Path) -> Results:
    """Every case, once, on a network built for this run and gone when it ends."""
    rates = {"src": args.link_mbit, **{d: args.link_mbit for d in DESTS},
             "wk": args.worker_mbit}
    results = Results(0, {})
    with Network.build(rates, mtu=args.mtu) as net:
        bench = start(args, tmp, net)
        results.size = bench.size
        try:
            (tmp / "docker").mkdir(exist_ok=True)
            (tmp / "docker" / "config.json").write_text('{"auths": {}}')
            copy_env = fanout_env(tmp / "docker", FANOUT_SPOOL_DIR=str(tmp / "spool-copy"),
                                  **bench.settings())
            env = {"copy": copy_env}
            commands = {"copy": fanout_copy(bench), "skopeo": skopeo_recipe(bench),
                        "queue": [sys.executable, "-m", "producer.cli", "enqueue",
                                  bench.src_ref, *bench.dest_refs(), "--wait"]}
            env["skopeo"] = skopeo_env(tmp / "skopeo-home")
            rounds: dict[str, list[Run]] = {"copy": [], "queue": [], "skopeo": []}
            # Interleaved, so that a busy moment of the machine falls on every case alike.
            for round_no in range(1, args.rounds + 1):
                for case, runs in rounds.items():
                    if case == "queue" and bench.worker is None:
                        env["queue"] = bench.start_queue()
                    elif case == "queue":
                        bench.forget_spooled()
                    runs.append(bench.case(case, commands[case], env[case], round_no=round_no,
                                           load=SKOPEO_LOAD if case == "skopeo" else FANOUT_LOAD))
            for case, runs in rounds.items():
                results.runs[case] = median_run(runs)
            resumed = bench.case("resumed", fanout_copy(bench), copy_env, load=FANOUT_LOAD,
                                 on_sample=cutter(bench))
            if resumed.cut_at is None:
                resumed.note = "the copy ended before the cut"
            results.runs["resumed"] = resumed
            results.runs["capped"] = capped(bench, copy_env)
        finally:
            for process in (bench.worker, bench.redis, *bench.dests.values(), bench.source):
                if process is not None:
                    process.stop()
    return results


def median_run(runs: list[Run]) -> Run:
    """The run of median wall time (the lower middle one of an even count), the others'
    times kept with it for the report."""
    ordered = sorted(runs, key=lambda run: run.seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    middle.rounds = [run.seconds for run in runs]
    return middle


def capped(bench: Bench, copy_env: dict[str, str]) -> Run:
    cap = bench.args.cap_mib * MIB
    if not caps_supported():
        return Run("capped", 0.0, 0.0, [], 0.0, "", 0.0, note="not supported: this checkout does "
                   "not read FANOUT_BANDWIDTH (issue 18, part 2)")
    spec = ",".join(f"{bench.net.address(d)}={bench.args.cap_mib:g}MiB" for d in DESTS)
    return bench.case("capped", fanout_copy(bench), {**copy_env, "FANOUT_BANDWIDTH": spec},
                      load=FANOUT_LOAD, caps=dict.fromkeys(DESTS, cap))


def report(results: Results, args: argparse.Namespace) -> str:
    size = results.size
    lines = [
        SECTION, "",
        f"`PYTHONPATH=$PWD .venv/bin/python bench/link_bench.py --layers {args.layers} "
        f"--layer-mb {args.layer_mb:g} --link-mbit {args.link_mbit:g} --worker-mbit "
        f"{args.worker_mbit:g} --cap-mib {args.cap_mib:g} --cut-at {args.cut_at:g} --cut-s "
        f"{args.cut_s:g} --mtu {args.mtu} --rounds {args.rounds}` (as root). Network "
        "namespaces on one machine: a switch (a bridge) and a host each for the source "
        "registry, 3 destination registries and the worker, each on one veth link to the "
        f"switch shaped by `tc tbf` in both directions: registries {args.link_mbit:g} Mbit/s, "
        f"the worker {args.worker_mbit:g} Mbit/s, MTU {args.mtu}. Image: {args.layers} x "
        f"{args.layer_mb:g} MiB layers of random bytes, uncompressed, S = {size / 1e6:.1f} MB "
        "(blobs and manifest). Fresh registries per case. Times include process start-up. "
        f"distribution {distribution_version()}, skopeo {skopeo_version()}, redis "
        f"{redis_version()}, Python {platform.python_version()}, kernel {platform.release()}, "
        f"{os.cpu_count()} cores ({cpu_model()}), fanout {git_revision()}.", "",
        "The floor is the most any one link must carry in one direction over its rate (tbf "
        "shapes each direction on its own): fanout reads the source once, so the source's "
        "uplink carries S, the worker's downlink S and its uplink 3 S, each destination's "
        "downlink S; skopeo's recipe reads it three times, 3 S on the source's uplink. Here the "
        "registries' links set it: fanout S / R, skopeo 3 S / R. Framing (Ethernet, IP, TCP: "
        "about 4.5% at MTU 1500) is the tool's cost, not in the floor. Bytes counted at the "
        "switch's ports; from the start to the first blob byte leaving the source, then to the "
        "last reaching a destination, then to the command's exit.", "",
        "| case | s | floor s | x floor | bottleneck | source read (x S) | first byte s "
        "| source done s | transfer s | after last byte s | bottleneck busy | CPU s | load |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |"]
    for case, title in CASES.items():
        run = results.runs[case]
        if not run.samples:
            lines.append(f"| {title} | {run.note} |{' - |' * 11}")
            continue
        first, last = run.first_byte(), run.last_byte()
        role, direction = run.bottleneck.split(",")[0].split()
        carried = run.moved(role, direction.removesuffix("link"))
        busy = carried / (run.bottleneck_rate * max(last - first, 1e-9))
        lines.append(f"| {title} | {run.seconds:.2f} | {run.floor:.2f} | "
                     f"**{run.seconds / run.floor:.2f}x** | {run.bottleneck} | "
                     f"{run.moved('src', 'up') / size:.2f} | {first:.2f} | "
                     f"{run.source_done():.2f} | {last - first:.2f} | {run.seconds - last:.2f} "
                     f"| {busy:.0%} | {run.cpu:.1f} | {run.load:.1f} |")
    lines += ["", *rounds_lines(results.runs), *where_the_time_goes(results.runs), "",
              *resumed_lines(results.runs["resumed"], size, args),
              *capped_lines(results.runs["capped"], args)]
    return "\n".join(lines)


def rounds_lines(runs: dict[str, Run]) -> list[str]:
    """Every round's time, when there was more than one (the table shows the median's)."""
    if len(runs["copy"].rounds) < 2:
        return []
    parts = [f"{CASES[case]} {', '.join(f'{s:.2f}' for s in runs[case].rounds)} s "
             f"({', '.join(f'{s / runs[case].floor:.2f}x' for s in runs[case].rounds)})"
             for case in ("copy", "queue", "skopeo")]
    return [f"Each round, in order (the table shows the median one): {'; '.join(parts)}.", ""]


def where_the_time_goes(runs: dict[str, Run]) -> list[str]:
    """fanout's and the queue's distance from the floor, split into its parts."""
    out = []
    for case in ("copy", "queue"):
        run = runs[case]
        first, last = run.first_byte(), run.last_byte()
        out.append(
            f"{CASES[case]}: {run.seconds - run.floor:.2f} s over the floor; "
            f"{first:.2f} s before the first blob byte left the source, {last - first:.2f} s "
            f"moving bytes where the bottleneck alone needs {run.floor:.2f} s "
            f"(+{last - first - run.floor:.2f} s), {run.seconds - last:.2f} s after the last "
            f"byte; {run.cpu:.1f} s of CPU{' (worker and producer)' if case == 'queue' else ''}"
            f", the machine's load {run.load:.1f} on {os.cpu_count()} cores.")
    return out


def resumed_lines(run: Run, size: int, args: argparse.Namespace) -> list[str]:
    if run.cut_at is None:
        return [f"Resumed: {run.note or 'no cut'}."]
    cut, whole = run.moved("d1", "down"), run.moved("d2", "down")
    return [f"Resumed: d1's link cut {run.cut_at:.2f} s in, at {args.cut_at:.0%} of S, for "
            f"{args.cut_s:g} s (connections reset at both ends). d1 received "
            f"{cut / 1e6:.1f} MB on the wire, **{cut / whole:.2f}x** what d2 (not cut) did, "
            f"{cut / size:.2f}x S; the copy took {run.seconds:.2f} s, "
            f"{run.seconds / run.floor:.2f}x the floor. Issue 18's target for a resumed "
            "upload: at most 1.25x."]


def capped_lines(run: Run, args: argparse.Namespace) -> list[str]:
    if not run.samples:
        return ["", f"Capped: {run.note}."]
    first, last = run.first_byte(), run.last_byte()
    rates = [run.moved(d, "down") / max(last - first, 1e-9) / MIB for d in DESTS]
    return ["", f"Capped (`FANOUT_BANDWIDTH` at {args.cap_mib:g} MiB/s per destination): "
            f"{run.seconds:.2f} s against a floor of {run.floor:.2f} s; destinations received "
            f"{', '.join(f'{r:.1f}' for r in rates)} MiB/s on the wire while bytes moved."]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def git_revision() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or "?"


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the network and processes are cleaned up either way."""
    def raise_exit(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=float, default=50.0, help="MiB per layer")
    parser.add_argument("--link-mbit", type=float, default=200.0,
                        help="each registry's link, Mbit/s each way (default 200)")
    parser.add_argument("--worker-mbit", type=float, default=800.0,
                        help="the worker's link, Mbit/s each way (default 800)")
    parser.add_argument("--cap-mib", type=float, default=12.0,
                        help="FANOUT_BANDWIDTH per destination in the capped case, MiB/s")
    parser.add_argument("--cut-at", type=float, default=0.8,
                        help="cut d1's link when this share of the image has reached it")
    parser.add_argument("--cut-s", type=float, default=1.0,
                        help="how long d1's link stays down")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run fanout, the queue and skopeo this many times, interleaved, "
                             "and report each one's median run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    with terminated_as_interrupt(), tempfile.TemporaryDirectory(prefix="fanout-link-") as tmp:
        results = benchmark(args, Path(tmp))
    publish(SECTION, report(results, args), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
