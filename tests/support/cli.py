"""Run the real ``fanout`` command and give it a Docker config, as a user would."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.registries import RegistryServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_docker_config(
    directory: Path, servers: Iterable[RegistryServer], *, wrong_password: Iterable[str] = (),
) -> Path:
    """A ``config.json`` with ``auths`` for every server that has credentials."""
    wrong = set(wrong_password)
    return write_docker_auths(directory, {
        server.host: (server.username, "not-the-password" if server.host in wrong
                      else server.password)
        for server in servers if server.username and server.password})


def write_docker_auths(directory: Path, credentials: Mapping[str, tuple[str, str]]) -> Path:
    """A ``config.json`` with ``auths`` for {host: (user, password)}."""
    auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             for host, (user, password) in credentials.items()}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": auths}))
    return directory


def fanout_env(docker_config: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DOCKER_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if docker_config is not None:
        env["DOCKER_CONFIG"] = str(docker_config)
    env.update(extra)
    return env


def run_fanout(
    args: list[str], env: Mapping[str, str], *, timeout: float = 300, stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args], env=dict(env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout, input=stdin, check=False,
    )
