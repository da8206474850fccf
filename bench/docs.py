"""Where benchmark scripts record their numbers: one section each of docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def byte_compile() -> None:
    """Compile fanout's own modules, as installing it does (pip compiles what it installs),
    so a bench times fanout as installed. A checkout run with ``PYTHONDONTWRITEBYTECODE=1``
    in the environment otherwise compiles every module from source at each start: about
    0.1 s of CPU per process, a tenth of a no-op copy in the WAN bench."""
    import compileall

    root = DOC.parents[1]
    for package in ("registry", "workers", "producer", "service"):
        compileall.compile_dir(str(root / package), quiet=1, workers=1)


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
