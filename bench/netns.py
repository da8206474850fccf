"""A small shaped network on this machine: hosts as Linux network namespaces around a switch.

Every host is a namespace of its own with one interface, ``eth0``, joined by a veth pair to a port
of a bridge in a "switch" namespace. A link is shaped in each direction with ``tc ... tbf`` at its
rate: on the host's ``eth0`` (what the host sends: its upload) and on the switch's port (what the
host receives: its download). tbf shapes egress only, so the two directions are independent, as
on a full-duplex link.

Names carry a random suffix, so two runs (or xdist processes) never collide; addresses live inside
the namespaces, so every run can use the same ones. ``close()`` kills what is still running in the
namespaces (by pid, only this run's) and deletes them, which deletes their links too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

SUBNET = "10.77.0"
PREFIX = 24
MIB = 1024 * 1024


@dataclass(frozen=True)
class Host:
    """One namespace on the switch: its role, address and link rate (Mbit/s, each direction)."""

    role: str
    address: str
    mbit: float

    @property
    def port(self) -> str:
        """Its port's name in the switch namespace (at most 15 characters)."""
        return f"p-{self.role}"[:15]

    @property
    def bytes_per_s(self) -> float:
        return self.mbit * 1e6 / 8


def unavailable() -> str | None:
    """Why a network cannot be built here (not root, no ``ip``/``tc``, no netns), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (iproute2)"
    probe = f"lbprobe-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def burst_bytes(mbit: float) -> int:
    """tbf's bucket: 2 ms at the rate, and never less than a 64 KiB GSO segment (tbf would
    otherwise split or drop it)."""
    return max(64 * 1024 + 1514, int(mbit * 1e6 / 8 * 0.002))


@dataclass
class Network:
    """The switch and its hosts; build with ``Network.build``, end with ``close()``."""

    name: str
    hosts: dict[str, Host]
    mtu: int
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def build(cls, rates: Mapping[str, float], *, mtu: int = 1500) -> Network:
        """A switch and one host per ``role -> Mbit/s``, addresses in order from .10."""
        net = cls(f"lb{secrets.token_hex(3)}", {}, mtu)
        try:
            _run("ip", "netns", "add", net.switch)
            _run("ip", "-n", net.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", net.switch, "link", "set", "br0", "up")
            for number, (role, mbit) in enumerate(rates.items(), start=10):
                net._add_host(Host(role, f"{SUBNET}.{number}", mbit))
        except BaseException:
            net.close()
            raise
        return net

    @property
    def switch(self) -> str:
        return f"{self.name}-sw"

    def ns(self, role: str) -> str:
        return f"{self.name}-{role}"

    def address(self, role: str) -> str:
        return self.hosts[role].address

    def _add_host(self, host: Host) -> None:
        ns = self.ns(host.role)
        _run("ip", "netns", "add", ns)
        # Made inside the namespaces: nothing appears, even for a moment, in the root one.
        _run("ip", "-n", self.switch, "link", "add", host.port, "mtu", str(self.mtu), "type",
             "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{host.address}/{PREFIX}", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu), "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        for where, device in ((ns, "eth0"), (self.switch, host.port)):
            _run("tc", "-n", where, "qdisc", "add", "dev", device, "root", "tbf", "rate",
                 f"{host.mbit:g}mbit", "burst", str(burst_bytes(host.mbit)), "latency", "100ms")
        self.hosts[host.role] = host

    def exec(self, role: str, argv: list[str]) -> list[str]:
        """``argv`` run on host ``role`` (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def counters(self) -> dict[str, tuple[int, int]]:
        """role -> (bytes the host sent, bytes it received), counted at its switch port, with
        Ethernet, IP and TCP headers."""
        stats = json.loads(_run("ip", "-n", self.switch, "-j", "-s", "link", "show"))
        by_port = {s["ifname"]: s["stats64"] for s in stats}
        return {role: (by_port[h.port]["rx"]["bytes"], by_port[h.port]["tx"]["bytes"])
                for role, h in self.hosts.items() if h.port in by_port}

    def cut(self, role: str, *, peer: str, seconds: float) -> None:
        """Cut ``role``'s link: reset every connection between it and ``peer`` at both ends (as
        a middlebox does), and keep its switch port down for ``seconds``."""
        address = self.address(role)
        port = self.hosts[role].port
        _run("ip", "-n", self.switch, "link", "set", port, "down")
        try:
            for where, other in ((peer, address), (role, self.address(peer))):
                # ss -K also answers "Invalid argument" for the families it cannot destroy.
                subprocess.run(["ip", "netns", "exec", self.ns(where), "ss", "-K", "dst", other],
                               capture_output=True, check=False)
            time.sleep(seconds)
        finally:
            _run("ip", "-n", self.switch, "link", "set", port, "up")

    def close(self) -> None:
        """Kill what runs in this run's namespaces and delete them (their links go with them)."""
        if self._closed:
            return
        self._closed = True
        names = [self.ns(role) for role in self.hosts] + [self.switch]
        present = set(_run("ip", "netns", "list").split())
        for ns in names:
            if ns not in present:
                continue
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Sample:
    at: float  # time.monotonic()
    counters: dict[str, tuple[int, int]]


class Sampler:
    """Reads the switch's counters every ``interval`` seconds on a thread, from ``start()`` to
    ``stop()``; the samples show when bytes began and stopped moving on each link."""

    def __init__(self, net: Network, interval: float = 0.05) -> None:
        self.net = net
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self.samples = [Sample(time.monotonic(), self.net.counters())]
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(Sample(time.monotonic(), self.net.counters()))

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(Sample(time.monotonic(), self.net.counters()))
        return self.samples

    def latest(self) -> Sample:
        return self.samples[-1]
