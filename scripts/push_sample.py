"""Push a small multi-platform sample image (an OCI index of three platforms) for the demo.

    .venv/bin/python scripts/push_sample.py 127.0.0.1:5000 demo/app v1

Waits for the registry to answer, pushes, and prints the pinned reference. Reuses the test
suite's image builder, which speaks the distribution API with plain httpx.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.images import push_oci_index
from tests.support.registries import RegistryServer


def wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v2/", timeout=1.0).status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"push_sample: {url} did not answer within {timeout:g}s")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: push_sample.py HOST:PORT REPOSITORY TAG", file=sys.stderr)
        return 2
    host, repository, tag = argv
    url = f"http://{host}"
    wait_ready(url)
    server = RegistryServer(host=host, url=url, auth=None, username=None, password=None,
                            root=Path())
    image = push_oci_index(server, repository, tag)
    print(f"{host}/{repository}:{tag}@{image.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
