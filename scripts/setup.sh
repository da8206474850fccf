#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: the real parts the tests and demo drive
# (distribution's registry, skopeo, redis, GNU time for the memory tests) and a virtualenv
# with fanout installed.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in docker-registry:docker-registry skopeo:skopeo /usr/bin/time:time redis-server:redis-server htpasswd:apache2-utils chromium:chromium; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.fanout-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # CI builds this venv from nothing on every run: uv installs the same requirements in about
    # a third of pip's time (9 s against 29 s here). pip stays the way when uv cannot be had.
    # --compile-bytecode, as pip does: uv otherwise leaves the dependencies as source, and with
    # PYTHONDONTWRITEBYTECODE=1 (as some shells set) every process compiles httpx, anyio and the
    # rest again, about 0.25 s of CPU per fanout copy (docs/benchmarks.md, "Copy CPU").
    if .venv/bin/pip install -q uv >.venv/install.log 2>&1; then
        .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e '.[test]' \
            >>.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
    else
        .venv/bin/pip install -q -U pip >>.venv/install.log 2>&1
        .venv/bin/pip install -q -e '.[test]' >>.venv/install.log 2>&1 \
            || { cat .venv/install.log >&2; exit 1; }
    fi
    touch "$stamp"
fi
