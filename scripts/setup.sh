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
    .venv/bin/pip install -q -U pip >.venv/install.log 2>&1
    .venv/bin/pip install -q -e '.[test]' >>.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
    touch "$stamp"
fi
