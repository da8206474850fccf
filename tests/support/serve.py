"""A real ``fanout serve`` for the tests: a subprocess on a free port, ready once /healthz
answers, and tokens written into its config as the operator would (their sha256)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.queue import VENV_BIN, Process, wait_until


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def token_toml(name: str, token: str, sets: Sequence[str], sources: Sequence[str]) -> str:
    """A ``[[tokens]]`` entry granting ``sets`` and ``sources`` to ``token``."""
    return (f"[[tokens]]\nname = {json.dumps(name)}\nsha256 = \"{sha256_hex(token)}\"\n"
            f"sets = {json.dumps(list(sets))}\nsources = {json.dumps(list(sources))}\n")


@dataclass
class Served:
    url: str
    process: Process
    config_path: Path

    def log(self) -> str:
        return self.process.log()

    def client(self, token: str | None = None, **options: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(tmp_path: Path, config_text: str, *, env: Mapping[str, str] | None = None,
            ) -> Iterator[Served]:
    """``fanout serve`` over ``config_text``, with ``env`` (broker, Docker config) as its
    environment; stopped (SIGTERM, then SIGKILL) on exit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "fanout-serve.toml"
    config.write_text(config_text)
    port = free_port()
    argv = [str(VENV_BIN / "fanout"), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--config", str(config)]
    process = Process("fanout-serve", argv, tmp_path / "fanout-serve.log",
                      dict(env or {})).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url) or not process.running, 30,
                   "fanout serve: /healthz", process.log)
        if not process.running:
            raise AssertionError(f"fanout serve exited:\n{process.log()[-3000:]}")
        yield Served(url, process, config)
    finally:
        process.stop(timeout=10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
