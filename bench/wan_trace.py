"""Reading a client run out of the latency proxies' log: what it cost, and its sequential chain.

The chain is the heaviest sequence of requests each of which began after the one before it had
been answered (a request weighs one round trip, plus a connection when it opened one). On a
network where every request waits, that is the client's critical path in round trips: what it
could not, or did not, do at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.latency_proxy import Hop


@dataclass(frozen=True)
class Cost:
    """Round trips and new connections, weighed in seconds by the proxies' delays."""

    round_trips: int
    connections: int

    def seconds(self, request_delay: float, connect_delay: float) -> float:
        return self.round_trips * request_delay + self.connections * connect_delay

    def __str__(self) -> str:
        return f"{self.round_trips} RT + {self.connections} conn"


def kind(hop: Hop) -> str:
    """``src GET manifest``, ``dst upload PUT``, ``dst token``… — what a request was for."""
    side = "src" if hop.role.startswith("source") else "dst"
    if hop.role.endswith("-token"):
        return f"{side} token"
    path = hop.path
    if path.rstrip("/") == "/v2":
        what = "ping"
    elif "/blobs/uploads/" in path:
        what = f"upload {hop.method}"
    elif "/blobs/" in path:
        what = f"{hop.method} blob"
    elif "/manifests/" in path:
        what = f"{hop.method} manifest"
    elif path.endswith("/tags/list"):
        what = "tag list"
    elif "/referrers/" in path:
        what = "referrers"
    else:
        what = f"{hop.method} {path}"
    return f"{side} {what}"


def chain(hops: Sequence[Hop], request_delay: float, connect_delay: float) -> list[Hop]:
    """The heaviest sequence of requests, each begun after the previous one was answered."""
    ordered = sorted((h for h in hops if h.end is not None), key=lambda h: h.start)
    weight = [request_delay + (connect_delay if h.first else 0.0) for h in ordered]
    best: list[float] = []
    before: list[int | None] = []
    for j, hop in enumerate(ordered):
        prior = [i for i in range(j) if (ordered[i].end or 0.0) <= hop.start]
        pick = max(prior, key=lambda i: best[i], default=None)
        best.append(weight[j] + (best[pick] if pick is not None else 0.0))
        before.append(pick)
    if not ordered:
        return []
    at: int | None = max(range(len(ordered)), key=lambda i: best[i])
    path: list[Hop] = []
    while at is not None:
        path.append(ordered[at])
        at = before[at]
    return path[::-1]


def chain_cost(path: Sequence[Hop]) -> Cost:
    return Cost(len(path), sum(1 for hop in path if hop.first))


def describe(path: Sequence[Hop]) -> str:
    """The chain as its requests' kinds, runs of one kind folded: ``dst HEAD blob x2 → …``;
    ``+c`` marks a request that opened a connection."""
    steps: list[tuple[str, int]] = []
    for hop in path:
        label = kind(hop) + (" +c" if hop.first else "")
        if steps and steps[-1][0] == label:
            steps[-1] = (label, steps[-1][1] + 1)
        else:
            steps.append((label, 1))
    return " → ".join(label if n == 1 else f"{label} x{n}" for label, n in steps)


def timeline(hops: Sequence[Hop], origin: float) -> list[str]:
    """One line per request: start and end (ms from ``origin``), connection, kind, path."""
    lines = []
    for hop in sorted(hops, key=lambda h: h.start):
        end = f"{(hop.end - origin) * 1000:7.0f}" if hop.end is not None else "      ?"
        lines.append(f"{(hop.start - origin) * 1000:7.0f} {end}  c{hop.connection:<4}"
                     f"{'new ' if hop.first else '    '}{hop.status or '-':>3}  {kind(hop):<22}"
                     f"{hop.role:<9} {hop.path[:70]}")
    return lines
