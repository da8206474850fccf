#!/usr/bin/env bash
# The quick start: a whole fanout on this machine, in well under a minute.
#
#   bash scripts/demo.sh          # run the demo, then stop everything it started
#   bash scripts/demo.sh --keep   # leave Redis, registries, worker and Flower running
#
# Starts Redis (unless one answers on 127.0.0.1:6379: then its DB 15 is used), three local
# registries (a source and two destinations), a Celery worker (2 processes), Flower and
# `fanout serve`; pushes a multi-platform sample image; then releases it three ways:
#   1. `fanout enqueue ... --wait` on the broker (CI inside the network);
#   2. `fanout enqueue --server ... --wait` over HTTP with a token (hosted CI);
#   3. a push of a `release-*` tag to the source registry, whose notifications reach
#      `fanout serve`: the push replicates by itself.
# Then `fanout verify` checks every destination of those releases with HEADs. Prints the
# status tables, the release page's and Flower's addresses. Flower's credentials come
# from FLOWER_BASIC_AUTH (user:password) or are generated and printed; the API token is generated.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: bash scripts/demo.sh [--keep]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "setup (apt packages and .venv, if missing)"
bash scripts/setup.sh
py=.venv/bin/python
bin=.venv/bin

work=$(mktemp -d -t fanout-demo.XXXXXX)
pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
if ((keep)); then
    # Only a failed start cleans up; a successful --keep run leaves everything to the user.
    trap 'status=$?; ((status == 0)) || stop_all' EXIT
else
    trap stop_all EXIT
fi
trap 'exit 130' INT TERM

free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() {
    "$py" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0)' "$1"
}
wait_for_log() {  # FILE TEXT WHAT
    local i
    for i in $(seq 1 300); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: $3 did not start; its log:" >&2
    tail -n 30 "$1" >&2
    exit 1
}

say "redis"
if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
    broker="redis://127.0.0.1:6379/15"
    echo "using the Redis already on 127.0.0.1:6379 (database 15)" >&2
else
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save "" \
        --appendonly no >"$work/redis.log" 2>&1 &
    pids+=($!)
    broker="redis://127.0.0.1:$redis_port/0"
    wait_for_log "$work/redis.log" "Ready to accept connections" "redis-server"
    echo "started redis-server on 127.0.0.1:$redis_port" >&2
fi
export FANOUT_BROKER_URL=$broker
unset FANOUT_LEDGER_URL FANOUT_DESTINATIONS FANOUT_ROUTE_BY_REGISTRY

say "registries"
serve_port=$(free_port)
token=$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')
declare -A hosts
for name in source dest1 dest2; do
    port=$(free_port)
    mkdir -p "$work/$name"
    cat >"$work/$name/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $work/$name/storage}
http: {addr: "127.0.0.1:$port", secret: "demo-$RANDOM$RANDOM"}
YAML
    if [ "$name" = source ]; then
        # The source announces every push to fanout serve, as a primary registry would.
        cat >>"$work/$name/config.yml" <<YAML
notifications:
  endpoints:
    - name: fanout
      url: http://127.0.0.1:$serve_port/v1/hooks/distribution
      headers: {Authorization: ["Bearer $token"]}
      timeout: 2s
      threshold: 5
      backoff: 1s
YAML
    fi
    docker-registry serve "$work/$name/config.yml" >"$work/$name/registry.log" 2>&1 &
    pids+=($!)
    hosts[$name]="127.0.0.1:$port"
    echo "$name registry on 127.0.0.1:$port" >&2
done

say "worker and Flower"
"$bin/celery" -A workers.app worker --loglevel=INFO --concurrency=2 -n "demo@%h" \
    >"$work/worker.log" 2>&1 &
pids+=($!)
flower_auth=${FLOWER_BASIC_AUTH:-admin:$("$py" -c 'import secrets; print(secrets.token_urlsafe(12))')}
flower_port=5555
port_free "$flower_port" || flower_port=$(free_port)
# Flower reads FLOWER_BASIC_AUTH itself: the password stays out of the process list.
FLOWER_BASIC_AUTH=$flower_auth "$bin/celery" -A workers.app flower --port="$flower_port" \
    --address=127.0.0.1 >"$work/flower.log" 2>&1 &
pids+=($!)

say "fanout serve (the HTTP front door)"
cat >"$work/fanout.toml" <<TOML
[destinations]
release = ["${hosts[dest1]}/demo/app", "${hosts[dest2]}/demo/app"]

[[tokens]]
name = "demo"
sha256 = "$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
sets = ["release"]
sources = ["${hosts[source]}/demo/*"]

[[rules]]                      # a push of demo/app:release-* to the source replicates by itself
source = "${hosts[source]}/demo/*"
tags = ["release-*"]
to = "release"
TOML
"$bin/fanout" serve --port "$serve_port" --config "$work/fanout.toml" >"$work/serve.log" 2>&1 &
pids+=($!)
server=http://127.0.0.1:$serve_port

say "push a sample multi-platform image"
source_ref=$("$py" scripts/push_sample.py "${hosts[source]}" demo/app v1)
echo "pushed $source_ref" >&2
wait_for_log "$work/worker.log" " ready." "the celery worker"

say "fanout enqueue"
set +e
set -x
"$bin/fanout" enqueue "${hosts[source]}/demo/app:v1" \
    "${hosts[dest1]}/demo/app" "${hosts[dest2]}/demo/app" --tag demo --wait --timeout 60
code=$?
{ set +x; } 2>/dev/null

wait_for_log "$work/serve.log" "Uvicorn running" "fanout serve"
say "fanout enqueue --server: over HTTP, with a token (what a hosted CI runner does)"
export FANOUT_TOKEN=$token   # from the environment only: never on a command line
set -x
FANOUT_BROKER_URL= "$bin/fanout" enqueue "${hosts[source]}/demo/app:v1" --server "$server" \
    --to release --tag http --wait --timeout 60
http_code=$?
{ set +x; } 2>/dev/null
((code == 0)) && code=$http_code

say "a push to the source registry replicates by itself (its notification reaches fanout serve)"
"$py" scripts/push_sample.py "${hosts[source]}" demo/app release-2 >/dev/null
hooked=$("$py" - "$server" <<'PY'
import os, sys, time
import httpx
server, headers = sys.argv[1], {"Authorization": f"Bearer {os.environ['FANOUT_TOKEN']}"}
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    releases = httpx.get(f"{server}/v1/releases", headers=headers, timeout=10).json()["releases"]
    for release in releases:
        if any("release-2" in d["tags"] for d in release["destinations"].values()):
            if release["done"]:
                print(release["id"])
                sys.exit(0)
    time.sleep(0.5)
sys.exit("demo: no release of demo/app:release-2 within 60 s")
PY
)
hook_code=$?
if ((hook_code == 0)); then
    "$bin/fanout" status "$hooked" --server "$server"
    hook_code=$?
fi
((code == 0)) && code=$hook_code

say "fanout verify: is what the ledger says landed still there? (HEADs only)"
set -x
# This run's releases only (its registries' ports are its own): an earlier demo's are gone.
"$bin/fanout" verify --since 10m --source-repo "${hosts[source]}/demo/app"
verify_code=$?
{ set +x; } 2>/dev/null
((code == 0)) && code=$verify_code
set -e

wait_for_log "$work/flower.log" "Visit me at" "Flower"
say "done (exit $code)"
cat >&2 <<EOF_INFO
Flower:   http://127.0.0.1:$flower_port   (user:password $flower_auth)
Releases: $server/   (the release page: any user name, password $token)
API:      $server/openapi.json   (FANOUT_SERVER=$server FANOUT_TOKEN=… fanout status)
Broker:   $broker
Status:   FANOUT_BROKER_URL=$broker $bin/fanout status RELEASE
EOF_INFO
if ((keep)); then
    echo "Logs:     $work/*.log" >&2
    echo "Left running (--keep): PIDs ${pids[*]}. Stop them with: kill ${pids[*]}" >&2
else
    echo "Stopping everything the demo started (pass --keep to leave it running)." >&2
fi
exit "$code"
