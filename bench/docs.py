"""Where benchmark scripts record their numbers: one section each of docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
PYCACHE = DOC.parents[1] / "bench" / "results" / "pycache"


def byte_compile() -> None:
    """Time fanout as installed, every module it loads read from bytecode as pip leaves them.

    Two things would otherwise compile modules from source at every start: a checkout run with
    ``PYTHONDONTWRITEBYTECODE=1`` in the environment (as this machine's shell has), for fanout's
    own modules, about 0.1 s of CPU per process; and a venv installed by uv without
    ``--compile-bytecode`` (scripts/setup.sh before it passed that), for httpx, httpcore, anyio
    and the rest, about 0.25 s. So fanout's modules are compiled in the tree (for benches that
    give children an environment of their own), and children this process starts from now on
    keep their bytecode in bench/results/pycache (``PYTHONPYCACHEPREFIX``, allowed to write):
    a ``fanout copy`` that fails at once fills it here, before anything is timed, with the
    standard library's and the dependencies' too. The venv is left as it is."""
    import compileall
    import os
    import sys
    import tempfile

    root = DOC.parents[1]
    for package in ("registry", "workers", "producer", "service"):
        compileall.compile_dir(str(root / package), quiet=1, workers=1)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PYTHONPATH": str(root), "DOCKER_CONFIG": home,
               "FANOUT_REQUEST_ATTEMPTS": "1", "FANOUT_CONNECT_TIMEOUT": "1"}
        subprocess.run([sys.executable, "-m", "producer.cli", "copy", "127.0.0.1:1/warm:up",
                        "127.0.0.1:1/warm"], env=env, cwd=root, capture_output=True,
                       check=False)


def write_section(heading: str, text: str, doc: Path = DOC) -> None:
    """Replace (or add) the section under ``heading``; every other section stays as it is."""
    current = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        # The blank line before the next heading is the replaced section's to give back.
        updated = pattern.sub(lambda _: text + "\n\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(updated.rstrip("\n") + "\n")


def publish(heading: str, text: str, *, write: bool) -> None:
    """Print a benchmark's section, and when ``write``, put it in docs/benchmarks.md."""
    print(text)
    if write:
        write_section(heading, text)
        print(f"written to {DOC.relative_to(DOC.parents[1])}")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                         check=False).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else "?"
