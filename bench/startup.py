"""Start-up: how long ``fanout --help``, ``fanout copy --help`` and a ``fanout copy`` that fails at
once take, and how many modules each loads.

    .venv/bin/python bench/startup.py [--runs 10] [--baseline DIR] [--no-write]

Every run is a fresh process running what the console script runs (``producer.cli:console``),
the commands interleaved, after a round that warms caches and bytecode (``bench/docs.py:
byte_compile``); the median is reported. The copy goes to a closed loopback port with one attempt:
it measures what ``fanout copy`` costs before it sends anything (it loads the engine and httpx).
``--baseline DIR`` times the packages in DIR too, put ahead of this tree on PYTHONPATH (say
``git archive HEAD producer registry workers | tar -x -C DIR``), for a before and after.
Results go to docs/benchmarks.md, section "Start-up" (the rest of the file is left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs import byte_compile, write_section  # noqa: E402

# What the console script pip writes for pyproject's entry point runs, `producer.cli:console`
# (`main` in a tree from before it had one), so that neither the venv's script, written when
# the venv was installed, nor an editable install's import hook decides what is timed. -P: the
# working directory is not put on sys.path (a script's own directory would be), so PYTHONPATH
# picks the tree.
FANOUT = [sys.executable, "-P", "-c", "import sys, producer.cli as cli\n"
          "sys.exit(getattr(cli, 'console', cli.main)())"]
COMMANDS = {
    "python -c pass (the floor)": [sys.executable, "-c", "pass"],
    "fanout --help": [*FANOUT, "--help"],
    "fanout copy --help": [*FANOUT, "copy", "--help"],
    "fanout copy, up to its first request": [*FANOUT, "copy", "127.0.0.1:1/src:v1",
                                             "127.0.0.1:1/dst"],
}

NOTES = """\
Building the parser loads no subcommand's implementation: each `*_cmd` module defines its flags
with argparse alone, and its `run` imports the engine (httpx, tenacity), the queue (Celery,
Redis), rich or prometheus_client when the command runs; `tests/test_layering.py` checks it by
the modules `fanout --help` and every `fanout COMMAND --help` load. Before that, every
subcommand's module loaded its implementation to build the parser, so `--help` paid for httpx
and tenacity (most of it), rich and asyncio.

What `fanout copy` pays before its first request is now what a copy uses: the engine's imports
(httpx, httpcore, h11, tenacity, asyncio, and anyio at the first connection) and fanout's own
registry modules (some 45, about 20 ms, mostly dataclasses being made). What it paid for nothing
is gone: httpx's command-line client and tenacity's Tornado support (a None in `sys.modules`),
the OCI layout package (`registry.layout_ref` tells a registry reference from `oci:` without it:
tarfile, uuid and the store stay unloaded), the CA bundle (read when a server first answers a
TLS handshake, `registry/tls.py`: 15-50 ms, and never between plain-HTTP registries), a search of
`sys.path` each time httpcore looks for an absent sniffio, and the interpreter's teardown
(`producer/quick_exit.py`, some 40 ms). `tests/integration/test_copy_e2e.py` checks a real
copy's modules. Each command runs what the console script runs (`producer.cli:console`, with
`-P -c`), bytecode as installed (`bench/docs.py: byte_compile`). The editable install's import
hook (`pip install -e`) adds some 10 ms to the floor that an ordinary install does not.
"""


def _env(tree: Path | None, home: str) -> dict[str, str]:
    env = {**os.environ, "DOCKER_CONFIG": home, "FANOUT_REQUEST_ATTEMPTS": "1",
           "FANOUT_REFERRERS": "0", "FANOUT_CONNECT_TIMEOUT": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def _seconds(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - started


def _modules(argv: list[str], env: dict[str, str]) -> int:
    script = argv[1:] if argv[0] == sys.executable else argv  # the console script is Python
    out = subprocess.run([sys.executable, "-X", "importtime", *script], env=env,
                         capture_output=True, text=True, check=False)
    return sum(1 for line in out.stderr.splitlines() if line.startswith("import time:")) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also time the packages in DIR (the tree before a change)")
    parser.add_argument("--no-write", action="store_true", help="print, leave the doc alone")
    args = parser.parse_args()
    byte_compile()
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline:
        trees = {"before": args.baseline.resolve(), "after": None}
    with tempfile.TemporaryDirectory() as home:
        envs = {name: _env(tree, home) for name, tree in trees.items()}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs + 1):  # the first round warms the file cache, uncounted
            for command, argv in COMMANDS.items():
                for name, env in envs.items():
                    times.setdefault((command, name), []).append(_seconds(argv, env))
        modules = {(command, name): _modules(argv, env)
                   for command, argv in COMMANDS.items() for name, env in envs.items()}
    header = ["command", *(f"{name}: median ms" for name in trees),
              *(f"{name}: modules" for name in trees)]
    lines = ["| " + " | ".join(header) + " |",
             "| --- | " + " | ".join("---:" for _ in header[1:]) + " |"]
    for command in COMMANDS:
        medians = [f"{statistics.median(times[command, name][1:]) * 1000:.0f}" for name in trees]
        counts = [str(modules[command, name]) for name in trees]
        lines.append(f"| {command} | " + " | ".join([*medians, *counts]) + " |")
    table = "\n".join(lines)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(table)
    if args.no_write:
        return
    text = (f"## Start-up\n\n`.venv/bin/python bench/startup.py --runs {args.runs}"
            f"{' --baseline DIR' if args.baseline else ''}`: fresh processes running the "
            f"console script's entry point, interleaved, median of {args.runs}; CPython "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load} at the "
            f"end. \"modules\" counts what `-X importtime` lists, the interpreter's own "
            f"start-up included.\n\n{table}\n\n{NOTES.rstrip()}")
    write_section("## Start-up", text)


if __name__ == "__main__":
    main()
