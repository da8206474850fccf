"""The layers of DESIGN.md: imports point downwards only, and ``registry/`` stands alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages of ours it must never import
FORBIDDEN = {
    "registry": {"workers", "producer", "service", "celery", "kombu", "redis", "billiard",
                 "fastapi", "starlette", "uvicorn"},
    "workers": {"producer", "service", "fastapi", "starlette", "uvicorn"},
    # The front door sits on top: only `fanout serve`'s run() reaches into it (see below).
    "producer": {"fastapi", "starlette", "uvicorn"},
}


def _parse(path: Path) -> ast.Module:
    # CPython 3.11 keeps the AST constructor's recursion depth in a counter that is not
    # thread-safe (python/cpython#106905): a parse racing with an import
    # compiled on another thread of this process (a thread an earlier test left running)
    # raises SystemError "recursion depth mismatch". The source is fine; parse it again.
    for _ in range(5):
        try:
            return ast.parse(path.read_text(), filename=str(path))
        except SystemError:
            continue
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    tree = _parse(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_downwards(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imports(path) & FORBIDDEN[package]
    }
    assert not offenders


def test_registry_loads_without_celery_or_redis() -> None:
    # Every module, those of subpackages (registry.layout) too.
    modules = [".".join(p.relative_to(ROOT / "registry").with_suffix("").parts)
               for p in (ROOT / "registry").rglob("*.py") if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}:\n"
            "    importlib.import_module('registry.' + m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('celery', 'kombu', 'redis', 'workers', 'producer'))\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


# The one part of workers/ the CLI's fast path may load: the exceptions every subcommand's
# parser names (producer/common.py re-exports them so the verify core on the workers raises the
# classes the CLI catches). A leaf that imports nothing, so loading it costs a file read.
SHARED_ERRORS = {"workers", "workers.errors"}


def test_the_cli_loads_celery_and_redis_only_for_commands_that_use_them() -> None:
    # `fanout copy` starts in CI hooks on every build: it must not pay for the queue's imports.
    code = ("import sys, producer.cli\nproducer.cli.build_parser()\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('celery', 'kombu', 'redis', 'workers'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert set(filter(None, out.stdout.strip().split(","))) <= SHARED_ERRORS


def test_the_shared_errors_import_nothing_of_ours() -> None:
    assert _imports(ROOT / "workers" / "errors.py") <= {"__future__"}


def _loaded_by(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules loaded once ``code`` has run in a fresh interpreter."""
    code = (f"import sys\n{code}\n"
            "print(','.join(sorted(k for k, v in sys.modules.items() if v is not None)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return set(out.stdout.strip().splitlines()[-1].split(","))


def _packages(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


# What `fanout --help` must not load: the engine's HTTP stack, the queue, the exporter, the display.
HEAVY = {"httpx", "httpcore", "tenacity", "celery", "kombu", "redis", "prometheus_client", "rich",
         "fastapi", "starlette", "uvicorn", "pydantic", "service"}
COMMANDS = ["copy", "enqueue", "status", "retry", "replay", "verify", "check", "metrics",
            "serve"]


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in COMMANDS)],
                         ids=" ".join)
def test_help_loads_no_implementation(argv: list[str]) -> None:
    # Start-up in docs/benchmarks.md: every subcommand's parser is built, none of its `run`'s
    # imports. Checked by the modules loaded, not by timing.
    loaded = _loaded_by("from producer.cli import main\n"
                        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert "producer.cli" in loaded
    assert not _packages(loaded) & HEAVY


def test_copy_loads_no_queue_exporter_or_display_before_it_starts(tmp_path: Path) -> None:
    # The copy is stubbed out once the command has set itself up, just before it would start.
    code = ("import producer.cli as cli\n"
            "skip = cli._skip_unused_extras\n"
            "def skip_then_stub():\n"
            "    skip()\n"
            "    import registry.copy\n"
            "    async def stop(*args, **kwargs):\n        raise SystemExit(0)\n"
            "    registry.copy.Copier.copy_many = stop\n"
            "cli._skip_unused_extras = skip_then_stub\n"
            "try:\n    cli.main(['copy', 'src.example/app:v1', 'dst.example/app'])\n"
            "except SystemExit:\n    pass")
    loaded = _loaded_by(code, env={**os.environ, "DOCKER_CONFIG": str(tmp_path)})
    assert "registry.session" in loaded  # it got as far as the copy
    assert not _packages(loaded) & {"celery", "kombu", "redis", "prometheus_client"}
    assert {name for name in loaded if name.split(".")[0] == "workers"} <= SHARED_ERRORS
    # Off a terminal, no progress display; and none of the optional integrations our
    # dependencies would load for nothing (httpx's CLI, tenacity's Tornado support).
    assert "producer.progress" not in loaded
    assert not _packages(loaded) & {"rich", "click", "pygments", "tornado"}
    # Nor the OCI layout package: registry.layout_ref tells a registry reference apart.
    assert not {name for name in loaded if name.startswith(("registry.layout.", "tarfile"))}
    assert "registry.layout" not in loaded and "registry.layout_ref" in loaded


def test_enqueue_through_a_server_loads_no_queue() -> None:
    # A hosted CI runner's `fanout enqueue --server ... --wait`: the whole path (POST, polls,
    # transition lines, the final table) over a stand-in for the server, which answers one
    # finished release.
    code = (
        "import json, os, httpx\n"
        "import producer.server_client as sc\n"
        "record = dict(destination='a.io/app', tags=['v1'], state='succeeded', attempts=1,\n"
        "    last_error=None, error_type=None, bytes=5, seconds=0.1, created_at=1.0,\n"
        "    updated_at=2.0, started_at=1.0, finished_at=2.0, stats={}, worker='w',\n"
        "    next_retry_at=None)\n"
        "doc = dict(id='rel-1', source='src.example/app@sha256:' + 'ab' * 32,\n"
        "    digest='sha256:' + 'ab' * 32, created_at=1.0, destinations={'a.io/app': record})\n"
        "real = sc.ServerClient\n"
        "class Stub(real):\n"
        "    def __init__(self, settings, **kwargs):\n"
        "        answer = lambda request: httpx.Response(200, json=doc)\n"
        "        super().__init__(settings, transport=httpx.MockTransport(answer))\n"
        "sc.ServerClient = Stub\n"
        "os.environ['FANOUT_TOKEN'] = 't'\n"
        "from producer.cli import main\n"
        "assert main(['enqueue', 'src.example/app:v1', '--server', 'http://fanout.test',\n"
        "             '--to', 'release', '--wait']) == 0"
    )
    loaded = _loaded_by(code)
    assert {"producer.server_client", "producer.table"} <= loaded  # it went all the way
    assert not _packages(loaded) & {"celery", "kombu", "redis", "billiard"}
    assert not {"workers.ledger", "producer.api", "producer.broker"} & loaded


def _local_imports(package: str, path: Path) -> set[str]:
    """Modules of ``package`` that ``path`` imports, TYPE_CHECKING imports included (a cycle
    hidden behind them is still a cycle in the design)."""
    tree = _parse(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith(f"{package}."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith(f"{package}."))
    return found - {path.stem}


def test_producer_reaches_the_service_only_when_serve_runs() -> None:
    # service/ imports producer.api; producer imports service only inside serve_cmd.run, so
    # neither package needs the other loaded first and no module cycle exists.
    for path in sorted((ROOT / "producer").glob("*.py")):
        tree = _parse(path)
        top_level = {alias.name.split(".")[0] for node in tree.body
                     if isinstance(node, ast.Import) for alias in node.names}
        top_level |= {node.module.split(".")[0] for node in tree.body
                      if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
        assert "service" not in top_level, path.name
        if path.name != "serve_cmd.py":
            assert "service" not in _imports(path), path.name


@pytest.mark.parametrize("package", ["registry", "workers", "producer", "service"])
def test_no_import_cycles(package: str) -> None:
    graph = {path.stem: _local_imports(package, path)
             for path in (ROOT / package).glob("*.py")}
    cycles: list[list[str]] = []

    def visit(node: str, chain: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in chain:
                cycles.append([*chain[chain.index(nxt):], nxt])
            elif len(chain) < len(graph):
                visit(nxt, [*chain, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, cycles[:3]


def test_registry_modules_stay_small() -> None:
    # STYLE.md: small modules, one job each; split well before ~400 lines.
    sizes = {path.name: len(path.read_text().splitlines())
             for path in (ROOT / "registry").rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 420}


def test_enqueue_on_a_redis_broker_loads_no_celery() -> None:
    # workers/redis_publish.py writes the message itself; Celery and kombu load only for the
    # brokers it does not handle (RabbitMQ, Sentinel). The tasks are really sent (to fakeredis).
    code = ("import fakeredis\n"
            "from workers import publishing\n"
            "from producer import broker\n"
            "from workers.ledger import Ledger\n"
            "server = fakeredis.FakeRedis()\n"
            "publishing.broker_client = lambda url: server\n"
            "ledger = Ledger(server)\n"
            "source = 'src.example/app@sha256:' + 'a' * 64\n"
            "rid = ledger.create_release(source, [('dst.example/app', ())])\n"
            "broker.send(ledger, broker.queue_settings({}), rid, [{'release_id': rid, "
            "'source': source, 'destination': 'dst.example/app', 'tags': []}])\n"
            "assert server.llen('fanout') == 1")
    loaded = _loaded_by(code)
    assert "workers.redis_publish" in loaded
    assert not _packages(loaded) & {"celery", "kombu", "billiard"}


def test_a_missing_module_httpcore_keeps_asking_for_is_answered_at_once() -> None:
    # Python remembers a module it found, not one it did not: httpcore looks for sniffio at
    # every lock it sets up. Absent, it gets the None an import answers at once; installed, it
    # is left alone.
    code = ("import importlib.util, sys\nfrom producer import cli\n"
            "absent = importlib.util.find_spec('sniffio') is None\n"
            "cli._skip_unused_extras()\n"
            "print(absent, 'sniffio' in sys.modules and sys.modules['sniffio'] is None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    absent, answered = out.stdout.split()
    assert absent == answered
