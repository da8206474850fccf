#!/usr/bin/env bash
# The test command: lint, type-check, then every test (unit and integration against real
# registries, Redis and worker processes). Extra arguments go to pytest, after ours: `-n 0` runs
# the tests in one process, `-n 8` in eight.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Let Python cache compiled modules (and pytest its rewritten test modules) in __pycache__:
# every xdist worker, `celery worker` and `fanout` process the tests start would otherwise
# compile the same sources again.
unset PYTHONDONTWRITEBYTECODE
# Compile every module now, on one thread. CPython 3.11's AST constructor keeps a recursion
# counter that is not thread-safe (python/cpython#106905): a module compiled on a background
# thread (a lazy import in a worker thread a test started) while pytest rewrites a test module
# on the main thread can fail either with "SystemError: AST constructor recursion depth
# mismatch" (pytest-dev/pytest#10763). Imports that find a fresh .pyc build no AST.
.venv/bin/python -m compileall -q -j 0 registry workers producer service bench tests >/dev/null
.venv/bin/ruff check .
# mypy, and beside it (the other core) one collection of the tests: pytest rewrites each test
# module's asserts and caches the result, and on a fresh clone the four workers below would
# each rewrite all of them at once (10 s of CPU apiece here). Its errors, if any, are the real
# run's to report.
.venv/bin/mypy &
mypy=$!
.venv/bin/python -m pytest --collect-only -q -n 0 >/dev/null 2>&1 || true
wait "$mypy"
# Four processes on two cores: most tests wait on registries, workers and timers, and another
# test runs meanwhile; an idle process takes tests queued for a busy one (tests/README.md).
exec .venv/bin/python -m pytest -q -n 4 --dist worksteal "$@"
