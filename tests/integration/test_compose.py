"""docker-compose.yml runs what the end-to-end tests run. No Docker engine here, and no YAML
parser among the dependencies: the compose file keeps each `command:` a one-line JSON array,
and this reads the file line by line."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.test_queue_e2e import (
    FLOWER_COMMAND,
    REDIS_COMMAND,
    REGISTRY_COMMAND,
    WORKER_COMMAND,
)
from tests.integration.test_scheduler import BEAT_COMMAND

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
_SERVICE = re.compile(r"^  ([a-z][a-z0-9_-]*):\s*$")


def services() -> dict[str, list[str]]:
    """Each service's lines (indented under it), from the top-level `services:` block."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    inside = False
    for line in COMPOSE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            inside = line.rstrip() == "services:"
            current = None
            continue
        if not inside:
            continue
        match = _SERVICE.match(line)
        if match:
            current = found.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return found


def value(lines: list[str], key: str) -> str | None:
    for line in lines:
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("     ") and \
                stripped.startswith(f"{key}:"):
            return stripped.split(":", 1)[1].strip()
    return None


def command(lines: list[str]) -> list[str]:
    raw = value(lines, "command")
    assert raw is not None, "service has no command"
    parsed = json.loads(raw)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def test_the_services_are_there() -> None:
    assert set(services()) == {"redis", "worker", "flower", "registry", "serve", "beat"}


def test_each_command_is_one_the_e2e_tests_run() -> None:
    found = services()
    expected = {"redis": REDIS_COMMAND, "worker": WORKER_COMMAND, "flower": FLOWER_COMMAND,
                "registry": REGISTRY_COMMAND, "beat": BEAT_COMMAND}
    for name, prefix in expected.items():
        argv = command(found[name])
        assert argv[: len(prefix)] == prefix, (name, argv)
        # Anything after the shared part is an option, never another program or subcommand.
        assert all(arg.startswith("--") for arg in argv[len(prefix):]) or name == "registry", \
            (name, argv)
    assert command(found["flower"])[len(FLOWER_COMMAND):] == ["--port=5555"]
    # tests/support/serve.py starts the server with these options, other values.
    serve = command(found["serve"])
    assert serve[:2] == ["fanout", "serve"]
    assert serve[2::2] == ["--host", "--port", "--config"]
    assert command(found["registry"])[1].endswith(".yml")


def test_redis_persists_and_the_worker_scales() -> None:
    found = services()
    assert command(found["redis"])[1:] == ["--appendonly", "yes"]
    worker = "\n".join(found["worker"])
    # `--scale worker=N` refuses services with a fixed container name or a published port.
    assert value(found["worker"], "container_name") is None
    assert value(found["worker"], "ports") is None
    assert "FANOUT_BROKER_URL" in COMPOSE.read_text()
    assert re.search(r"^\s+- \S+:/home/fanout/\.docker:ro$", worker, re.M)
    assert "DOCKER_CONFIG: /home/fanout/.docker" in worker


def test_flower_takes_its_credentials_from_the_environment() -> None:
    flower = "\n".join(services()["flower"])
    assert "FLOWER_BASIC_AUTH: ${FLOWER_BASIC_AUTH:?" in flower
    assert "--basic-auth" not in flower  # argv is visible to every user of the host
    assert '"127.0.0.1:5555:5555"' in flower


def test_the_image_runs_the_worker_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "RUN pip install ." in text
    assert re.search(r"^USER fanout$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None and json.loads(cmd.group(1))[: len(WORKER_COMMAND)] == WORKER_COMMAND


def test_one_beat_reads_the_mounted_config() -> None:
    beat = services()["beat"]
    # `--scale beat=N` is refused only with a fixed name or port; the comment says why not.
    assert "FANOUT_CONFIG: /etc/fanout/fanout.toml" in "\n".join(beat)
    assert "exactly ONE" in COMPOSE.read_text()
