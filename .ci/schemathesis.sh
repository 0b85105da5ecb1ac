#!/usr/bin/env bash
# The HTTP API against its OpenAPI document (docs/openapi.yaml, served at
# GET /api/openapi.json), checked by schemathesis: first one node on the
# embedded broker, then two nodes on a real Redis (each node checked). The
# run fails on any 5xx, any response that breaks its schema, and any status,
# content type or header the document does not list.
#
# GET /ws, GET /sse and GET /stream are left out: a valid request is a
# WebSocket upgrade or an endless stream, not a request and its response
# (Autobahn, tests/protocol.rs, tests/sse.rs and tests/http_stream.rs cover
# them); their refusals are in the document all the same. POST
# /stream/commands is checked like the API.
#
# Bounded: ST_EXAMPLES cases per operation and phase (default 100), fixed seed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${GATEWAY_BIN:-$PWD/target/debug/gateway}"
[ -x "$bin" ] || { echo "no gateway binary at $bin (cargo build first)" >&2; exit 1; }
version=4.32.5
venv=target/schemathesis/venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

key=schemathesis-key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A namespace with presence, so that presence reads can succeed.
cat >"$work/gateway.toml" <<'TOML'
[namespaces.room]
presence = true
join_leave = true
TOML

# start_node ID PORT [FLAGS...]: a node, waited on until ready.
start_node() {
  local id=$1 port=$2
  shift 2
  "$bin" --listen "127.0.0.1:$port" --node-id "$id" --api-key "$key" --config "$work/gateway.toml" \
    --log-level warn "$@" 2>"$work/$id.log" &
  pids+=($!)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/$id.log"
  echo "node $id did not become ready" >&2
  exit 1
}

check() {
  local what=$1 port=$2
  echo "-- schemathesis: $what (node on port $port)"
  "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "http://127.0.0.1:$port/api/openapi.json" \
    --exclude-path /sse \
    --exclude-path /stream \
    --exclude-path /ws \
    --header "Authorization: Bearer $key" \
    --max-examples "${ST_EXAMPLES:-100}" \
    --seed 20261203 \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    --no-color
}

port=$(free_port)
start_node st-memory "$port"
check "embedded broker" "$port"
[ -n "${ST_ONLY_MEMORY:-}" ] && exit 0

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
first=$(free_port)
second=$(free_port)
start_node st-redis-1 "$first" --redis-url "redis://127.0.0.1:$redis_port"
start_node st-redis-2 "$second" --redis-url "redis://127.0.0.1:$redis_port"
check "Redis, node 1 of 2" "$first"
check "Redis, node 2 of 2" "$second"
