"""Free loopback ports for servers the tests start."""

from __future__ import annotations

import socket

from tests.support.xdist import worker_count, worker_index

_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it).

    Never one this process was given before, nor one another xdist worker of the run can be
    given (each takes its own share of the ports): a server stopped for a while, to be started
    again on its port, does not find it taken by a server another test started meanwhile.
    """
    share, shares = worker_index(), worker_count()
    for _ in range(100_000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        # Linux hands bind() odd ports and connect() even ones: share by pairs, not by parity.
        if port not in _given and (port // 2) % shares == share:
            _given.add(port)
            return port
    raise RuntimeError(f"no free port left for xdist worker {share} of {shares}")
