#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md: starts a throwaway Redis and
# N gateway nodes on loopback, runs one loadtest scenario against them, and
# leaves the JSON report in $OUT (default target/bench).
#
#   loadtest/bench.sh NODES SCENARIO [loadtest args...]
#   loadtest/bench.sh 2 fanout --subscribers 2000 --rate 100 --ramp 1.5
#   loadtest/bench.sh 1 idle --connections 19000          # one node, no Redis
#   CLUSTER=3 loadtest/bench.sh 2 channels ...            # a 3-master Redis Cluster
#
# Each node's WebSocket URL, API URL and PID are passed to loadtest; add
# arguments to refine (the latency scenario subscribes on the last node only). With NODES=1 the node runs on the embedded broker
# unless REDIS=1 is set.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:?nodes}"; scenario="${2:?scenario}"; shift 2
out="${OUT:-target/bench}"; mkdir -p "$out"
# GATEWAY_BIN: another gateway binary (an A/B comparison against an older
# build); the loadtest binary is always this checkout's. PROFILE=debug uses
# debug builds (CI's short soak, which has them already); figures come from
# release builds.
if [[ "${PROFILE:-release}" == debug ]]; then
  cargo build -q -p gateway -p loadtest
  bin=target/debug
else
  cargo build --release -q -p gateway -p loadtest
  bin=target/release
fi
gateway_bin="${GATEWAY_BIN:-$bin/gateway}"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis_args=(); redis_pids=()
if [[ -n "${CLUSTER:-}" ]]; then
  # CLUSTER=N: N masters (no replicas) from redis-server processes on 16391...
  seeds=()
  for i in $(seq 1 "$CLUSTER"); do
    port=$((16390 + i)); mkdir -p "$work/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --loglevel warning &
    pids+=($!); redis_pids+=($!)
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    seeds+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-yes >/dev/null
  until redis-cli -p 16391 cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  urls_arg=""
  for seed in "${seeds[@]}"; do urls_arg="${urls_arg:+$urls_arg,}redis://$seed"; done
  redis_args=(--redis-cluster-url "$urls_arg")
elif (( nodes > 1 )) || [[ "${REDIS:-0}" == 1 ]]; then
  redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --loglevel warning &
  pids+=($!); redis_pids+=($!)
  until redis-cli -p 16390 ping >/dev/null 2>&1; do sleep 0.05; done
  redis_args=(--redis-url redis://127.0.0.1:16390)
fi

urls=(); apis=(); gw_pids=()
for n in $(seq 1 "$nodes"); do
  port=$((18080 + n))
  "$gateway_bin" --listen "127.0.0.1:$port" --node-id "bench-$n" --log-level warn "${redis_args[@]}" ${GATEWAY_ARGS:-} &
  pids+=($!); gw_pids+=($!)
  urls+=("ws://127.0.0.1:$port/ws"); apis+=("http://127.0.0.1:$port")
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
done
join() { local IFS=,; echo "$*"; }

# Cross-node latency: subscribers on the last node, publications via the first
# (its HTTP API, or with --publish-via ws its WebSocket URL).
extra=()
api_arg="${apis[0]}"
if [[ "$scenario" == soak ]]; then
  # Publishes round robin over every node; samples each node and Redis.
  api_arg="$(join "${apis[@]}")"
  (( ${#redis_pids[@]} )) && [[ -z "${CLUSTER:-}" ]] && extra=(--redis 127.0.0.1:16390)
fi
if [[ "$scenario" == latency ]]; then
  extra=(--publish-url "${urls[0]}")
  urls=("${urls[-1]}")
fi

# CPU seconds (user + system) of processes, from /proc.
cpu_of() { local t=0; for p in "$@"; do t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat"); done; echo "$t"; }
redis_before=$(cpu_of "${redis_pids[@]}")

report="$out/$scenario-$nodes-node-$(date +%H%M%S).json"
"$bin/loadtest" "$scenario" --url "$(join "${urls[@]}")" --api "$api_arg" \
  --pid "$(join "${gw_pids[@]}")" --json "$report" "${extra[@]}" "$@"
for api in "${apis[@]}"; do
  # What compression did on each node (permessage-deflate), if anything.
  curl -sf "$api/metrics" | grep -E '^gateway_compression_(bytes_(in|out)_total|connections) ' | sed "s|^|$api |" || true
done
(( ${#redis_pids[@]} )) && echo "Redis CPU during the run: $(awk -v a="$(cpu_of "${redis_pids[@]}")" -v b="$redis_before" 'BEGIN {printf "%.2f", a - b}') s"
exit 0
