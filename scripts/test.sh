#!/usr/bin/env bash
# The test command: lint, type-check, then every test (unit and integration against real
# registries, Redis and worker processes). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
