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
.venv/bin/ruff check .
.venv/bin/mypy
# Four processes on two cores: most tests wait on registries, workers and timers, and another
# test runs meanwhile; an idle process takes tests queued for a busy one (tests/README.md).
exec .venv/bin/python -m pytest -q -n 4 --dist worksteal "$@"
